"""Prometheus metrics of the VAE service: request metrics plus the latent health of the model.

Request metrics are plain prometheus-client metrics updated inline (cheap, thread-safe). Latent
statistics are never computed on the request path: `encoded` and `latents` copy the arrays into a
bounded queue (dropping and counting when it is full, never blocking) and one background thread folds
everything that arrived, every 50 ms and vectorised, into a `LatentWindow`; the families are built from
its snapshot when Prometheus scrapes (see service/latent_collector.py). Everything lives on the injected
registry.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server
from prometheus_client.core import Metric

from service.errors import ModelError
from service.latent_collector import LatentCollector, LatentState
from service.latent_stats import LatentReference, LatentWindow, finite_rows
from service.score_metrics import ScoreMetrics

__all__ = ["ServiceMetrics", "MetricsServer", "start_metrics_server", "DEFAULT_WINDOW", "load_failures"]

log = logging.getLogger(__name__)

# Half-life of the latent window in images: the effective window is ~1.44x this (see latent_stats.py).
DEFAULT_WINDOW = 1000
# Bytes of copied arrays waiting for the worker; beyond this batches are dropped and counted, never
# waited for (64 MiB holds ~65,000 images' mu + logvar at latent 128).
DEFAULT_MAX_PENDING_BYTES = 64 * 1024 * 1024
# How often the worker folds what arrived: gauges lag by at most this, and a busy service pays one
# vectorised pass per interval rather than one per request.
DEFAULT_INTERVAL_S = 0.05
# Most queued batches folded in one vectorised step (bounds the temporary concatenation).
_COALESCE = 256

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_QUEUE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_INFER_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class _LatentHub:
    """One collector per registry for the latent families of every served version: a registry refuses
    two collectors with the same metric names, so each version's samples are merged here, labelled."""

    def __init__(self) -> None:
        self._members: dict[tuple[str, str], LatentCollector] = {}
        self._lock = threading.Lock()

    def add(self, key: tuple[str, str], collector: LatentCollector) -> None:
        with self._lock:
            self._members[key] = collector

    def discard(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._members.pop(key, None)

    def describe(self) -> list[Metric]:
        return []  # names vary with what is served; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            members = sorted(self._members.items())
        merged: dict[str, Metric] = {}
        for (model, version), collector in members:
            for fam in collector.collect():
                out = merged.get(fam.name)
                if out is None:
                    out = merged[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                for smp in fam.samples:
                    out.samples.append(smp._replace(labels={"model": model, "version": version,
                                                            **smp.labels}))
        yield from merged.values()


@dataclass
class _Families:
    """The metric families of one registry, labelled by model and version first."""

    requests: Counter
    latency: Histogram
    in_flight: Gauge
    queue_wait: Histogram
    inference: Histogram
    batch: Histogram
    errors: Counter
    nonfinite: Counter
    info: Info
    dropped: Counter
    latent: _LatentHub
    load_failures: Counter


_REGISTRY_FAMILIES: weakref.WeakKeyDictionary[CollectorRegistry, _Families] = weakref.WeakKeyDictionary()
_FAMILIES_LOCK = threading.Lock()
_MV = ["model", "version"]


def _families(r: CollectorRegistry) -> _Families:
    with _FAMILIES_LOCK:
        fam = _REGISTRY_FAMILIES.get(r)
        if fam is not None:
            return fam
        fam = _Families(
            requests=Counter("vae_requests", "Finished RPCs by method and gRPC status code.",
                             [*_MV, "method", "code"], registry=r),
            latency=Histogram("vae_request_duration_seconds", "RPC latency, receipt to reply, seconds.",
                              [*_MV, "method"], buckets=_LATENCY_BUCKETS, registry=r),
            in_flight=Gauge("vae_requests_in_flight", "RPCs being handled now.", [*_MV, "method"],
                            registry=r),
            queue_wait=Histogram("vae_queue_wait_seconds",
                                 "Time a request waited in the batching queue before inference, seconds.",
                                 [*_MV, "graph"], buckets=_QUEUE_BUCKETS, registry=r),
            inference=Histogram("vae_inference_duration_seconds",
                                "onnxruntime run time of one (batched) call per graph, seconds.",
                                [*_MV, "graph"], buckets=_INFER_BUCKETS, registry=r),
            batch=Histogram("vae_batch_size", "Images per onnxruntime call per graph.", [*_MV, "graph"],
                            buckets=_BATCH_BUCKETS, registry=r),
            errors=Counter("vae_errors", "Errors by reason (invalid_argument, queue_full, deadline, ...).",
                           [*_MV, "reason"], registry=r),
            nonfinite=Counter("vae_nonfinite_values",
                              "Non-finite (NaN/Inf) values seen in request inputs or model outputs.",
                              [*_MV, "where"], registry=r),
            info=Info("vae_model", "The served models: one series per model and version.", _MV, registry=r),
            dropped=Counter("vae_latent_images_dropped",
                            "Images left out of the latent statistics: queue_full (worker behind), "
                            "nonfinite (NaN/Inf in mu or logvar), shape (wrong latent width).",
                            [*_MV, "reason"], registry=r),
            latent=_LatentHub(),
            load_failures=Counter("vae_model_load_failures", "Model versions that failed verification, "
                                  "loading or warm-up and were not served.", _MV, registry=r))
        r.register(fam.latent)
        _REGISTRY_FAMILIES[r] = fam
        return fam


def load_failures(registry: CollectorRegistry) -> Counter:
    """The registry's `vae_model_load_failures_total{model,version}` counter (one per registry)."""
    return _families(registry).load_failures


@dataclass
class _Encoded:
    mu: np.ndarray
    logvar: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.mu.nbytes + self.logvar.nbytes)


@dataclass
class _Latents:
    method: str
    z: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.z.nbytes)


