"""`VaeClient`: a blocking client for vae.v1.VaeService with numpy in and out.

It owns its channel (use it as a context manager), sends the bearer token on every call, gives
each attempt a deadline, retries UNAVAILABLE / RESOURCE_EXHAUSTED with bounded exponential backoff,
splits large inputs into requests under the server's limits, and turns gRPC failures into
`client.errors.VaeRpcError` subclasses."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client.channel import DEFAULT_MAX_MESSAGE_BYTES, ChannelConfig, RetryPolicy, read_bytes
from client.errors import VaeRpcError, from_rpc_error
from client.messages import (
    EncodeResult,
    SampleResult,
    as_wire_array,
    check_temperature,
    chunk_seed,
    concat_samples,
    decode_request,
    encode_request,
    read_encode,
    read_images,
    read_sample,
    sample_request,
)
from client.pinning import ModelPin
from client.planning import Plan, chunk_bounds, image_format
from client.tensors import to_tensor
from protos.vae.v1 import vae_pb2, vae_pb2_grpc

__all__ = ["VaeClient", "make_config", "join_encode", "join_images", "as_latents"]

T = TypeVar("T")


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


class VaeClient:
    """Blocking client. `VaeClient("host:50051", token=..., timeout=10)` or `VaeClient(config=cfg)`."""

    def __init__(self, target: str | None = None, *, config: ChannelConfig | None = None,
                 model: str = "", version: str = "", pin: bool = False, **kwargs: Any) -> None:
        if config is None:
            if target is None:
                raise ValueError("give a target HOST:PORT or a config")
            config = make_config(target, **kwargs)
        elif target is not None or kwargs:
            raise ValueError("give either a config or a target with options, not both")
        self.config = config
        self._channel = config.sync_channel()
        self._stub = vae_pb2_grpc.VaeServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._info: vae_pb2.ModelInfo | None = None
        self._plan: Plan | None = None
        # Which model/version requests name; `pin=True` adopts the first reply's (see client.pinning).
        self.pin = ModelPin(model, version, sticky=pin)

    # -- lifecycle -------------------------------------------------------------------------------
    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> VaeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def target(self) -> str:
        return self.config.target

    # -- plumbing --------------------------------------------------------------------------------
    def _retrying(self, method: str, attempt: Callable[[float], T], timeout: float | None) -> T:
        """Run attempt(deadline_seconds) until it succeeds, fails for good, or attempts run out."""
        per_try = timeout if timeout is not None else self.config.timeout
        delays = self.config.retry.delays()
        tries = 0
        while True:
            tries += 1
            try:
                return attempt(per_try)
            except grpc.RpcError as exc:
                code = exc.code() if callable(getattr(exc, "code", None)) else None
                delay = next(delays, None) if self.config.retry.retryable(code) else None
                if delay is None:
                    raise from_rpc_error(exc, method=method, target=self.target, attempts=tries) from None
                time.sleep(delay)

    def _unary(self, method: str, request: Any, timeout: float | None = None) -> Any:
        call = getattr(self._stub, method)
        md = self.config.metadata()
        self.pin.stamp(request)
        reply = self._retrying(method, lambda t: call(request, timeout=t, metadata=md), timeout)
        self.pin.observe(reply, method)
        return reply

    # -- model info and health ---------------------------------------------------------------------
    def info(self, refresh: bool = False, timeout: float | None = None) -> vae_pb2.ModelInfo:
        """The served model's identity, shapes and limits (cached after the first call)."""
        if self._info is None or refresh:
            self._info = self._unary("GetModelInfo", vae_pb2.GetModelInfoRequest(), timeout)
            self._plan = Plan.from_info(self._info, self.config.max_message_bytes)
        return self._info

    def plan(self) -> Plan:
        if self._plan is None:
            self.info()
        assert self._plan is not None
        return self._plan

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """The gRPC health status name of `service` ("" = the whole server), e.g. "SERVING"."""
        req = health_pb2.HealthCheckRequest(service=service)
        md = self.config.metadata()
        resp = self._retrying("Health/Check", lambda t: self._health.Check(req, timeout=t, metadata=md),
                              timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))

    # -- calls -------------------------------------------------------------------------------------
    def encode(self, images: np.ndarray, *, sample: bool = False, seed: int | None = None,
               timeout: float | None = None) -> EncodeResult:
        """Images [N,C,H,W] (or [N,H,W] when C is 1) float in [0,1] or uint8 -> mu, logvar (and z)."""
        plan = self.plan()
        arr = plan.check_images(as_wire_array(images, "images"))
        size = plan.encode_chunk(arr.dtype.itemsize, sample)
        parts = []
        for i, (a, b) in enumerate(chunk_bounds(len(arr), size)):
            resp = self._unary("Encode", encode_request(arr[a:b], sample, chunk_seed(seed, i)), timeout)
            parts.append(read_encode(resp, b - a, plan.latent_dim, sample))
        return join_encode(parts, sample, plan.latent_dim)

    def decode(self, z: np.ndarray, *, uint8: bool = False, timeout: float | None = None) -> np.ndarray:
        """Latents [N, D] -> mean images [N,C,H,W] (float32 in [0,1], or uint8)."""
        plan = self.plan()
        arr = as_latents(as_wire_array(z, "z"), plan.latent_dim)
        size = plan.decode_chunk(arr.dtype.itemsize, uint8)
        out = [read_images(self._unary("Decode", decode_request(arr[a:b], uint8), timeout).images,
                           b - a, plan.input_shape, uint8)
               for a, b in chunk_bounds(len(arr), size)]
        return join_images(out, plan.input_shape, uint8)

    def reconstruct(self, images: np.ndarray, *, uint8: bool = False,
                    timeout: float | None = None) -> np.ndarray:
        """Images -> encode (posterior mean) -> decode."""
        plan = self.plan()
        arr = plan.check_images(as_wire_array(images, "images"))
        size = plan.reconstruct_chunk(arr.dtype.itemsize, uint8)
        out = []
        for a, b in chunk_bounds(len(arr), size):
            req = vae_pb2.ReconstructRequest(images=to_tensor(arr[a:b]), format=image_format(uint8))
            out.append(read_images(self._unary("Reconstruct", req, timeout).images, b - a,
                                   plan.input_shape, uint8))
        return join_images(out, plan.input_shape, uint8)

    def sample(self, n: int, *, seed: int | None = None, temperature: float = 1.0, uint8: bool = False,
               return_latents: bool = False, timeout: float | None = None) -> SampleResult:
        """n prior samples. Same (seed, n, temperature) gives byte-identical images: one unary Sample
        when it fits the server's limits, else SampleStream (which the server keeps identical)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        t = check_temperature(temperature)
        plan = self.plan()
        if plan.sample_unary_ok(n, uint8, return_latents):
            resp = self._unary("Sample", sample_request(n, seed, t, uint8, return_latents), timeout)
            return read_sample(resp, plan.input_shape, plan.latent_dim, uint8, return_latents, n=n)
        parts = list(self.sample_stream(n, seed=seed, temperature=t, uint8=uint8,
                                        return_latents=return_latents, timeout=timeout))
        return concat_samples(parts, return_latents)

    def sample_stream(self, n: int, *, seed: int | None = None, temperature: float = 1.0,
                      uint8: bool = False, return_latents: bool = False, chunk_size: int = 0,
                      timeout: float | None = None) -> Iterator[SampleResult]:
        """Stream n samples in chunks. `timeout` bounds the whole stream. With a seed, a stream cut by
        a retryable error is re-requested and the samples already delivered are skipped."""
        t = check_temperature(temperature)
        plan = self.plan()
        chunk = chunk_size or plan.stream_chunk(n, uint8, return_latents)
        req = sample_request(n, seed, t, uint8, return_latents, chunk)
        self.pin.stamp(req)
        md = self.config.metadata()
        per_try = timeout if timeout is not None else self.config.timeout
        delays = self.config.retry.delays()
        done, tries = 0, 0
        while done < n:
            tries += 1
            try:
                for resp in self._stub.SampleStream(req, timeout=per_try, metadata=md):
                    self.pin.observe(resp, "SampleStream")
                    if resp.offset < done:  # replayed after a retry: already delivered
                        continue
                    part = read_sample(resp, plan.input_shape, plan.latent_dim, uint8, return_latents,
                                       expect_offset=done)
                    done += len(part.images)
                    yield part
            except grpc.RpcError as exc:
                code = exc.code() if callable(getattr(exc, "code", None)) else None
                can_resume = done == 0 or seed is not None
                delay = next(delays, None) if can_resume and self.config.retry.retryable(code) else None
                if delay is None:
                    raise from_rpc_error(exc, method="SampleStream", target=self.target,
                                         attempts=tries) from None
                time.sleep(delay)
                continue
            if done < n:
                raise VaeRpcError(grpc.StatusCode.DATA_LOSS, f"stream ended after {done} of {n} samples",
                                  method="SampleStream", target=self.target)


def as_latents(z: np.ndarray, d: int) -> np.ndarray:
    if z.ndim == 1:
        z = z[None]
    if z.ndim != 2 or z.shape[1] != d:
        raise ValueError(f"z must have shape [N, {d}], got {list(z.shape)}")
    return z


def join_encode(parts: list[EncodeResult], sample: bool, d: int) -> EncodeResult:
    if len(parts) == 1:
        return parts[0]
    if not parts:
        empty = np.zeros((0, d), np.float32)
        return EncodeResult(empty, empty.copy(), empty.copy() if sample else None)
    z = np.concatenate([p.z for p in parts if p.z is not None]) if sample else None
    return EncodeResult(np.concatenate([p.mu for p in parts]), np.concatenate([p.logvar for p in parts]), z)


def join_images(parts: list[np.ndarray], shape: tuple[int, ...], uint8: bool) -> np.ndarray:
    if not parts:
        return np.zeros((0, *shape), np.uint8 if uint8 else np.float32)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
