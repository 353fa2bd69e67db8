"""Bearer-token authentication: a server interceptor checking `authorization: Bearer <token>`.

The scheme is matched in any letter case (`bearer`, `BEARER`): RFC 7235 section 2.1 makes
authentication schemes case-insensitive; the token itself is compared exactly, in constant time.
The health service is exempt: container and Kubernetes probes cannot send metadata, and health
reveals nothing about the model. Everything else (VaeService, reflection) needs the token.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

__all__ = ["TokenAuthInterceptor", "EXEMPT_PREFIXES"]

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped: base is Any
    def __init__(self, token: str, exempt: tuple[str, ...] = EXEMPT_PREFIXES) -> None:
        if not token or token != token.strip():
            # Settings strip and refuse blank tokens; this guards any other caller.
            raise ValueError("the bearer token must be non-empty, without surrounding whitespace")
        self._expected = token.encode()
        self._exempt = exempt

    def _check(self, metadata: Any) -> str | None:
        """None when authorised, else the reason (never echoing what was sent)."""
        values = [v for k, v in (metadata or ()) if k == "authorization"]
        if not values:
            return "missing bearer token: send metadata `authorization: Bearer <token>`"
        value = values[0]
        raw = value.encode() if isinstance(value, str) else bytes(value)
        scheme, _, given = raw.partition(b" ")
        if scheme.lower() != b"bearer":
            return "invalid bearer token: expected metadata `authorization: Bearer <token>`"
        # Constant-time comparison: the time taken must not reveal how much of the token matched.
        if not hmac.compare_digest(given.strip(b" "), self._expected):
            return "invalid bearer token"
        return None

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
            handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = handler_call_details.method or ""
        if method.startswith(self._exempt):
            return await continuation(handler_call_details)
        reason = self._check(handler_call_details.invocation_metadata)
        handler = await continuation(handler_call_details)
        if reason is None or handler is None:
            return handler
        return _denying(handler, reason)


def _denying(handler: grpc.RpcMethodHandler, reason: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that answers UNAUTHENTICATED."""

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)
        yield None  # pragma: no cover - abort raises; this makes the function an async generator

    kw = {"request_deserializer": handler.request_deserializer,
          "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming, **kw)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, **kw)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming, **kw)
    return grpc.unary_unary_rpc_method_handler(unary, **kw)
