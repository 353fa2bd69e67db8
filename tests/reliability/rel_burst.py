"""A burst of concurrent calls against a real server: N calls in flight at once, spread over C channels,
each call's status code, details and trailers recorded. Bounded in count and in time (loopback only).

Reusable: `burst(target, make_call, total=..., channels=...)` takes any coroutine factory
`make_call(channel, i) -> awaitable`, so a client library's own call (with its retry policy) can be
driven the same way; `decode_call` is the plain generated-stub Decode of batch 1.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from protos.vae.v1 import vae_pb2, vae_pb2_grpc

__all__ = ["BurstResult", "Outcome", "burst", "run_burst", "decode_call"]


@dataclass
class Outcome:
    code: str
    details: str = ""
    trailers: dict[str, str] = field(default_factory=dict)


@dataclass
class BurstResult:
    outcomes: list[Outcome]
    seconds: float

    def codes(self) -> Counter[str]:
        return Counter(o.code for o in self.outcomes)

    def summary(self) -> dict[str, Any]:
        return {"calls": len(self.outcomes), "seconds": round(self.seconds, 2), **dict(self.codes())}


MakeCall = Callable[[grpc.aio.Channel, int], Awaitable[Any]]


def decode_call(latent_dim: int, timeout: float = 60.0) -> MakeCall:
    """A valid batch-1 Decode on the generated stub (no retry of its own)."""
    z = np.zeros((1, latent_dim), np.float32)
    request = vae_pb2.DecodeRequest(z=vae_pb2.Tensor(shape=z.shape, dtype=vae_pb2.DATA_TYPE_FLOAT32,
                                                     data=z.tobytes()))

    async def call(channel: grpc.aio.Channel, i: int) -> Any:
        return await vae_pb2_grpc.VaeServiceStub(channel).Decode(request, timeout=timeout)

    return call


async def _one(make_call: MakeCall, channel: grpc.aio.Channel, i: int, start: asyncio.Event) -> Outcome:
    await start.wait()
    try:
        await make_call(channel, i)
        return Outcome("OK")
    except grpc.aio.AioRpcError as exc:
        trailers = {k: str(v) for k, v in (exc.trailing_metadata() or ())}
        return Outcome(exc.code().name, exc.details() or "", trailers)


async def burst(target: str, make_call: MakeCall, *, total: int = 5000, channels: int = 10,
                timeout: float = 120.0) -> BurstResult:
    """Start `total` calls at once (round-robin over `channels` channels) and wait for all of them,
    at most `timeout` seconds (then the rest are cancelled and recorded as the test's failure)."""
    chans = [grpc.aio.insecure_channel(target) for _ in range(channels)]
    try:
        for ch in chans:  # connected before the burst: the burst measures calls, not handshakes
            await asyncio.wait_for(ch.channel_ready(), 30)
        start = asyncio.Event()
        tasks = [asyncio.ensure_future(_one(make_call, chans[i % channels], i, start)) for i in range(total)]
        await asyncio.sleep(0)
        t0 = time.monotonic()
        start.set()
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for t in pending:
            t.cancel()
        outcomes = [t.result() for t in tasks if t in done]
        outcomes += [Outcome("TEST_TIMEOUT")] * len(pending)
        return BurstResult(outcomes, time.monotonic() - t0)
    finally:
        for ch in chans:
            await ch.close()


def run_burst(target: str, make_call: MakeCall, **kw: Any) -> BurstResult:
    """`burst` from synchronous test code (its own event loop)."""
    return asyncio.run(burst(target, make_call, **kw))
