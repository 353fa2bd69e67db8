"""The live models: routing by name and version, atomic switch to a new version, draining the old one.

Rules (the reload story of README.md):
- A new version is opened and warmed up exactly as at start-up (sha256 and shapes against its manifest,
  warm-up runs) before it is routed to; a version that fails never serves, its failure is logged,
  counted (`vae_model_load_failures_total`) and shown by ListModels, and the versions before it keep
  serving. An unchanged failed folder is not retried on every poll; a changed one is.
- The switch is one assignment on the event loop: `resolve` sees either the old set of ready versions
  or the new one. The new version is ready before the old one stops being routed to (load before
  unload), so a request always finds a version.
- An old version is first taken out of routing (state draining), then its in-flight and queued
  requests finish on it, then its sessions are released.
- `resolve` is synchronous and the caller counts the request on the version (`enter`) before its
  next await, so a drain that starts later always sees it.

This module has no grpc import: errors are service.errors classes, mapped to status in one place.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from service.errors import InvalidArgument, ModelError, NotFound, ServiceError, SettingsError
from service.manifest import load_manifest
from service.metrics import load_failures
from service.repository import ModelEntry, VersionPolicy, scan_repository, single_model
from service.served import DRAINING, FAILED, LOADING, READY, ServedVersion
from service.settings import Settings

__all__ = ["ModelRegistry", "VersionStatus"]

log = logging.getLogger("vae.service")


@dataclass(frozen=True)
class VersionStatus:
    model: str
    version: str
    state: str
    reason: str
    manifest_version: str
    latest: bool


def _fingerprint(path: Path) -> tuple[int, int]:
    """What makes a failed folder worth retrying: its manifest's size and modification time."""
    try:
        st = (path / "manifest.json").stat()
        return (st.st_size, st.st_mtime_ns)
    except OSError:
        return (-1, -1)


