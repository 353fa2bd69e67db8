"""numpy <-> `vae.v1.Tensor`: shape, element type and raw little-endian row-major bytes.

The client keeps its own small codec (it may not import the service); both follow the proto."""

from __future__ import annotations

import math

import numpy as np

from client.errors import ProtocolError
from protos.vae.v1 import vae_pb2

__all__ = ["to_tensor", "from_tensor", "DTYPES"]

# Wire element type -> little-endian numpy dtype.
DTYPES: dict[vae_pb2.DataType, np.dtype] = {
    vae_pb2.DATA_TYPE_FLOAT32: np.dtype("<f4"),
    vae_pb2.DATA_TYPE_FLOAT16: np.dtype("<f2"),
    vae_pb2.DATA_TYPE_UINT8: np.dtype("u1"),
}
_BY_KIND: dict[str, vae_pb2.DataType] = {np.dtype(v).str: k for k, v in DTYPES.items()}


def to_tensor(array: np.ndarray) -> vae_pb2.Tensor:
    """Pack an array of float32, float16 or uint8 (any byte order) into a Tensor."""
    arr = np.asarray(array)
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)  # numpy's default float; the wire carries float32
    key = arr.dtype.newbyteorder("<").str if arr.dtype.itemsize > 1 else arr.dtype.str
    if key not in _BY_KIND:
        raise TypeError(f"cannot send dtype {arr.dtype}: use float32, float16 or uint8")
    le = np.ascontiguousarray(arr, dtype=DTYPES[_BY_KIND[key]])
    return vae_pb2.Tensor(shape=list(le.shape), dtype=_BY_KIND[key], data=le.tobytes())


def from_tensor(tensor: vae_pb2.Tensor, what: str = "tensor") -> np.ndarray:
    """Unpack a Tensor, checking that its byte count matches its shape and dtype."""
    if tensor.dtype not in DTYPES:
        raise ProtocolError(f"server sent {what} with unknown dtype {tensor.dtype}")
    dtype = DTYPES[tensor.dtype]
    shape = tuple(int(s) for s in tensor.shape)
    if any(s < 0 for s in shape):
        raise ProtocolError(f"server sent {what} with negative shape {list(shape)}")
    if len(shape) > 32:
        raise ProtocolError(f"server sent {what} of rank {len(shape)}")
    expected = math.prod(shape) * dtype.itemsize  # exact: np.prod wraps at 2**64
    if len(tensor.data) != expected:
        raise ProtocolError(f"server sent {what} of shape {list(shape)} {dtype.name} with "
                            f"{len(tensor.data)} bytes, expected {expected}")
    if math.prod(max(s, 1) for s in shape) * dtype.itemsize > 2**62:  # empty, beside enormous axes
        raise ProtocolError(f"server sent {what} of shape {list(shape)}, too large to address")
    # Native order for callers; a copy, so the array owns writable memory.
    return np.frombuffer(tensor.data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
