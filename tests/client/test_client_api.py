"""VaeClient and AsyncVaeClient against real servers: numpy in and out, chunking under the server's
limits, Sample vs SampleStream identity, tokens, deadlines, retries and the error mapping."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from client_helpers import ServerThread, SilentServer, free_port

from client import AsyncVaeClient, RetryPolicy, VaeClient
from client.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    UnauthenticatedError,
    UnavailableError,
    VaeRpcError,
    from_rpc_error,
)

pytestmark = pytest.mark.timeout(180)


def _digits(n: int) -> np.ndarray:
    from sklearn.datasets import load_digits

    return (load_digits().images[:n, None] / 16.0).astype(np.float32)


def test_info_health_and_roundtrip(server: ServerThread) -> None:
    with VaeClient(server.target, timeout=10) as c:
        info = c.info()
        assert list(info.input_shape) == [1, 8, 8] and info.latent_dim == 4
        assert c.health() == "SERVING" and c.health("vae.v1.VaeService") == "SERVING"
        x = _digits(40)
        enc = c.encode(x)
        assert enc.mu.shape == (40, 4) and enc.logvar.shape == (40, 4) and enc.z is None
        assert enc.mu.dtype == np.float32
        # uint8 in [0, 255] is the same image as float in [0, 1] up to quantisation.
        enc8 = c.encode(np.rint(x * 255).astype(np.uint8))
        assert np.allclose(enc8.mu, enc.mu, atol=1e-2)
        imgs = c.decode(enc.mu)
        assert imgs.shape == (40, 1, 8, 8) and imgs.dtype == np.float32
        assert float(imgs.min()) >= 0.0 and float(imgs.max()) <= 1.0
        rec = c.reconstruct(x, uint8=True)
        assert rec.dtype == np.uint8 and np.array_equal(rec, c.decode(enc.mu, uint8=True))
        s = c.encode(x[:, 0], sample=True, seed=5)  # [N, H, W] is accepted when C is 1
        assert s.z is not None and s.z.shape == (40, 4)
        assert np.array_equal(s.z, c.encode(x, sample=True, seed=5).z)


def test_sample_is_deterministic_and_stream_matches(server: ServerThread) -> None:
    with VaeClient(server.target) as c:
        a = c.sample(50, seed=7, uint8=True, return_latents=True)
        b = c.sample(50, seed=7, uint8=True, return_latents=True)
        assert a.images.dtype == np.uint8 and a.images.shape == (50, 1, 8, 8)
        assert a.z is not None and a.z.shape == (50, 4)
        assert np.array_equal(a.images, b.images) and np.array_equal(a.z, b.z)
        parts = list(c.sample_stream(50, seed=7, uint8=True, return_latents=True, chunk_size=7))
        assert [p.offset for p in parts] == list(range(0, 50, 7))
        assert np.array_equal(np.concatenate([p.images for p in parts]), a.images)
        # The noise stream has no cut points: a shorter request is a prefix of a longer one.
        assert np.array_equal(c.sample(10, seed=7, uint8=True).images, a.images[:10])
        hot = c.sample(50, seed=7, temperature=2.0, return_latents=True)
        assert hot.z is not None and np.allclose(hot.z, 2.0 * a.z, atol=1e-6)


def test_chunking_under_small_limits(server: ServerThread, small_server: ServerThread) -> None:
    x = _digits(100)
    with VaeClient(server.target) as big, VaeClient(small_server.target) as small:
        plan = small.plan()
        assert plan.encode_chunk(4, False) <= 16 and plan.max_sample_n == 8
        e_big, e_small = big.encode(x), small.encode(x)
        assert np.allclose(e_big.mu, e_small.mu, atol=1e-5) and e_small.mu.shape == (100, 4)
        assert np.allclose(big.decode(e_big.mu), small.decode(e_big.mu), atol=1e-5)
        # 50 > max_sample_n = 8: the client streams, and the images are those of one unary Sample.
        assert np.array_equal(small.sample(50, seed=3, uint8=True).images,
                              big.sample(50, seed=3, uint8=True).images)


def test_async_client_matches_sync(server: ServerThread) -> None:
    x = _digits(30)

    async def go() -> tuple:
        async with AsyncVaeClient(server.target, timeout=10) as c:
            assert await c.health() == "SERVING"
            many = await asyncio.gather(*(c.sample(20, seed=s, uint8=True) for s in range(6)))
            enc = await c.encode(x)
            dec = await c.decode(enc.mu, uint8=True)
            parts = [p async for p in c.sample_stream(20, seed=2, uint8=True, chunk_size=6)]
            return many, enc, dec, parts

    many, enc, dec, parts = asyncio.run(go())
    with VaeClient(server.target) as c:
        for s, r in enumerate(many):
            assert np.array_equal(r.images, c.sample(20, seed=s, uint8=True).images)
        assert np.allclose(enc.mu, c.encode(x).mu, atol=1e-6)
        assert np.array_equal(np.concatenate([p.images for p in parts]), many[2].images)
        assert dec.shape == (30, 1, 8, 8)


def test_invalid_argument_is_mapped_with_the_servers_message(server: ServerThread) -> None:
    with VaeClient(server.target) as c:
        with pytest.raises(ValueError, match="shape"):
            c.encode(np.zeros((2, 1, 5, 5), np.float32))  # caught before the round trip
        bad = np.full((2, 1, 8, 8), 3.0, np.float32)  # outside [0, 1]: the server refuses it
        with pytest.raises(InvalidArgumentError) as ei:
            c.encode(bad)
        err = ei.value
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.status == "INVALID_ARGUMENT"
        assert err.details and "Encode" in str(err) and server.target in str(err)
        assert err.attempts == 1  # not retried
        with pytest.raises(InvalidArgumentError):
            c.decode(np.full((1, 4), np.nan, np.float32))


def test_token_auth(tiny_model_dir) -> None:
    with ServerThread(tiny_model_dir, auth_token="s3cret") as srv:
        with VaeClient(srv.target) as anon, pytest.raises(UnauthenticatedError) as ei:
            anon.sample(2, seed=1)
        assert ei.value.status == "UNAUTHENTICATED"
        with VaeClient(srv.target, token="wrong") as c, pytest.raises(UnauthenticatedError):
            c.info()
        with VaeClient(srv.target, token="s3cret") as c:
            assert c.sample(2, seed=1).images.shape == (2, 1, 8, 8)


def test_unreachable_target_is_retried_then_unavailable() -> None:
    port = free_port()  # nothing listens there
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.02)
    with VaeClient(f"127.0.0.1:{port}", timeout=5, retry=policy) as c, pytest.raises(UnavailableError) as ei:
        c.info()
    # gRPC's policy made the attempts (tests/client/test_client_retry.py counts them on a real server).
    assert ei.value.retry_limit == 3 and ei.value.status == "UNAVAILABLE"
    assert "up to 3 attempts" in str(ei.value)


def test_silent_server_hits_the_deadline() -> None:
    with SilentServer() as silent, VaeClient(silent.target, timeout=1.0) as c:
        with pytest.raises(DeadlineExceededError) as ei:
            c.info()
    assert ei.value.status == "DEADLINE_EXCEEDED" and ei.value.attempts == 1


class _FakeRpcError(grpc.RpcError):
    """Every status code, for the mapping table (the retries meet real ones in test_client_retry)."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "queue full"