class ModelRegistry:
    """Every model and version the server knows, and the ready ones requests are routed to."""

    def __init__(self, settings: Settings, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self.repository = Path(settings.model_repository) if settings.model_repository else None
        self.default_policy = VersionPolicy.parse(settings.version_policy)
        # name -> version number -> the version (loading, ready, draining or failed).
        self.versions: dict[str, dict[int, ServedVersion]] = {}
        # name -> ready versions, newest last: replaced whole on every switch (atomic for readers).
        self._ready: dict[str, tuple[ServedVersion, ...]] = {}
        self._failed: dict[tuple[str, int], tuple[tuple[int, int], ServedVersion]] = {}
        self._unloaded: set[str] = set()            # models UnloadModel took out, until LoadModel
        self._unloaded_versions: set[tuple[str, int]] = set()
        self._extra: set[tuple[str, int]] = set()  # versions LoadModel asked for beyond the policy
        self._lock = asyncio.Lock()
        self._releases: set[asyncio.Task[bool]] = set()
        self.failures = load_failures(registry)
        self.default_model = settings.default_model
        self._entries: dict[str, ModelEntry] = {}
        self._broken: dict[str, str] = {}
        # Set by the server: whether the call being served is the only one in flight (its Admission);
        # the batchers run such a call's small request on the event loop (service/batching.py).
        self.lone: Callable[[], bool] | None = None

    def _lone(self) -> bool:
        return self.lone is not None and self.lone()

    # ---- what the repository holds ----
    def _scan(self) -> dict[str, ModelEntry]:
        if self.repository is not None:
            entries, broken = scan_repository(self.repository, self.default_policy)
            self._broken = broken
            return entries
        manifest = load_manifest(self.settings.model_dir, fp16=self.settings.fp16)
        return single_model(self.settings.model_dir, manifest.model_name)

    def _choose(self, entry: ModelEntry, excluded: set[int]) -> set[int]:
        """The versions of `entry` to serve: its policy applied to the versions that did not fail
        (a failed newest version leaves the one before it serving), plus LoadModel's extra versions,
        minus the versions UnloadModel took out."""
        name = entry.name
        usable = [v for v in entry.available if v not in excluded]
        chosen = set(entry.policy.select(usable))
        chosen |= {v for (n, v) in self._extra if n == name and v in entry.sources and v not in excluded}
        return chosen - {v for (n, v) in self._unloaded_versions if n == name}

    def _known_failed(self, entry: ModelEntry) -> set[int]:
        """Versions that failed before and whose folder has not changed since."""
        return {num for num in entry.available
                if (f := self._failed.get((entry.name, num))) is not None
                and f[0] == _fingerprint(entry.sources[num].path)}

    # ---- routing (synchronous: no await between a lookup and the caller's enter()) ----
    def resolve(self, model: str = "", version: str = "") -> ServedVersion:
        """The ready version a request goes to; NotFound names what is served."""
        name = model or self.default_model or next(iter(sorted(self._ready)), "")
        ready = self._ready.get(name, ())
        if not ready:
            raise NotFound(f"model {name!r} is not served; served: {self.served_summary()}")
        if not version:
            return ready[-1]
        for v in ready:
            if v.version == version:
                return v
        raise NotFound(f"model {name!r} version {version!r} is not served; served: {self.served_summary()}")

    lookup = resolve  # the name the Open Inference Protocol servicer uses

    def describe(self, model: str = "", version: str = "") -> ServedVersion:
        """Like resolve, but also finds a version still warming up (GetModelInfo answers then too)."""
        try:
            return self.resolve(model, version)
        except NotFound:
            for name in sorted(self.versions):
                if model and name != model:
                    continue
                for num in sorted(self.versions[name], reverse=True):
                    v = self.versions[name][num]
                    if v.state == LOADING and v.manifest is not None and version in ("", v.version):
                        return v
            raise

    def served_summary(self) -> str:
        if not self._ready:
            return "nothing (no model is ready)"
        return "; ".join(f"{n} versions {', '.join(v.version for v in vs)}"
                         for n, vs in sorted(self._ready.items()))

    def ready_versions(self) -> dict[str, tuple[ServedVersion, ...]]:
        return dict(self._ready)

    def statuses(self, model: str = "") -> list[VersionStatus]:
        out = []
        for name in sorted(set(self.versions) | set(self._broken)):
            if model and name != model:
                continue
            if name in self._broken:
                out.append(VersionStatus(name, "", FAILED, self._broken[name], "", False))
            latest = self._ready.get(name, ())[-1:] or ()
            for num in sorted(self.versions.get(name, {})):
                v = self.versions[name][num]
                mv = v.manifest.model_version if v.manifest is not None else ""
                out.append(VersionStatus(name, v.version, v.state, v.reason, mv, v in latest))
        return out

    def _publish(self, name: str) -> None:
        ready = tuple(v for _, v in sorted(self.versions.get(name, {}).items()) if v.state == READY)
        if ready:
            self._ready = {**self._ready, name: ready}
        else:
            self._ready = {n: vs for n, vs in self._ready.items() if n != name}

    # ---- loading and unloading ----
    def _fail(self, v: ServedVersion, exc: BaseException) -> None:
        v.state = FAILED
        v.reason = str(exc) if isinstance(exc, ServiceError) else f"{type(exc).__name__}: {exc}"
        self.failures.labels(v.name, v.version).inc()
        self._failed[(v.name, int(v.version))] = (_fingerprint(v.source.path), v)
        log.error("%s version %s failed and is not served: %s", v.name, v.version, v.reason)

    def open_initial(self) -> None:
        """Start-up, before the port is served: scan and open every wanted version (blocking). With
        --model-dir a failure is fatal (ModelError); with a repository, failures are reported and the
        server starts when at least one version opened."""
        entries = self._scan()
        self._entries = entries
        for name, entry in sorted(entries.items()):
            if name in self._unloaded:
                continue
            excluded: set[int] = set()
            while True:
                chosen = self._choose(entry, excluded)
                for num in sorted(chosen - excluded):
                    if num in self.versions.get(name, {}):
                        continue
                    v = ServedVersion(entry.sources[num], self.settings, self.registry, self._lone)
                    self.versions.setdefault(name, {})[num] = v
                    try:
                        v.open()
                    except (ServiceError, OSError) as exc:
                        if self.repository is None:
                            raise
                        self._fail(v, exc)
                        v.state = FAILED
                failed = {n for n, v in self.versions.get(name, {}).items() if v.state == FAILED}
                if failed <= excluded:
                    break
                excluded |= failed
        if not any(v.state == LOADING for vs in self.versions.values() for v in vs.values()):
            reasons = "; ".join(f"{s.model} {s.version}: {s.reason}" for s in self.statuses() if s.reason)
            raise ModelError(f"no servable model in {self.repository}" + (f" ({reasons})" if reasons else ""))
        if self.default_model and self.default_model not in self.versions:
            raise SettingsError(f"--default-model {self.default_model!r} is not in the repository "
                                f"(models: {', '.join(sorted(self.versions))})")

    async def warm_initial(self) -> None:
        """Start-up: warm every opened version, then route to them."""
        for name, vs in sorted(self.versions.items()):
            for v in vs.values():
                if v.state == LOADING:
                    try:
                        await v.warm_up()
                    except (ServiceError, OSError) as exc:
                        if self.repository is None:
                            raise
                        self._fail(v, exc)
                        await v.close()
            self._publish(name)

    async def _load(self, v: ServedVersion) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, v.open)
            await v.warm_up()
        except asyncio.CancelledError:
            await v.close()
            raise
        except Exception as exc:
            self._fail(v, exc)
            await v.close()

    def _drain(self, v: ServedVersion) -> None:
        """Stop routing to `v` now; release it once its requests are done (in the background)."""
        v.state = DRAINING
        self._publish(v.name)
        log.info("%s version %s: draining %d in-flight requests, then releasing", v.name, v.version,
                 v.in_flight)
        task = asyncio.get_running_loop().create_task(self._release(v))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(self, v: ServedVersion) -> bool:
        drained = await v.release(self.settings.grace_seconds)
        if self.versions.get(v.name, {}).get(int(v.version)) is v:
            del self.versions[v.name][int(v.version)]
            if not self.versions[v.name]:
                del self.versions[v.name]
        log.info("%s version %s released", v.name, v.version)
        return drained

    async def sync(self) -> list[VersionStatus]:
        """Rescan and converge: load what is wanted and not served, then drain what is no longer
        wanted. Serialised: one reload at a time."""
        async with self._lock:
            try:
                entries = self._scan()
            except (ServiceError, OSError) as exc:
                log.error("repository scan failed; serving what is loaded: %s", exc)
                return self.statuses()
            self._entries = entries
            wanted: dict[str, set[int]] = {}
            for name, entry in sorted(entries.items()):
                if name in self._unloaded:
                    continue
                excluded = self._known_failed(entry)
                while True:
                    chosen = self._choose(entry, excluded)
                    for num in sorted(chosen):
                        await self._ensure(entry, num)
                    failed = {n for n in chosen if self.versions[name][n].state == FAILED}
                    if not failed:
                        break
                    excluded |= failed  # the newest failed: the policy falls back to older ones
                wanted[name] = chosen
                for num in excluded:  # failed versions stay listed (ListModels shows the reason)
                    if num not in self.versions.get(name, {}):
                        self.versions.setdefault(name, {})[num] = self._failed[(name, num)][1]
                self._publish(name)
            for name in list(self.versions):
                for num, v in list(self.versions[name].items()):
                    keep = wanted.get(name, set())
                    if num not in keep and v.state in (READY, LOADING):
                        self._drain(v)
                    elif v.state == FAILED and (name not in entries or num not in entries[name].sources
                                                or name in self._unloaded):
                        del self.versions[name][num]
                if name in self.versions and not self.versions[name]:
                    del self.versions[name]
            return self.statuses()

    async def _ensure(self, entry: ModelEntry, num: int) -> None:
        current = self.versions.get(entry.name, {}).get(num)
        if current is not None and current.state in (READY, LOADING):
            return
        if current is not None and current.state == DRAINING:
            return  # being released; a later sync loads it again
        source = entry.sources[num]
        failed = self._failed.get((entry.name, num))
        if failed is not None and failed[0] == _fingerprint(source.path):
            self.versions.setdefault(entry.name, {})[num] = failed[1]
            return  # unchanged since it failed: do not retry on every poll
        v = ServedVersion(source, self.settings, self.registry, self._lone)
        self.versions.setdefault(entry.name, {})[num] = v
        log.info("%s version %s: verifying and warming up %s", entry.name, num, source.path)
        await self._load(v)
        if v.state == READY:
            self._failed.pop((entry.name, num), None)
            log.info("%s version %s: ready (loaded in %.3f s)", entry.name, num, v.load_seconds)

    async def load(self, model: str, version: str = "") -> list[VersionStatus]:
        """LoadModel: serve `model` again by its policy (and `version` besides, when given)."""
        entries = self._scan() if self.repository is not None else self._entries
        if model not in entries:
            raise NotFound(f"model {model!r} is not in the repository; there: "
                           f"{', '.join(sorted(entries)) or 'nothing'}")
        self._unloaded.discard(model)
        if version:
            num = _version_number(version)
            if num not in entries[model].sources:
                raise NotFound(f"model {model!r} has no version {version!r} in the repository; there: "
                               f"{', '.join(map(str, entries[model].available)) or 'none'}")
            self._unloaded_versions.discard((model, num))
            self._extra.add((model, num))
            self._failed.pop((model, num), None)  # an explicit load retries a failed version
        else:
            self._unloaded_versions = {(n, v) for (n, v) in self._unloaded_versions if n != model}
            self._failed = {k: f for k, f in self._failed.items() if k[0] != model}
        await self.sync()
        return self.statuses(model)

    async def unload(self, model: str, version: str = "") -> list[VersionStatus]:
        """UnloadModel: stop routing to `model` (or one version); drain and release in the background."""
        if model not in self.versions:
            raise NotFound(f"model {model!r} is not loaded; loaded: "
                           f"{', '.join(sorted(self.versions)) or 'none'}")
        if version:
            num = _version_number(version)
            if num not in self.versions[model]:
                raise NotFound(f"model {model!r} version {version!r} is not loaded; loaded: "
                               f"{', '.join(map(str, sorted(self.versions[model])))}")
            self._unloaded_versions.add((model, num))
            self._extra.discard((model, num))
        else:
            self._unloaded.add(model)
            self._extra = {(n, v) for (n, v) in self._extra if n != model}
        await self.sync()
        return self.statuses(model)

    async def wait_released(self) -> None:
        """Wait for every background release (tests; shutdown)."""
        while self._releases:
            await asyncio.gather(*list(self._releases), return_exceptions=True)

    async def close(self) -> None:
        """Shutdown: release every version (the server has already drained the requests)."""
        await self.wait_released()
        for vs in list(self.versions.values()):
            for v in list(vs.values()):
                await v.close()
        self.versions.clear()
        self._ready = {}


def _version_number(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise InvalidArgument(f"version {text!r}: repository versions are positive integers")
    return int(text)
