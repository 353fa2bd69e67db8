"""Every RPC against a real server serving the really trained and exported tiny model."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from e2e_helpers import ServerThread, array, settings_for, stub_for, tensor

from protos.vae.v1 import vae_pb2


@pytest.fixture(scope="module")
def manifest(model_dir: Path) -> dict:
    return json.loads((model_dir / "manifest.json").read_text())


@pytest.fixture(scope="module")
def reference(model_dir: Path):
    """The graphs run directly by onnxruntime: what the service must return, byte for byte."""
    enc = ort.InferenceSession(str(model_dir / "encoder.onnx"), providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(model_dir / "decoder.onnx"), providers=["CPUExecutionProvider"])
    return (lambda x: enc.run(None, {"x": x})), (lambda z: dec.run(None, {"z": z})[0])


def _images(manifest: dict, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *manifest["input_shape"]), dtype=np.float32)


def test_model_info(stub, manifest, model_dir):
    import hashlib

    info = stub.GetModelInfo(vae_pb2.GetModelInfoRequest())
    assert info.model_name == manifest["model"]["name"]
    assert info.model_version == manifest["model"]["version"]
    assert list(info.input_shape) == manifest["input_shape"]
    assert info.latent_dim == manifest["latent_dim"]
    assert info.likelihood == manifest["likelihood"]
    assert info.execution_provider == "CPUExecutionProvider"
    assert info.manifest_sha256 == hashlib.sha256((model_dir / "manifest.json").read_bytes()).hexdigest()
    assert info.limits.max_sample_n == 64 and info.limits.max_batch_size == 256
    assert info.dynamic_batching and info.graph_dtype == vae_pb2.DATA_TYPE_FLOAT32


def test_encode_matches_onnxruntime(stub, manifest, reference):
    x = _images(manifest, 5)
    reply = stub.Encode(vae_pb2.EncodeRequest(images=tensor(x)))
    mu, logvar = reference[0](x)
    assert array(reply.mu).tobytes() == mu.tobytes()
    assert array(reply.logvar).tobytes() == logvar.tobytes()
    assert not reply.HasField("z")


def test_encode_sample_is_seeded(stub, manifest):
    x = _images(manifest, 3)
    a = stub.Encode(vae_pb2.EncodeRequest(images=tensor(x), sample=True, seed=7))
    b = stub.Encode(vae_pb2.EncodeRequest(images=tensor(x), sample=True, seed=7))
    c = stub.Encode(vae_pb2.EncodeRequest(images=tensor(x), sample=True))
    assert a.z.data == b.z.data and array(a.z).shape == array(a.mu).shape
    assert a.z.data != c.z.data
    mu, logvar = array(a.mu), array(a.logvar)
    eps = np.random.Generator(np.random.PCG64(7)).standard_normal(mu.shape, dtype=np.float32)
    np.testing.assert_allclose(array(a.z), mu + np.exp(0.5 * logvar) * eps, rtol=1e-6, atol=1e-6)


def test_encode_accepts_uint8_and_rank3(stub, manifest, reference):
    c, h, w = manifest["input_shape"]
    u8 = np.random.default_rng(1).integers(0, 256, (4, c, h, w), dtype=np.uint8)
    reply = stub.Encode(vae_pb2.EncodeRequest(images=tensor(u8)))
    mu, _ = reference[0](u8.astype(np.float32) / np.float32(255))
    np.testing.assert_allclose(array(reply.mu), mu, atol=1e-6)
    if c == 1:
        x = _images(manifest, 2)
        r3 = stub.Encode(vae_pb2.EncodeRequest(images=tensor(x.reshape(2, h, w))))
        assert r3.mu.data == stub.Encode(vae_pb2.EncodeRequest(images=tensor(x))).mu.data


def test_decode_float32_and_uint8(stub, manifest, reference):
    z = np.random.default_rng(2).standard_normal((6, manifest["latent_dim"]), dtype=np.float32)
    reply = stub.Decode(vae_pb2.DecodeRequest(z=tensor(z)))
    expected = reference[1](z)
    assert array(reply.images).tobytes() == expected.tobytes()
    assert list(reply.images.shape) == [6, *manifest["input_shape"]]
    u8 = stub.Decode(vae_pb2.DecodeRequest(z=tensor(z), format=vae_pb2.IMAGE_FORMAT_UINT8))
    assert u8.images.dtype == vae_pb2.DATA_TYPE_UINT8
    np.testing.assert_array_equal(array(u8.images), np.rint(np.clip(expected, 0, 1) * 255).astype(np.uint8))
    f16 = stub.Decode(vae_pb2.DecodeRequest(z=tensor(z.astype(np.float16))))
    np.testing.assert_allclose(array(f16.images), reference[1](z.astype(np.float16).astype(np.float32)))


def test_reconstruct_is_decode_of_mu(stub, manifest, reference):
    x = _images(manifest, 3)
    reply = stub.Reconstruct(vae_pb2.ReconstructRequest(images=tensor(x)))
    mu, _ = reference[0](x)
    assert array(reply.images).tobytes() == reference[1](mu).tobytes()


def test_sample_seeded_and_temperature(stub, manifest, reference):
    req = vae_pb2.SampleRequest(n=5, seed=11, return_latents=True)
    a, b = stub.Sample(req), stub.Sample(req)
    assert a.images.data == b.images.data and a.z.data == b.z.data
    z = np.random.Generator(np.random.PCG64(11)).standard_normal(
        (5, manifest["latent_dim"]), dtype=np.float32
    )
    assert array(a.z).tobytes() == z.tobytes()
    assert array(a.images).tobytes() == reference[1](z).tobytes()
    hot = stub.Sample(vae_pb2.SampleRequest(n=5, seed=11, temperature=2.0, return_latents=True))
    np.testing.assert_array_equal(array(hot.z), z * np.float32(2.0))
    fresh = stub.Sample(vae_pb2.SampleRequest(n=5))
    assert fresh.images.data != a.images.data and not fresh.HasField("z")
    u8 = stub.Sample(vae_pb2.SampleRequest(n=5, seed=11, format=vae_pb2.IMAGE_FORMAT_UINT8))
    assert u8.images.dtype == vae_pb2.DATA_TYPE_UINT8 and list(u8.images.shape) == [
        5,
        *manifest["input_shape"],
    ]


def test_sample_stream_any_chunking_is_byte_identical(stub):
    whole = stub.Sample(vae_pb2.SampleRequest(n=50, seed=3, return_latents=True))
    for chunk in (0, 1, 7, 50):
        parts = list(
            stub.SampleStream(vae_pb2.SampleRequest(n=50, seed=3, return_latents=True, chunk_size=chunk))
        )
        assert [p.offset for p in parts] == list(range(0, 50, chunk or 16))
        assert b"".join(p.images.data for p in parts) == whole.images.data
        assert b"".join(p.z.data for p in parts) == whole.z.data
    big = list(stub.SampleStream(vae_pb2.SampleRequest(n=300, seed=4)))  # beyond max_sample_n=64
    assert sum(p.images.shape[0] for p in big) == 300


def test_sampling_identical_across_batching_and_concurrency(model_dir, stub):
    """Same (seed, n, temperature) -> same bytes: batching on (concurrent, merged) vs off."""
    reqs = [vae_pb2.SampleRequest(n=1 + i % 9, seed=100 + i, temperature=0.5 + i % 3) for i in range(48)]
    alone = [stub.Sample(r).images.data for r in reqs]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda r: stub.Sample(r).images.data, reqs))
    assert together == alone
    # Batching off, and the fixed-block decode used where a provider's rows depend on their batch.
    for overrides in ({"dynamic_batching": False}, {"sample_block": 4}):
        with ServerThread(settings_for(model_dir, **overrides)) as other, other.channel() as ch:
            other_stub = stub_for(ch)
            with ThreadPoolExecutor(16) as pool:
                got = list(pool.map(lambda r, s=other_stub: s.Sample(r).images.data, reqs))
        assert got == alone, overrides


def test_concurrent_requests_split_back_exactly(server, stub, manifest, reference):
    """Distinct concurrent inputs of different sizes each get their own outputs."""
    rng = np.random.default_rng(5)
    zs = [rng.standard_normal((1 + i % 5, manifest["latent_dim"]), dtype=np.float32) for i in range(200)]
    with ThreadPoolExecutor(32) as pool:
        replies = list(pool.map(lambda z: stub.Decode(vae_pb2.DecodeRequest(z=tensor(z))), zs))
    for z, reply in zip(zs, replies, strict=True):
        assert array(reply.images).tobytes() == reference[1](z).tobytes()
    xs = [_images(manifest, 1 + i % 3, seed=i) for i in range(100)]
    with ThreadPoolExecutor(32) as pool:
        enc = list(pool.map(lambda x: stub.Encode(vae_pb2.EncodeRequest(images=tensor(x))), xs))
    for x, reply in zip(xs, enc, strict=True):
        np.testing.assert_array_equal(array(reply.mu), reference[0](x)[0])


def test_deadline_exceeded(stub):
    with pytest.raises(grpc.RpcError) as err:
        list(stub.SampleStream(vae_pb2.SampleRequest(n=5000, seed=1, chunk_size=1), timeout=0.05))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The server keeps serving afterwards.
    assert stub.Sample(vae_pb2.SampleRequest(n=1, seed=1)).images.shape[0] == 1
