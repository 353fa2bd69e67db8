"""manifest.json (format "vae-model-manifest", version 1): the schema both the exporter (writer) and
the service (reader) validate against, the cross-field rules a JSON Schema cannot state, and the typed
model readers build from a valid document. Field reference: docs/manifest.md."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.errors import ManifestError
from contracts.jsonio import loads_json
from contracts.schema import SchemaValidator, load_schema

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "GRAPH_KEYS",
    "SCHEMA_PATH",
    "TensorEntry",
    "GraphEntry",
    "ModelManifest",
    "schema_validator",
    "validate_manifest",
    "parse_manifest",
]

FORMAT = "vae-model-manifest"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
# Graph entries a manifest may hold; the first two are required.
GRAPH_KEYS = ("encoder", "decoder", "encoder_fp16", "decoder_fp16")
SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")
_REFERENCE_LISTS = ("mu_mean", "mu_var", "posterior_var_mean", "kl_per_dim")
_LATENT_TENSORS = ("z", "mu", "logvar")


@dataclass(frozen=True)
class TensorEntry:
    name: str
    shape: tuple[int | str, ...]  # the batch axis is the string "N"
    dtype: str


@dataclass(frozen=True)
class GraphEntry:
    key: str  # encoder | decoder | encoder_fp16 | decoder_fp16
    file: str
    sha256: str
    size_bytes: int
    dtype: str
    inputs: tuple[TensorEntry, ...]
    outputs: tuple[TensorEntry, ...]


@dataclass(frozen=True)
class ModelManifest:
    """A manifest that passed `validate_manifest`; `raw` keeps every key (readers ignore unknown ones)."""

    model_name: str
    model_version: str
    created_at: str
    input_shape: tuple[int, int, int]
    latent_dim: int
    likelihood: str
    opset: int
    graphs: dict[str, GraphEntry]
    reference: dict[str, Any]
    raw: dict[str, Any]


@functools.cache
def schema_validator() -> SchemaValidator:
    return load_schema(SCHEMA_PATH)


def _header_problem(m: Any) -> str | None:
    """Format and version first: a foreign file gets one clear line, not a page of schema problems."""
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        return f"not a VAE model manifest (format must be {FORMAT!r})"
    if m.get("format_version") != FORMAT_VERSION:
        return (f"format_version {m.get('format_version')!r} is not supported (this reader reads "
                f"version {FORMAT_VERSION})")
    return None


def _io_problems(key: str, g: dict[str, Any], input_shape: list[int], d: int) -> list[str]:
    """A graph's recorded inputs and outputs against input_shape and latent_dim (docs/manifest.md)."""
    image = ["N", *input_shape]
    if key.startswith("encoder"):
        want = {"inputs": [("x", image)], "outputs": [("mu", ["N", d]), ("logvar", ["N", d])]}
    else:
        want = {"inputs": [("z", ["N", d])], "outputs": [("x_mean", image)]}
    problems = []
    for side, expected in want.items():
        got = [(t["name"], t["shape"]) for t in g[side]]
        where = f"graphs.{key}.{side}"
        if [n for n, _ in got] != [n for n, _ in expected]:
            problems.append(f"{where}: tensors {[n for n, _ in got]}, expected {[n for n, _ in expected]}")
            continue
        for (name, shape), (_, want_shape) in zip(got, expected, strict=True):
            if shape == want_shape:
                continue
            if name in _LATENT_TENSORS:
                problems.append(f"{where}: graph latent shapes do not match latent_dim {d} "
                                f"({name} {shape}, expected {want_shape})")
            else:
                problems.append(f"{where}: graph image shapes do not match input_shape {input_shape} "
                                f"({name} {shape}, expected {want_shape})")
        for t in g[side]:
            if t["dtype"] != g["dtype"]:
                problems.append(f"{where}: {t['name']} dtype {t['dtype']!r} differs from the graph's "
                                f"{g['dtype']!r}")
    return problems


def validate_manifest(m: Any) -> list[str]:
    """Every way `m` departs from version 1 (empty when it conforms): the schema file, then the
    cross-field rules on a schema-valid document."""
    header = _header_problem(m)
    if header is not None:
        return [header]
    problems = schema_validator().problems(m)
    if problems:
        return problems
    shape, d = m["input_shape"], m["latent_dim"]
    for key, g in m["graphs"].items():
        problems += _io_problems(key, g, shape, d)
    for key in _REFERENCE_LISTS:
        n = len(m["reference"][key])
        if n != d:
            problems.append(f"reference.{key}: {n} entries, latent_dim is {d}")
    return problems


def _tensors(items: list[dict[str, Any]]) -> tuple[TensorEntry, ...]:
    return tuple(TensorEntry(t["name"], tuple(t["shape"]), t["dtype"]) for t in items)


def parse_manifest(data: bytes | str | dict[str, Any]) -> ModelManifest:
    """The typed manifest from bytes or a parsed document; JsonError for bad JSON, ManifestError
    (every problem) for a document that departs from the schema."""
    raw = data if isinstance(data, dict) else loads_json(data)
    problems = validate_manifest(raw)
    if problems:
        raise ManifestError(problems)
    graphs = {
        key: GraphEntry(key, g["file"], g["sha256"], g["size_bytes"], g["dtype"],
                        _tensors(g["inputs"]), _tensors(g["outputs"]))
        for key, g in raw["graphs"].items()
    }
    shape = raw["input_shape"]
    return ModelManifest(
        model_name=raw["model"]["name"], model_version=raw["model"]["version"],
        created_at=raw["model"]["created_at"], input_shape=(shape[0], shape[1], shape[2]),
        latent_dim=raw["latent_dim"], likelihood=raw["likelihood"], opset=raw["opset"], graphs=graphs,
        reference=raw["reference"], raw=raw)
