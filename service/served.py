"""One served version of one model: its checked files, sessions, batchers, validator, metrics and state.

Built in two steps so that a reload never blocks the event loop: `open()` (in a worker thread) checks
the folder against its manifest (format, sizes, sha256) and creates the onnxruntime sessions, checking
their inputs and outputs against the manifest's shapes; `warm_up()` runs both graphs at the batch sizes
the batcher forms and builds the runners. Only then is the version `ready`. `enter()` / `leave()` count
the requests routed here; `release()` waits for that count to reach 0 (in-flight and queued requests
finish on this version), closes the runners and drops the sessions, so their memory returns.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from protos.vae.v1 import vae_pb2
from service.batching import Batcher, DirectRunner, fixed_blocks
from service.likelihoods import LogLikelihood, build_log_likelihood
from service.manifest import Manifest, load_manifest
from service.metrics import ServiceMetrics
from service.repository import VersionSource
from service.rpc_checks import RpcChecks
from service.runtime import Model, load_model
from service.score_metrics import reference_quantiles
from service.settings import Settings
from service.validation import Limits, Validator

__all__ = ["ServedVersion", "LOADING", "READY", "DRAINING", "FAILED", "UNLOADED", "SERVER_VERSION",
           "warm_sizes"]

log = logging.getLogger("vae.service")

LOADING, READY, DRAINING, FAILED, UNLOADED = "loading", "ready", "draining", "failed", "unloaded"
SERVER_VERSION = "0.1.0"
# Sample rows per fixed block when a provider's rows depend on their batch (see batching.fixed_blocks).
DEFAULT_SAMPLE_BLOCK = 64


def warm_sizes(max_batch: int, gpu: bool) -> list[int]:
    """GPU: 1, 2, 4, ... up to max_batch, the shapes the batcher forms (cuDNN tunes per shape). CPU: the
    kernels do not depend on the batch size, so 1 and max_batch are enough (start-up time matters)."""
    if not gpu:
        return sorted({1, max_batch})
    sizes, n = [], 1
    while n < max_batch:
        sizes.append(n)
        n *= 2
    return [*sizes, max_batch]


def _trim_heap() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise, and RSS would not show the
    release of an unloaded version's sessions). A no-op where there is no malloc_trim."""
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _Gate:
    """Submits to the sampler chosen at warm-up (plain decoder, or fixed blocks)."""

    def __init__(self, target: Any) -> None:
        self.target = target

    async def submit(self, x: Any, deadline: float | None = None) -> Any:
        return await self.target.submit(x, deadline)


