"""`ClientCore`: everything `VaeClient` and `AsyncVaeClient` do, written once as flows (see
`client.flow`): request building, validation, chunking under the server's limits, reply checking,
error mapping and the SampleStream resume.

Retries. Every vae.v1 RPC is an idempotent read (GetModelInfo, Encode, Decode, Sample, Reconstruct,
SampleStream, Score, Interpolate, Traverse, Edit: none changes server state, and with a seed the same
request gives the same reply), so replaying a request is always safe; a method that changes state must
not be added to the retry policy's list.
Unary calls are retried by gRPC itself, through the service-config retry policy on the channel
(`client.channel.RetryPolicy`): UNAVAILABLE and RESOURCE_EXHAUSTED, exponential backoff with jitter,
the server's `grpc-retry-pushback-ms` honoured, all inside the call's deadline. gRPC stops retrying a
stream once its first message arrived (the call is committed), so a SampleStream cut later is
resumed here: re-requested (same seed, same bytes) with the samples already delivered skipped."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from client.channel import ChannelConfig, resolve_config
from client.errors import VaeRpcError, from_rpc_error
from client.flow import Emit, Flow, NextMessage, OpenStream, Sleep, Stubs, Unary
from client.latent_flows import LatentFlows
from client.messages import (
    EncodeResult,
    SampleResult,
    as_latents,
    as_wire_array,
    check_temperature,
    chunk_seed,
    concat_samples,
    decode_request,
    encode_request,
    join_encode,
    join_images,
    read_encode,
    read_images,
    read_sample,
    reconstruct_request,
    sample_request,
)
from client.planning import Plan, chunk_bounds
from protos.vae.v1 import vae_pb2

__all__ = ["ClientCore", "DriverBase", "pushback_seconds"]

PUSHBACK_KEY = "grpc-retry-pushback-ms"


def pushback_seconds(exc: grpc.RpcError) -> float | None:
    """The server's retry hint in seconds; None when absent; -1.0 for "do not retry" (a negative or
    unreadable value, as gRPC's own retry policy reads it)."""
    trailing = getattr(exc, "trailing_metadata", None)
    for key, value in (trailing() if callable(trailing) else None) or ():
        if key == PUSHBACK_KEY:
            try:
                ms = int(value)
            except (TypeError, ValueError):
                return -1.0
            return ms / 1000.0 if ms >= 0 else -1.0
    return None


