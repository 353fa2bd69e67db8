"""contracts.tensors: one codec for both sides of the wire, checked against the generated stubs."""

from __future__ import annotations

import numpy as np
import pytest

from contracts.errors import TensorError
from contracts.tensors import DTYPE_CODES, DTYPE_NAMES, MAX_RANK, WireTensor, decode_tensor, encode_array
from protos.vae.v1 import vae_pb2


def _msg(w: WireTensor) -> vae_pb2.Tensor:
    return vae_pb2.Tensor(shape=w.shape, dtype=w.dtype, data=w.data)  # type: ignore[arg-type]


def test_codes_are_the_protos() -> None:
    assert DTYPE_NAMES == {v: k for k, v in vae_pb2.DataType.items()}
    wanted = {"DATA_TYPE_FLOAT32", "DATA_TYPE_FLOAT16", "DATA_TYPE_UINT8"}
    assert {DTYPE_NAMES[c] for c in DTYPE_CODES} == wanted


@pytest.mark.parametrize("arr", [
    np.arange(6, dtype=np.float32).reshape(2, 3),
    np.arange(6, dtype=">f4").reshape(3, 2),
    np.ones((1, 2, 1), np.float16),
    np.arange(5, dtype=np.uint8),
    np.zeros((0, 4), np.float32),
])
def test_round_trip_through_a_real_message(arr: np.ndarray) -> None:
    msg = vae_pb2.Tensor.FromString(_msg(encode_array(arr)).SerializeToString())
    back = decode_tensor(msg, "x")
    assert back.shape == arr.shape and back.dtype.byteorder in "<|=" and np.array_equal(back, arr)
    assert not back.flags.writeable  # a view of the message's bytes, no copy


def test_float64_goes_as_float32_and_other_dtypes_are_refused() -> None:
    assert encode_array(np.array([0.5, 1.0])).dtype == vae_pb2.DATA_TYPE_FLOAT32
    with pytest.raises(TensorError, match="cannot send dtype int64"):
        encode_array(np.arange(3))


F32 = vae_pb2.DATA_TYPE_FLOAT32


@pytest.mark.parametrize("shape, dtype, data, match", [
    ([], 0, b"", "z: missing"),
    ([1], 9, b"1234", "dtype 9 is not supported"),
    ([1], 0, b"1234", "dtype DATA_TYPE_UNSPECIFIED is not supported"),
    ([], F32, b"1234", "shape is empty"),
    ([-1, 2], F32, b"", "negative dimension"),
    ([0] * (MAX_RANK + 1), F32, b"", f"rank {MAX_RANK + 1} is over the limit of {MAX_RANK} axes"),
    ([2, 3], F32, b"\0" * 23, "23 data bytes, but shape \\[2, 3\\] of DATA_TYPE_FLOAT32 needs 24"),
    # np.prod wraps to 0 here; the exact product does not
    ([2**32, 2**32], F32, b"", "0 data bytes, .* needs 73786976294838206464"),
    ([0, 588, 4938, 128476, 6181293], F32, b"", "too large to address"),
])
def test_guards(shape: list[int], dtype: int, data: bytes, match: str) -> None:
    with pytest.raises(TensorError, match=match):
        decode_tensor(vae_pb2.Tensor(shape=shape, dtype=dtype, data=data), "z")  # type: ignore[arg-type]
