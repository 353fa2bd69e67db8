"""The client's own exceptions: gRPC failures become `VaeRpcError` subclasses carrying the status
code and the server's message, so callers never need to catch `grpc.RpcError` themselves."""

from __future__ import annotations

import grpc

__all__ = [
    "VaeClientError",
    "VaeRpcError",
    "InvalidArgumentError",
    "NotFoundError",
    "UnavailableError",
    "DeadlineExceededError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "PermissionDeniedError",
    "FailedPreconditionError",
    "CancelledError",
    "UnimplementedError",
    "InternalError",
    "ProtocolError",
    "DataError",
    "JobError",
    "UnreachableError",
    "from_rpc_error",
]


class VaeClientError(Exception):
    """Base of every error the client package raises on purpose."""


class VaeRpcError(VaeClientError):
    """A call that ended with a non-OK gRPC status. `code` is the `grpc.StatusCode`, `details` the
    server's message, `method` the RPC that failed, `attempts` how many requests the client itself
    made (a resumed SampleStream counts each re-request). gRPC's retry policy retries each of them
    inside gRPC, out of the application's sight: `retry_limit` is the most attempts it was allowed
    (1 when the status was not one the policy retries)."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, code: grpc.StatusCode, details: str, *, method: str = "", target: str = "",
                 attempts: int = 1, retry_limit: int = 1) -> None:
        self.code = code
        self.details = details
        self.method = method
        self.target = target
        self.attempts = attempts
        self.retry_limit = retry_limit
        where = f"{method} on {target}" if method and target else (method or target or "call")
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        policy = f" (retried by gRPC, up to {retry_limit} attempts)" if retry_limit > 1 else ""
        super().__init__(f"{where} failed{tries}{policy}: {code.name}: {details or 'no details'}")

    @property
    def status(self) -> str:
        """The status code's name, e.g. ``"INVALID_ARGUMENT"``."""
        return str(self.code.name)  # grpc ships no type information: name is Any to mypy


class InvalidArgumentError(VaeRpcError):
    """The server rejected the request's content (shape, dtype, range, n)."""


class NotFoundError(VaeRpcError):
    """The method or resource does not exist on the server."""


class UnavailableError(VaeRpcError):
    """The server could not be reached or is shutting down (retried before it is raised)."""


class DeadlineExceededError(VaeRpcError):
    """The call's deadline passed before the server answered."""


class ResourceExhaustedError(VaeRpcError):
    """The server's queue is full or a message exceeded a size limit (retried when transient)."""


class UnauthenticatedError(VaeRpcError):
    """No token, or a wrong one, for a server that requires one."""


class PermissionDeniedError(VaeRpcError):
    """The credentials are valid but not allowed to make this call."""


class FailedPreconditionError(VaeRpcError):
    """The server is not in a state to serve the call (e.g. model not loaded)."""


class CancelledError(VaeRpcError):
    """The call was cancelled, by the client or by a server draining."""


class UnimplementedError(VaeRpcError):
    """The server does not implement this method (an older or foreign server)."""


class InternalError(VaeRpcError):
    """The server failed while handling a valid request."""


class ProtocolError(VaeClientError):
    """The server answered with something the client cannot read (wrong shape, dtype or size)."""


class DataError(VaeClientError):
    """An input file or folder the client was asked to read is missing or malformed."""


class JobError(VaeClientError):
    """A batch job cannot start or continue (e.g. its output folder holds a different job)."""


class UnreachableError(VaeClientError):
    """No target of a job answered GetModelInfo (after retries): wrong address, down, or silent."""


_BY_CODE: dict[grpc.StatusCode, type[VaeRpcError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.INTERNAL: InternalError,
}


def from_rpc_error(exc: grpc.RpcError, *, method: str = "", target: str = "", attempts: int = 1,
                   retry_limit: dict[grpc.StatusCode, int] | int = 1) -> VaeRpcError:
    """Map a `grpc.RpcError` (sync or aio) to the matching `VaeRpcError` subclass. `retry_limit` is
    the attempts gRPC's policy allows, per retryable code (a mapping) or for every code (an int)."""
    code_fn = getattr(exc, "code", None)
    details_fn = getattr(exc, "details", None)
    code = code_fn() if callable(code_fn) else None
    details = details_fn() if callable(details_fn) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    cls = _BY_CODE.get(code, VaeRpcError)
    limit = retry_limit.get(code, 1) if isinstance(retry_limit, dict) else retry_limit
    return cls(code, str(details or ""), method=method, target=target, attempts=attempts, retry_limit=limit)
