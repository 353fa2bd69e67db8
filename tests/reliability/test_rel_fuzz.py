"""Property-based fuzzing with hypothesis over every field of every request, against ONE long-lived real
server: whatever arrives, the answer is OK or a documented client-side status (INVALID_ARGUMENT,
RESOURCE_EXHAUSTED), never INTERNAL/UNKNOWN, and the server stays SERVING.

`make test` runs 2,000 examples (5 methods x 400); `make test-slow` runs 10x as many."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from rel_helpers import serving

from protos.vae.v1 import vae_pb2, vae_pb2_grpc

ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
FAST, SLOW = 400, 4000  # examples per method: 5 x 400 = 2,000 in `make test`
WIRE = {
    np.dtype("<f4"): vae_pb2.DATA_TYPE_FLOAT32,
    np.dtype("<f2"): vae_pb2.DATA_TYPE_FLOAT16,
    np.dtype("u1"): vae_pb2.DATA_TYPE_UINT8,
}

u64 = st.integers(0, 2**64 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
enum_value = st.one_of(st.integers(0, 3), i32)  # known values, and any other number (open enums)


def _values(dtype: np.dtype) -> st.SearchStrategy[Any]:
    if dtype.kind == "u":
        return st.integers(0, 255)
    width = 16 if dtype.itemsize == 2 else 32
    # Mostly valid pixels/latents, sometimes anything a float can hold (NaN, Inf, huge, negative).
    return st.one_of(st.floats(0, 1, width=width), st.floats(width=width))


@st.composite
def tensors(draw: st.DrawFn, rows: tuple[int, ...]) -> vae_pb2.Tensor:
    """A Tensor near the model's shapes (so values get checked), then maybe damaged field by field."""
    dtype = draw(st.sampled_from(list(WIRE)))
    shape = draw(st.sampled_from([rows, rows[1:], (*rows[:-1], rows[-1] + 1), (rows[0], 1, *rows[1:])]))
    n = draw(st.integers(0, 70))
    full = (n, *shape[1:])
    arr = draw(hnp.arrays(dtype, full, elements=_values(dtype)))
    msg = vae_pb2.Tensor(shape=arr.shape, dtype=WIRE[dtype], data=arr.tobytes())
    damage = draw(st.sampled_from(["none", "none", "shape", "dtype", "data", "all"]))
    if damage in ("shape", "all"):
        del msg.shape[:]
        msg.shape.extend(draw(st.lists(st.integers(-(2**63), 2**63 - 1) | st.integers(0, 70), max_size=6)))
    if damage in ("dtype", "all"):
        msg.dtype = draw(enum_value)
    if damage in ("data", "all"):
        msg.data = draw(st.binary(max_size=600))
    return msg


optional_tensor = st.one_of(st.none(), tensors((1, 1, 8, 8)))
temperatures = st.one_of(st.none(), st.floats(width=32), st.floats(0.0625, 4, width=32))
n_values = st.one_of(st.integers(0, 80), st.integers(0, 2**32 - 1))
chunks = st.one_of(st.integers(0, 80), st.integers(0, 2**32 - 1))


def _encode_requests() -> st.SearchStrategy[vae_pb2.EncodeRequest]:
    return st.builds(
        lambda images, sample, seed: vae_pb2.EncodeRequest(
            **({"images": images} if images is not None else {}),
            sample=sample,
            **({"seed": seed} if seed is not None else {}),
        ),
        optional_tensor,
        st.booleans(),
        st.none() | u64,
    )


def _decode_requests() -> st.SearchStrategy[vae_pb2.DecodeRequest]:
    return st.builds(
        lambda z, fmt: vae_pb2.DecodeRequest(**({"z": z} if z is not None else {}), format=fmt),
        st.none() | tensors((1, 4)),
        enum_value,
    )


def _reconstruct_requests() -> st.SearchStrategy[vae_pb2.ReconstructRequest]:
    return st.builds(
        lambda images, fmt: vae_pb2.ReconstructRequest(
            **({"images": images} if images is not None else {}), format=fmt
        ),
        optional_tensor,
        enum_value,
    )


