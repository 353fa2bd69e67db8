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


class QueueFull(ServiceError):
    status = "RESOURCE_EXHAUSTED"
    reason = "queue_full"

    def __init__(self, graph: str, max_queue: int) -> None:
        super().__init__(f"the {graph} queue is full ({max_queue} requests waiting, VAE_MAX_QUEUE); "
                         "retry with backoff")


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
