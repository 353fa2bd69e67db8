"""A burst of 5,000 concurrent calls on 10 channels against a real `vae serve` (port 0) whose queue
holds few requests: the server refuses what it cannot queue with RESOURCE_EXHAUSTED (and, with its
admission, a `grpc-retry-pushback-ms` hint), and the client's retry policy turns the burst into
5,000 OK and 0 errors."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from rel_helpers import ServeProcess

from client import AsyncVaeClient, RetryPolicy, SampleResult, VaeClient

CALLS = 5000
CHANNELS = 10
MAX_QUEUE = 16
# Spread the retries of a burst wide: attempts at about 0, 0.5, 2, 6.5 and 16.5 s after the first
# refusal (each randomised by gRPC) unless the server's pushback says when; inside a 120 s deadline.
POLICY = RetryPolicy(max_attempts=5, initial_backoff=0.5, max_backoff=10.0, multiplier=3.0)

pytestmark = pytest.mark.timeout(300)


def _refused(srv: ServeProcess) -> float:
    """RESOURCE_EXHAUSTED answers the server counted, read from its /metrics (0 if not exposed)."""
    m = re.search(r"metrics on :(\d+)/metrics", srv.text())
    if not m:
        return 0.0
    with urllib.request.urlopen(f"http://127.0.0.1:{m.group(1)}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vae_requests_total{") and 'code="RESOURCE_EXHAUSTED"' in line)


async def _burst(target: str) -> list[SampleResult | BaseException]:
    clients = [AsyncVaeClient(target, retry=POLICY, timeout=120) for _ in range(CHANNELS)]
    try:
        await asyncio.gather(*(c.info() for c in clients))
        calls = (clients[i % CHANNELS].sample(1, seed=i, uint8=True) for i in range(CALLS))
        return await asyncio.gather(*calls, return_exceptions=True)
    finally:
        await asyncio.gather(*(c.close() for c in clients))


def test_burst_of_5000_calls_on_10_channels_is_all_ok(tiny_model_dir: Path, tmp_path: Path) -> None:
    with ServeProcess(tiny_model_dir, tmp_path / "serve.log", "--max-queue", str(MAX_QUEUE)) as srv:
        results = asyncio.run(_burst(srv.target))
        refused = _refused(srv)
        with VaeClient(srv.target) as c:
            refs = {i: c.sample(1, seed=i, uint8=True).images for i in (0, 1, CALLS - 1)}
    errors = Counter(f"{type(r).__name__}: {r}"[:160] for r in results if isinstance(r, BaseException))
    ok = [r for r in results if isinstance(r, SampleResult)]
    print(f"\nburst {CALLS} calls on {CHANNELS} channels, --max-queue {MAX_QUEUE}: {len(ok)} OK, "
          f"{sum(errors.values())} errors, {refused:.0f} RESOURCE_EXHAUSTED answers retried")
    assert not errors, errors.most_common(3)
    assert len(ok) == CALLS and all(r.images.shape == (1, 1, 8, 8) for r in ok)
    # Each call got its own seed's sample, not a neighbour's.
    assert all(np.array_equal(ok[i].images, ref) for i, ref in refs.items())