def _sample_requests() -> st.SearchStrategy[vae_pb2.SampleRequest]:
    def build(
        n: int, seed: int | None, t: float | None, fmt: int, latents: bool, chunk: int
    ) -> vae_pb2.SampleRequest:
        r = vae_pb2.SampleRequest(n=n, format=fmt, return_latents=latents, chunk_size=chunk)
        if seed is not None:
            r.seed = seed
        if t is not None:
            r.temperature = t
        return r

    return st.builds(build, n_values, st.none() | u64, temperatures, enum_value, st.booleans(), chunks)


STRATEGIES = {
    "Encode": _encode_requests,
    "Decode": _decode_requests,
    "Reconstruct": _reconstruct_requests,
    "Sample": _sample_requests,
    "SampleStream": _sample_requests,
}


def _code(stub: Any, method: str, request: Any) -> grpc.StatusCode:
    try:
        if method == "SampleStream":
            for _ in stub.SampleStream(request, timeout=30):
                pass
        else:
            getattr(stub, method)(request, timeout=30)
    except grpc.RpcError as exc:
        assert exc.code() in ALLOWED, f"{method}: {exc.code()} {exc.details()} for {request!r:.400}"
        return exc.code()
    return grpc.StatusCode.OK


def _fuzz(rel_server: Any, method: str, examples: int) -> None:
    seen: dict[str, int] = {}
    with rel_server.channel() as ch:
        stub = vae_pb2_grpc.VaeServiceStub(ch)

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=False,
            suppress_health_check=list(HealthCheck),
        )
        @given(STRATEGIES[method]())
        def run(request: Any) -> None:
            code = _code(stub, method, request)
            seen[code.name] = seen.get(code.name, 0) + 1

        run()
    total = sum(seen.values())
    print(f"fuzz {method}: {total} requests, codes {seen}")
    assert total >= examples  # hypothesis ran every example (it may replay more)
    assert seen.get("OK", 0) > 0 and seen.get("INVALID_ARGUMENT", 0) > 0, seen  # both sides explored
    assert serving(f"127.0.0.1:{rel_server.port}")


@pytest.mark.parametrize("method", list(STRATEGIES))
def test_fuzz_every_field(rel_server: Any, method: str) -> None:
    _fuzz(rel_server, method, FAST)


@pytest.mark.slow
@pytest.mark.parametrize("method", list(STRATEGIES))
def test_fuzz_every_field_long(rel_server: Any, method: str) -> None:
    _fuzz(rel_server, method, SLOW)


# --- Score, Interpolate, Traverse, Edit ---------------------------------------------------------------
LATENT_ALLOWED = ALLOWED | {grpc.StatusCode.NOT_FOUND}
names = st.sampled_from(["", "", "", "vae", "other", "\x00"])
k_values = st.one_of(st.integers(0, 4), st.integers(0, 2**32 - 1))
steps_values = st.one_of(st.integers(0, 12), st.integers(0, 2**32 - 1))
floats32 = st.floats(width=32)
# Mostly a known value, so that the other fields get exercised past the enum checks.
enums = st.one_of(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2), enum_value)
steps_values = st.one_of(st.integers(2, 12), steps_values)


def _clean_latent(a: np.ndarray) -> vae_pb2.Endpoint:
    return vae_pb2.Endpoint(z=vae_pb2.Tensor(shape=[4], dtype=vae_pb2.DATA_TYPE_FLOAT32, data=a.tobytes()))


def _endpoints() -> st.SearchStrategy[vae_pb2.Endpoint]:
    clean = hnp.arrays(np.dtype("<f4"), (4,), elements=st.floats(-3, 3, width=32)).map(_clean_latent)
    return st.one_of(
        clean,
        clean,
        st.just(vae_pb2.Endpoint()),
        tensors((1, 1, 8, 8)).map(lambda t: vae_pb2.Endpoint(image=t)),
        tensors((1, 4)).map(lambda t: vae_pb2.Endpoint(z=t)),
    )


def _score_requests() -> st.SearchStrategy[vae_pb2.ScoreRequest]:
    def build(images: Any, k: int, seed: int | None, model: str, version: str) -> vae_pb2.ScoreRequest:
        r = vae_pb2.ScoreRequest(k=k, model=model, version=version)
        if images is not None:
            r.images.CopyFrom(images)
        if seed is not None:
            r.seed = seed
        return r

    return st.builds(build, optional_tensor, k_values, st.none() | u64, names, names)


