"""Bytes that do not parse as the request message answer INVALID_ARGUMENT, not UNKNOWN.

Without this, grpc's server turns a protobuf DecodeError raised by the request deserializer into
UNKNOWN with the Python exception class in the message. Each VaeService handler's deserializer is
swapped for one that returns a marker instead of raising. A handler decorated with service.calls.rpc
(it carries GUARDED_ATTR) receives the marker and answers INVALID_ARGUMENT itself, counted in the
request and error metrics like any other refusal; any other handler is wrapped here and aborts with
INVALID_ARGUMENT before it sees anything.

Why the handlers are wrapped once at registration (`add_guarded_servicer`) and not per call by a
server interceptor: any grpc.aio interceptor sends every call through an extra coroutine chain and a
handler look-up in Python, and this one also built new handler objects per call; at batch 1 that was
measurable server CPU per request (docs/service.md, Performance). The token interceptor, when auth is
on, still runs first and keeps the guarded deserializer (strangers learn nothing).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

__all__ = ["add_guarded_servicer", "UndecodableBody", "GUARDED_ATTR"]

# Set on a handler function that handles an UndecodableBody request itself (service.calls.rpc).
GUARDED_ATTR = "__vae_handles_undecodable__"


class UndecodableBody:
    """Stands for a request body that did not parse; `message` says so to the caller."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _safe(deserialize: Callable[[bytes], Any], method: str) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except (DecodeError, ValueError, TypeError):
            return UndecodableBody(
                f"the request body is not a valid message for {method} "
                f"({len(data)} bytes); check the client's protos"
            )

    return parse


class _Collector:
    """Stands in for the server in a generated `add_*Servicer_to_server`: keeps its method handlers."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        return None

    def add_registered_method_handlers(self, service: str,
                                       handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.handlers.update(handlers)


def _guarded(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    if handler.request_streaming or handler.request_deserializer is None:
        return handler
    kw = {
        "request_deserializer": _safe(handler.request_deserializer, method),
        "response_serializer": handler.response_serializer,
    }
    if handler.response_streaming:
        behavior = handler.unary_stream
        if not getattr(behavior, GUARDED_ATTR, False):
            behavior = _guard_stream(behavior)
        return grpc.unary_stream_rpc_method_handler(behavior, **kw)
    behavior = handler.unary_unary
    if not getattr(behavior, GUARDED_ATTR, False):
        behavior = _guard_unary(behavior)
    return grpc.unary_unary_rpc_method_handler(behavior, **kw)


def add_guarded_servicer(add_to_server: Callable[[Any, Any], None], servicer: Any, service: str,
                         server: grpc.aio.Server) -> None:
    """Register `servicer` like the generated `add_to_server` would, with every unary-request
    handler guarded against undecodable bytes (once, here, instead of per call)."""
    collected = _Collector()
    add_to_server(servicer, collected)
    handlers = {name: _guarded(h, f"/{service}/{name}") for name, h in collected.handlers.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)


def _guard_unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, UndecodableBody):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await behavior(request, context)

    return unary


def _guard_stream(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if isinstance(request, UndecodableBody):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        result = behavior(request, context)
        if inspect.isasyncgen(result):
            async for item in result:
                yield item
        else:  # a handler that writes with context.write() and returns an awaitable
            await result

    return stream
