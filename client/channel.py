"""Connection settings shared by the sync and async clients: TLS, token, message-size limits,
deadlines and the retry policy (exponential backoff with jitter, bounded)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

__all__ = ["RetryPolicy", "ChannelConfig", "DEFAULT_MAX_MESSAGE_BYTES", "read_bytes"]

# Matches the server's default gRPC message limit; chunking keeps every request and reply below the
# smaller of this and the limits the server reports in GetModelInfo.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def read_bytes(value: bytes | str | Path | None, what: str) -> bytes | None:
    """PEM given as bytes, or a path to a file holding it."""
    if value is None or isinstance(value, bytes):
        return value
    path = Path(value)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class RetryPolicy:
    """Retry UNAVAILABLE and RESOURCE_EXHAUSTED with exponential backoff (bounded attempts).

    Delay before retry k (k = 1, 2, ...) is uniform in [0.5, 1] x min(max_backoff,
    initial_backoff * multiplier^(k-1)): the jitter spreads clients that failed together."""

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    retry_codes: frozenset[grpc.StatusCode] = field(
        default_factory=lambda: frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}))

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("backoffs must be >= 0 and multiplier >= 1")

    def delays(self) -> Iterator[float]:
        """The sleep before each retry (max_attempts - 1 of them)."""
        for k in range(self.max_attempts - 1):
            base = min(self.max_backoff, self.initial_backoff * self.multiplier ** k)
            yield base * random.uniform(0.5, 1.0)

    def retryable(self, code: grpc.StatusCode | None) -> bool:
        return code in self.retry_codes


@dataclass(frozen=True)
class ChannelConfig:
    """How to reach one server. `timeout` is the deadline of each attempt, in seconds."""

    target: str
    tls: bool = False
    root_certificates: bytes | None = None
    client_certificate: bytes | None = None
    client_key: bytes | None = None
    server_name: str | None = None
    token: str | None = None
    timeout: float = 30.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        if not self.target or ":" not in self.target:
            raise ValueError(f"target must be HOST:PORT, got {self.target!r}")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {self.timeout}")
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be >= 1024, got {self.max_message_bytes}")
        if (self.client_certificate is None) != (self.client_key is None):
            raise ValueError("a client certificate needs its key, and a key its certificate")

    @property
    def secure(self) -> bool:
        return self.tls or self.root_certificates is not None or self.client_certificate is not None

    def options(self) -> list[tuple[str, int | str]]:
        opts: list[tuple[str, int | str]] = [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            # Our own retry loop owns retries; gRPC's built-in one would multiply the attempts.
            ("grpc.enable_retries", 0),
            # Behind a headless Service the name resolves to every replica: spread calls over all of
            # them (gRPC's default, pick_first, pins a client to one pod). Same behaviour for one address.
            ("grpc.lb_policy_name", "round_robin"),
        ]
        if self.server_name:
            opts.append(("grpc.ssl_target_name_override", self.server_name))
        return opts

    def metadata(self) -> tuple[tuple[str, str], ...] | None:
        if self.token:
            return (("authorization", f"Bearer {self.token}"),)
        return None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.root_certificates,
                                            private_key=self.client_key,
                                            certificate_chain=self.client_certificate)

    def sync_channel(self) -> grpc.Channel:
        if self.secure:
            return grpc.secure_channel(self.target, self.credentials(), options=self.options())
        return grpc.insecure_channel(self.target, options=self.options())

    def aio_channel(self) -> grpc.aio.Channel:
        if self.secure:
            return grpc.aio.secure_channel(self.target, self.credentials(), options=self.options())
        return grpc.aio.insecure_channel(self.target, options=self.options())
