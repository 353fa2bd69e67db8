"""`VaeClient`: the blocking driver of `client.core.ClientCore` for vae.v1.VaeService, numpy in and out.

It owns its channel (use it as a context manager) and performs the core's steps by blocking; what a
call does (chunking under the server's limits, checks, error mapping, stream resume) is the core's.
Unary retries are gRPC's own, from the service config that `ChannelConfig` puts on the channel."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, TypeVar, cast

import numpy as np

from client.channel import ChannelConfig, make_config
from client.core import DriverBase
from client.flow import Flow, IoStep, NextMessage, OpenStream, Program, Sleep, Stubs
from client.messages import EncodeResult, SampleResult, as_latents, join_encode, join_images
from client.pinning import ModelPin
from client.planning import Plan
from protos.vae.v1 import vae_pb2

__all__ = ["VaeClient", "make_config", "join_encode", "join_images", "as_latents"]

T = TypeVar("T")


class VaeClient(DriverBase):
    """Blocking client. `VaeClient("host:50051", token=..., timeout=10)` or `VaeClient(config=cfg)`."""

    def __init__(self, target: str | None = None, *, config: ChannelConfig | None = None,
                 model: str = "", version: str = "", pin: bool = False, **kwargs: Any) -> None:
        super().__init__(target, config, kwargs)
        # Which model/version requests name; `pin=True` adopts the first reply's (see client.pinning).
        self.pin = ModelPin(model, version, sticky=pin)
        self._channel = self.config.sync_channel()
        self._stubs = Stubs(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> VaeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the driver: perform each step by blocking -------------------------------------------------
    def _perform(self, step: IoStep) -> Any:
        if isinstance(step, NextMessage):
            message = next(step.stream, None)
            if message is not None:
                self.pin.observe(message, "SampleStream")
            return message
        if isinstance(step, Sleep):
            return time.sleep(step.seconds)
        # Unary or OpenStream: a sync stream call returns its iterator at once.
        self.pin.stamp(step.request)
        reply = self._stubs[step.method](step.request, timeout=step.timeout, metadata=self.config.metadata())
        if not isinstance(step, OpenStream):
            self.pin.observe(reply, step.method)
        return reply

    def _drive(self, program: Program[Any]) -> Iterator[Any]:
        try:
            while not program.done:
                if program.emitting:
                    yield program.take()
                else:
                    program.settle(self._perform)
        finally:
            program.close()

    def _run(self, flow: Flow[T]) -> T:
        program = Program(flow)
        for _ in self._drive(program):
            pass
        return cast(T, program.result)

    # -- model info and health ---------------------------------------------------------------------
    def info(self, refresh: bool = False, timeout: float | None = None) -> vae_pb2.ModelInfo:
        """The served model's identity, shapes and limits (cached after the first call)."""
        return self._run(self._core.info(refresh, timeout))

    def plan(self) -> Plan:
        return self._run(self._core.plan())

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """The gRPC health status name of `service` ("" = the whole server), e.g. "SERVING"."""
        return self._run(self._core.health(service, timeout))

    # -- calls -------------------------------------------------------------------------------------
    def encode(self, images: np.ndarray, *, sample: bool = False, seed: int | None = None,
               timeout: float | None = None) -> EncodeResult:
        """Images [N,C,H,W] (or [N,H,W] when C is 1) float in [0,1] or uint8 -> mu, logvar (and z)."""
        return self._run(self._core.encode(images, sample=sample, seed=seed, timeout=timeout))

    def decode(self, z: np.ndarray, *, uint8: bool = False, timeout: float | None = None) -> np.ndarray:
        """Latents [N, D] -> mean images [N,C,H,W] (float32 in [0,1], or uint8)."""
        return self._run(self._core.decode(z, uint8=uint8, timeout=timeout))

    def reconstruct(self, images: np.ndarray, *, uint8: bool = False,
                    timeout: float | None = None) -> np.ndarray:
        """Images -> encode (posterior mean) -> decode."""
        return self._run(self._core.reconstruct(images, uint8=uint8, timeout=timeout))

    def sample(self, n: int, *, seed: int | None = None, temperature: float = 1.0, uint8: bool = False,
               return_latents: bool = False, timeout: float | None = None) -> SampleResult:
        """n prior samples. Same (seed, n, temperature) gives byte-identical images: one unary Sample
        when it fits the server's limits, else SampleStream (which the server keeps identical)."""
        return self._run(self._core.sample(n, seed=seed, temperature=temperature, uint8=uint8,
                                           return_latents=return_latents, timeout=timeout))

    def sample_stream(self, n: int, *, seed: int | None = None, temperature: float = 1.0,
                      uint8: bool = False, return_latents: bool = False, chunk_size: int = 0,
                      timeout: float | None = None) -> Iterator[SampleResult]:
        """Stream n samples in chunks. `timeout` bounds the whole stream. With a seed, a stream cut by
        a retryable error is re-requested and the samples already delivered are skipped."""
        return self._drive(Program(self._core.sample_stream(
            n, seed=seed, temperature=temperature, uint8=uint8, return_latents=return_latents,
            chunk_size=chunk_size, timeout=timeout)))
