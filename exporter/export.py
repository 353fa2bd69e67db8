"""`export_model`: checkpoint -> encoder.onnx + decoder.onnx (+ fp16 graphs) + manifest.json, verified
before anything is written.

Order of work (fail closed): load and check the checkpoint; refuse an output folder holding another model;
take the latent reference statistics (stored in the checkpoint by the trainer, or computed on
`--reference-data` / an old checkpoint's training data: exporter/reference.py); export every graph into a
hidden staging folder beside the output; compare onnxruntime with torch (all mismatches collected); write
the manifest; re-check the staged folder exactly as `vae verify` would; only then rename it into place.
"""

from __future__ import annotations

import importlib.metadata
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from contracts.files import atomic_write_json, replace_dir, stage_dir
from exporter.errors import ExportError, ModelDirError, OutputExistsError, VerificationError
from exporter.graphs import (
    BATCH_DIM,
    DECODER_IO,
    ENCODER_IO,
    OPSET,
    DecoderGraph,
    EncoderGraph,
    export_graph,
    graph_metadata,
)
from exporter.manifest import FORMAT, FORMAT_VERSION, MANIFEST_NAME, graph_entry, read_manifest
from exporter.reference import Reference, load_reference
from exporter.source import Source, load_source
from exporter.triton import repository_conflicts, write_repository
from exporter.validate import BATCHES, FP16_TOLERANCE, TOLERANCE, parity, verify_model_dir
from trainer.model import VAE

__all__ = ["export_model", "check_output_dir", "exporter_version"]


def exporter_version() -> str:
    try:
        return importlib.metadata.version("vae-serve")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def check_output_dir(out_dir: Path, checkpoint_sha256: str, *, force: bool) -> None:
    """Refuse (without `force`) an output folder that holds anything but this very model."""
    if force or not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise OutputExistsError(str(out_dir), "exists and is not a folder")
    if not any(out_dir.iterdir()):
        return
    try:
        existing = read_manifest(out_dir)
    except (OSError, ModelDirError):
        raise OutputExistsError(str(out_dir), "is not empty and holds no model manifest") from None
    sha = (existing.get("checkpoint") or {}).get("sha256") if isinstance(existing, dict) else None
    if sha != checkpoint_sha256:
        name = (existing.get("model") or {}).get("version") if isinstance(existing, dict) else None
        raise OutputExistsError(str(out_dir), f"holds another model (version {name!r}, checkpoint "
                                              f"{str(sha)[:12]}...)")


