"""Read manifest.json and check the model folder against it (the service cannot import the exporter).

Checked before any graph is loaded: format and version, each graph file present, its size and sha256
as recorded, and (once loaded, in runtime.py) the graph's inputs/outputs against the recorded shapes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.errors import ModelError

__all__ = ["GraphSpec", "Manifest", "load_manifest", "MANIFEST_FORMAT", "MANIFEST_VERSION"]

MANIFEST_FORMAT = "vae-model-manifest"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]
    dtype: str


@dataclass(frozen=True)
class GraphSpec:
    key: str  # encoder | decoder | encoder_fp16 | decoder_fp16 | decoder_params
    path: Path
    sha256: str
    size_bytes: int
    dtype: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class Manifest:
    path: Path
    sha256: str  # of manifest.json as served
    model_name: str
    model_version: str
    input_shape: tuple[int, int, int]
    latent_dim: int
    likelihood: str
    graphs: dict[str, GraphSpec]
    reference: dict[str, Any] | None
    raw: dict[str, Any]
    # The likelihood's constants (e.g. log_sigma of the Gaussians) for Score; {} when none are recorded.
    likelihood_params: dict[str, float] = field(default_factory=dict)


def _require(mapping: Any, key: str, where: str) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise ModelError(f"manifest.json: missing {where}{key!r}")
    return mapping[key]


def _tensors(items: Any, where: str) -> tuple[TensorSpec, ...]:
    if not isinstance(items, list) or not items:
        raise ModelError(f"manifest.json: {where} must be a non-empty list")
    out = []
    for item in items:
        shape = _require(item, "shape", where + ".")
        if not isinstance(shape, list) or not all(isinstance(d, int | str) for d in shape):
            raise ModelError(f"manifest.json: {where} shape must be a list of ints and 'N'")
        out.append(TensorSpec(str(_require(item, "name", where + ".")), tuple(shape),
                              str(_require(item, "dtype", where + "."))))
    return tuple(out)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _graph(folder: Path, key: str, entry: Any) -> GraphSpec:
    where = f"graphs.{key}."
    name = str(_require(entry, "file", where))
    path = folder / name
    if Path(name).name != name:
        raise ModelError(f"manifest.json: {where}file must be a plain file name, got {name!r}")
    if not path.is_file():
        raise ModelError(f"{path}: graph file is missing (listed in manifest.json as {key})")
    size = _require(entry, "size_bytes", where)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ModelError(f"manifest.json: {where}size_bytes must be a non-negative int, got {size!r}")
    actual_size = path.stat().st_size
    if actual_size != size:
        raise ModelError(f"{path}: {actual_size} bytes, manifest.json records {size} "
                         "(truncated or replaced file)")
    sha = str(_require(entry, "sha256", where))
    actual = _sha256(path)
    if actual != sha:
        raise ModelError(f"{path}: sha256 {actual[:12]}... does not match manifest.json ({sha[:12]}...); "
                         "the file is corrupt or from another export")
    return GraphSpec(key, path, sha, size, str(_require(entry, "dtype", where)),
                     _tensors(_require(entry, "inputs", where), where + "inputs"),
                     _tensors(_require(entry, "outputs", where), where + "outputs"))


def load_manifest(model_dir: str | Path, *, fp16: bool = False) -> Manifest:
    """Parse and check the manifest and the graph files it names; raises ModelError."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise ModelError(f"{folder}: model folder does not exist")
    path = folder / "manifest.json"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"{path}: missing (export the model with `vae export`)") from None
    except OSError as exc:  # a folder in its place, no permission, I/O error
        raise ModelError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        raw = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
        raise ModelError(f"{path}: not a VAE model manifest (format must be {MANIFEST_FORMAT!r})")
    if raw.get("format_version") != MANIFEST_VERSION:
        raise ModelError(f"{path}: format_version {raw.get('format_version')!r} is not supported "
                         f"(this service reads version {MANIFEST_VERSION})")
    model = _require(raw, "model", "")
    shape = _require(raw, "input_shape", "")
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(d, int) and d > 0 for d in shape)):
        raise ModelError(f"{path}: input_shape must be [C, H, W] positive ints, got {shape!r}")
    latent_dim = _require(raw, "latent_dim", "")
    if not isinstance(latent_dim, int) or latent_dim <= 0:
        raise ModelError(f"{path}: latent_dim must be a positive int, got {latent_dim!r}")
    entries = _require(raw, "graphs", "")
    keys = ("encoder_fp16", "decoder_fp16") if fp16 else ("encoder", "decoder")
    if fp16 and not all(k in entries for k in keys):
        raise ModelError(f"{path}: --fp16 asked, but the model has no float16 graphs "
                         "(export with `vae export --fp16`)")
    graphs = {k.removesuffix("_fp16"): _graph(folder, k, _require(entries, k, "graphs.")) for k in keys}
    # Optional and always float32 (Score needs the precision): older exports lack it and serve the rest.
    if isinstance(entries, dict) and "decoder_params" in entries:
        graphs["decoder_params"] = _graph(folder, "decoder_params", entries["decoder_params"])
    lik_params = raw.get("likelihood_params")
    if lik_params is not None and not (isinstance(lik_params, dict) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in lik_params.values())):
        raise ModelError(f"{path}: likelihood_params must be an object of numbers, got {lik_params!r}")
    reference = raw.get("reference")
    return Manifest(
        path=path, sha256=hashlib.sha256(data).hexdigest(),
        model_name=str(_require(model, "name", "model.")),
        model_version=str(_require(model, "version", "model.")),
        input_shape=(shape[0], shape[1], shape[2]), latent_dim=latent_dim,
        likelihood=str(raw.get("likelihood", "")), graphs=graphs,
        reference=reference if isinstance(reference, dict) else None, raw=raw,
        likelihood_params={str(k): float(v) for k, v in (lik_params or {}).items()})
