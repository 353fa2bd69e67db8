"""One wrapper for every gRPC handler: admission, request metrics, and the error -> status mapping.

Each handler of a servicer is decorated with `@rpc("Method")` (unary or server-streaming alike) and
the servicer holds a `calls: CallGuard`. For every call the wrapper

- answers an undecodable request body INVALID_ARGUMENT (service.decode_guard hands it a marker);
- admits the call through the server's Admission (UNAVAILABLE when not ready, RESOURCE_EXHAUSTED at the
  in-flight bound) unless the method is exempt (`admit=False`, e.g. GetModelInfo);
- counts it in vae_requests_total / vae_request_duration_seconds / vae_requests_in_flight with the
  status it really got, and every failure in vae_errors_total by reason;
- maps a ServiceError to its status (service.errors) and anything unexpected to INTERNAL, logged with
  its traceback; without this, grpc answers an escaped exception UNKNOWN;
- puts the admission's retry hint on its RESOURCE_EXHAUSTED: trailers `retry-after-ms` and
  `grpc-retry-pushback-ms` (a full graph queue sends none: the client's own backoff applies).

Not servicer-private: any servicer (VaeService, the KServe one, later ones) reuses it by holding the
server's CallGuard and decorating its handlers.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, Protocol

import grpc

from service.admission import Admission
from service.decode_guard import GUARDED_ATTR, UndecodableBody
from service.errors import ServiceError, Unavailable, Undecodable
from service.metrics import ServiceMetrics
from service.validation import NonFinite

__all__ = ["CallGuard", "Routed", "Router", "rpc", "RETRY_AFTER_KEY", "RETRY_PUSHBACK_KEY"]

log = logging.getLogger("vae.service")

RETRY_AFTER_KEY = "retry-after-ms"
# gRPC's retry policy reads this trailer: a client channel with a service-config retry policy waits
# this long before its next attempt (gRFC A6, "Pushback").
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"



class Routed(Protocol):
    """A served model version as the wrapper sees it (service.served.ServedVersion)."""

    name: str
    version: str

    @property
    def metrics(self) -> ServiceMetrics: ...

    def enter(self) -> None: ...

    def leave(self) -> None: ...


Router = Callable[[Any], Routed]


class _HasCalls(Protocol):
    calls: CallGuard

    def route(self, request: Any) -> Routed: ...


class CallGuard:
    """What every handler call goes through; one per server, shared by all its servicers."""

    def __init__(self, admission: Admission, metrics: ServiceMetrics) -> None:
        self.admission = admission
        self.metrics = metrics

    def _trailers(self, exc: ServiceError) -> tuple[tuple[str, str], ...]:
        # Only an error that carries its own hint (the admission's refusal) sends one: gRPC's retry policy
        # replaces its exponential backoff by the pushback, so a fixed hint on every refusal (a full
        # graph queue too) would keep a retrying client from backing off (gRFC A6).
        if exc.status != "RESOURCE_EXHAUSTED" or exc.retry_after_ms is None:
            return ()
        hint = str(exc.retry_after_ms)
        return ((RETRY_AFTER_KEY, hint), (RETRY_PUSHBACK_KEY, hint))

    async def _abort(self, exc: ServiceError, context: grpc.aio.ServicerContext,
                     metrics: ServiceMetrics) -> NoReturn:
        if isinstance(exc, Unavailable):
            await self.admission.parked()  # while the server stops grpc (admission.PARK_BEFORE_S)
        metrics.error(exc.reason)
        if isinstance(exc, NonFinite):
            metrics.nonfinite("input", exc.count)
        await context.abort(getattr(grpc.StatusCode, exc.status), str(exc),
                            trailing_metadata=self._trailers(exc))
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    def _enter(self, request: Any, admit: bool) -> bool:
        """Checks made before the handler body runs; True when the call was admitted."""
        self.admission.arrived()
        if isinstance(request, UndecodableBody):
            raise Undecodable(request.message)
        if admit:
            self.admission.admit()
        return admit

    @staticmethod
    def _internal(method: str, exc: BaseException) -> ServiceError:
        log.error("unexpected error in %s: %s: %s", method, type(exc).__name__, exc, exc_info=exc)
        # The cause stays in the server log: a client learns nothing about the internals.
        return ServiceError(f"internal error while serving {method}; the server logged the cause")

    async def unary(self, method: str, admit: bool, body: Callable[..., Awaitable[Any]],
                    request: Any, context: grpc.aio.ServicerContext, route: Router | None = None) -> Any:
        started = time.perf_counter()
        metrics = self.metrics
        code, admitted, begun = "OK", False, False
        served: Routed | None = None
        try:
            admitted = self._enter(request, admit)
            if route is not None:
                served = route(request)  # NotFound lists what is served
                served.enter()  # no await since the routing: a drain of this version sees the call
                metrics = served.metrics
            metrics.request_started(method)
            begun = True
            if served is None:
                return await body(request, context)
            reply = await body(served, request, context)
            reply.model, reply.version = served.name, served.version  # latents are per version
            return reply
        except ServiceError as exc:
            code = exc.status
            await self._abort(exc, context, metrics)
        except grpc.aio.AbortError:
            code = _code_name(context)  # the body aborted on its own
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception as exc:
            code = "INTERNAL"
            await self._abort(self._internal(method, exc), context, metrics)
        finally:
            self._finish(method, code, started, metrics, begun, admitted, served)

    def _finish(self, method: str, code: str, started: float, metrics: ServiceMetrics, begun: bool,
                admitted: bool, served: Routed | None) -> None:
        if served is not None:
            served.leave()
        if admitted:
            self.admission.release()
        if not begun:  # refused before routing: counted on the unrouted series
            metrics.request_started(method)
        metrics.request_finished(method, code, time.perf_counter() - started)

    async def stream(self, method: str, admit: bool, body: Callable[..., AsyncIterator[Any]],
                     request: Any, context: grpc.aio.ServicerContext,
                     route: Router | None = None) -> AsyncIterator[Any]:
        started = time.perf_counter()
        metrics = self.metrics
        code, admitted, begun = "OK", False, False
        served: Routed | None = None
        try:
            admitted = self._enter(request, admit)
            if route is not None:
                served = route(request)
                served.enter()  # the whole stream stays on the version it was routed to
                metrics = served.metrics
            metrics.request_started(method)
            begun = True
            items = body(request, context) if served is None else body(served, request, context)
            async for item in items:
                if served is not None:
                    item.model, item.version = served.name, served.version
                yield item
        except ServiceError as exc:
            code = exc.status
            await self._abort(exc, context, metrics)
        except grpc.aio.AbortError:
            code = _code_name(context)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            code = "CANCELLED"
            raise
        except Exception as exc:
            code = "INTERNAL"
            await self._abort(self._internal(method, exc), context, metrics)
        finally:
            self._finish(method, code, started, metrics, begun, admitted, served)


def _code_name(context: grpc.aio.ServicerContext) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)  # grpc is untyped: name is Any to mypy
    return "UNKNOWN"


def rpc(method: str, *, admit: bool = True, routed: bool = False) -> Callable[[Callable[..., Any]], Any]:
    """Decorate a handler of a servicer that holds `calls: CallGuard`: an `async def` (unary reply) or
    an `async def ... yield` (server-streaming reply). `admit=False`: served while not ready too.
    `routed=True`: the call goes to the model version the servicer's `route(request)` picks, the
    handler is called as `fn(self, version, request, context)`, request metrics carry that version's
    labels, and every reply is stamped with its model and version."""

    # The handler grpc sees is (self, request, context): typed Any so that a routed handler's own
    # (self, version, request, context) signature does not clash with the generated base class.
    def wrap(fn: Callable[..., Any]) -> Any:
        if inspect.isasyncgenfunction(fn):
            @functools.wraps(fn)
            async def streaming(self: _HasCalls, request: Any,
                                context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                async for item in self.calls.stream(method, admit, functools.partial(fn, self), request,
                                                    context, self.route if routed else None):
                    yield item

            handler: Any = streaming
        else:
            @functools.wraps(fn)
            async def unary(self: _HasCalls, request: Any, context: grpc.aio.ServicerContext) -> Any:
                return await self.calls.unary(method, admit, functools.partial(fn, self), request, context,
                                              self.route if routed else None)

            handler = unary
        setattr(handler, GUARDED_ATTR, True)  # decode_guard: this handler answers undecodable bodies
        return handler

    return wrap
