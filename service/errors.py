"""Errors of the service, and the one place that maps them to gRPC status codes.

Modules below the servicer (manifest, runtime, batching, validation, codec) raise these; they never
import grpc. Each class names the status it stands for, by its `grpc.StatusCode` name, so the mapping is
a lookup and not a chain of `isinstance` checks scattered through handlers.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ServiceError",
    "InvalidArgument",
    "NotFound",
    "LimitExceeded",
    "QueueFull",
    "Overloaded",
    "Undecodable",
    "DeadlineExpired",
    "Cancelled",
    "Unavailable",
    "InferenceFailed",
    "ModelError",
    "SettingsError",
    "grpc_status",
    "metric_reason",
]


class ServiceError(Exception):
    """Base of every error the service raises on purpose; the message is what the caller sees."""

    status: str = "INTERNAL"  # a grpc.StatusCode name
    reason: str = "internal"  # the `reason` label of the error metric
    # When set, the caller may retry after this many milliseconds: sent as the `retry-after-ms` and
    # `grpc-retry-pushback-ms` trailers (the second is the one gRPC's own retry policy honours).
    retry_after_ms: int | None = None


class InvalidArgument(ServiceError):
    status = "INVALID_ARGUMENT"
    reason = "invalid_argument"


class NotFound(ServiceError):
    """A model (or version) the request names is not served; the message lists what is."""

    status = "NOT_FOUND"
    reason = "not_found"


class LimitExceeded(InvalidArgument):
    """A request beyond a configured limit (images per request, n per Sample, chunk size)."""

    reason = "limit"


class Undecodable(InvalidArgument):
    """The request body does not parse as the method's request message."""

    reason = "undecodable"


class QueueFull(ServiceError):
    status = "RESOURCE_EXHAUSTED"
    reason = "queue_full"

    def __init__(self, graph: str, max_queue: int) -> None:
        super().__init__(f"the {graph} queue is full ({max_queue} requests waiting, VAE_MAX_QUEUE); "
                         "retry with backoff")


class Overloaded(ServiceError):
    """The server already holds its most admitted calls (VAE_MAX_IN_FLIGHT)."""

    status = "RESOURCE_EXHAUSTED"
    reason = "overload"

    def __init__(self, max_in_flight: int, retry_after_ms: int) -> None:
        super().__init__(f"the server is at its limit of {max_in_flight} calls in flight "
                         f"(VAE_MAX_IN_FLIGHT); retry after {retry_after_ms} ms")
        self.retry_after_ms = retry_after_ms


class DeadlineExpired(ServiceError):
    status = "DEADLINE_EXCEEDED"
    reason = "deadline"

    def __init__(self, graph: str) -> None:
        super().__init__(f"deadline expired while waiting for the {graph}; dropped before inference")


class Cancelled(ServiceError):
    status = "CANCELLED"
    reason = "cancelled"


class Unavailable(ServiceError):
    status = "UNAVAILABLE"
    reason = "unavailable"


class InferenceFailed(ServiceError):
    status = "INTERNAL"
    reason = "inference"


class ModelError(ServiceError):
    """The model folder is missing, corrupt or inconsistent with its manifest (start-up only)."""

    status = "FAILED_PRECONDITION"
    reason = "model"


class SettingsError(ServiceError):
    """A setting (flag or VAE_* variable) is invalid (start-up only)."""

    status = "FAILED_PRECONDITION"
    reason = "settings"


def grpc_status(exc: BaseException) -> Any:
    """The `grpc.StatusCode` for an exception; anything not a ServiceError is INTERNAL."""
    import grpc  # local: runtime and batching import this module and must stay free of grpc

    name = exc.status if isinstance(exc, ServiceError) else "INTERNAL"
    return getattr(grpc.StatusCode, name)


def metric_reason(exc: BaseException) -> str:
    return exc.reason if isinstance(exc, ServiceError) else "internal"