def _finite_or_none(v: Any) -> float | None:
    """A number for JSON, or None (NaN and infinities are not JSON)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def _encode_fn(model: VAE) -> Any:
    @torch.no_grad()
    def encode(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, logvar = model.encode(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return mu.numpy(), logvar.numpy()

    return encode


def _export_graphs(src: Source, stage: Path, meta: dict[str, Any], fp16: bool) -> dict[str, Path]:
    cfg = src.model_cfg
    c, h, w = (int(v) for v in cfg.input_shape)
    d = int(cfg.latent_dim)
    # Batch 2 in the examples: torch.export specialises a dimension whose example size is 1.
    specs = [("encoder", EncoderGraph(src.model), torch.rand(2, c, h, w), ENCODER_IO),
             ("decoder", DecoderGraph(src.model), torch.randn(2, d), DECODER_IO)]
    files: dict[str, Path] = {}
    for half in ([False, True] if fp16 else [False]):
        dtype = "float16" if half else "float32"
        for graph, module, example, (ins, outs) in specs:
            key = f"{graph}_fp16" if half else graph
            path = stage / f"{key}.onnx"
            export_graph(module, example, path, input_names=ins, output_names=outs, fp16=half,
                         metadata=graph_metadata(graph=graph, dtype=dtype, **meta))
            files[key] = path
    return files


def _graph_entries(files: dict[str, Path], shape: list[int], d: int) -> dict[str, Any]:
    entries = {}
    for key, path in files.items():
        dtype = "float16" if key.endswith("_fp16") else "float32"
        if key.startswith("encoder"):
            io_in = [("x", [BATCH_DIM, *shape])]
            io_out = [("mu", [BATCH_DIM, d]), ("logvar", [BATCH_DIM, d])]
        else:
            io_in = [("z", [BATCH_DIM, d])]
            io_out = [("x_mean", [BATCH_DIM, *shape])]
        entries[key] = graph_entry(path, dtype=dtype, inputs=io_in, outputs=io_out)
    return entries


def _manifest(src: Source, ref: Reference, files: dict[str, Path], meta: dict[str, Any],
              max_diff: dict[str, float], fp16: bool) -> dict[str, Any]:
    shape = [int(v) for v in src.model_cfg.input_shape]
    d = int(src.model_cfg.latent_dim)
    verification: dict[str, Any] = {
        "tolerance": TOLERANCE, "batches": list(BATCHES), "inputs": ["random", "real"],
        "runtime": "onnxruntime CPUExecutionProvider",
        "max_abs_diff": {k: float(v) for k, v in sorted(max_diff.items())},
    }
    if fp16:
        verification["fp16_tolerance"] = dict(FP16_TOLERANCE)
    ck = src.ckpt
    ckdata = ck.get("data") or {}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": {"name": meta["model_name"], "version": meta["model_version"],
                  "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")},
        "input_shape": shape,
        "latent_dim": d,
        "likelihood": src.model_cfg.likelihood,
        "arch": src.model_cfg.arch,
        "opset": OPSET,
        "graphs": _graph_entries(files, shape, d),
        "verification": verification,
        "producer": {"exporter": exporter_version(), "torch": torch.__version__, "onnx": onnx.__version__,
                     "onnxruntime": ort.__version__},
        "checkpoint": {"sha256": src.sha256, "step": int(ck.get("step", 0)), "epoch": int(ck.get("epoch", 0)),
                       "file": src.path.name, "best_metric": _finite_or_none(ck.get("best_metric"))},
        "training_data": {"fingerprint": ref.fingerprint, "n_images": ref.n_images,
                          "source": ref.source, "checkpoint_fingerprint": ref.checkpoint_fingerprint,
                          "checkpoint_source": ckdata.get("source"), "override": ref.overridden,
                          "reference_from": ref.origin},
        "reference": ref.statistics,
    }


def export_model(source: Path, out_dir: Path, *, data: str | None = None, fp16: bool = False,
                 triton_dir: Path | None = None, force: bool = False, model_name: str | None = None,
                 model_version: str | None = None) -> dict[str, Any]:
    """Export, verify and write a model folder; returns the manifest. Raises ExportError subclasses;
    on any error `out_dir` is left as it was. The Triton repository (optional) is written from the
    verified folder once it is in place, each of its model folders renamed into place whole."""
    out_dir = Path(out_dir)
    src = load_source(Path(source))
    if out_dir.resolve() in (src.path.resolve(), *src.path.resolve().parents):
        # Replacing the folder would delete the checkpoint (and its run) even with --force.
        raise OutputExistsError(str(out_dir), f"holds the source checkpoint {src.path}; choose another "
                                              "--out (--force does not apply)")
    if triton_dir is not None and Path(triton_dir).resolve() == out_dir.resolve():
        raise ExportError("--triton must be another folder than --out")
    check_output_dir(out_dir, src.sha256, force=force)
    meta: dict[str, Any] = {
            "model_name": model_name or "vae", "model_version": model_version or src.sha256[:12],
            "latent_dim": int(src.model_cfg.latent_dim), "likelihood": src.model_cfg.likelihood,
            "input_shape": [int(v) for v in src.model_cfg.input_shape]}
    if not meta["model_name"].replace("_", "").replace("-", "").isalnum():
        raise ExportError(f"model name {meta['model_name']!r}: use letters, digits, '-' and '_' only")
    if triton_dir is not None and not force:
        conflicts = repository_conflicts(Path(triton_dir), meta["model_name"], meta["model_version"])
        if conflicts:
            raise OutputExistsError(str(triton_dir), "; ".join(conflicts))
    ref = load_reference(src, data)
    torch.manual_seed(0)
    stage = stage_dir(out_dir)
    try:
        files = _export_graphs(src, stage, meta, fp16)
        x_real = ref.parity_images
        z_real = _encode_fn(src.model)(x_real[:256])[0]
        max_diff, mismatches = parity(src.model, files, x_real=x_real, z_real=z_real)
        if mismatches:
            raise VerificationError(mismatches)
        manifest = _manifest(src, ref, files, meta, max_diff, fp16)
        atomic_write_json(stage / MANIFEST_NAME, manifest)
        problems = verify_model_dir(stage)
        if problems:
            raise ExportError("the staged model folder failed its own check: " + "; ".join(problems))
        replace_dir(stage, out_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if triton_dir is not None:
        write_repository(Path(triton_dir), out_dir, manifest)
    return manifest
