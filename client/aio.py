"""`AsyncVaeClient`: the asyncio twin of `VaeClient` (grpc.aio), same options and semantics.

Used by the batch jobs to keep several requests in flight per process without threads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client.channel import ChannelConfig
from client.client import as_latents, join_encode, join_images, make_config
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

__all__ = ["AsyncVaeClient"]

T = TypeVar("T")


class AsyncVaeClient:
    """`async with AsyncVaeClient("host:50051") as c: r = await c.sample(64, seed=1)`.

    Create it inside the event loop that uses it (grpc.aio channels belong to one loop)."""

    def __init__(self, target: str | None = None, *, config: ChannelConfig | None = None,
                 model: str = "", version: str = "", pin: bool = False, **kwargs: Any) -> None:
        if config is None:
            if target is None:
                raise ValueError("give a target HOST:PORT or a config")
            config = make_config(target, **kwargs)
        elif target is not None or kwargs:
            raise ValueError("give either a config or a target with options, not both")
        self.config = config
        self._channel = config.aio_channel()
        self._stub = vae_pb2_grpc.VaeServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._info: vae_pb2.ModelInfo | None = None
        self._plan: Plan | None = None
        # Which model/version requests name; `pin=True` adopts the first reply's (see client.pinning).
        self.pin = ModelPin(model, version, sticky=pin)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncVaeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def target(self) -> str:
        return self.config.target

    async def _retrying(self, method: str, attempt: Callable[[float], Awaitable[T]],
                        timeout: float | None) -> T:
        per_try = timeout if timeout is not None else self.config.timeout
        delays = self.config.retry.delays()
        tries = 0
        while True:
            tries += 1
            try:
                return await attempt(per_try)
            except grpc.RpcError as exc:
                code = exc.code() if callable(getattr(exc, "code", None)) else None
                delay = next(delays, None) if self.config.retry.retryable(code) else None
                if delay is None:
                    raise from_rpc_error(exc, method=method, target=self.target, attempts=tries) from None
                await asyncio.sleep(delay)

    async def _unary(self, method: str, request: Any, timeout: float | None = None) -> Any:
        call = getattr(self._stub, method)
        md = self.config.metadata()

        async def attempt(t: float) -> Any:
            return await call(request, timeout=t, metadata=md)

        self.pin.stamp(request)
        reply = await self._retrying(method, attempt, timeout)
        self.pin.observe(reply, method)
        return reply

    async def info(self, refresh: bool = False, timeout: float | None = None) -> vae_pb2.ModelInfo:
        if self._info is None or refresh:
            self._info = await self._unary("GetModelInfo", vae_pb2.GetModelInfoRequest(), timeout)
            self._plan = Plan.from_info(self._info, self.config.max_message_bytes)
        return self._info

    async def plan(self) -> Plan:
        if self._plan is None:
            await self.info()
        assert self._plan is not None
        return self._plan

    async def health(self, service: str = "", timeout: float | None = None) -> str:
        req = health_pb2.HealthCheckRequest(service=service)
        md = self.config.metadata()

        async def attempt(t: float) -> Any:
            return await self._health.Check(req, timeout=t, metadata=md)

        resp = await self._retrying("Health/Check", attempt, timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))

    async def encode(self, images: np.ndarray, *, sample: bool = False, seed: int | None = None,
                     timeout: float | None = None) -> EncodeResult:
        plan = await self.plan()
        arr = plan.check_images(as_wire_array(images, "images"))
        size = plan.encode_chunk(arr.dtype.itemsize, sample)
        parts = []
        for i, (a, b) in enumerate(chunk_bounds(len(arr), size)):
            resp = await self._unary("Encode", encode_request(arr[a:b], sample, chunk_seed(seed, i)), timeout)
            parts.append(read_encode(resp, b - a, plan.latent_dim, sample))
        return join_encode(parts, sample, plan.latent_dim)

    async def decode(self, z: np.ndarray, *, uint8: bool = False, timeout: float | None = None) -> np.ndarray:
        plan = await self.plan()
        arr = as_latents(as_wire_array(z, "z"), plan.latent_dim)
        size = plan.decode_chunk(arr.dtype.itemsize, uint8)
        out = []
        for a, b in chunk_bounds(len(arr), size):
            resp = await self._unary("Decode", decode_request(arr[a:b], uint8), timeout)
            out.append(read_images(resp.images, b - a, plan.input_shape, uint8))
        return join_images(out, plan.input_shape, uint8)

    async def reconstruct(self, images: np.ndarray, *, uint8: bool = False,
                          timeout: float | None = None) -> np.ndarray:
        plan = await self.plan()
        arr = plan.check_images(as_wire_array(images, "images"))
        size = plan.reconstruct_chunk(arr.dtype.itemsize, uint8)
        out = []
        for a, b in chunk_bounds(len(arr), size):
            req = vae_pb2.ReconstructRequest(images=to_tensor(arr[a:b]), format=image_format(uint8))
            resp = await self._unary("Reconstruct", req, timeout)
            out.append(read_images(resp.images, b - a, plan.input_shape, uint8))
        return join_images(out, plan.input_shape, uint8)

    async def sample(self, n: int, *, seed: int | None = None, temperature: float = 1.0,
                     uint8: bool = False, return_latents: bool = False,
                     timeout: float | None = None) -> SampleResult:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        t = check_temperature(temperature)
        plan = await self.plan()
        if plan.sample_unary_ok(n, uint8, return_latents):
            resp = await self._unary("Sample", sample_request(n, seed, t, uint8, return_latents), timeout)
            return read_sample(resp, plan.input_shape, plan.latent_dim, uint8, return_latents, n=n)
        parts = [p async for p in self.sample_stream(n, seed=seed, temperature=t, uint8=uint8,
                                                      return_latents=return_latents, timeout=timeout)]
        return concat_samples(parts, return_latents)

    async def sample_stream(self, n: int, *, seed: int | None = None, temperature: float = 1.0,
                            uint8: bool = False, return_latents: bool = False, chunk_size: int = 0,
                            timeout: float | None = None) -> AsyncIterator[SampleResult]:
        t = check_temperature(temperature)
        plan = await self.plan()
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
                async for resp in self._stub.SampleStream(req, timeout=per_try, metadata=md):
                    self.pin.observe(resp, "SampleStream")
                    if resp.offset < done:
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
                await asyncio.sleep(delay)
                continue
            if done < n:
                raise VaeRpcError(grpc.StatusCode.DATA_LOSS, f"stream ended after {done} of {n} samples",
                                  method="SampleStream", target=self.target)
