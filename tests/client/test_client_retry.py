"""The client's retries against a real server that really answers RESOURCE_EXHAUSTED / UNAVAILABLE
(`fault_server.FaultServer`): gRPC's service-config retry policy retries unary calls and streams
before their first message, honours `grpc-retry-pushback-ms`, stops at max_attempts and at the
deadline; the core resumes a seeded SampleStream cut after its first message."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import numpy as np
import pytest
from fault_server import Fault, FaultServer, toy_images

from client import AsyncVaeClient, RetryPolicy, VaeClient
from client.channel import ChannelConfig
from client.errors import InvalidArgumentError, ResourceExhaustedError, UnavailableError, VaeRpcError
from client.options import ArgParser, add_connection_args, configs_from_args

pytestmark = pytest.mark.timeout(120)

FULL = grpc.StatusCode.RESOURCE_EXHAUSTED
DOWN = grpc.StatusCode.UNAVAILABLE
FAST = RetryPolicy(max_attempts=5, initial_backoff=0.01, max_backoff=0.02)


def _gaps(srv: FaultServer, method: str) -> list[float]:
    times = [a.at for a in srv.seen(method)]
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def test_resource_exhausted_is_retried_after_the_servers_pushback() -> None:
    with FaultServer() as srv, VaeClient(srv.target, retry=FAST, timeout=10) as c:
        c.info()
        srv.fail("Sample", Fault(FULL, "300"), Fault(FULL, "300"))
        r = c.sample(3, seed=2, uint8=True)
        assert np.array_equal(r.images, toy_images(2, 0, 3))
        seen = srv.seen("Sample")
        # One call, three attempts made by gRPC (it numbers them), each after the 300 ms the server
        # asked for: FAST's own backoff (at most 20 ms) would have come back far sooner.
        assert [a.previous for a in seen] == [0, 1, 2]
        assert all(g >= 0.28 for g in _gaps(srv, "Sample")), _gaps(srv, "Sample")


def test_async_client_retries_both_codes_with_backoff() -> None:
    with FaultServer() as srv:
        srv.fail("GetModelInfo", Fault(DOWN))
        srv.fail("Decode", Fault(FULL), Fault(DOWN), Fault(FULL))

        async def go() -> np.ndarray:
            async with AsyncVaeClient(srv.target, retry=FAST, timeout=10) as c:
                return await c.decode(np.zeros((3, 2), np.float32), uint8=True)

        assert asyncio.run(go()).shape == (3, 1, 2, 2)
        assert [a.previous for a in srv.seen("GetModelInfo")] == [0, 1]
        assert [a.previous for a in srv.seen("Decode")] == [0, 1, 2, 3]


def test_attempts_stop_at_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.02)
    with FaultServer() as srv, VaeClient(srv.target, retry=policy, timeout=10) as c:
        c.info()
        srv.fail("Sample", *[Fault(FULL)] * 10)
        with pytest.raises(ResourceExhaustedError) as ei:
            c.sample(2, seed=1)
        assert len(srv.seen("Sample")) == 3
        assert ei.value.retry_limit == 3 and "up to 3 attempts" in str(ei.value)
        assert "scripted RESOURCE_EXHAUSTED" in ei.value.details


def test_negative_pushback_and_other_codes_are_not_retried() -> None:
    with FaultServer() as srv, VaeClient(srv.target, retry=FAST, timeout=10) as c:
        c.info()
        srv.fail("Sample", Fault(FULL, "-1"))
        with pytest.raises(ResourceExhaustedError):
            c.sample(2, seed=1)
        assert len(srv.seen("Sample")) == 1  # the server said: do not come back
        srv.fail("Decode", Fault(grpc.StatusCode.INVALID_ARGUMENT))
        with pytest.raises(InvalidArgumentError) as ei:
            c.decode(np.zeros((1, 2), np.float32))
        assert len(srv.seen("Decode")) == 1 and ei.value.retry_limit == 1
        assert "retried" not in str(ei.value)


def test_retries_end_at_the_call_deadline() -> None:
    with FaultServer() as srv, VaeClient(srv.target, retry=FAST, timeout=10) as c:
        c.info()
        srv.fail("Sample", *[Fault(FULL, "400")] * 10)
        start = time.monotonic()
        with pytest.raises(VaeRpcError) as ei:
            c.sample(2, seed=1, timeout=1.0)
        took = time.monotonic() - start
    # The deadline covers the retries: 1 s holds the first attempt and at most two 400 ms pushbacks.
    assert ei.value.code == grpc.StatusCode.DEADLINE_EXCEEDED, ei.value
    assert took < 1.8 and len(srv.seen("Sample")) <= 3


def test_stream_before_its_first_message_is_retried_by_grpc() -> None:
    with FaultServer() as srv, VaeClient(srv.target, retry=FAST, timeout=10) as c:
        c.info()
        srv.fail("SampleStream", Fault(FULL, "50"), Fault(DOWN))
        parts = list(c.sample_stream(9, uint8=True, chunk_size=4))  # no seed: still safe before chunk 0
        assert [p.offset for p in parts] == [0, 4, 8]
        assert [a.previous for a in srv.seen("SampleStream")] == [0, 1, 2]


def test_seeded_stream_cut_midway_resumes_where_it_stopped() -> None:
    with FaultServer() as srv, VaeClient(srv.target, retry=FAST, timeout=10) as c:
        c.info()
        srv.fail("SampleStream", Fault(DOWN, after_chunks=2), Fault(FULL, "100", after_chunks=3))
        parts = list(c.sample_stream(20, seed=4, uint8=True, chunk_size=3))
        assert [p.offset for p in parts] == list(range(0, 20, 3))  # each chunk delivered once
        assert np.array_equal(np.concatenate([p.images for p in parts]), toy_images(4, 0, 20))
        seen = srv.seen("SampleStream")
        # Committed streams are not gRPC's to retry: each resume is a fresh call made by the core.
        assert [a.previous for a in seen] == [0, 0, 0]
        assert seen[2].at - seen[1].at >= 0.09  # the server's pushback was honoured
        # sample() above max_sample_n streams too, through the same resume.
        srv.fail("SampleStream", Fault(DOWN, after_chunks=1))
        assert np.array_equal(c.sample(12, seed=4, uint8=True).images, toy_images(4, 0, 12))


def test_unseeded_stream_cut_midway_is_raised() -> None:
    with FaultServer() as srv, VaeClient(srv.target, retry=FAST, timeout=10) as c:
        c.info()
        srv.fail("SampleStream", Fault(DOWN, after_chunks=1))
        got = []
        with pytest.raises(UnavailableError) as ei:
            for part in c.sample_stream(10, uint8=True, chunk_size=2):
                got.append(part)
        assert len(got) == 1 and ei.value.method == "SampleStream"  # fresh noise cannot be resumed


def test_async_stream_resume_matches_sync() -> None:
    with FaultServer() as srv:
        srv.fail("SampleStream", Fault(DOWN, after_chunks=1), Fault(DOWN, after_chunks=2))

        async def go() -> list:
            async with AsyncVaeClient(srv.target, retry=FAST, timeout=10) as c:
                return [p async for p in c.sample_stream(11, seed=9, uint8=True, chunk_size=2)]

        parts = asyncio.run(go())
        assert np.array_equal(np.concatenate([p.images for p in parts]), toy_images(9, 0, 11))
        assert len(srv.seen("SampleStream")) == 3


def test_policy_is_handed_to_grpc_as_a_service_config() -> None:
    policy = RetryPolicy(max_attempts=4, initial_backoff=0.25, max_backoff=8.0)
    cfg = ChannelConfig(target="h:1", retry=policy)
    opts = dict(cfg.options())
    assert opts["grpc.enable_retries"] == 1 and opts["grpc.service_config_disable_resolution"] == 1
    method = json.loads(str(opts["grpc.service_config"]))["methodConfig"][0]
    assert {"service": "vae.v1.VaeService"} in method["name"]
    assert method["retryPolicy"] == {"maxAttempts": 4, "initialBackoff": "0.25s", "maxBackoff": "8s",
                                     "backoffMultiplier": 2.0,
                                     "retryableStatusCodes": ["RESOURCE_EXHAUSTED", "UNAVAILABLE"]}
    once = dict(ChannelConfig(target="h:1", retry=RetryPolicy(max_attempts=1)).options())
    assert once["grpc.enable_retries"] == 0
    assert "retryPolicy" not in json.loads(str(once["grpc.service_config"]))["methodConfig"][0]


def test_more_than_five_attempts_is_refused() -> None:
    with pytest.raises(ValueError, match="1..5"):
        RetryPolicy(max_attempts=6)
    with pytest.raises(ValueError, match="> 0"):
        RetryPolicy(initial_backoff=0)
    p = ArgParser(prog="vae client")
    add_connection_args(p)
    with pytest.raises(ValueError, match="--retries must be 1..5"):
        configs_from_args(p.parse_args(["--target", "h:1", "--retries", "8"]))


def test_stream_delays_are_bounded_and_exponential() -> None:
    p = RetryPolicy(max_attempts=5, initial_backoff=0.1, max_backoff=0.3, multiplier=2.0)
    delays = list(p.delays())
    assert len(delays) == 4
    for k, d in enumerate(delays):
        base = min(0.3, 0.1 * 2 ** k)
        assert base * 0.5 <= d <= base
    assert p.retryable(FULL) and p.retryable(DOWN) and not p.retryable(grpc.StatusCode.INVALID_ARGUMENT)
    assert not RetryPolicy(max_attempts=1).retryable(DOWN)


def test_never_retry_methods_get_one_attempt() -> None:
    policy = RetryPolicy(max_attempts=5, initial_backoff=0.01, max_backoff=0.02,
                         never_retry=("vae.v1.VaeService/Sample",))
    configs = policy.service_config()["methodConfig"]
    assert configs[1] == {"name": [{"service": "vae.v1.VaeService", "method": "Sample"}]}  # type: ignore[index]
    with FaultServer() as srv, VaeClient(srv.target, retry=policy, timeout=10) as c:
        srv.fail("GetModelInfo", Fault(DOWN))
        c.info()  # the rest of the service is still retried
        srv.fail("Sample", Fault(FULL))
        with pytest.raises(ResourceExhaustedError) as ei:
            c.sample(2, seed=1)
        assert len(srv.seen("Sample")) == 1 and ei.value.retry_limit == 1
    with pytest.raises(ValueError, match="Service/Method"):
        RetryPolicy(never_retry=("Sample",))


def test_stopping_a_stream_early_cancels_it_on_the_server() -> None:
    with FaultServer() as srv, VaeClient(srv.target, retry=FAST, timeout=30) as c:
        stream = c.sample_stream(200_000, seed=1, uint8=True, chunk_size=1)
        assert next(stream).offset == 0
        stream.close()  # what a `break` out of the for loop does
        end = time.monotonic() + 10
        while srv.cancelled == 0 and time.monotonic() < end:
            time.sleep(0.02)
        assert srv.cancelled == 1
        assert c.sample(3, seed=2, uint8=True).images.shape == (3, 1, 2, 2)  # the client is still fine


def test_stopping_an_async_stream_early_cancels_it_on_the_server() -> None:
    with FaultServer() as srv:

        async def go() -> None:
            async with AsyncVaeClient(srv.target, retry=FAST, timeout=30) as c:
                stream = c.sample_stream(200_000, seed=1, uint8=True, chunk_size=1)
                assert (await stream.__anext__()).offset == 0
                await stream.aclose()  # type: ignore[attr-defined]  # what a `break` leads to
                for _ in range(250):
                    if srv.cancelled:
                        break
                    await asyncio.sleep(0.02)
                assert srv.cancelled == 1  # while the channel is still open: the close did it

        asyncio.run(go())
