"""numpy <-> `vae.v1.Tensor` for the client. The codec itself (dtypes, rank limit, byte-count and
addressability guards) is `contracts.tensors`, shared with the service; this module builds the
message and turns the core's TensorError into ProtocolError (server replies) or TypeError (arrays the
caller passes that the wire cannot carry)."""

from __future__ import annotations

import numpy as np

from client.errors import ProtocolError
from contracts.errors import TensorError
from contracts.tensors import DTYPE_CODES, decode_tensor, encode_array
from protos.vae.v1 import vae_pb2

__all__ = ["to_tensor", "from_tensor", "DTYPES"]

DTYPES = DTYPE_CODES


def to_tensor(array: np.ndarray) -> vae_pb2.Tensor:
    """Pack an array of float32, float16 or uint8 (any byte order; float64 as float32) into a Tensor."""
    try:
        wire = encode_array(array)
    except TensorError as exc:
        raise TypeError(str(exc)) from None
    return vae_pb2.Tensor(shape=wire.shape, dtype=wire.dtype, data=wire.data)  # type: ignore[arg-type]  # an int code of DataType


def from_tensor(tensor: vae_pb2.Tensor, what: str = "tensor") -> np.ndarray:
    """Unpack a Tensor the server sent, checking that its byte count matches its shape and dtype."""
    try:
        view = decode_tensor(tensor, what)
    except TensorError as exc:
        raise ProtocolError(f"server sent {exc}") from None
    # Native order for callers; a copy, so the array owns writable memory.
    return view.astype(view.dtype.newbyteorder("="))