class ServedVersion:
    """One version of one model, from its folder to its release."""

    def __init__(self, source: VersionSource, settings: Settings, registry: CollectorRegistry,
                 lone: Callable[[], bool] | None = None) -> None:
        self.source = source
        # Whether the call being served is the only one in flight on the server (batching.Batcher's
        # inline rule); None: never inline.
        self.lone = lone
        self.name = source.name
        self.version = str(source.version)
        self.settings = settings
        self.registry = registry
        self.state = LOADING
        self.reason = ""
        self.manifest: Manifest | None = None
        self.model: Model | None = None
        self._metrics: ServiceMetrics | None = None
        self.encoder: Any = None
        self.decoder: Any = None
        self.sampler = _Gate(None)
        self._sample_blocks: Batcher | None = None
        self._validator: Validator | None = None
        # Score / Interpolate / Traverse / Edit (service/latent_rpcs.py): the decoder_params runner and
        # the likelihood (both None when Score cannot run, `likelihood_problem` says why), the training
        # reference's per-dimension KL (Traverse's ranking) and the request checks.
        self.params: Any = None
        self.likelihood: LogLikelihood | None = None
        self.likelihood_problem = "the model is not open"
        self.kl_per_dim: list[float] | None = None
        self._checks: RpcChecks | None = None
        self.info = vae_pb2.ModelInfo()
        self.provider = ""
        self.in_flight = 0
        self._idle: asyncio.Event | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.load_seconds = 0.0

    @property
    def metrics(self) -> ServiceMetrics:
        assert self._metrics is not None, "the version is not open"
        return self._metrics

    @property
    def validator(self) -> Validator:
        assert self._validator is not None, "the version is not open"
        return self._validator

    @property
    def checks(self) -> RpcChecks:
        assert self._checks is not None, "the version is not open"
        return self._checks

    # ---- loading ----
    def open(self) -> None:
        """Check the folder and create the sessions (blocking: call from a worker thread or at
        start-up). Raises ModelError / SettingsError; the version then never serves."""
        t0 = time.perf_counter()
        s = self.settings
        manifest = load_manifest(self.source.path, fp16=s.fp16)
        self.manifest = manifest
        self.model = load_model(manifest, s)
        self.provider = self.model.provider
        self._metrics = ServiceMetrics(
            self.registry, model_name=self.name, model_version=manifest.model_version,
            served_version=self.version, provider=self.provider, latent_dim=manifest.latent_dim,
            reference=manifest.reference, latent_stats=s.latent_metrics)
        # Batching off: each request is its own run, in a pool as large as both graphs' batchers together.
        self._executor = ThreadPoolExecutor(max_workers=2 * s.inference_workers,
                                            thread_name_prefix=f"vae-{self.name}-{self.version}")
        self.encoder = self._runner("encoder", self.model.encoder.run)
        self.decoder = self._runner("decoder", self.model.decoder.run)
        self.sampler.target = self.decoder
        limits = Limits(s.max_batch_per_request, s.max_sample_n, s.max_stream_n, s.default_chunk_size,
                        s.max_send_message_bytes)
        self._validator = Validator(manifest.input_shape, manifest.latent_dim, limits)
        self._checks = RpcChecks(self._validator)
        self._score_parts(manifest)
        self.info = self._model_info(manifest)
        self.load_seconds = time.perf_counter() - t0

    def _score_parts(self, manifest: Manifest) -> None:
        """What Score needs (params graph and likelihood) and Traverse's ranking, or why Score cannot run."""
        assert self.model is not None
        self.likelihood_problem = ("the model was exported without a decoder_params graph; re-export it "
                                   "with `vae export`")
        if self.model.params is not None:
            try:
                self.likelihood = build_log_likelihood(manifest.likelihood, manifest.likelihood_params)
            except ValueError as exc:
                self.likelihood_problem = str(exc)
            else:
                self.params = self._runner("decoder_params", self.model.params.run)
        kl = (manifest.reference or {}).get("kl_per_dim")
        ok_kl = isinstance(kl, list) and len(kl) == manifest.latent_dim and all(
            isinstance(x, int | float) for x in kl)
        self.kl_per_dim = kl if ok_kl else None

    @staticmethod
    def _elbo_reference(m: Manifest) -> vae_pb2.ElboReference | None:
        q = reference_quantiles(m.reference)
        if q is None:
            return None
        mean = float((m.reference or {}).get("elbo_per_sample", {}).get("mean", q["p50"]))
        return vae_pb2.ElboReference(mean=mean, **q)

    def _checked(self, run: Any) -> Any:
        """The graph's run plus a count of non-finite outputs, per batch, in the inference thread (off
        the event loop); one reduction is enough when all is finite, the common case."""
        assert self._metrics is not None
        nonfinite = self._metrics.nonfinite

        def run_checked(x: np.ndarray) -> list[np.ndarray]:
            outs: list[np.ndarray] = run(x)
            for o in outs:
                if not np.isfinite(np.add.reduce(o, axis=None)):
                    nonfinite("output", int(o.size - np.count_nonzero(np.isfinite(o))))
            return outs

        return run_checked

    def _inline_rows(self) -> int:
        """--inline-max-rows on CPU; 0 on a GPU, where a run can stall on a busy or hung device and a
        stalled run on the event loop would stall every call and health check with it."""
        assert self.model is not None
        return 0 if self.model.decoder.on_cuda else self.settings.inline_max_rows

    def _runner(self, graph: str, run: Any) -> Batcher | DirectRunner:
        assert self._metrics is not None and self._executor is not None
        metrics = self._metrics
        run = self._checked(run)

        def on_wait(seconds: float) -> None:
            metrics.queue_wait(graph, seconds)

        def on_run(seconds: float, rows: int) -> None:
            metrics.inference(graph, seconds, rows)

        s = self.settings
        if s.dynamic_batching:
            return Batcher(graph, run, max_batch=s.max_batch_size, max_queue=s.max_queue,
                           max_delay_s=s.max_queue_delay_ms / 1000.0, workers=s.inference_workers,
                           on_wait=on_wait, on_run=on_run, parallel_rows=s.parallel_rows(),
                           inline_rows=self._inline_rows(), lone=self.lone)
        return DirectRunner(graph, run, self._executor, max_queue=s.max_queue, on_wait=on_wait, on_run=on_run)

    def _model_info(self, m: Manifest) -> vae_pb2.ModelInfo:
        s = self.settings
        return vae_pb2.ModelInfo(
            model_name=m.model_name, model_version=m.model_version, input_shape=list(m.input_shape),
            latent_dim=m.latent_dim, likelihood=m.likelihood, execution_provider=self.provider,
            limits=vae_pb2.Limits(
                max_receive_message_bytes=s.max_receive_message_bytes,
                max_send_message_bytes=s.max_send_message_bytes,
                max_batch_per_request=s.max_batch_per_request, max_sample_n=s.max_sample_n,
                max_stream_n=s.max_stream_n, max_batch_size=s.max_batch_size if s.dynamic_batching else 0,
                default_chunk_size=s.default_chunk_size),
            manifest_sha256=m.sha256, dynamic_batching=s.dynamic_batching, server_version=SERVER_VERSION,
            graph_dtype=vae_pb2.DATA_TYPE_FLOAT16 if s.fp16 else vae_pb2.DATA_TYPE_FLOAT32,
            elbo_reference=self._elbo_reference(m), model=self.name, version=self.version)

    async def warm_up(self) -> None:
        """Run both graphs before any traffic (in this version's pool), then become ready."""
        assert self.model is not None and self._executor is not None
        t0 = time.perf_counter()
        s = self.settings
        sizes = warm_sizes(s.max_batch_size, self.model.decoder.on_cuda)
        await asyncio.get_running_loop().run_in_executor(self._executor, self.model.warm_up, sizes)
        block = s.sample_block or (0 if self.model.rows_independent else DEFAULT_SAMPLE_BLOCK)
        if block:
            # Rows depend on their batch here (or blocks were asked for): Sample decodes in fixed blocks.
            metrics = self._metrics
            assert metrics is not None
            blocks = self._checked(fixed_blocks(self.model.decoder.run, block))
            self._sample_blocks = Batcher("decoder", blocks,
                                          max_batch=max(block, s.max_batch_size // block * block),
                                          max_queue=s.max_queue, workers=s.inference_workers,
                                          parallel_rows=s.parallel_rows(), inline_rows=self._inline_rows(),
                                          lone=self.lone,
                                          on_wait=lambda sec: metrics.queue_wait("decoder", sec),
                                          on_run=lambda sec, n: metrics.inference("decoder", sec, n))
            self.sampler.target = self._sample_blocks
        log.info("%s version %s: warm-up done in %.3f s (batch sizes %s); decoded rows independent of "
                 "batch: %s%s", self.name, self.version, time.perf_counter() - t0, sizes,
                 self.model.rows_independent, f"; Sample decodes in fixed blocks of {block}" if block else "")
        self.state = READY

    # ---- traffic accounting ----
    def enter(self) -> None:
        """A request was routed here (call with no await between the routing and this)."""
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()

    # ---- release ----
    async def release(self, timeout: float) -> bool:
        """Drain (the caller has stopped routing here), then close and drop everything. Returns whether
        the drain finished within `timeout` (the runners are closed either way)."""
        if self.state in (READY, LOADING):
            self.state = DRAINING
        drained = True
        if self.in_flight:
            self._idle = asyncio.Event()
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except TimeoutError:
                drained = False
                log.warning("%s version %s: %d requests still in flight after %.1f s; closing", self.name,
                            self.version, self.in_flight, timeout)
        await self.close()
        if self.state != FAILED:
            self.state = UNLOADED
        return drained

    async def close(self) -> None:
        for runner in (self.encoder, self.decoder, self.params, self._sample_blocks):
            if runner is not None:
                await runner.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        if self._metrics is not None:
            self._metrics.remove()
        # Drop every reference to the sessions so onnxruntime frees them, then return the heap.
        self.encoder = self.decoder = self.params = self._sample_blocks = self.model = self._executor = None
        self.likelihood = None
        self.sampler.target = None
        gc.collect()
        _trim_heap()