def _interpolate_requests() -> st.SearchStrategy[vae_pb2.InterpolateRequest]:
    return st.builds(
        lambda a, b, steps, method, fmt, model: vae_pb2.InterpolateRequest(
            a=a, b=b, steps=steps, method=method, format=fmt, model=model),
        _endpoints(), _endpoints(), steps_values, enums, enums, names,
    )


def _traverse_requests() -> st.SearchStrategy[vae_pb2.TraverseRequest]:
    def build(base: Any, dims: list[int], n_dims: int, low: float | None, high: float | None, steps: int,
              fmt: int) -> vae_pb2.TraverseRequest:
        r = vae_pb2.TraverseRequest(base=base, dims=dims, n_dims=n_dims, steps=steps, format=fmt)
        if low is not None:
            r.low = low
        if high is not None:
            r.high = high
        return r

    dims = st.lists(st.integers(0, 6) | st.integers(0, 2**32 - 1), max_size=6)
    bound = st.none() | st.floats(-4, 4, width=32) | floats32
    return st.builds(build, _endpoints(), dims, st.integers(0, 6) | st.integers(0, 2**32 - 1),
                     bound, bound, steps_values, enums)


def _edit_requests() -> st.SearchStrategy[vae_pb2.EditRequest]:
    def build(images: Any, direction: Any, scales: list[float], fmt: int) -> vae_pb2.EditRequest:
        r = vae_pb2.EditRequest(scales=scales, format=fmt)
        if images is not None:
            r.images.CopyFrom(images)
        if direction is not None:
            r.direction.CopyFrom(direction)
        return r

    scales = st.lists(st.floats(-3, 3, width=32) | floats32, max_size=8)
    clean = hnp.arrays(np.dtype("<f4"), (4,), elements=st.floats(-3, 3, width=32)).map(
        lambda a: _clean_latent(a).z)
    # Valid images too (not only random bytes), so that some requests get past the image checks.
    images = hnp.arrays(np.dtype("<f4"), (1, 1, 8, 8), elements=st.floats(0, 1, width=32)).map(
        lambda a: vae_pb2.Tensor(shape=[1, 1, 8, 8], dtype=vae_pb2.DATA_TYPE_FLOAT32, data=a.tobytes()))
    return st.builds(build, optional_tensor | images | images, st.none() | clean | clean | tensors((1, 4)),
                     scales, enums)


LATENT_STRATEGIES = {
    "Score": _score_requests,
    "Interpolate": _interpolate_requests,
    "Traverse": _traverse_requests,
    "Edit": _edit_requests,
}
LATENT_FAST = 200  # examples per new method in `make test`


def _latent_fuzz(rel_server: Any, method: str, examples: int) -> None:
    seen: dict[str, int] = {}
    with rel_server.channel() as ch:
        stub = vae_pb2_grpc.VaeServiceStub(ch)

        @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
                  suppress_health_check=list(HealthCheck))
        @given(LATENT_STRATEGIES[method]())
        def run(request: Any) -> None:
            try:
                getattr(stub, method)(request, timeout=30)
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                assert exc.code() in LATENT_ALLOWED, \
                    f"{method}: {exc.code()} {exc.details()} for {request!r:.400}"
                code = exc.code()
            seen[code.name] = seen.get(code.name, 0) + 1

        run()
    print(f"fuzz {method}: {sum(seen.values())} requests, codes {seen}")
    assert sum(seen.values()) >= examples
    assert seen.get("OK", 0) > 0 and seen.get("INVALID_ARGUMENT", 0) > 0, seen
    assert serving(f"127.0.0.1:{rel_server.port}")


@pytest.mark.parametrize("method", list(LATENT_STRATEGIES))
def test_fuzz_latent_rpcs(rel_server: Any, method: str) -> None:
    _latent_fuzz(rel_server, method, LATENT_FAST)


@pytest.mark.slow
@pytest.mark.parametrize("method", list(LATENT_STRATEGIES))
def test_fuzz_latent_rpcs_long(rel_server: Any, method: str) -> None:
    _latent_fuzz(rel_server, method, SLOW)
