"""`AsyncVaeClient`: the asyncio driver (grpc.aio) of `client.core.ClientCore`; the same methods,
options and semantics as `VaeClient`, each one awaited.

Used by the batch jobs to keep several requests in flight per process without threads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeVar, cast

import grpc
import numpy as np

from client.channel import ChannelConfig
from client.core import DriverBase
from client.flow import Flow, IoStep, NextMessage, OpenStream, Program, Sleep, Stubs
from client.messages import EncodeResult, SampleResult
from client.pinning import ModelPin
from client.planning import Plan
from protos.vae.v1 import vae_pb2

__all__ = ["AsyncVaeClient"]

T = TypeVar("T")


class AsyncVaeClient(DriverBase):
    """`async with AsyncVaeClient("host:50051") as c: r = await c.sample(64, seed=1)`.

    Create it inside the event loop that uses it (grpc.aio channels belong to one loop)."""

    def __init__(self, target: str | None = None, *, config: ChannelConfig | None = None,
                 model: str = "", version: str = "", pin: bool = False, **kwargs: Any) -> None:
        super().__init__(target, config, kwargs)
        # Which model/version requests name; `pin=True` adopts the first reply's (see client.pinning).
        self.pin = ModelPin(model, version, sticky=pin)
        self._channel = self.config.aio_channel()
        self._stubs = Stubs(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncVaeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the driver: perform each step by awaiting -------------------------------------------------
    async def _perform(self, step: IoStep) -> Any:
        if isinstance(step, NextMessage):
            message = await step.stream.read()
            if message is grpc.aio.EOF:
                return None
            self.pin.observe(message, "SampleStream")
            return message
        if isinstance(step, Sleep):
            return await asyncio.sleep(step.seconds)
        self.pin.stamp(step.request)
        call = self._stubs[step.method](step.request, timeout=step.timeout, metadata=self.config.metadata())
        # A unary call is awaited for its reply; a stream's call object is handed back to be read.
        if isinstance(step, OpenStream):
            return call
        reply = await call
        self.pin.observe(reply, step.method)
        return reply

    async def _drive(self, program: Program[Any]) -> AsyncIterator[Any]:
        try:
            while not program.done:
                if program.emitting:
                    yield program.take()
                else:
                    await program.asettle(self._perform)
        finally:
            program.close()

    async def _run(self, flow: Flow[T]) -> T:
        program = Program(flow)
        async for _ in self._drive(program):
            pass
        return cast(T, program.result)

    # -- model info and health ---------------------------------------------------------------------
    async def info(self, refresh: bool = False, timeout: float | None = None) -> vae_pb2.ModelInfo:
        return await self._run(self._core.info(refresh, timeout))

    async def plan(self) -> Plan:
        return await self._run(self._core.plan())

    async def health(self, service: str = "", timeout: float | None = None) -> str:
        return await self._run(self._core.health(service, timeout))

    # -- calls: see VaeClient for what each one does -----------------------------------------------
    async def encode(self, images: np.ndarray, *, sample: bool = False, seed: int | None = None,
                     timeout: float | None = None) -> EncodeResult:
        return await self._run(self._core.encode(images, sample=sample, seed=seed, timeout=timeout))

    async def decode(self, z: np.ndarray, *, uint8: bool = False, timeout: float | None = None) -> np.ndarray:
        return await self._run(self._core.decode(z, uint8=uint8, timeout=timeout))

    async def reconstruct(self, images: np.ndarray, *, uint8: bool = False,
                          timeout: float | None = None) -> np.ndarray:
        return await self._run(self._core.reconstruct(images, uint8=uint8, timeout=timeout))

    async def sample(self, n: int, *, seed: int | None = None, temperature: float = 1.0,
                     uint8: bool = False, return_latents: bool = False,
                     timeout: float | None = None) -> SampleResult:
        return await self._run(self._core.sample(n, seed=seed, temperature=temperature, uint8=uint8,
                                                 return_latents=return_latents, timeout=timeout))

    def sample_stream(self, n: int, *, seed: int | None = None, temperature: float = 1.0,
                      uint8: bool = False, return_latents: bool = False, chunk_size: int = 0,
                      timeout: float | None = None) -> AsyncIterator[SampleResult]:
        """`async for part in c.sample_stream(...)`: chunks, resumed like VaeClient's."""
        return self._drive(Program(self._core.sample_stream(
            n, seed=seed, temperature=temperature, uint8=uint8, return_latents=return_latents,
            chunk_size=chunk_size, timeout=timeout)))
