"""Read manifest.json and check the model folder against it. The schema and its rules are the shared
ones of `contracts.manifest` (the exporter writes against the same file); this module adds what only
a reader with the folder in hand can check: each graph file present, its size and sha256 as recorded.
The graph's real inputs/outputs are checked against the recorded ones once loaded (runtime.py)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from contracts.errors import JsonError, ManifestError
from contracts.files import sha256_bytes, sha256_file
from contracts.manifest import FORMAT, FORMAT_VERSION, MANIFEST_NAME, GraphEntry, parse_manifest
from contracts.manifest import TensorEntry as TensorSpec
from service.errors import ModelError

__all__ = ["GraphSpec", "Manifest", "TensorSpec", "load_manifest", "MANIFEST_FORMAT", "MANIFEST_VERSION"]

MANIFEST_FORMAT = FORMAT
MANIFEST_VERSION = FORMAT_VERSION
# Problems shown in the one-line refusal; the rest are counted.
_SHOWN = 3


@dataclass(frozen=True, kw_only=True)
class GraphSpec(GraphEntry):
    """A manifest graph entry whose file was found in the folder with the recorded size and hash."""

    path: Path


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


def _graph(folder: Path, entry: GraphEntry) -> GraphSpec:
    path = folder / entry.file
    if not path.is_file():
        raise ModelError(f"{path}: graph file is missing (listed in manifest.json as {entry.key})")
    actual_size = path.stat().st_size
    if actual_size != entry.size_bytes:
        raise ModelError(f"{path}: {actual_size} bytes, manifest.json records {entry.size_bytes} "
                         "(truncated or replaced file)")
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise ModelError(f"{path}: sha256 {actual[:12]}... does not match manifest.json "
                         f"({entry.sha256[:12]}...); the file is corrupt or from another export")
    return GraphSpec(**{f.name: getattr(entry, f.name) for f in fields(entry)}, path=path)


def _one_line(problems: list[str]) -> str:
    shown = "; ".join(problems[:_SHOWN])
    more = len(problems) - _SHOWN
    return shown + (f" (and {more} more)" if more > 0 else "")


def load_manifest(model_dir: str | Path, *, fp16: bool = False) -> Manifest:
    """Parse and check the manifest and the graph files it names; raises ModelError."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise ModelError(f"{folder}: model folder does not exist")
    path = folder / MANIFEST_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"{path}: missing (export the model with `vae export`)") from None
    except OSError as exc:  # a folder in its place, no permission, I/O error
        raise ModelError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        m = parse_manifest(data)
    except JsonError as exc:
        raise ModelError(f"{path}: {exc}") from None
    except ManifestError as exc:
        raise ModelError(f"{path}: {_one_line(exc.problems)}") from None
    keys = ("encoder_fp16", "decoder_fp16") if fp16 else ("encoder", "decoder")
    if fp16 and not all(k in m.graphs for k in keys):
        raise ModelError(f"{path}: --fp16 asked, but the model has no float16 graphs "
                         "(export with `vae export --fp16`)")
    graphs = {k.removesuffix("_fp16"): _graph(folder, m.graphs[k]) for k in keys}
    return Manifest(
        path=path, sha256=sha256_bytes(data), model_name=m.model_name,
        model_version=m.model_version, input_shape=m.input_shape, latent_dim=m.latent_dim,
        likelihood=m.likelihood, graphs=graphs, reference=m.reference, raw=m.raw)
