"""Tensor messages <-> numpy arrays for the service. The codec itself (dtypes, rank limit, byte-count
and addressability guards) is `contracts.tensors`, shared with the client; this module builds the
`vae.v1.Tensor` message and turns the core's TensorError into INVALID_ARGUMENT."""

from __future__ import annotations

import numpy as np

from contracts.errors import TensorError
from contracts.tensors import DTYPE_CODES, MAX_RANK, decode_tensor, encode_array
from protos.vae.v1 import vae_pb2
from service.errors import InvalidArgument

__all__ = ["to_array", "from_array", "images_message", "WIRE_DTYPES", "MAX_RANK"]

WIRE_DTYPES = DTYPE_CODES


def to_array(tensor: vae_pb2.Tensor, what: str) -> np.ndarray:
    """A read-only view of the message's bytes; InvalidArgument on a bad dtype, shape or byte length."""
    try:
        return decode_tensor(tensor, what)
    except TensorError as exc:
        raise InvalidArgument(str(exc)) from None


def from_array(array: np.ndarray) -> vae_pb2.Tensor:
    wire = encode_array(array)  # the service only sends float32 / float16 / uint8 arrays
    return vae_pb2.Tensor(shape=wire.shape, dtype=wire.dtype, data=wire.data)  # type: ignore[arg-type]  # an int code of DataType


def images_message(images: np.ndarray, image_format: int) -> vae_pb2.Tensor:
    """float32 images in [0, 1] as FLOAT32, or as UINT8 (round(255 x)) when asked."""
    if image_format == vae_pb2.IMAGE_FORMAT_UINT8:
        # Graph outputs are means in [0, 1]; clip guards float error at the ends before the cast.
        return from_array(np.rint(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8))
    return from_array(images)