def test_error_mapping_table() -> None:
    for code in grpc.StatusCode:
        if code == grpc.StatusCode.OK:
            continue
        err = from_rpc_error(_FakeRpcError(code), method="Decode", target="h:1")
        assert isinstance(err, VaeRpcError) and err.code == code
        assert f"Decode on h:1 failed: {code.name}: queue full" == str(err)
    assert type(from_rpc_error(_FakeRpcError(grpc.StatusCode.UNAVAILABLE))) is UnavailableError


def test_queue_full_server_still_serves_every_request_through_retries(tiny_model_dir) -> None:
    # max_queue=1 with many requests in flight: the server answers RESOURCE_EXHAUSTED to some,
    # and the client's backoff retries them until each one is served.
    import threading

    with ServerThread(tiny_model_dir, max_queue=1, inference_workers=1, inline_max_rows=0) as srv:
        # Hold the decoder busy for the first calls (a stalled GPU), so the one-slot queue overflows
        # for certain; the gate opens after a short while and the retries then get through.
        decoder = srv.server.decoder
        real = decoder._run
        gate = threading.Event()
        threading.Timer(0.5, gate.set).start()
        decoder._run = lambda x: (gate.wait(10), real(x))[1]

        async def go() -> list:
            policy = RetryPolicy(max_attempts=5, initial_backoff=0.2, max_backoff=5.0, multiplier=3.0)
            async with AsyncVaeClient(srv.target, retry=policy) as c:
                return await asyncio.gather(*(c.sample(256, seed=s, uint8=True) for s in range(120)))

        results = asyncio.run(go())
        assert len(results) == 120 and all(r.images.shape == (256, 1, 8, 8) for r in results)
        refused = sum(s.value for fam in srv.registry.collect() for s in fam.samples
                      if s.name == "vae_requests_total" and s.labels["method"] == "Sample"
                      and s.labels["code"] == "RESOURCE_EXHAUSTED")
        assert refused and refused > 0  # the queue did overflow, and every refused call was retried


def test_from_tensor_rejects_malformed_server_tensors() -> None:
    from client.errors import ProtocolError
    from client.tensors import from_tensor
    from protos.vae.v1 import vae_pb2

    f32 = vae_pb2.DATA_TYPE_FLOAT32
    with pytest.raises(ProtocolError, match="too large to address"):
        from_tensor(vae_pb2.Tensor(shape=[0, 588, 4938, 128476, 6181293], dtype=f32))
    with pytest.raises(ProtocolError, match="0 data bytes, .* needs 73786976294838206464"):  # np.prod: 0
        from_tensor(vae_pb2.Tensor(shape=[2**32, 2**32], dtype=f32, data=b""))
    with pytest.raises(ProtocolError, match="rank 40"):
        from_tensor(vae_pb2.Tensor(shape=[0] * 40, dtype=f32))
    assert from_tensor(vae_pb2.Tensor(shape=[0, 4], dtype=f32)).shape == (0, 4)
