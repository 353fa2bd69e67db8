"""A burst of 5,000 concurrent calls on 10 channels against a real `vae serve` (port 0) whose queue
holds 2 requests: without retries the server refuses part of it with RESOURCE_EXHAUSTED (with its
admission, also a `grpc-retry-pushback-ms` hint); with the client's retry policy the same burst is
5,000 OK and 0 errors."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from rel_helpers import ServeProcess

from client import AsyncVaeClient, RetryPolicy, SampleResult, VaeClient
from client.errors import ResourceExhaustedError

CALLS = 5000
CHANNELS = 10
MAX_QUEUE = 2
# Spread the retries of a burst wide: attempts at about 0, 0.5, 2, 6.5 and 16.5 s after the first
# refusal (each randomised by gRPC) unless the server's pushback says when; inside a 120 s deadline.
POLICY = RetryPolicy(max_attempts=5, initial_backoff=0.5, max_backoff=10.0, multiplier=3.0)

pytestmark = pytest.mark.timeout(300)


async def _burst(target: str, policy: RetryPolicy) -> list[SampleResult | BaseException]:
    clients = [AsyncVaeClient(target, retry=policy, timeout=120) for _ in range(CHANNELS)]
    try:
        await asyncio.gather(*(c.info() for c in clients))
        calls = (clients[i % CHANNELS].sample(1, seed=i, uint8=True) for i in range(CALLS))
        return await asyncio.gather(*calls, return_exceptions=True)
    finally:
        await asyncio.gather(*(c.close() for c in clients))


def test_burst_of_5000_calls_on_10_channels_is_all_ok(tiny_model_dir: Path, tmp_path: Path) -> None:
    with ServeProcess(tiny_model_dir, tmp_path / "serve.log", "--max-queue", str(MAX_QUEUE)) as srv:
        # The same burst without retries: what the server refuses (the retries below must absorb it).
        bare = asyncio.run(_burst(srv.target, RetryPolicy(max_attempts=1)))
        results = asyncio.run(_burst(srv.target, POLICY))
        with VaeClient(srv.target) as c:
            refs = {i: c.sample(1, seed=i, uint8=True).images for i in (0, 1, CALLS - 1)}
    refused = sum(isinstance(r, ResourceExhaustedError) for r in bare)
    errors = Counter(f"{type(r).__name__}: {r}"[:160] for r in results if isinstance(r, BaseException))
    ok = [r for r in results if isinstance(r, SampleResult)]
    print(f"\nburst {CALLS} calls on {CHANNELS} channels, --max-queue {MAX_QUEUE}: {len(ok)} OK, "
          f"{sum(errors.values())} errors; without retries {refused} were refused RESOURCE_EXHAUSTED")
    assert refused > 0, "the burst must overflow the server's queue, or the test proves nothing"
    assert not errors, errors.most_common(3)
    assert len(ok) == CALLS and all(r.images.shape == (1, 1, 8, 8) for r in ok)
    # Each call got its own seed's sample, not a neighbour's.
    assert all(np.array_equal(ok[i].images, ref) for i, ref in refs.items())
