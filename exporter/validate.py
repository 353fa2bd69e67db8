"""Verification: onnxruntime against torch (parity), and the re-check of a written model folder.

Parity runs every graph on CPU onnxruntime and the torch model on the same inputs, batches 1, 7 and 256,
random and real inputs, and collects *every* output whose max |difference| exceeds the tolerance before
anything is reported. fp16 graphs are compared with the fp32 torch model at a looser tolerance.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from exporter.errors import ExportError, Mismatch, ModelDirError
from exporter.graphs import read_metadata
from exporter.manifest import GRAPH_KEYS, read_manifest, sha256_file, validate_manifest
from exporter.reference import stored_reference
from exporter.source import load_source, load_training_data
from trainer.model import VAE

__all__ = [
    "TOLERANCE",
    "FP16_TOLERANCE",
    "BATCHES",
    "ort_session",
    "parity",
    "verify_model_dir",
    "checkpoint_parity",
]

# Max |onnxruntime - torch| allowed for float32 graphs (the figure).
TOLERANCE = 1e-4
# fp16 graphs against the fp32 model: float16 keeps 11 significant bits (unit roundoff 4.9e-4), and
# errors grow through the layers, so outputs are allowed 1e-2 absolute plus 1e-2 relative (as in
# numpy.allclose: |a - b| <= atol + rtol * |b|).
FP16_TOLERANCE = {"atol": 1e-2, "rtol": 1e-2}
BATCHES = (1, 7, 256)
_NP_DTYPES = {"float32": np.float32, "float16": np.float16}
_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16"}


def ort_session(path: Path) -> ort.InferenceSession:
    """A CPU session; no spin-waiting (the machine's cores are shared with torch and other work)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _take(pool: np.ndarray, n: int) -> np.ndarray:
    """n rows of `pool`, cycling when the pool is smaller than n."""
    idx = np.arange(n) % pool.shape[0]
    return np.ascontiguousarray(pool[idx])


@torch.no_grad()
def _torch_outputs(model: VAE, graph: str, inp: np.ndarray) -> list[np.ndarray]:
    t = torch.from_numpy(np.ascontiguousarray(inp, dtype=np.float32))
    if graph.startswith("encoder"):
        mu, logvar = model.encode(t)
        return [mu.numpy(), logvar.numpy()]
    return [model.decode_mean(t).numpy()]


def parity(model: VAE, files: dict[str, Path], *, x_real: np.ndarray, z_real: np.ndarray,
           batches: tuple[int, ...] = BATCHES, tolerance: float = TOLERANCE,
           fp16_tolerance: dict[str, float] | None = None, seed: int = 0
           ) -> tuple[dict[str, float], list[Mismatch]]:
    """Compare each graph in `files` ({"encoder": path, "decoder_fp16": path, ...}) with `model`.

    Returns the max |difference| per "graph.output" over all runs, and every run over tolerance. A graph
    that onnxruntime cannot load or run counts as a mismatch with an infinite difference.
    """
    fp16_tol = fp16_tolerance or FP16_TOLERANCE
    rng = np.random.default_rng(seed)
    c_h_w = x_real.shape[1:]
    d = z_real.shape[1]
    max_diff: dict[str, float] = {}
    mismatches: list[Mismatch] = []
    for graph, path in files.items():
        fp16 = graph.endswith("_fp16")
        np_dtype = np.float16 if fp16 else np.float32
        try:
            sess = ort_session(path)
            in_name = sess.get_inputs()[0].name
            out_names = [o.name for o in sess.get_outputs()]
        except Exception as exc:  # onnxruntime raises its own exception types
            mismatches.append(Mismatch(graph, f"<load: {str(exc).splitlines()[0][:200]}>", 0, "-",
                                       float("inf"), tolerance))
            continue
        for batch in batches:
            if graph.startswith("encoder"):
                cases = {"random": rng.random((batch, *c_h_w), dtype=np.float32),
                         "real": _take(x_real, batch)}
            else:
                cases = {"random": rng.standard_normal((batch, d), dtype=np.float32),
                         "real": _take(z_real, batch)}
            for kind, inp in cases.items():
                # The graph sees its own dtype; torch sees exactly the same values in float32.
                inp_g = inp.astype(np_dtype)
                want = _torch_outputs(model, graph, inp_g.astype(np.float32))
                try:
                    got = sess.run(None, {in_name: inp_g})
                except Exception as exc:
                    mismatches.append(Mismatch(graph, f"<run: {str(exc).splitlines()[0][:200]}>", batch,
                                               kind, float("inf"), tolerance))
                    continue
                for name, g, w in zip(out_names, got, want, strict=True):
                    g32 = np.asarray(g, dtype=np.float32)
                    if g32.shape != w.shape:
                        mismatches.append(Mismatch(graph, f"{name} shape {list(g32.shape)} != "
                                                   f"{list(w.shape)}", batch, kind, float("inf"), tolerance))
                        continue
                    diff = np.abs(g32.astype(np.float64) - w.astype(np.float64))
                    worst = float(diff.max()) if np.isfinite(diff).all() else float("inf")
                    key = f"{graph}.{name}"
                    max_diff[key] = max(max_diff.get(key, 0.0), worst)
                    if fp16:
                        limit = fp16_tol["atol"] + fp16_tol["rtol"] * np.abs(w.astype(np.float64))
                        bad = not np.isfinite(diff).all() or bool((diff > limit).any())
                        tol_shown = fp16_tol["atol"]
                    else:
                        bad = not worst <= tolerance
                        tol_shown = tolerance
                    if bad:
                        mismatches.append(Mismatch(graph, name, batch, kind, worst, tol_shown))
    return max_diff, mismatches


def _io_of(values: Any) -> list[tuple[str, list[Any], str]]:
    out = []
    for v in values:
        tt = v.type.tensor_type
        dims: list[Any] = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in tt.shape.dim]
        out.append((v.name, dims, _ONNX_DTYPES.get(tt.elem_type, f"onnx-type-{tt.elem_type}")))
    return out


