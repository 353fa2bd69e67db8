"""Bytes that do not parse as the request message answer INVALID_ARGUMENT, not UNKNOWN.

Without this, grpc's server turns a protobuf DecodeError raised by the request deserializer into
UNKNOWN with the Python exception class in the message. The interceptor swaps each VaeService
handler's deserializer for one that returns a marker instead of raising; the wrapped handler then
aborts with INVALID_ARGUMENT before the servicer sees anything.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

__all__ = ["DecodeGuardInterceptor"]


class _Undecodable:
    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _safe(deserialize: Callable[[bytes], Any], method: str) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except (DecodeError, ValueError, TypeError):
            return _Undecodable(
                f"the request body is not a valid message for {method} "
                f"({len(data)} bytes); check the client's protos"
            )

    return parse


class DecodeGuardInterceptor(grpc.aio.ServerInterceptor):
    """Applies to unary-request handlers under `prefix` (the VaeService methods)."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method or ""
        if (
            handler is None
            or handler.request_streaming
            or not method.startswith(self._prefix)
            or handler.request_deserializer is None
        ):
            return handler
        kw = {
            "request_deserializer": _safe(handler.request_deserializer, method),
            "response_serializer": handler.response_serializer,
        }
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(_guard_stream(handler.unary_stream), **kw)
        return grpc.unary_unary_rpc_method_handler(_guard_unary(handler.unary_unary), **kw)


def _guard_unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, _Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await behavior(request, context)

    return unary


def _guard_stream(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if isinstance(request, _Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        result = behavior(request, context)
        if inspect.isasyncgen(result):
            async for item in result:
                yield item
        else:  # a handler that writes with context.write() and returns an awaitable
            await result

    return stream
