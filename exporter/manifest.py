"""manifest.json: the versioned description of a model folder, the only thing the service knows about
the model. Schema: docs/manifest.md (format "vae-model-manifest", version 1; extended additively only).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, TypeGuard

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "GRAPH_KEYS",
    "sha256_file",
    "graph_entry",
    "validate_manifest",
    "read_manifest",
]

FORMAT = "vae-model-manifest"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
# Graph entries a manifest may hold; the first two are required. decoder_params (z -> the likelihood's
# raw parameters, for Score) is optional: folders exported before it still serve everything else.
GRAPH_KEYS = ("encoder", "decoder", "encoder_fp16", "decoder_fp16", "decoder_params")
_DTYPES = ("float32", "float16")
_REFERENCE_LISTS = ("mu_mean", "mu_var", "posterior_var_mean", "kl_per_dim")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def graph_entry(path: Path, *, dtype: str, inputs: list[tuple[str, list[Any]]],
                outputs: list[tuple[str, list[Any]]]) -> dict[str, Any]:
    """The manifest entry of one graph file: hash and size of the bytes on disk, and its I/O."""
    return {
        "file": path.name,
        "sha256": sha256_file(path),
        "size_bytes": path.stat().st_size,
        "dtype": dtype,
        "inputs": [{"name": n, "shape": list(s), "dtype": dtype} for n, s in inputs],
        "outputs": [{"name": n, "shape": list(s), "dtype": dtype} for n, s in outputs],
    }


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, int | float) and not isinstance(v, bool))


def _check_graph(name: str, g: Any, input_shape: list[int], latent_dim: int) -> list[str]:
    if not isinstance(g, dict):
        return [f"graphs.{name}: not an object"]
    problems = []
    for key, kind in (("file", str), ("sha256", str), ("dtype", str), ("inputs", list), ("outputs", list)):
        if not isinstance(g.get(key), kind):
            problems.append(f"graphs.{name}.{key}: missing or not a {kind.__name__}")
    size = g.get("size_bytes")
    if not _is_int(size) or size <= 0:
        problems.append(f"graphs.{name}.size_bytes: missing or not a positive integer")
    if problems:
        return problems
    if g["dtype"] not in _DTYPES:
        problems.append(f"graphs.{name}.dtype: {g['dtype']!r} is not one of {list(_DTYPES)}")
    if "/" in g["file"] or "\\" in g["file"] or g["file"].startswith("."):
        problems.append(f"graphs.{name}.file: {g['file']!r} must be a plain file name in the folder")
    if len(g["sha256"]) != 64:
        problems.append(f"graphs.{name}.sha256: not a sha256 hex digest")
    encoder = name.startswith("encoder")
    want_in = [("x", ["N", *input_shape])] if encoder else [("z", ["N", latent_dim])]
    want_out = ([("mu", ["N", latent_dim]), ("logvar", ["N", latent_dim])] if encoder
                else [("params" if name == "decoder_params" else "x_mean", ["N", *input_shape])])
    for side, want in (("inputs", want_in), ("outputs", want_out)):
        got = [(t.get("name"), t.get("shape")) for t in g[side] if isinstance(t, dict)]
        if got != want:
            problems.append(f"graphs.{name}.{side}: {got} != expected {want}")
        for t in g[side]:
            if isinstance(t, dict) and t.get("dtype") != g["dtype"]:
                problems.append(f"graphs.{name}.{side}: {t.get('name')} dtype {t.get('dtype')!r} "
                                f"differs from the graph's {g['dtype']!r}")
    return problems


def validate_manifest(m: Any) -> list[str]:
    """Every way `m` departs from the version-1 schema (empty when it conforms)."""
    if not isinstance(m, dict):
        return ["manifest: not a JSON object"]
    if m.get("format") != FORMAT:
        return [f"format: {m.get('format')!r} is not {FORMAT!r}"]
    if m.get("format_version") != FORMAT_VERSION:
        return [f"format_version: {m.get('format_version')!r} is not supported (this exporter reads "
                f"{FORMAT_VERSION})"]
    problems: list[str] = []
    model = m.get("model")
    if not (isinstance(model, dict) and all(isinstance(model.get(k), str) and model.get(k)
                                            for k in ("name", "version", "created_at"))):
        problems.append("model: needs non-empty strings name, version, created_at")
    shape = m.get("input_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(v) and v > 0 for v in shape)):
        problems.append(f"input_shape: {shape!r} is not [C, H, W] of positive integers")
        shape = None
    d = m.get("latent_dim")
    if not (_is_int(d) and d > 0):
        problems.append(f"latent_dim: {d!r} is not a positive integer")
        d = None
    if not isinstance(m.get("likelihood"), str):
        problems.append("likelihood: missing")
    if not _is_int(m.get("opset")):
        problems.append("opset: missing or not an integer")
    graphs = m.get("graphs")
    if not isinstance(graphs, dict):
        problems.append("graphs: missing")
    else:
        for required in ("encoder", "decoder"):
            if required not in graphs:
                problems.append(f"graphs.{required}: missing")
        for name in graphs:
            if name not in GRAPH_KEYS:
                problems.append(f"graphs.{name}: unknown graph (expected one of {list(GRAPH_KEYS)})")
            elif shape is not None and d is not None:
                problems += _check_graph(name, graphs[name], shape, d)
    ver = m.get("verification")
    if not (isinstance(ver, dict) and _is_num(ver.get("tolerance")) and isinstance(ver.get("batches"), list)
            and isinstance(ver.get("max_abs_diff"), dict)):
        problems.append("verification: needs tolerance, batches, max_abs_diff")
    if not isinstance(m.get("producer"), dict):
        problems.append("producer: missing")
    ck = m.get("checkpoint")
    if not (isinstance(ck, dict) and isinstance(ck.get("sha256"), str)):
        problems.append("checkpoint: needs sha256")
    td = m.get("training_data")
    if not (isinstance(td, dict) and isinstance(td.get("fingerprint"), str) and _is_int(td.get("n_images"))):
        problems.append("training_data: needs fingerprint and n_images")
    problems += _check_reference(m.get("reference"), d)
    return problems


def _check_reference(ref: Any, d: int | None) -> list[str]:
    if not isinstance(ref, dict):
        return ["reference: missing"]
    problems = []
    for key in _REFERENCE_LISTS:
        v = ref.get(key)
        if not (isinstance(v, list) and all(_is_num(x) for x in v)):
            problems.append(f"reference.{key}: not a list of numbers")
        elif d is not None and len(v) != d:
            problems.append(f"reference.{key}: {len(v)} entries, latent_dim is {d}")
    if not (_is_int(ref.get("n_images")) and ref["n_images"] > 0):
        problems.append("reference.n_images: not a positive integer")
    if not _is_int(ref.get("active_units")):
        problems.append("reference.active_units: not an integer")
    if not _is_num(ref.get("active_threshold")):
        problems.append("reference.active_threshold: not a number")
    kl = ref.get("kl_per_sample")
    if not (isinstance(kl, dict) and all(_is_num(kl.get(k)) for k in ("mean", "p50", "p90", "p99"))):
        problems.append("reference.kl_per_sample: needs mean, p50, p90, p99")
    return problems


def read_manifest(model_dir: Path) -> dict[str, Any]:
    """The parsed manifest.json of `model_dir`; raises OSError or ValueError (bad JSON)."""
    with open(model_dir / MANIFEST_NAME, encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data
