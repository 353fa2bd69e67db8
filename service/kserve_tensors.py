"""Open Inference Protocol tensors <-> numpy: datatype strings, typed contents and raw bytes.

No grpc here. A v2 input carries its data either in `contents` (typed repeated fields, one per
datatype family) or in the request's `raw_input_contents` (little-endian row-major bytes, one entry per
input, all or none), as the predict-api v2 protocol defines. Outputs always go back as raw bytes:
tritonclient reads raw_output_contents only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from protos.inference import grpc_service_pb2 as pb
from service.errors import InvalidArgument

__all__ = ["V2_DTYPES", "v2_datatype", "input_arrays", "add_output"]

# The v2 datatypes this server accepts on the wire, and the typed-contents field each one uses.
# FP16 has no typed field in the protocol: it only travels as raw bytes.
V2_DTYPES: dict[str, tuple[np.dtype, str | None]] = {
    "FP32": (np.dtype("<f4"), "fp32_contents"),
    "FP16": (np.dtype("<f2"), None),
    "UINT8": (np.dtype("u1"), "uint_contents"),
}
_CONTENT_FIELDS = ("bool_contents", "int_contents", "int64_contents", "uint_contents", "uint64_contents",
                   "fp32_contents", "fp64_contents", "bytes_contents")
# Rank and span bounds: served tensors are rank 2 or 4 (the validator names the rank it wants); these
# only keep numpy's reshape limits (64 axes, an intp-sized byte count over the non-zero axes even when
# another axis is 0) from surfacing as an internal error, as in service/codec.py.
_MAX_RANK = 8
_MAX_BYTES = 2**62


def v2_datatype(dtype: np.dtype | str) -> str:
    """The v2 datatype string of a numpy dtype the server emits or accepts (float32 -> "FP32")."""
    kind = np.dtype(dtype)
    for name, (np_dtype, _field) in V2_DTYPES.items():
        if np_dtype == kind:
            return name
    raise InvalidArgument(f"dtype {kind} has no v2 datatype here")


def _shape(tensor: Any, itemsize: int) -> tuple[int, ...]:
    shape = tuple(int(d) for d in tensor.shape)
    if len(shape) > _MAX_RANK:
        raise InvalidArgument(f"input {tensor.name!r}: rank {len(shape)} is over {_MAX_RANK}")
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"input {tensor.name!r}: shape {list(shape)} has a negative axis")
    if math.prod(max(d, 1) for d in shape) * itemsize > _MAX_BYTES:
        raise InvalidArgument(f"input {tensor.name!r}: shape {list(shape)} is too large to address")
    return shape


def _from_raw(tensor: Any, raw: bytes, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    if tensor.HasField("contents") and any(len(getattr(tensor.contents, f)) for f in _CONTENT_FIELDS):
        raise InvalidArgument(f"input {tensor.name!r}: data in both contents and raw_input_contents; "
                              "send one of them")
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise InvalidArgument(f"input {tensor.name!r}: raw_input_contents holds {len(raw)} bytes, "
                              f"shape {list(shape)} {tensor.datatype} needs {expected}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _from_contents(tensor: Any, dtype: np.dtype, field: str | None, shape: tuple[int, ...]) -> np.ndarray:
    if field is None:
        raise InvalidArgument(f"input {tensor.name!r}: {tensor.datatype} has no typed contents field in "
                              "the protocol; send it in raw_input_contents")
    contents = tensor.contents
    others = [f for f in _CONTENT_FIELDS if f != field and len(getattr(contents, f))]
    if others:
        raise InvalidArgument(f"input {tensor.name!r}: {tensor.datatype} data goes in contents.{field}, "
                              f"not {', '.join(others)}")
    values = getattr(contents, field)
    n = math.prod(shape)
    if len(values) != n:
        raise InvalidArgument(f"input {tensor.name!r}: contents.{field} holds {len(values)} values, "
                              f"shape {list(shape)} needs {n}")
    if dtype == np.uint8:
        wide = np.asarray(values, dtype=np.uint32)
        if n and int(wide.max()) > 255:
            raise InvalidArgument(f"input {tensor.name!r}: UINT8 values must lie in [0, 255], found "
                                  f"{int(wide.max())}")
        return wide.astype(np.uint8).reshape(shape)
    return np.asarray(values, dtype=dtype).reshape(shape)


def input_arrays(request: pb.ModelInferRequest, accepted: Sequence[str]) -> dict[str, np.ndarray]:
    """Every input of the request as a numpy array (views of raw bytes where sent), keyed by name.

    `accepted` lists the v2 datatypes the target model takes; anything else is refused by name."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} "
                              "inputs; send one per input, in order, or none")
    arrays: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        if tensor.name in arrays:
            raise InvalidArgument(f"input {tensor.name!r} appears twice")
        if tensor.datatype not in accepted or tensor.datatype not in V2_DTYPES:
            raise InvalidArgument(f"input {tensor.name!r}: datatype {tensor.datatype!r} is not accepted; "
                                  f"use one of {', '.join(accepted)}")
        dtype, field = V2_DTYPES[tensor.datatype]
        shape = _shape(tensor, dtype.itemsize)
        arrays[tensor.name] = (_from_raw(tensor, raw[i], dtype, shape) if raw
                               else _from_contents(tensor, dtype, field, shape))
    return arrays


def add_output(reply: pb.ModelInferResponse, name: str, array: np.ndarray) -> None:
    """Append one output: its metadata in `outputs`, its bytes in raw_output_contents."""
    data = np.ascontiguousarray(array)
    if data.dtype.byteorder == ">":
        data = data.astype(data.dtype.newbyteorder("<"))
    reply.outputs.add(name=name, datatype=v2_datatype(data.dtype), shape=list(data.shape))
    reply.raw_output_contents.append(data.tobytes())
