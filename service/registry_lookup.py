"""The model registry as the Open Inference Protocol sees it (service/kserve_models.ModelLookup).

Each ready model version becomes a `ServedModel` holding that version's own validator, batchers and
metrics, so a v2 request goes through exactly what vae.v1 uses. Its submitters count the request on
the version (`enter` / `leave`) so that a version being drained after a reload waits for v2 requests
too; the count starts when the request is submitted, which follows the lookup with no await between.
v2 names are `NAME-encoder` / `NAME-decoder`, and both graphs share the model's sessions: unloading
one name takes it out of service (index UNAVAILABLE "unloaded", inference refused); unloading the second
unloads the model NAME from the registry (drained, sessions released). Loading a name puts it back,
loading the model from the repository first when it is not loaded. No grpc here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from service.errors import NotFound
from service.kserve_models import GRAPHS, IndexEntry, ServedModel, split_name
from service.registry import ModelRegistry
from service.served import DRAINING, FAILED, LOADING, READY, ServedVersion

__all__ = ["RegistryLookup"]

# ListModels states -> Triton's repository-index words.
_TRITON_STATE = {READY: "READY", LOADING: "LOADING", DRAINING: "UNLOADING", FAILED: "UNAVAILABLE"}


class _Counted:
    """A version's runner whose requests count as in flight on that version (for its drain)."""

    def __init__(self, version: ServedVersion, graph: str) -> None:
        self._version = version
        self._graph = graph

    async def submit(self, x: np.ndarray, deadline: float | None = None) -> list[np.ndarray]:
        v = self._version
        v.enter()
        try:
            runner = v.encoder if self._graph == "encoder" else v.decoder
            return list(await runner.submit(x, deadline))
        finally:
            v.leave()


class RegistryLookup:
    """`ModelLookup` over a ModelRegistry: serving versions, the index, load and unload by v2 name."""

    def __init__(self, models: ModelRegistry, ready: Callable[[], bool]) -> None:
        self.models = models
        self._ready = ready
        self._cache: dict[int, tuple[ServedVersion, ServedModel]] = {}
        self._out: set[str] = set()  # v2 names taken out of service by RepositoryModelUnload

    def _served(self, v: ServedVersion) -> ServedModel:
        hit = self._cache.get(id(v))
        if hit is not None and hit[0] is v:
            return hit[1]
        s = v.settings
        assert v.manifest is not None
        model = ServedModel(name=v.name, version=v.version, manifest=v.manifest, validator=v.validator,
                            encoder=_Counted(v, "encoder"), decoder=_Counted(v, "decoder"), metrics=v.metrics,
                            max_batch_size=s.max_batch_size if s.dynamic_batching else 0,
                            max_queue_delay_us=int(s.max_queue_delay_ms * 1000))
        live = {id(x) for vs in self.models.ready_versions().values() for x in vs}
        self._cache = {k: e for k, e in self._cache.items() if k in live}  # forget released versions
        self._cache[id(v)] = (v, model)
        return model

    def serving(self) -> Sequence[ServedModel]:
        return [self._served(v) for vs in self.models.ready_versions().values() for v in vs]

    def index(self) -> Sequence[IndexEntry]:
        entries = []
        listed: set[str] = set()
        for st in self.models.statuses():
            if not st.version:
                continue  # a model folder with a bad config.json: no version to name
            for graph in GRAPHS:
                name = f"{st.model}-{graph}"
                listed.add(name)
                if name in self._out:
                    entries.append(IndexEntry(name, st.version, "UNAVAILABLE", "unloaded"))
                elif st.state == READY and not self._ready():
                    entries.append(IndexEntry(name, st.version, "UNAVAILABLE",
                                              "the server is warming up or draining"))
                else:
                    entries.append(IndexEntry(name, st.version, _TRITON_STATE.get(st.state, "UNAVAILABLE"),
                                              st.reason))
        entries += [IndexEntry(name, "", "UNAVAILABLE", "unloaded") for name in sorted(self._out - listed)]
        return entries

    def _known(self) -> set[str]:
        return {st.model for st in self.models.statuses()} | {n.rpartition("-")[0] for n in self._out}

    def _names(self) -> str:
        models = sorted(self._known())
        return ", ".join(f"{m}-{g}" for m in models for g in GRAPHS) or "none"

    def _model(self, v2_name: str) -> str:
        split = split_name(v2_name)
        if split is None or split[0] not in self._known():
            raise NotFound(f"model {v2_name!r} is not in the repository; models: {self._names()}")
        return split[0]

    async def load(self, v2_name: str) -> None:
        split = split_name(v2_name)
        if split is None:
            raise NotFound(f"model {v2_name!r} is not in the repository; models: {self._names()}")
        model = split[0]
        if model not in self.models.ready_versions():
            try:
                await self.models.load(model)
            except NotFound:
                raise NotFound(f"model {v2_name!r} is not in the repository; models: "
                               f"{self._names()}") from None
        self._out.discard(v2_name)

    async def unload(self, v2_name: str) -> None:
        model = self._model(v2_name)
        self._out.add(v2_name)
        if all(f"{model}-{g}" in self._out for g in GRAPHS) and model in self.models.versions:
            await self.models.unload(model)
