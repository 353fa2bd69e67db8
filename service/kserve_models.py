"""How the Open Inference Protocol sees the served VAE models: the lookup interface and v2 names.

Each VAE model version appears to v2 clients as two models: `NAME-encoder` (x -> mu, logvar) and
`NAME-decoder` (z -> x_mean), so that any v2 client can call either graph. The v2 servicer knows the
models only through `ModelLookup`: `ServedModel` bundles the very objects the vae.v1 servicer uses
(validator, batcher submitters, metrics), so a request through v2 goes through the same batchers,
limits, validation and metrics. `SingleModel` is the lookup for one model folder; a model registry
(several models, versions, live reload) plugs in by implementing the same four methods.
No grpc here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from service.errors import NotFound, Unavailable
from service.manifest import GraphSpec, Manifest
from service.metrics import ServiceMetrics
from service.servicer import Submitter
from service.validation import Validator

__all__ = ["GRAPHS", "ServedModel", "IndexEntry", "Endpoint", "ModelLookup", "SingleModel", "resolve",
           "require_ready", "split_name", "state", "version_key"]

GRAPHS = ("encoder", "decoder")


@dataclass(frozen=True)
class ServedModel:
    """One VAE model version as it serves now (the objects are shared with the vae.v1 servicer)."""

    name: str  # the manifest's model name; v2 names are f"{name}-encoder" and f"{name}-decoder"
    version: str  # the v2 version string (Triton's layout: an integer; "1" for a lone model folder)
    manifest: Manifest
    validator: Validator
    encoder: Submitter
    decoder: Submitter
    metrics: ServiceMetrics
    max_batch_size: int  # rows the dynamic batcher merges (0: batching off)
    max_queue_delay_us: int

    def submitter(self, graph: str) -> Submitter:
        return self.encoder if graph == "encoder" else self.decoder

    def spec(self, graph: str) -> GraphSpec:
        return self.manifest.graphs[graph]


@dataclass(frozen=True)
class IndexEntry:
    """One row of the repository index: a v2 model name and version, its state and why."""

    name: str
    version: str
    state: str  # Triton's words: READY, UNAVAILABLE, LOADING, UNLOADING
    reason: str = ""


@dataclass(frozen=True)
class Endpoint:
    """A v2 model name resolved: which VAE model version, which of its graphs."""

    model: ServedModel
    graph: str  # "encoder" or "decoder"

    @property
    def v2_name(self) -> str:
        return f"{self.model.name}-{self.graph}"


class ModelLookup(Protocol):
    def serving(self) -> Sequence[ServedModel]:
        """Every model version loaded now (all models, all their loaded versions)."""
        ...

    def index(self) -> Sequence[IndexEntry]:
        """Every v2 model name and version known, whatever its state; READY ones take requests."""
        ...

    async def load(self, v2_name: str) -> None:
        """Load (or reload) a v2 model by name; NotFound when no such model exists."""
        ...

    async def unload(self, v2_name: str) -> None:
        """Take a v2 model out of service; NotFound when no such model exists."""
        ...


def split_name(v2_name: str) -> tuple[str, str] | None:
    """'digits-encoder' -> ('digits', 'encoder'); None when the name ends in neither graph."""
    base, sep, graph = v2_name.rpartition("-")
    return (base, graph) if sep and base and graph in GRAPHS else None


def _served_names(models: Sequence[ServedModel]) -> str:
    names = sorted({f"{m.name}-{g}" for m in models for g in GRAPHS})
    return ", ".join(names) or "none"


def resolve(lookup: ModelLookup, v2_name: str, version: str = "") -> Endpoint:
    """The endpoint a request names; NotFound (listing what is served) for an unknown name or version.

    An empty version means the latest loaded one: the highest integer, as in Triton."""
    models = lookup.serving()
    split = split_name(v2_name)
    candidates = [m for m in models if split is not None and m.name == split[0]]
    if split is None or not candidates:
        raise NotFound(f"model {v2_name!r} is not served; served models: {_served_names(models)}")
    if version:
        chosen = [m for m in candidates if m.version == version]
        if not chosen:
            versions = ", ".join(sorted((m.version for m in candidates), key=version_key))
            raise NotFound(f"model {v2_name!r} has no version {version!r} serving; versions: {versions}")
        return Endpoint(chosen[0], split[1])
    return Endpoint(max(candidates, key=lambda m: version_key(m.version)), split[1])


def state(lookup: ModelLookup, endpoint: Endpoint) -> IndexEntry:
    """The index row of an endpoint (UNAVAILABLE when the lookup does not list it)."""
    for entry in lookup.index():
        if entry.name == endpoint.v2_name and entry.version == endpoint.model.version:
            return entry
    return IndexEntry(endpoint.v2_name, endpoint.model.version, "UNAVAILABLE", "not in the index")


def require_ready(lookup: ModelLookup, endpoint: Endpoint) -> None:
    """Unavailable (with the state and reason) unless the endpoint is READY."""
    entry = state(lookup, endpoint)
    if entry.state != "READY":
        raise Unavailable(f"model {endpoint.v2_name!r} version {entry.version} is {entry.state}"
                          + (f" ({entry.reason})" if entry.reason else "")
                          + "; load it with RepositoryModelLoad or retry")


def version_key(version: str) -> tuple[int, int | str]:
    """Sort key: integer versions (Triton's layout) in numeric order, above any other string."""
    return (1, int(version)) if version.isdigit() else (0, version)


class SingleModel:
    """The lookup for one model folder (`vae serve --model-dir`): a repository of one, version 1.

    Unload takes a v2 name out of service (ModelReady false, index UNAVAILABLE, inference refused)
    without releasing the sessions, which vae.v1 keeps using; load puts it back. Real loading and
    unloading of versions belongs to a model registry implementing ModelLookup."""

    def __init__(self, model: ServedModel, ready: Callable[[], bool]) -> None:
        self.model = model
        self._ready = ready
        self._unloaded: set[str] = set()

    def _check(self, v2_name: str) -> None:
        split = split_name(v2_name)
        if split is None or split[0] != self.model.name:
            raise NotFound(f"model {v2_name!r} is not in the repository; models: "
                           f"{_served_names([self.model])}")

    def serving(self) -> Sequence[ServedModel]:
        return [self.model]

    def index(self) -> Sequence[IndexEntry]:
        entries = []
        for graph in GRAPHS:
            name = f"{self.model.name}-{graph}"
            if name in self._unloaded:
                entries.append(IndexEntry(name, self.model.version, "UNAVAILABLE", "unloaded"))
            elif not self._ready():
                entries.append(IndexEntry(name, self.model.version, "UNAVAILABLE",
                                          "the server is warming up or draining"))
            else:
                entries.append(IndexEntry(name, self.model.version, "READY"))
        return entries

    async def load(self, v2_name: str) -> None:
        self._check(v2_name)
        self._unloaded.discard(v2_name)

    async def unload(self, v2_name: str) -> None:
        self._check(v2_name)
        self._unloaded.add(v2_name)