class ServiceMetrics:
    """All metrics of one service instance, registered on `registry` (tests pass a fresh one)."""

    def __init__(self, registry: CollectorRegistry, *, model_name: str, model_version: str, provider: str,
                 latent_dim: int, reference: dict[str, Any] | None, latent_stats: bool = True,
                 window: int = DEFAULT_WINDOW, collapse_fraction: float = 0.5,
                 max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES, interval: float = DEFAULT_INTERVAL_S,
                 min_images: int | None = None, served_version: str | None = None) -> None:
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        if max_pending_bytes < 1 or not interval > 0:
            raise ValueError("max_pending_bytes must be >= 1 and interval > 0")
        self.latent_dim = latent_dim
        self.registry = registry
        # Every family carries the model and version that served: several versions share one registry
        # (families are created once per registry, in _Families), each instance binds its own pair.
        self.model = model_name
        self.version = served_version if served_version is not None else model_version
        self._key = (self.model, self.version)
        fam = _families(registry)
        self._fam = fam
        self._requests, self._latency, self._in_flight = fam.requests, fam.latency, fam.in_flight
        self._queue_wait, self._inference, self._batch = fam.queue_wait, fam.inference, fam.batch
        self._errors, self._nonfinite, self._dropped = fam.errors, fam.nonfinite, fam.dropped
        self._used: set[tuple[Any, tuple[str, ...]]] = set()
        if model_name:  # the server's catch-all for calls that reach no model has no info series
            fam.info.labels(*self._key).info({"name": model_name, "manifest_version": model_version,
                                              "provider": provider, "latent_dim": str(latent_dim)})
            self._used.add((fam.info, ()))
        for reason in ("queue_full", "nonfinite", "shape"):
            self._child(self._dropped, reason)
        # Labelled children cached by label values: `labels()` costs a lock, a tuple and a dict look-up
        # per call, several per request on the serving path. The label sets are small and fixed
        # (methods, codes, graphs); prometheus-client returns the same child for the same labels, so
        # a racing first fill between threads is harmless.
        self._children: dict[tuple[str, ...], tuple[Any, ...]] = {}
        self.scores = ScoreMetrics(registry, model_name=self.model, model_version=self.version,
                                   reference=reference)

        self.latent_stats = latent_stats
        self._closed = False
        self._worker: threading.Thread | None = None
        self._state: LatentState | None = None
        if not latent_stats:
            return
        try:
            ref = LatentReference.from_manifest(reference, latent_dim) if reference is not None else None
        except ValueError as exc:
            raise ModelError(f"manifest.json: {exc}") from None
        window_obj = LatentWindow(latent_dim, half_life=float(window), reference=ref,
                                  collapse_fraction=collapse_fraction,
                                  min_images=float(min_images) if min_images is not None else None)
        self._state = LatentState(window_obj)
        # A deque, not a queue.Queue: append/popleft are atomic under the GIL and wake nobody, so a
        # request pays a copy and an append (~microseconds); the worker polls every `interval`.
        self._pending: deque[_Encoded | _Latents | threading.Event] = deque()
        self._pending_bytes = 0
        self._max_pending_bytes = max_pending_bytes
        self._bytes_lock = threading.Lock()
        self._interval = interval
        self._stop = threading.Event()
        self._drop_full = self._child(self._dropped, "queue_full")
        fam.latent.add(self._key, LatentCollector(self._state, self._pending.__len__))
        self._worker = threading.Thread(target=self._run, name="vae-latent-stats", daemon=True)
        self._worker.start()

    # ---- request metrics (inline; prometheus-client is thread-safe) ----
    def _child(self, family: Any, *values: str) -> Any:
        """The family's child for this model/version and `values`, remembered for removal at close."""
        self._used.add((family, values))
        return family.labels(*self._key, *values)

    def _method(self, method: str) -> tuple[Any, ...]:
        key = ("method", method)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = (self._child(self._in_flight, method),
                                       self._child(self._latency, method))
        return c

    def _graph(self, graph: str) -> tuple[Any, ...]:
        key = ("graph", graph)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = (self._child(self._queue_wait, graph),
                                       self._child(self._inference, graph),
                                       self._child(self._batch, graph))
        return c

    def request_started(self, method: str) -> None:
        self._method(method)[0].inc()

    def request_finished(self, method: str, code: str, seconds: float) -> None:
        in_flight, latency = self._method(method)
        in_flight.dec()
        key = ("requests", method, code)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = (self._child(self._requests, method, code),)
        c[0].inc()
        latency.observe(seconds)

    def queue_wait(self, graph: str, seconds: float) -> None:
        self._graph(graph)[0].observe(seconds)

    def inference(self, graph: str, seconds: float, batch_size: int) -> None:
        _, inference, batch = self._graph(graph)
        inference.observe(seconds)
        batch.observe(batch_size)

    def error(self, reason: str) -> None:
        self._child(self._errors, reason).inc()

    def nonfinite(self, where: str, count: int) -> None:
        if count > 0:
            self._child(self._nonfinite, where).inc(count)

    # ---- latent statistics (enqueue only; the worker does the arithmetic) ----
    def encoded(self, mu: np.ndarray, logvar: np.ndarray) -> None:
        """Queue a batch of posterior parameters [N, D] from Encode/Reconstruct. Never blocks."""
        if self._state is None or self._closed:
            return
        mu_a, lv_a = np.asarray(mu), np.asarray(logvar)
        n = mu_a.shape[0] if mu_a.ndim else 1
        if mu_a.shape != lv_a.shape or mu_a.ndim != 2 or mu_a.shape[1] != self.latent_dim:
            self._child(self._dropped, "shape").inc(n)
            return
        # A copy: the caller may reuse its buffers once the reply is sent.
        self._enqueue(_Encoded(np.array(mu_a, dtype=np.float32), np.array(lv_a, dtype=np.float32)), n)

    def latents(self, method: str, z: np.ndarray) -> None:
        """Queue the latent codes [N, D] that Sample/Decode fed to the decoder. Never blocks."""
        if self._state is None or self._closed:
            return
        z_a = np.asarray(z)
        n = z_a.shape[0] if z_a.ndim else 1
        if z_a.ndim != 2 or z_a.shape[1] != self.latent_dim:
            self._child(self._dropped, "shape").inc(n)
            return
        self._enqueue(_Latents(method, np.array(z_a, dtype=np.float32)), n)

    def _enqueue(self, item: _Encoded | _Latents, n: int) -> None:
        size = item.nbytes
        with self._bytes_lock:
            if self._pending_bytes + size > self._max_pending_bytes:
                full = True
            else:
                full = False
                self._pending_bytes += size
        if full:
            self._drop_full.inc(n)
            return
        self._pending.append(item)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is folded in (tests, shutdown); False on timeout."""
        if self._state is None or self._worker is None:
            return True
        if not self._worker.is_alive():
            return not self._pending
        marker = threading.Event()
        self._pending.append(marker)
        return marker.wait(timeout)

    def scored(self, elbo: np.ndarray) -> None:
        """Score's per-image ELBOs (histogram and fraction below the reference's 1st percentile)."""
        self.scores.observe(elbo)

    def close(self, timeout: float = 10.0) -> None:
        """Fold in what is queued, then stop the worker. Idempotent; later calls to encoded() are no-ops."""
        if self._closed:
            return
        self._closed = True
        if self._worker is None:
            return
        self._stop.set()
        self._worker.join(timeout)
        if self._worker.is_alive():
            log.warning("latent statistics worker did not stop within %.1fs", timeout)

    def remove(self) -> None:
        """Close, and drop every series of this model/version from the registry (an unloaded version
        stops being exported instead of freezing at its last values)."""
        self.close()
        self.scores.remove()
        self._fam.latent.discard(self._key)
        for family, values in self._used:
            try:
                family.remove(*self._key, *values)
            except KeyError:
                pass
        self._used.clear()
        self._children.clear()

    # ---- the background worker ----
    def _run(self) -> None:
        while True:
            stopping = self._stop.wait(self._interval)
            # Everything queued since the last pass, folded in slices of a bounded size: one vectorised
            # pass per slice instead of one per request.
            while self._pending:
                items: list[_Encoded | _Latents] = []
                markers: list[threading.Event] = []
                while self._pending and len(items) < _COALESCE:
                    it = self._pending.popleft()
                    if isinstance(it, threading.Event):
                        markers.append(it)
                        break          # a flush marker: fold what precedes it, then release it
                    items.append(it)
                try:
                    self._fold(items)
                except Exception:  # never let a bad batch kill the worker; the next one may be fine
                    log.exception("latent statistics worker failed on a batch; continuing")
                finally:
                    freed = sum(it.nbytes for it in items)
                    with self._bytes_lock:
                        self._pending_bytes -= freed
                    for m in markers:
                        m.set()
            if stopping:
                return

    def _fold(self, batch: list[_Encoded | _Latents]) -> None:
        assert self._state is not None
        enc = [it for it in batch if isinstance(it, _Encoded)]
        if enc:
            mu = np.concatenate([e.mu for e in enc]) if len(enc) > 1 else enc[0].mu
            lv = np.concatenate([e.logvar for e in enc]) if len(enc) > 1 else enc[0].logvar
            ok = finite_rows(mu, lv)
            bad = int(mu.shape[0] - ok.sum())
            if bad:
                mu, lv = mu[ok], lv[ok]
            self._state.fold_encoded(mu, lv)
            if bad:
                self._child(self._dropped, "nonfinite").inc(bad)
        by_method: dict[str, list[np.ndarray]] = {}
        for it in batch:
            if isinstance(it, _Latents):
                by_method.setdefault(it.method, []).append(it.z)
        for method, zs in by_method.items():
            z = np.concatenate(zs) if len(zs) > 1 else zs[0]
            ok = finite_rows(z)
            self._state.fold_latents(method, z[ok])
            if not ok.all():
                self._child(self._dropped, "nonfinite").inc(int(z.shape[0] - ok.sum()))


class MetricsServer:
    """The /metrics HTTP server started by `start_metrics_server`; `close()` stops it."""

    def __init__(self, httpd: object, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        self.port: int = int(httpd.server_port)  # type: ignore[attr-defined]

    def close(self) -> None:
        self._httpd.shutdown()  # type: ignore[attr-defined]
        self._httpd.server_close()  # type: ignore[attr-defined]
        self._thread.join(5.0)

    # The same as close(), under the name http.server users expect.
    def shutdown(self) -> None:
        self.close()


def start_metrics_server(host: str, port: int, registry: CollectorRegistry) -> tuple[MetricsServer, int]:
    """Serve `registry` at http://host:port/metrics (any path works) on a daemon thread; port 0 picks one.

    Raises OSError when the address cannot be bound (the caller reports it and exits).
    """
    httpd, thread = start_http_server(port, addr=host, registry=registry)
    server = MetricsServer(httpd, thread)
    return server, server.port