class ClientCore(LatentFlows):
    """Holds one server's config and cached ModelInfo/Plan; every public method returns a flow."""

    def __init__(self, config: ChannelConfig) -> None:
        self.config = config
        self.info_cache: vae_pb2.ModelInfo | None = None
        self.plan_cache: Plan | None = None

    @property
    def target(self) -> str:
        return self.config.target

    def timeout(self, timeout: float | None) -> float:
        """The deadline of one call, its retries included."""
        return timeout if timeout is not None else self.config.timeout

    def error(self, exc: grpc.RpcError, method: str, attempts: int = 1) -> VaeRpcError:
        return from_rpc_error(exc, method=method, target=self.target, attempts=attempts,
                              retry_limit=self.config.retry.limits(Stubs.full_name(method)))

    def call(self, method: str, request: Message, timeout: float | None) -> Flow[Any]:
        """One unary call (gRPC retries it); a failure becomes a `VaeRpcError`."""
        try:
            return (yield Unary(method, request, self.timeout(timeout)))
        except grpc.RpcError as exc:
            raise self.error(exc, method) from None

    # -- model info and health ---------------------------------------------------------------------
    def info(self, refresh: bool = False, timeout: float | None = None) -> Flow[vae_pb2.ModelInfo]:
        if self.info_cache is None or refresh:
            info = yield from self.call("GetModelInfo", vae_pb2.GetModelInfoRequest(), timeout)
            self.plan_cache = Plan.from_info(info, self.config.max_message_bytes)
            self.info_cache = info
        return self.info_cache

    def plan(self) -> Flow[Plan]:
        if self.plan_cache is None:
            yield from self.info()
        assert self.plan_cache is not None
        return self.plan_cache

    def health(self, service: str = "", timeout: float | None = None) -> Flow[str]:
        req = health_pb2.HealthCheckRequest(service=service)
        resp = yield from self.call("Health/Check", req, timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))

    # -- calls -------------------------------------------------------------------------------------
    def encode(self, images: np.ndarray, *, sample: bool = False, seed: int | None = None,
               timeout: float | None = None) -> Flow[EncodeResult]:
        plan = yield from self.plan()
        arr = plan.check_images(as_wire_array(images, "images"))
        size = plan.encode_chunk(arr.dtype.itemsize, sample)
        parts = []
        for i, (a, b) in enumerate(chunk_bounds(len(arr), size)):
            req = encode_request(arr[a:b], sample, chunk_seed(seed, i))
            resp = yield from self.call("Encode", req, timeout)
            parts.append(read_encode(resp, b - a, plan.latent_dim, sample))
        return join_encode(parts, sample, plan.latent_dim)

    def decode(self, z: np.ndarray, *, uint8: bool = False, timeout: float | None = None) -> Flow[np.ndarray]:
        plan = yield from self.plan()
        arr = as_latents(as_wire_array(z, "z"), plan.latent_dim)
        out = []
        for a, b in chunk_bounds(len(arr), plan.decode_chunk(arr.dtype.itemsize, uint8)):
            resp = yield from self.call("Decode", decode_request(arr[a:b], uint8), timeout)
            out.append(read_images(resp.images, b - a, plan.input_shape, uint8))
        return join_images(out, plan.input_shape, uint8)

    def reconstruct(self, images: np.ndarray, *, uint8: bool = False,
                    timeout: float | None = None) -> Flow[np.ndarray]:
        plan = yield from self.plan()
        arr = plan.check_images(as_wire_array(images, "images"))
        out = []
        for a, b in chunk_bounds(len(arr), plan.reconstruct_chunk(arr.dtype.itemsize, uint8)):
            resp = yield from self.call("Reconstruct", reconstruct_request(arr[a:b], uint8), timeout)
            out.append(read_images(resp.images, b - a, plan.input_shape, uint8))
        return join_images(out, plan.input_shape, uint8)

    def sample(self, n: int, *, seed: int | None = None, temperature: float = 1.0, uint8: bool = False,
               return_latents: bool = False, timeout: float | None = None) -> Flow[SampleResult]:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        t = check_temperature(temperature)
        plan = yield from self.plan()
        if plan.sample_unary_ok(n, uint8, return_latents):
            resp = yield from self.call("Sample", sample_request(n, seed, t, uint8, return_latents), timeout)
            return read_sample(resp, plan.input_shape, plan.latent_dim, uint8, return_latents, n=n)
        parts = yield from self.sample_stream(n, seed=seed, temperature=t, uint8=uint8,
                                              return_latents=return_latents, timeout=timeout, emit=False)
        return concat_samples(parts, return_latents)

    def sample_stream(self, n: int, *, seed: int | None = None, temperature: float = 1.0,
                      uint8: bool = False, return_latents: bool = False, chunk_size: int = 0,
                      timeout: float | None = None, emit: bool = True) -> Flow[list[SampleResult]]:
        """Emit the chunks (or, with emit=False, return them). `timeout` bounds the whole stream,
        resumes included."""
        t = check_temperature(temperature)
        plan = yield from self.plan()
        chunk = chunk_size or plan.stream_chunk(n, uint8, return_latents)
        req = sample_request(n, seed, t, uint8, return_latents, chunk)
        end = time.monotonic() + self.timeout(timeout)
        delays = self.config.retry.delays()
        done, tries, kept = 0, 0, []
        while done < n:
            tries += 1
            try:
                stream = yield OpenStream("SampleStream", req, max(0.0, end - time.monotonic()))
                while (resp := (yield NextMessage(stream))) is not None:
                    if resp.offset < done:  # replayed after a resume: already delivered
                        continue
                    part = read_sample(resp, plan.input_shape, plan.latent_dim, uint8, return_latents,
                                       expect_offset=done)
                    done += len(part.images)
                    if emit:
                        yield Emit(part)
                    else:
                        kept.append(part)
            except grpc.RpcError as exc:
                delay = self._resume_delay(exc, done, seed, delays, end)
                if delay is None:
                    raise self.error(exc, "SampleStream", tries) from None
                yield Sleep(delay)
                continue
            if done < n:
                raise VaeRpcError(grpc.StatusCode.DATA_LOSS, f"stream ended after {done} of {n} samples",
                                  method="SampleStream", target=self.target, attempts=tries)
        return kept

    def _resume_delay(self, exc: grpc.RpcError, done: int, seed: int | None, delays: Iterator[float],
                      end: float) -> float | None:
        """How long to wait before re-requesting a cut stream, or None to give up. Before the first
        message gRPC's policy already retried the call; after it, only a seeded stream can be resumed
        (the same seed replays the same samples), and only inside the stream's deadline."""
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        allowed = self.config.retry.limits(Stubs.full_name("SampleStream"))
        if done == 0 or seed is None or not isinstance(code, grpc.StatusCode) or code not in allowed:
            return None
        backoff = next(delays, None)  # bounds the resumes to max_attempts - 1
        hint = pushback_seconds(exc)
        if backoff is None or (hint is not None and hint < 0):
            return None
        delay = backoff if hint is None else hint  # the server's hint wins, as in gRPC's policy
        return delay if time.monotonic() + delay < end else None


class DriverBase:
    """What both drivers share: a `ClientCore` built from a target with options or from a config."""

    def __init__(self, target: str | None, config: ChannelConfig | None, options: dict[str, Any]) -> None:
        self._core = ClientCore(resolve_config(target, config, options))

    @property
    def config(self) -> ChannelConfig:
        return self._core.config

    @property
    def target(self) -> str:
        return self._core.target
