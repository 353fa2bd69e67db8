"""Malformed requests against one real server: each gets its documented status code (docs/service.md,
"Errors"), none gets INTERNAL, and the server stays SERVING and correct afterwards."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest
from e2e_helpers import tensor
from rel_helpers import serving

from protos.vae.v1 import vae_pb2, vae_pb2_grpc

IA, RE = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED
F32, F16, U8 = vae_pb2.DATA_TYPE_FLOAT32, vae_pb2.DATA_TYPE_FLOAT16, vae_pb2.DATA_TYPE_UINT8
IMG = (1, 8, 8)  # the tiny model's image shape (tests/conftest.py)
D = 4  # its latent dimension


def _img(n: int = 2, fill: float = 0.5, dtype: Any = np.float32) -> np.ndarray:
    return np.full((n, *IMG), fill, dtype=dtype)


def _poked(value: float, dtype: Any = np.float32, n: int = 2) -> vae_pb2.Tensor:
    x = _img(n, dtype=dtype)
    x[-1, 0, 3, 5] = value
    return tensor(x)


def _raw(shape: list[int], dtype: int, nbytes: int) -> vae_pb2.Tensor:
    return vae_pb2.Tensor(shape=shape, dtype=dtype, data=b"\x00" * nbytes)


def _z(n: int = 2, d: int = D, fill: float = 0.1, dtype: Any = np.float32) -> vae_pb2.Tensor:
    return tensor(np.full((n, d), fill, dtype=dtype))


def _enc(images: vae_pb2.Tensor | None = None, **kw: Any) -> tuple[str, Any]:
    return "Encode", (
        vae_pb2.EncodeRequest(images=images, **kw) if images is not None else vae_pb2.EncodeRequest(**kw)
    )


def _dec(z: vae_pb2.Tensor | None = None, **kw: Any) -> tuple[str, Any]:
    return "Decode", vae_pb2.DecodeRequest(z=z, **kw) if z is not None else vae_pb2.DecodeRequest(**kw)


def _rec(images: vae_pb2.Tensor, **kw: Any) -> tuple[str, Any]:
    return "Reconstruct", vae_pb2.ReconstructRequest(images=images, **kw)


def _smp(**kw: Any) -> tuple[str, Any]:
    return "Sample", vae_pb2.SampleRequest(**kw)


def _str(**kw: Any) -> tuple[str, Any]:
    return "SampleStream", vae_pb2.SampleRequest(**kw)


def _score(images: vae_pb2.Tensor | None = None, **kw: Any) -> tuple[str, Any]:
    req = vae_pb2.ScoreRequest(**kw)
    if images is not None:
        req.images.CopyFrom(images)
    return "Score", req


def _zep(z: Any = None) -> vae_pb2.Endpoint:
    return vae_pb2.Endpoint(z=tensor(np.zeros(D, np.float32) if z is None else z))


def _itp(**kw: Any) -> tuple[str, Any]:
    return "Interpolate", vae_pb2.InterpolateRequest(**{"a": _zep(), "b": _zep(), "steps": 4, **kw})


def _trv(**kw: Any) -> tuple[str, Any]:
    return "Traverse", vae_pb2.TraverseRequest(**{"base": _zep(), "steps": 4, **kw})


def _edt(**kw: Any) -> tuple[str, Any]:
    return "Edit", vae_pb2.EditRequest(**{"images": tensor(_img()), "direction": _z(n=1), **kw})


# (case id, (method, request), expected status, a word the message must contain)
CASES: list[tuple[str, tuple[str, Any], grpc.StatusCode, str]] = [
    # rank and dims
    ("encode-rank-2", _enc(tensor(np.zeros((2, 64), np.float32))), IA, "rank"),
    ("encode-rank-5", _enc(tensor(np.zeros((1, 1, 1, 8, 8), np.float32))), IA, "rank"),
    ("encode-rank-1", _enc(tensor(np.zeros(64, np.float32))), IA, "rank"),
    ("encode-wrong-width", _enc(tensor(np.zeros((1, 1, 8, 9), np.float32))), IA, "does not match"),
    ("encode-wrong-channels", _enc(tensor(np.zeros((1, 3, 8, 8), np.float32))), IA, "does not match"),
    ("encode-zero-dims", _enc(_raw([0, 0, 0, 0], F32, 0)), IA, "does not match"),
    ("encode-negative-dim", _enc(_raw([-1, 1, 8, 8], F32, 256)), IA, "negative"),
    ("encode-empty-shape", _enc(_raw([], F32, 4)), IA, "shape is empty"),
    ("encode-huge-shape", _enc(_raw([2**62, 2**62, 1, 1], F32, 0)), IA, "data bytes"),
    ("decode-empty-unaddressable-shape", _dec(_raw([0, 588, 4938, 128476, 6181293], F32, 0)), IA,
     "too large to address"),
    # dtype and byte length
    ("encode-dtype-unspecified", _enc(_raw([1, *IMG], vae_pb2.DATA_TYPE_UNSPECIFIED, 256)), IA, "dtype"),
    ("encode-dtype-unknown-enum", _enc(_raw([1, *IMG], 77, 256)), IA, "dtype"),
    ("encode-bytes-short", _enc(_raw([1, *IMG], F32, 255)), IA, "data bytes"),
    ("encode-bytes-long", _enc(_raw([1, *IMG], F32, 257)), IA, "data bytes"),
    ("encode-f16-bytes-odd", _enc(_raw([1, *IMG], F16, 129)), IA, "data bytes"),
    ("encode-missing-images", _enc(), IA, "missing"),
    # values
    ("encode-nan", _enc(_poked(math.nan)), IA, "NaN"),
    ("encode-inf", _enc(_poked(math.inf)), IA, "NaN/Inf"),
    ("encode-f16-neg-inf", _enc(_poked(-math.inf, np.float16)), IA, "NaN/Inf"),
    ("encode-pixel-above-1", _enc(_poked(1.5)), IA, "[0, 1]"),
    ("encode-pixel-below-0", _enc(_poked(-0.01)), IA, "[0, 1]"),
    ("encode-f16-pixel-255", _enc(_poked(255.0, np.float16)), IA, "[0, 1]"),
    # batch sizes
    ("encode-empty-batch", _enc(tensor(np.zeros((0, *IMG), np.float32))), IA, "batch axis is 0"),
    ("encode-over-max-batch", _enc(tensor(_img(65))), IA, "max_batch_per_request"),
    ("encode-oversize-payload", _enc(tensor(_img(1100))), RE, "larger than max"),
    # Decode
    ("decode-latent-dim-5", _dec(_z(d=5)), IA, "latent dimension"),
    ("decode-latent-dim-3", _dec(_z(d=3)), IA, "latent dimension"),
    ("decode-uint8-latents", _dec(_z(dtype=np.uint8)), IA, "UINT8"),
    ("decode-rank-1", _dec(tensor(np.zeros(D, np.float32))), IA, "rank"),
    ("decode-nan", _dec(_z(fill=math.nan)), IA, "NaN"),
    ("decode-f16-inf", _dec(_z(fill=math.inf, dtype=np.float16)), IA, "NaN/Inf"),
    # finite but enormous latents overflowed the decoder into NaN images answered OK: now refused
    ("decode-huge-latents", _dec(_z(fill=3e38)), IA, "over the bound"),
    ("decode-empty-batch", _dec(_z(n=0)), IA, "batch axis is 0"),
    ("decode-missing-z", _dec(), IA, "missing"),
    ("decode-unknown-format", _dec(_z(), format=7), IA, "format"),
    ("decode-over-max-batch", _dec(_z(n=65)), IA, "max_batch_per_request"),
    ("decode-oversize-payload", _dec(_z(n=20000)), RE, "larger than max"),
    # Sample
    ("sample-n-0", _smp(n=0), IA, "n must be"),
    ("sample-n-huge", _smp(n=2**32 - 1), IA, "max_sample_n"),
    ("sample-n-over-limit", _smp(n=65), IA, "max_sample_n"),
    ("sample-temperature-0", _smp(n=2, temperature=0.0), IA, "temperature"),
    ("sample-temperature-huge", _smp(n=2, temperature=1e30), IA, "over the bound"),
    ("sample-temperature-negative", _smp(n=2, temperature=-1.0), IA, "temperature"),
    ("sample-temperature-nan", _smp(n=2, temperature=math.nan), IA, "temperature"),
    ("sample-temperature-inf", _smp(n=2, temperature=math.inf), IA, "temperature"),
    ("sample-unknown-format", _smp(n=2, format=9), IA, "format"),
    # SampleStream
    ("stream-n-0", _str(n=0), IA, "n must be"),
    ("stream-n-over-limit", _str(n=2001), IA, "max_stream_n"),
    ("stream-chunk-over-limit", _str(n=10, chunk_size=2**32 - 1), IA, "chunk_size"),
    ("stream-temperature-nan", _str(n=10, temperature=math.nan), IA, "temperature"),
    ("stream-unknown-format", _str(n=10, format=3), IA, "format"),
    # Reconstruct
    ("reconstruct-nan", _rec(_poked(math.nan)), IA, "NaN"),
    ("reconstruct-wrong-height", _rec(tensor(np.zeros((1, 1, 7, 8), np.float32))), IA, "does not match"),
    ("reconstruct-unknown-format", _rec(tensor(_img()), format=-1), IA, "format"),
    ("reconstruct-oversize-payload", _rec(tensor(_img(1100, dtype=np.float32))), RE, "larger than max"),
    # Score, Interpolate, Traverse, Edit
    ("score-missing-images", _score(), IA, "missing"),
    ("score-nan", _score(_poked(math.nan)), IA, "NaN"),
    ("score-k-times-n-over-limit", _score(tensor(_img(4)), k=17), IA, "4 images x k=17"),
    ("score-k-huge", _score(tensor(_img(1)), k=2**32 - 1), IA, "max_batch_per_request"),
    ("score-unknown-model", _score(tensor(_img(1)), model="nope"), grpc.StatusCode.NOT_FOUND, "nope"),
    ("interpolate-no-endpoint", ("Interpolate", vae_pb2.InterpolateRequest(steps=3)), IA,
     "a: set image or z"),
    ("interpolate-steps-1", _itp(steps=1), IA, "steps must be >= 2"),
    ("interpolate-steps-huge", _itp(steps=2**32 - 1), IA, "max_batch_per_request"),
    ("interpolate-unknown-method", _itp(method=5), IA, "InterpolationMethod"),
    ("interpolate-two-images", _itp(a=vae_pb2.Endpoint(image=tensor(_img(2)))), IA, "expected one"),
    ("interpolate-huge-latent", _itp(b=_zep(np.full(D, 3e38, np.float32))), IA, "over the bound"),
    ("traverse-dim-out-of-range", _trv(dims=[D]), IA, "out of range"),
    ("traverse-n-dims-over-d", _trv(n_dims=D + 1), IA, "n_dims"),
    ("traverse-low-nan", _trv(dims=[0], low=math.nan), IA, "low"),
    ("traverse-rows-times-steps", _trv(dims=[0, 1, 2], steps=30), IA, "3 dims x 30 steps"),
    ("edit-missing-direction", ("Edit", vae_pb2.EditRequest(images=tensor(_img()))), IA, "direction"),
    ("edit-direction-width", _edt(direction=_z(n=1, d=D + 1)), IA, "latent dimension"),
    ("edit-scale-inf", _edt(scales=[math.inf]), IA, "scales"),
    ("edit-overflowing-edit", _edt(direction=_z(n=1, fill=9000.0), scales=[3.0]), IA, "edited latents"),
    ("edit-images-times-scales", _edt(images=tensor(_img(40)), scales=[1.0, 2.0]), IA,
     "40 images x 2 scales"),
]


def _invoke(stub: vae_pb2_grpc.VaeServiceStub, method: str, request: Any) -> Any:
    call: Callable[..., Any] = getattr(stub, method)
    if method == "SampleStream":
        return list(call(request, timeout=20))
    return call(request, timeout=20)


@pytest.fixture(scope="module")
def stub(rel_server: Any) -> Any:
    with rel_server.channel() as ch:
        yield vae_pb2_grpc.VaeServiceStub(ch)


def test_at_least_30_distinct_cases() -> None:
    assert len({c[0] for c in CASES}) == len(CASES) >= 30


@pytest.mark.parametrize("case, call, code, word", CASES, ids=[c[0] for c in CASES])
def test_malformed_request_gets_its_documented_code(
    stub: Any, case: str, call: tuple[str, Any], code: grpc.StatusCode, word: str
) -> None:
    method, request = call
    with pytest.raises(grpc.RpcError) as err:
        _invoke(stub, method, request)
    assert err.value.code() == code, f"{case}: {err.value.code()} {err.value.details()}"
    assert word in (err.value.details() or ""), f"{case}: {err.value.details()}"


def test_undecodable_bytes_are_invalid_argument(rel_server: Any) -> None:
    """Bytes that are not a protobuf message at all: INVALID_ARGUMENT naming the type, not UNKNOWN with
    a Python exception class in the message."""
    with rel_server.channel() as ch:
        for method in ("Encode", "Decode", "Sample", "Reconstruct", "Score", "Interpolate", "Traverse",
                       "Edit"):
            raw = ch.unary_unary(
                f"/vae.v1.VaeService/{method}",
                request_serializer=lambda b: b,
                response_deserializer=lambda b: b,
            )
            for junk in (b"\xff\xff\xff\xff", b"\x0a\x05\x0a\x03\xff"):
                with pytest.raises(grpc.RpcError) as err:
                    raw(junk, timeout=10)
                assert err.value.code() == IA, (method, err.value.code(), err.value.details())
                assert "not a valid" in err.value.details()
                assert "class" not in err.value.details()


def test_unknown_method_is_unimplemented(rel_server: Any) -> None:
    with rel_server.channel() as ch:
        raw = ch.unary_unary(
            "/vae.v1.VaeService/DropTables", request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        with pytest.raises(grpc.RpcError) as err:
            raw(b"", timeout=10)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_server_healthy_and_correct_after_the_barrage(rel_server: Any, stub: Any) -> None:
    """After every bad input above (module order), the same server still answers right."""
    for _, (method, request), _, _ in CASES:
        with pytest.raises(grpc.RpcError):
            _invoke(stub, method, request)
    assert serving(f"127.0.0.1:{rel_server.port}")
    x = _img(3, fill=0.25)
    a = stub.Encode(vae_pb2.EncodeRequest(images=tensor(x)), timeout=10)
    b = stub.Encode(vae_pb2.EncodeRequest(images=tensor(x[:1])), timeout=10)
    assert list(a.mu.shape) == [3, D] and a.mu.data[: 4 * D] == b.mu.data
    s = stub.Sample(vae_pb2.SampleRequest(n=5, seed=3, format=vae_pb2.IMAGE_FORMAT_UINT8), timeout=10)
    assert list(s.images.shape) == [5, *IMG] and s.images.dtype == U8


def test_expired_deadlines_and_cancellations_are_harmless(rel_server: Any, stub: Any) -> None:
    """300 calls whose deadline expires in flight (1 ms) and 100 cancelled at once: only OK,
    DEADLINE_EXCEEDED or CANCELLED come back, and the server is unharmed."""
    request = vae_pb2.SampleRequest(n=64, seed=1)
    futures = [stub.Sample.future(request, timeout=0.001) for _ in range(300)]
    cancelled = [stub.Sample.future(request, timeout=20) for _ in range(100)]
    for f in cancelled:
        f.cancel()
    codes = set()
    for f in futures + cancelled:
        try:
            f.result()
            codes.add(grpc.StatusCode.OK)
        except grpc.FutureCancelledError:
            codes.add(grpc.StatusCode.CANCELLED)
        except grpc.RpcError as exc:
            codes.add(exc.code())
    assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}, codes
    assert grpc.StatusCode.DEADLINE_EXCEEDED in codes
    assert serving(f"127.0.0.1:{rel_server.port}")
    assert stub.Sample(request, timeout=10).images.shape[0] == 64
