"""manifest.json on the writer's side: the graph entries the exporter records, and reading a model
folder's manifest. The schema and its validation live in `contracts.manifest` (shared with the
service, which reads what this writes); docs/manifest.md describes every field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from contracts.errors import JsonError
from contracts.files import sha256_file
from contracts.jsonio import read_json
from contracts.manifest import FORMAT, FORMAT_VERSION, GRAPH_KEYS, MANIFEST_NAME, validate_manifest
from exporter.errors import ModelDirError

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


def read_manifest(model_dir: Path) -> Any:
    """The parsed manifest.json of `model_dir` (not yet validated). OSError passes through (missing or
    unreadable file); JSON the core refuses (syntax, nesting, huge integers) raises ModelDirError."""
    path = Path(model_dir) / MANIFEST_NAME
    try:
        return read_json(path)
    except JsonError as exc:
        raise ModelDirError(f"{path}: {exc}") from None
