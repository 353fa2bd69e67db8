"""Assemble the gRPC server: model, batchers, servicer, health, reflection, auth, TLS, metrics, drain.

Lifecycle: `create_server` checks the model folder and loads the sessions (fails fast, before any
port is served); `start()` serves health as NOT_SERVING, warms both graphs up, then flips to SERVING;
`stop()` flips to NOT_SERVING, stops accepting, lets in-flight RPCs finish within the grace, then
closes the batchers and the metrics. Call these from a running asyncio event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from protos.vae.v1 import vae_pb2, vae_pb2_grpc
from service.admission import PARK_AFTER_S, PARK_BEFORE_S, Admission
from service.auth import TokenAuthInterceptor
from service.calls import CallGuard
from service.decode_guard import add_guarded_servicer
from service.errors import SettingsError
from service.kserve import SERVICE_NAME as INFERENCE_SERVICE_NAME
from service.kserve import InferenceServicer, add_inference_service
from service.metrics import ServiceMetrics, start_metrics_server
from service.registry import ModelRegistry
from service.registry_lookup import RegistryLookup
from service.served import SERVER_VERSION, ServedVersion
from service.servicer import VaeServicer
from service.settings import Settings, receive_limit
from service.tls import server_credentials

__all__ = ["create_server", "VaeServer", "SERVICE_NAME", "SERVER_VERSION", "grpc_options"]

log = logging.getLogger("vae.service")

SERVICE_NAME = vae_pb2.DESCRIPTOR.services_by_name["VaeService"].full_name  # "vae.v1.VaeService"
# On stop, calls are still admitted for this long (at most a quarter of the grace) before new ones are
# refused: the ones sent just before the signal are served.
LAME_DUCK_SECONDS = 2.0
# grpc core's own bound on calls received but not yet picked up by the application (defaults 1,000
# soft / 3,000 hard, then it refuses or cancels them before any handler runs, uncounted). Raised far
# above any --max-in-flight so that every call reaches a handler and the Admission is what refuses.
CORE_PENDING_LIMIT = 1_000_000


def grpc_options(settings: Settings, receive_bytes: int) -> list[tuple[str, int]]:
    """Options of the grpc.aio server: message limits, and core's pending-call limits lifted (see
    CORE_PENDING_LIMIT)."""
    return [("grpc.max_send_message_length", settings.max_send_message_bytes),
            ("grpc.max_receive_message_length", receive_bytes),
            ("grpc.server.max_pending_requests", CORE_PENDING_LIMIT),
            ("grpc.server.max_pending_requests_hard_limit", CORE_PENDING_LIMIT),
            # Off for one process, so a port already in use is an error; on when several processes
            # share the port (service/supervisor.py), the kernel spreads connections.
            ("grpc.so_reuseport", int(settings.process_count() > 1))]


class VaeServer:
    """The running service: wraps the grpc.aio server with warm-up, health and drain."""

    def __init__(self, settings: Settings, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.registry = registry
        t0 = time.perf_counter()
        token = settings.resolved_auth_token()
        credentials = server_credentials(settings)
        # Every model and version; at start-up each wanted version is opened (hashes, sessions, shapes)
        # before any port is served, so a bad --model-dir still fails fast.
        self.models = ModelRegistry(settings, registry)
        self.models.open_initial()
        # Derived from the models unless set: the largest valid request of any model opened at start,
        # with headroom (settings.receive_limit). grpc's limit is fixed when the server is built: a
        # repository whose later versions take larger requests sets --max-receive-message-bytes.
        opened = [v.manifest for vs in self.models.versions.values() for v in vs.values()
                  if v.manifest is not None]
        self.receive_bytes = settings.max_receive_message_bytes or max(
            (receive_limit(m.input_shape, m.latent_dim, settings.max_batch_per_request) for m in opened),
            default=settings.max_send_message_bytes)
        if not settings.max_receive_message_bytes:
            settings = dataclasses.replace(settings, max_receive_message_bytes=self.receive_bytes)
            self.settings = self.models.settings = settings
            for vs in self.models.versions.values():
                for v in vs.values():
                    v.settings = settings
                    v.info.limits.max_receive_message_bytes = self.receive_bytes
        # Calls that reach no model (unknown name/version, not ready) are counted here. LoadModel and
        # UnloadModel are guarded by the token like every call when one is set (the interceptor below).
        self.metrics_unrouted = ServiceMetrics(registry, model_name="", model_version="", provider="",
                                               latent_dim=1, reference=None, latent_stats=False)
        # Ready / in flight / drain: owned here, shared by every servicer through one CallGuard.
        self.admission = Admission(settings.max_in_flight, settings.retry_after_ms)
        self.calls = CallGuard(self.admission, self.metrics_unrouted)
        self.models.lone = self.admission.lone
        self.servicer = VaeServicer(models=self.models, calls=self.calls)
        self.health = health_aio.HealthServicer()
        # No interceptor unless auth is on: grpc.aio runs every call through the interceptor chain in
        # Python, a cost per request (undecodable bytes are guarded in the handlers instead).
        interceptors: list[grpc.aio.ServerInterceptor] = [TokenAuthInterceptor(token)] if token else []
        self.grpc_server = grpc.aio.server(interceptors=interceptors or None,
                                           options=grpc_options(settings, self.receive_bytes))
        # Undecodable request bytes: INVALID_ARGUMENT (after auth, so strangers learn nothing).
        add_guarded_servicer(vae_pb2_grpc.add_VaeServiceServicer_to_server, self.servicer, SERVICE_NAME,
                             self.grpc_server)
        # The Open Inference Protocol beside vae.v1: the same validator, batchers, metrics and admission.
        self.lookup = RegistryLookup(self.models, ready=lambda: self.ready)
        self.inference = InferenceServicer(lookup=self.lookup, calls=self.calls, ready=lambda: self.ready,
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
        self._poller: asyncio.Task[None] | None = None
        self.load_seconds = time.perf_counter() - t0

    # The default model's newest version: what a one-model server (and older tests) call the model.
    def _default(self) -> ServedVersion:
        ready = self.models.ready_versions()
        if ready:
            return self.models.resolve()
        return next(v for vs in self.models.versions.values() for v in vs.values())

    @property
    def model(self) -> Any:
        return self._default().model

    @property
    def metrics(self) -> Any:
        return self._default().metrics

    @property
    def encoder(self) -> Any:
        return self._default().encoder

    @property
    def decoder(self) -> Any:
        return self._default().decoder

    @property
    def info(self) -> vae_pb2.ModelInfo:
        return self._default().info

    @property
    def provider(self) -> str:
        return self._default().provider

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
        await self.models.warm_initial()
        self.admission.open()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        if self.settings.poll_seconds > 0:
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        """Rescan the repository every poll_seconds (a failed scan is logged inside sync)."""
        while True:
            await asyncio.sleep(self.settings.poll_seconds)
            try:
                await self.models.sync()
            except Exception:  # a bad rescan must not end polling; the next one may succeed
                log.exception("repository rescan failed; serving what is loaded")

    async def reload(self) -> None:
        """SIGHUP: rescan the repository now."""
        await self.models.sync()

    @property
    def ready(self) -> bool:
        return self.admission.ready

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new RPCs, give admitted ones `grace` seconds, then close."""
        grace = self.settings.grace_seconds if grace is None else grace
        deadline = time.monotonic() + grace
        await self.health.enter_graceful_shutdown()  # NOT_SERVING first: balancers stop sending here
        # Lame duck: calls sent before the signal may still wait in grpc's queues behind a busy event
        # loop; keep admitting for a moment so that they are served, not refused.
        await asyncio.sleep(min(LAME_DUCK_SECONDS, grace / 4))
        # Then every new call is refused UNAVAILABLE at once (clients retry it, e.g. on another
        # replica) and the drain waits on the admitted work only: refused calls, however many and
        # however often retried, do not delay it.
        t0 = time.monotonic()
        drained = await self.admission.drain(deadline - t0)
        log.info("drain: %s in %.3f s (peak in flight %d)", "all admitted calls finished" if drained
                 else f"grace over with {self.admission.in_flight} calls in flight", time.monotonic() - t0,
                 self.admission.peak_in_flight)
        # grpc's stop sends GOAWAY, closes the port and returns as soon as no call is left in a handler;
        # calls arriving meanwhile are parked, then refused (admission.PARK_BEFORE_S). It cancels what is
        # left only when the grace is over.
        # Parked first, so that every retrying client waits in a handler and none is sending to core.
        self.admission.park()
        await asyncio.sleep(min(PARK_BEFORE_S, max(0.0, deadline - time.monotonic())))
        # The instant is logged on the monotonic clock (shared by the processes of one host): a test
        # tells the calls that met grpc's stop from all others.
        log.info("grpc stop at monotonic %.4f", time.monotonic())
        stopping = asyncio.ensure_future(self.grpc_server.stop(max(0.0, deadline - time.monotonic())))
        await asyncio.sleep(min(PARK_AFTER_S, max(0.0, deadline - time.monotonic())))
        self.admission.unpark()
        await stopping
        if self._poller is not None:
            self._poller.cancel()
        await self.models.close()
        self.metrics_unrouted.close()
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
