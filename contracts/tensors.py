"""The wire tensor codec: shape + element type + raw little-endian row-major bytes (vae.proto,
`message Tensor`). Works on any message duck-typed (`.shape`, `.dtype`, `.data`) and returns plain
values the service and the client build their own `Tensor` from: the core never imports protobuf.

One set of guards for both sides: a known element type, no negative axis, at most MAX_RANK axes, a
byte count equal to the exact (unbounded integer) product of the shape, and no shape numpy cannot
address even when an axis is 0."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from contracts.errors import TensorError

__all__ = [
    "DTYPE_CODES",
    "DTYPE_NAMES",
    "MAX_RANK",
    "MAX_ADDRESSABLE_BYTES",
    "TensorLike",
    "WireTensor",
    "decode_tensor",
    "encode_array",
]

# `DataType` enum of vae.proto -> little-endian numpy dtype (tests/contracts checks these against the
# generated stubs, so a renumbering in the proto cannot go unnoticed).
DTYPE_CODES: dict[int, np.dtype[Any]] = {1: np.dtype("<f4"), 2: np.dtype("<f2"), 3: np.dtype("u1")}
DTYPE_NAMES: dict[int, str] = {0: "DATA_TYPE_UNSPECIFIED", 1: "DATA_TYPE_FLOAT32", 2: "DATA_TYPE_FLOAT16",
                               3: "DATA_TYPE_UINT8"}
_CODE_OF: dict[str, int] = {dt.str: code for code, dt in DTYPE_CODES.items()}
_F32, _F32_CODE = DTYPE_CODES[1], 1  # little-endian float32 (a big-endian array goes the long way)
# Served tensors are rank 2 (latents) or 4 (images); callers name the exact rank they want. These two
# bounds only keep numpy's own reshape limits (64 axes; an intp-sized byte count, which it checks over
# the non-zero axes even when another axis is 0) from surfacing as an internal error.
MAX_RANK = 8
MAX_ADDRESSABLE_BYTES = 2**62


class TensorLike(Protocol):
    """What the codec reads from a message: vae.v1.Tensor has these three fields."""

    @property
    def shape(self) -> Any: ...
    @property
    def dtype(self) -> int: ...
    @property
    def data(self) -> bytes: ...


@dataclass(frozen=True)
class WireTensor:
    """The fields of a Tensor message: build one with `Tensor(shape=..., dtype=..., data=...)`."""

    shape: list[int]
    dtype: int
    data: bytes


def _dtype_name(code: int) -> str:
    return DTYPE_NAMES.get(code, str(code))


def decode_tensor(tensor: TensorLike, what: str) -> np.ndarray:
    """A read-only little-endian view of the message's bytes; TensorError (message starting with
    `what`) on a missing tensor, unknown dtype, bad shape or a byte count that does not match."""
    code = int(tensor.dtype)
    if not len(tensor.shape) and not tensor.data and not code:
        raise TensorError(f"{what}: missing (no {what} tensor in the message)")
    dtype = DTYPE_CODES.get(code)
    if dtype is None:
        raise TensorError(f"{what}: dtype {_dtype_name(code)} is not supported (use DATA_TYPE_FLOAT32, "
                          "DATA_TYPE_FLOAT16 or DATA_TYPE_UINT8)")
    shape = tuple(int(d) for d in tensor.shape)
    if not shape:
        raise TensorError(f"{what}: shape is empty; give the full shape, batch axis first")
    if any(d < 0 for d in shape):
        raise TensorError(f"{what}: negative dimension in shape {list(shape)}")
    if len(shape) > MAX_RANK:
        raise TensorError(f"{what}: rank {len(shape)} is over the limit of {MAX_RANK} axes")
    expected = math.prod(shape) * dtype.itemsize  # exact: np.prod wraps at 2**64
    if len(tensor.data) != expected:
        raise TensorError(f"{what}: {len(tensor.data)} data bytes, but shape {list(shape)} of "
                          f"{_dtype_name(code)} needs {expected}")
    if not expected and math.prod(max(d, 1) for d in shape) * dtype.itemsize > MAX_ADDRESSABLE_BYTES:
        # only an empty tensor gets here: a 0 axis beside enormous ones
        raise TensorError(f"{what}: shape {list(shape)} is too large to address")
    return np.frombuffer(tensor.data, dtype=dtype).reshape(shape)


def encode_array(array: np.ndarray) -> WireTensor:
    """The wire fields of a float32, float16 or uint8 array (any byte order; float64, numpy's default
    float, is sent as float32). TensorError for any other element type."""
    arr = np.asarray(array)
    if arr.dtype == _F32 and arr.flags.c_contiguous:  # what the service sends: no look-ups, no copy
        return WireTensor(shape=list(arr.shape), dtype=_F32_CODE, data=arr.tobytes())
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    key = arr.dtype.newbyteorder("<").str if arr.dtype.itemsize > 1 else arr.dtype.str
    code = _CODE_OF.get(key)
    if code is None:
        raise TensorError(f"cannot send dtype {arr.dtype}: use float32, float16 or uint8")
    le = np.ascontiguousarray(arr, dtype=DTYPE_CODES[code])
    return WireTensor(shape=list(le.shape), dtype=code, data=le.tobytes())