def _check_graph_file(model_dir: Path, key: str, entry: dict[str, Any], m: dict[str, Any]) -> list[str]:
    """Hash, size, checker, I/O and metadata of one graph file, and one real run on onnxruntime."""
    path = model_dir / entry["file"]
    if not path.is_file():
        return [f"{key}: {entry['file']} is missing"]
    problems = []
    size = path.stat().st_size
    if size != entry["size_bytes"]:
        problems.append(f"{key}: {entry['file']} is {size} bytes, manifest says {entry['size_bytes']}")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        problems.append(f"{key}: {entry['file']} sha256 {digest[:12]}... differs from the manifest's "
                        f"{entry['sha256'][:12]}... (file changed after export)")
    try:
        proto = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # onnx raises DecodeError, ValidationError, ...
        return [*problems, f"{key}: {entry['file']} is not a valid ONNX model: {str(exc).splitlines()[0]}"]
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        problems.append(f"{key}: {entry['file']} uses external data (must be self-contained)")
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset != m["opset"]:
        problems.append(f"{key}: opset {opset} != manifest opset {m['opset']}")
    for side, values in (("inputs", proto.graph.input), ("outputs", proto.graph.output)):
        got = _io_of(values)
        want = [(t["name"], t["shape"], t["dtype"]) for t in entry[side]]
        if got != want:
            problems.append(f"{key}: graph {side} {got} != manifest {want}")
    meta = read_metadata(proto)
    expect = {"vae.graph": key.removesuffix("_fp16"), "vae.latent_dim": str(m["latent_dim"]),
              "vae.model_name": m["model"]["name"], "vae.model_version": m["model"]["version"],
              "vae.likelihood": m["likelihood"]}
    for k, v in expect.items():
        if meta.get(k) != v:
            problems.append(f"{key}: metadata_props {k}={meta.get(k)!r}, expected {v!r}")
    try:
        if json.loads(meta.get("vae.input_shape", "null")) != m["input_shape"]:
            problems.append(f"{key}: metadata_props vae.input_shape={meta.get('vae.input_shape')!r}")
    except ValueError:
        problems.append(f"{key}: metadata_props vae.input_shape is not JSON")
    problems += _smoke_run(path, key, entry, m)
    return problems


