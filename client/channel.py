"""Connection settings shared by the sync and async clients: TLS, token, message-size limits,
deadlines and the retry policy, handed to gRPC as a service config (exponential backoff with jitter,
bounded attempts, inside the deadline)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

__all__ = ["RetryPolicy", "ChannelConfig", "DEFAULT_MAX_MESSAGE_BYTES", "MAX_ATTEMPTS", "RETRIED_SERVICES",
           "read_bytes", "make_config", "resolve_config"]

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


# gRPC clamps a service config's retryPolicy.maxAttempts to 5 (and logs it): refuse more up front
# rather than promise attempts that would never be made.
MAX_ATTEMPTS = 5

# The services the retry policy covers. Every vae.v1 method is an idempotent read (same request, same
# reply, no server state changed) and so is a health check: replaying one is harmless. A method that
# is not safe to replay goes in RetryPolicy.never_retry: its own methodConfig without a retryPolicy
# (gRPC applies the most specific name that matches).
RETRIED_SERVICES = ("vae.v1.VaeService", "grpc.health.v1.Health")


def _duration(seconds: float) -> str:
    # proto3 JSON Duration: decimal seconds with an "s" suffix, at most nanosecond precision.
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


@dataclass(frozen=True)
class RetryPolicy:
    """UNAVAILABLE and RESOURCE_EXHAUSTED retried with exponential backoff and jitter, as gRPC's own
    service-config retry policy (gRFC A6): at most `max_attempts` (1..5) attempts, all inside the
    call's deadline; the delay before retry k is randomised below min(max_backoff, initial_backoff x
    multiplier^(k-1)), and a server's `grpc-retry-pushback-ms` trailer replaces it (a negative one
    stops the retries). `max_attempts=1` turns retries off.

    The same numbers drive the one retry gRPC cannot do for us: resuming a SampleStream cut after
    its first message (`delays()`: uniform in [0.5, 1] x that bound)."""

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    retry_codes: frozenset[grpc.StatusCode] = field(
        default_factory=lambda: frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}))
    # "package.Service/Method" names that are never retried (a method that is not idempotent).
    never_retry: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= MAX_ATTEMPTS:
            raise ValueError(f"max_attempts must be 1..{MAX_ATTEMPTS} (gRPC's retry policy makes at most "
                             f"{MAX_ATTEMPTS} attempts), got {self.max_attempts}")
        if not (self.initial_backoff > 0 and self.max_backoff > 0 and self.multiplier >= 1):
            raise ValueError("backoffs must be > 0 seconds and multiplier >= 1")
        if grpc.StatusCode.OK in self.retry_codes:
            raise ValueError("OK is not a status to retry")
        for name in self.never_retry:
            service, _, method = name.rpartition("/")
            if not service or not method:
                raise ValueError(f"never_retry takes 'package.Service/Method' names, got {name!r}")

    @property
    def enabled(self) -> bool:
        return self.max_attempts > 1 and bool(self.retry_codes)

    def delays(self) -> Iterator[float]:
        """The sleep before each stream resume (max_attempts - 1 of them)."""
        for k in range(self.max_attempts - 1):
            base = min(self.max_backoff, self.initial_backoff * self.multiplier ** k)
            yield base * random.uniform(0.5, 1.0)

    def retryable(self, code: grpc.StatusCode | None) -> bool:
        return self.enabled and code in self.retry_codes

    def limits(self, method: str = "") -> dict[grpc.StatusCode, int]:
        """Most attempts of `method` ("package.Service/Method") per status code (codes not listed: 1)."""
        if not self.enabled or method in self.never_retry:
            return {}
        return {code: self.max_attempts for code in self.retry_codes}

    def service_config(self) -> dict[str, object]:
        """The gRPC service config that makes the channel retry the RPCs of RETRIED_SERVICES."""
        method: dict[str, object] = {"name": [{"service": s} for s in RETRIED_SERVICES]}
        if self.enabled:
            method["retryPolicy"] = {
                "maxAttempts": self.max_attempts,
                "initialBackoff": _duration(self.initial_backoff),
                "maxBackoff": _duration(max(self.max_backoff, self.initial_backoff)),
                "backoffMultiplier": self.multiplier,
                "retryableStatusCodes": sorted(c.name for c in self.retry_codes),
            }
        configs = [method]
        if self.never_retry:
            configs.append({"name": [{"service": s, "method": m}
                                     for s, _, m in (n.rpartition("/") for n in self.never_retry)]})
        # No retryThrottling: its token bucket would stop every retry in a burst of RESOURCE_EXHAUSTED,
        # the very case the retries are for; the server's own admission and pushback pace the clients.
        return {"methodConfig": configs}


@dataclass(frozen=True)
class ChannelConfig:
    """How to reach one server. `timeout` is the deadline of each call in seconds, its retries
    included (a stream's: of the whole stream, its resumes included)."""

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
            # gRPC's retry policy owns unary retries (see RetryPolicy); the service config is ours
            # alone: one from DNS resolution must not replace it.
            ("grpc.enable_retries", 1 if self.retry.enabled else 0),
            ("grpc.service_config", json.dumps(self.retry.service_config())),
            ("grpc.service_config_disable_resolution", 1),
            # A request bigger than the retry buffer (256 KiB by default) is committed at once and never
            # retried; let every request that fits the message limit be retried.
            ("grpc.per_rpc_retry_buffer_size", min(self.max_message_bytes + 64 * 1024, 2**31 - 1)),
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


def make_config(target: str, *, tls: bool = False, root_certificates: bytes | str | Path | None = None,
                client_certificate: bytes | str | Path | None = None,
                client_key: bytes | str | Path | None = None, server_name: str | None = None,
                token: str | None = None, timeout: float = 30.0,
                max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                retry: RetryPolicy | None = None) -> ChannelConfig:
    """Build a ChannelConfig; certificates may be PEM bytes or paths to PEM files."""
    return ChannelConfig(
        target=target, tls=tls, root_certificates=read_bytes(root_certificates, "root certificates"),
        client_certificate=read_bytes(client_certificate, "client certificate"),
        client_key=read_bytes(client_key, "client key"), server_name=server_name, token=token,
        timeout=timeout, max_message_bytes=max_message_bytes, retry=retry or RetryPolicy())


def resolve_config(target: str | None, config: ChannelConfig | None,
                   options: dict[str, Any]) -> ChannelConfig:
    """A client's constructor arguments: a target with options, or a ready config."""
    if config is None:
        if target is None:
            raise ValueError("give a target HOST:PORT or a config")
        return make_config(target, **options)
    if target is not None or options:
        raise ValueError("give either a config or a target with options, not both")
    return config
