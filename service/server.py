"""Assemble the gRPC server: model, batchers, servicer, health, reflection, auth, TLS, metrics, drain.

Lifecycle: `create_server` checks the model folder and loads the sessions (fails fast, before any
port is served); `start()` serves health as NOT_SERVING, warms both graphs up, then flips to SERVING;
`stop()` flips to NOT_SERVING, stops accepting, lets in-flight RPCs finish within the grace, then
closes the batchers and the metrics. Call these from a running asyncio event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from protos.vae.v1 import vae_pb2, vae_pb2_grpc
from service.auth import TokenAuthInterceptor
from service.batching import Batcher, DirectRunner, fixed_blocks
from service.decode_guard import add_guarded_servicer
from service.errors import SettingsError
from service.kserve import SERVICE_NAME as INFERENCE_SERVICE_NAME
from service.kserve import InferenceServicer, add_inference_service
from service.kserve_models import ServedModel, SingleModel
from service.manifest import load_manifest
from service.metrics import ServiceMetrics, start_metrics_server
from service.runtime import Model, load_model
from service.servicer import VaeServicer
from service.settings import Settings
from service.tls import server_credentials
from service.validation import Limits, Validator

__all__ = ["create_server", "VaeServer", "SERVICE_NAME", "SERVER_VERSION"]

log = logging.getLogger("vae.service")

SERVICE_NAME = vae_pb2.DESCRIPTOR.services_by_name["VaeService"].full_name  # "vae.v1.VaeService"
SERVER_VERSION = "0.1.0"
# Sample rows per fixed block when a provider's rows depend on their batch (see batching.fixed_blocks).
DEFAULT_SAMPLE_BLOCK = 64
# The v2 version of a lone model folder: a repository of one, version 1 (Triton's integer versions).
V2_VERSION = "1"
# On stop, calls are still admitted for this long (at most a quarter of the grace) before new ones are
# refused: the ones sent just before the signal are served.
LAME_DUCK_SECONDS = 2.0


def _warm_sizes(max_batch: int, gpu: bool) -> list[int]:
    """GPU: 1, 2, 4, ... up to max_batch, the shapes the batcher forms (cuDNN tunes per shape). CPU: the
    kernels do not depend on the batch size, so 1 and max_batch are enough (start-up time matters)."""
    if not gpu:
        return sorted({1, max_batch})
    sizes, n = [], 1
    while n < max_batch:
        sizes.append(n)
        n *= 2
    return [*sizes, max_batch]


class _Gate:
    """Submits to the sampler chosen at warm-up (plain decoder, or fixed blocks)."""

    def __init__(self, target: Any) -> None:
        self.target = target

    async def submit(self, x: Any, deadline: float | None = None) -> Any:
        return await self.target.submit(x, deadline)


class VaeServer:
    """The running service: wraps the grpc.aio server with warm-up, health and drain."""

    def __init__(self, settings: Settings, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.registry = registry
        t0 = time.perf_counter()
        manifest = load_manifest(settings.model_dir, fp16=settings.fp16)
        token = settings.resolved_auth_token()
        credentials = server_credentials(settings)
        self.model: Model = load_model(manifest, settings)
        self.provider = self.model.provider
        self.metrics = ServiceMetrics(
            registry, model_name=manifest.model_name, model_version=manifest.model_version,
            provider=self.provider, latent_dim=manifest.latent_dim, reference=manifest.reference,
            latent_stats=settings.latent_metrics)
        # Batching off: each request is its own run, in a pool as large as both graphs' batchers together.
        self._executor = ThreadPoolExecutor(max_workers=2 * settings.inference_workers,
                                            thread_name_prefix="vae-infer")
        self.encoder = self._runner("encoder", self.model.encoder.run)
        self.decoder = self._runner("decoder", self.model.decoder.run)
        self._sample_gate = _Gate(self.decoder)
        self._sample_blocks: Any = None
        limits = Limits(settings.max_batch_per_request, settings.max_sample_n, settings.max_stream_n,
                        settings.default_chunk_size, settings.max_send_message_bytes)
        self.info = self._model_info(manifest.sha256)
        self.servicer = VaeServicer(info=self.info, validator=Validator(manifest.input_shape,
                                                                        manifest.latent_dim, limits),
                                    encoder=self.encoder, decoder=self.decoder, sampler=self._sample_gate,
                                    metrics=self.metrics)
        self.health = health_aio.HealthServicer()
        # No interceptor unless auth is on: grpc.aio runs every call through the interceptor chain in
        # Python, a cost per request (undecodable bytes are guarded in the handlers instead).
        interceptors: list[grpc.aio.ServerInterceptor] = [TokenAuthInterceptor(token)] if token else []
        # grpc core cancels calls received beyond 1,000 soft / 3,000 hard pending ones before any
        # handler runs (a 5,000-call burst got CANCELLED, which clients do not retry): lift those
        # bounds so the service's own queue limit is what refuses, with RESOURCE_EXHAUSTED.
        options = [("grpc.max_send_message_length", settings.max_send_message_bytes),
                   ("grpc.max_receive_message_length", settings.max_receive_message_bytes),
                   ("grpc.server.max_pending_requests", 1_000_000),
                   ("grpc.server.max_pending_requests_hard_limit", 1_000_000),
                   # Off for one process, so a port already in use is an error; on when several
                   # processes share the port (service/supervisor.py), the kernel spreads connections.
                   ("grpc.so_reuseport", int(settings.process_count() > 1))]
        self.grpc_server = grpc.aio.server(interceptors=interceptors or None, options=options)
        # Undecodable request bytes: INVALID_ARGUMENT (after auth, so strangers learn nothing).
        add_guarded_servicer(vae_pb2_grpc.add_VaeServiceServicer_to_server, self.servicer, SERVICE_NAME,
                             self.grpc_server)
        # The Open Inference Protocol beside vae.v1: the same validator, batchers, metrics and admission.
        self.lookup = SingleModel(ServedModel(
            name=manifest.model_name, version=V2_VERSION, manifest=manifest,
            validator=self.servicer.validator, encoder=self.encoder, decoder=self.decoder,
            metrics=self.metrics,
            max_batch_size=settings.max_batch_size if settings.dynamic_batching else 0,
            max_queue_delay_us=int(settings.max_queue_delay_ms * 1000)), ready=lambda: self.ready)
        self.inference = InferenceServicer(lookup=self.lookup, admit=self.servicer._call,
                                           metrics=self.metrics, ready=lambda: self.ready,
                                           server_name="vae", server_version=SERVER_VERSION)
        add_inference_service(self.grpc_server, self.inference)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, INFERENCE_SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME), self.grpc_server)
        address = f"{settings.host}:{settings.port}"
        try:
            if credentials is None:
                self.port = self.grpc_server.add_insecure_port(address)
            else:
                self.port = self.grpc_server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise SettingsError(f"cannot listen on {address}: {exc}") from None
        if self.port == 0:
            raise SettingsError(f"cannot listen on {address} (in use or not a local address)")
        self.tls = credentials is not None
        self.mtls = bool(settings.tls_client_ca)
        self.auth = bool(token)
        self.metrics_server: Any = None
        self.metrics_port = 0
        self.ready = False
        self.load_seconds = time.perf_counter() - t0

    def _checked(self, run: Any) -> Any:
        """The graph's run plus a count of non-finite outputs, per batch, in the inference thread (off
        the event loop); one reduction is enough when all is finite, the common case."""
        nonfinite = self.metrics.nonfinite

        def run_checked(x: np.ndarray) -> list[np.ndarray]:
            outs: list[np.ndarray] = run(x)
            for o in outs:
                if not np.isfinite(np.add.reduce(o, axis=None)):
                    nonfinite("output", int(o.size - np.count_nonzero(np.isfinite(o))))
            return outs

        return run_checked

    def _runner(self, graph: str, run: Any) -> Batcher | DirectRunner:
        run = self._checked(run)
        def on_wait(seconds: float) -> None:
            self.metrics.queue_wait(graph, seconds)

        def on_run(seconds: float, rows: int) -> None:
            self.metrics.inference(graph, seconds, rows)

        s = self.settings
        if s.dynamic_batching:
            return Batcher(graph, run, max_batch=s.max_batch_size, max_queue=s.max_queue,
                           max_delay_s=s.max_queue_delay_ms / 1000.0, workers=s.inference_workers,
                           on_wait=on_wait, on_run=on_run)
        return DirectRunner(graph, run, self._executor, max_queue=s.max_queue, on_wait=on_wait, on_run=on_run)

    def _model_info(self, manifest_sha256: str) -> vae_pb2.ModelInfo:
        s, m = self.settings, self.model.manifest
        return vae_pb2.ModelInfo(
            model_name=m.model_name, model_version=m.model_version, input_shape=list(m.input_shape),
            latent_dim=m.latent_dim, likelihood=m.likelihood, execution_provider=self.provider,
            limits=vae_pb2.Limits(
                max_receive_message_bytes=s.max_receive_message_bytes,
                max_send_message_bytes=s.max_send_message_bytes,
                max_batch_per_request=s.max_batch_per_request, max_sample_n=s.max_sample_n,
                max_stream_n=s.max_stream_n, max_batch_size=s.max_batch_size if s.dynamic_batching else 0,
                default_chunk_size=s.default_chunk_size),
            manifest_sha256=manifest_sha256, dynamic_batching=s.dynamic_batching,
            server_version=SERVER_VERSION,
            graph_dtype=vae_pb2.DATA_TYPE_FLOAT16 if s.fp16 else vae_pb2.DATA_TYPE_FLOAT32)

    async def _set_health(self, status: Any) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def start(self, *, warm: bool = True) -> None:
        """Serve (health NOT_SERVING) and, unless `warm=False`, warm up and become SERVING."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.settings.metrics_port:
            try:
                self.metrics_server, self.metrics_port = start_metrics_server(
                    self.settings.host, self.settings.metrics_port, self.registry)
            except OSError as exc:
                raise SettingsError(f"cannot serve metrics on {self.settings.host}:"
                                    f"{self.settings.metrics_port}: {exc.strerror}") from None
        await self.grpc_server.start()
        if warm:
            await self.warm_up()

    async def warm_up(self) -> None:
        t0 = time.perf_counter()
        sizes = _warm_sizes(self.settings.max_batch_size, self.model.decoder.on_cuda)
        await asyncio.get_running_loop().run_in_executor(self._executor, self.model.warm_up, sizes)
        block = self.settings.sample_block or (0 if self.model.rows_independent else DEFAULT_SAMPLE_BLOCK)
        if block:
            # Rows depend on their batch here (or blocks were asked for): Sample decodes in fixed blocks.
            blocks = self._checked(fixed_blocks(self.model.decoder.run, block))
            self._sample_blocks = Batcher("decoder", blocks,
                                          max_batch=max(block, self.settings.max_batch_size // block * block),
                                          max_queue=self.settings.max_queue,
                                          workers=self.settings.inference_workers,
                                          on_wait=lambda s: self.metrics.queue_wait("decoder", s),
                                          on_run=lambda s, n: self.metrics.inference("decoder", s, n))
            self._sample_gate.target = self._sample_blocks
        log.info("warm-up done in %.3f s (batch sizes %s); decoded rows independent of batch: %s%s",
                 time.perf_counter() - t0, sizes, self.model.rows_independent,
                 f"; Sample decodes in fixed blocks of {block}" if block else "")
        self.ready = self.servicer.ready = True
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new RPCs, give in-flight ones `grace` seconds, then close."""
        grace = self.settings.grace_seconds if grace is None else grace
        deadline = time.monotonic() + grace
        await self.health.enter_graceful_shutdown()  # NOT_SERVING first: balancers stop sending here
        # Lame duck: calls sent before the signal may still wait in grpc's queues behind a busy event
        # loop; keep admitting for a moment so that they are served, not refused.
        await asyncio.sleep(min(LAME_DUCK_SECONDS, grace / 4))
        # Then new VaeService calls answer UNAVAILABLE (clients retry it, e.g. on another replica) while
        # the port stays open for the admitted calls to finish; grpc's own stop() would answer calls it
        # already received CANCELLED, which clients do not retry. So wait for the admitted calls and
        # then for a quiet moment (no call reaching a handler) before stopping grpc.
        self.ready = self.servicer.ready = False
        quiet = min(0.25, grace / 4)
        while time.monotonic() < deadline and (
                self.servicer.in_flight or time.monotonic() - self.servicer.last_call < quiet):
            await asyncio.sleep(0.02)
        await self.grpc_server.stop(max(0.0, deadline - time.monotonic()))
        for runner in (self.encoder, self.decoder, self._sample_blocks):
            if runner is not None:
                await runner.close()
        self._executor.shutdown(wait=False)
        self.metrics.close()
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None

    async def wait_for_termination(self) -> None:
        await self.grpc_server.wait_for_termination()


def create_server(settings: Settings, registry: CollectorRegistry | None = None) -> tuple[VaeServer, int]:
    """Check and load the model, build and bind the server (not started); returns (server, port).

    Raises ModelError / SettingsError (service.errors) on bad files or settings."""
    settings.validate()
    server = VaeServer(settings, registry if registry is not None else CollectorRegistry())
    return server, server.port