def _smoke_run(path: Path, key: str, entry: dict[str, Any], m: dict[str, Any]) -> list[str]:
    """Run the graph at batch 1 and 7: shapes and dtypes as declared, finite, decoder mean in [0,1]."""
    dtype = _NP_DTYPES[entry["dtype"]]
    rng = np.random.default_rng(0)
    try:
        sess = ort_session(path)
    except Exception as exc:
        return [f"{key}: onnxruntime cannot load {entry['file']}: {str(exc).splitlines()[0]}"]
    problems = []
    for batch in (1, 7):
        if key.startswith("encoder"):
            inp = rng.random((batch, *m["input_shape"])).astype(dtype)
        else:
            inp = rng.standard_normal((batch, m["latent_dim"])).astype(dtype)
        try:
            outs = sess.run(None, {entry["inputs"][0]["name"]: inp})
        except Exception as exc:
            problems.append(f"{key}: onnxruntime failed at batch {batch}: {str(exc).splitlines()[0]}")
            continue
        for spec, out in zip(entry["outputs"], outs, strict=False):
            want = [batch if s == "N" else s for s in spec["shape"]]
            if list(out.shape) != want or out.dtype != dtype:
                problems.append(f"{key}.{spec['name']}: batch {batch} gave {list(out.shape)} {out.dtype}, "
                                f"expected {want} {entry['dtype']}")
            elif not np.isfinite(out).all():
                problems.append(f"{key}.{spec['name']}: non-finite values at batch {batch}")
            elif spec["name"] == "x_mean" and (out.min() < 0 or out.max() > 1):
                problems.append(f"{key}.x_mean: values outside [0, 1] at batch {batch}")
    return problems


def verify_model_dir(model_dir: Path, checkpoint: Path | None = None) -> list[str]:
    """Every problem with an exported model folder (empty when all is well): manifest schema, hashes,
    sizes, graph I/O, metadata, a run on onnxruntime, and, given the checkpoint, parity with torch."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return [f"{model_dir}: not a folder"]
    try:
        m = read_manifest(model_dir)
    except FileNotFoundError:
        return [f"{model_dir}: no manifest.json (not an exported model folder)"]
    except ModelDirError as exc:
        return [str(exc)]
    except OSError as exc:
        return [f"{model_dir}/manifest.json: unreadable: {exc.strerror or exc}"]
    problems = validate_manifest(m)
    if problems:
        return problems
    for key in GRAPH_KEYS:
        if key in m["graphs"]:
            problems += _check_graph_file(model_dir, key, m["graphs"][key], m)
    if checkpoint is not None:
        problems += checkpoint_parity(model_dir, m, Path(checkpoint))
    return problems


def checkpoint_parity(model_dir: Path, m: dict[str, Any], checkpoint: Path) -> list[str]:
    """Parity of every graph in the folder with the model in `checkpoint`, at the tolerances recorded
    in the manifest. Real inputs are the training images stored in the checkpoint, or for an older
    checkpoint its training images when they can be loaded here, otherwise random images; latents are
    drawn from the recorded aggregate posterior N(mu_mean, mu_var)."""
    try:
        src = load_source(checkpoint)
    except ExportError as exc:
        return [f"checkpoint: {exc}"]
    problems = []
    if src.sha256 != m["checkpoint"]["sha256"]:
        problems.append(f"checkpoint: {src.path} (sha256 {src.sha256[:12]}...) is not the one this model "
                        f"was exported from ({m['checkpoint']['sha256'][:12]}...)")
    if list(src.model_cfg.input_shape) != m["input_shape"] or src.model_cfg.latent_dim != m["latent_dim"]:
        return [*problems, "checkpoint: its input shape / latent dim differ from the manifest's"]
    rng = np.random.default_rng(1)
    try:
        stored = stored_reference(src)
        x_real = stored.parity_images if stored is not None else load_training_data(src).images
    except ExportError:
        x_real = rng.random((256, *m["input_shape"]), dtype=np.float32)
    ref = m["reference"]
    z_real = (np.asarray(ref["mu_mean"]) + np.sqrt(np.asarray(ref["mu_var"]))
              * rng.standard_normal((256, m["latent_dim"]))).astype(np.float32)
    files = {k: model_dir / m["graphs"][k]["file"] for k in GRAPH_KEYS if k in m["graphs"]}
    files = {k: p for k, p in files.items() if p.is_file()}
    ver = m["verification"]
    fp16_tol = ver.get("fp16_tolerance") or FP16_TOLERANCE
    _, mismatches = parity(src.model, files, x_real=x_real, z_real=z_real,
                           tolerance=float(ver["tolerance"]), fp16_tolerance=fp16_tol)
    return [*problems, *(f"parity: {mm}" for mm in mismatches)]
