"""Tensor messages <-> numpy arrays: raw little-endian row-major bytes, no per-element Python work."""

from __future__ import annotations

from typing import Any

import numpy as np

from protos.vae.v1 import vae_pb2
from service.errors import InvalidArgument

__all__ = ["to_array", "from_array", "images_message", "WIRE_DTYPES"]

WIRE_DTYPES: dict[int, np.dtype] = {
    vae_pb2.DATA_TYPE_FLOAT32: np.dtype("<f4"),
    vae_pb2.DATA_TYPE_FLOAT16: np.dtype("<f2"),
    vae_pb2.DATA_TYPE_UINT8: np.dtype("u1"),
}
_CODES: dict[str, Any] = {np.dtype(v).str: k for k, v in WIRE_DTYPES.items()}
# Served tensors are rank 2 (latents) or 4 (images); the validator names the exact rank it wants.
# These two bounds only keep numpy's own reshape limits (64 axes, an intp-sized byte count, which
# it checks over the non-zero axes even when another axis is 0) from surfacing as an internal error.
MAX_RANK = 8
_MAX_BYTES = 2**62


def to_array(tensor: vae_pb2.Tensor, what: str) -> np.ndarray:
    """A read-only view of the message's bytes; InvalidArgument on a bad dtype or byte length."""
    if not tensor.shape and not tensor.data and not tensor.dtype:
        raise InvalidArgument(f"{what}: missing (the request has no {what} tensor)")
    dtype = WIRE_DTYPES.get(tensor.dtype)
    if dtype is None:
        known = tensor.dtype in vae_pb2.DataType.values()
        name = vae_pb2.DataType.Name(tensor.dtype) if known else tensor.dtype
        raise InvalidArgument(f"{what}: dtype {name} is not supported (use DATA_TYPE_FLOAT32, "
                              "DATA_TYPE_FLOAT16 or DATA_TYPE_UINT8)")
    shape = tuple(tensor.shape)
    if not shape:
        raise InvalidArgument(f"{what}: shape is empty; give the full shape, batch axis first")
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"{what}: negative dimension in shape {list(shape)}")
    if len(shape) > MAX_RANK:
        raise InvalidArgument(f"{what}: rank {len(shape)} is over the limit of {MAX_RANK} axes")
    count, span = 1, dtype.itemsize
    for d in shape:
        count *= d
        span *= max(d, 1)
    expected = count * dtype.itemsize
    if len(tensor.data) != expected:
        raise InvalidArgument(f"{what}: {len(tensor.data)} data bytes, but shape {list(shape)} of "
                              f"{vae_pb2.DataType.Name(tensor.dtype)} needs {expected}")
    if span > _MAX_BYTES:  # only an empty tensor gets here: a 0 axis beside enormous ones
        raise InvalidArgument(f"{what}: shape {list(shape)} is too large to address")
    return np.frombuffer(tensor.data, dtype=dtype).reshape(shape)


def from_array(array: np.ndarray) -> vae_pb2.Tensor:
    arr = np.ascontiguousarray(array)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return vae_pb2.Tensor(shape=arr.shape, dtype=_CODES[arr.dtype.str], data=arr.tobytes())


def images_message(images: np.ndarray, image_format: int) -> vae_pb2.Tensor:
    """float32 images in [0, 1] as FLOAT32, or as UINT8 (round(255 x)) when asked."""
    if image_format == vae_pb2.IMAGE_FORMAT_UINT8:
        # Graph outputs are means in [0, 1]; clip guards float error at the ends before the cast.
        return from_array(np.rint(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8))
    return from_array(images)
