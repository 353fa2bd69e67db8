"""Tensor helpers for test clients; the servers live once in tests/servers.py (re-exported here)."""

from __future__ import annotations

import grpc
import numpy as np
from servers import ServerThread, settings_for

from protos.vae.v1 import vae_pb2, vae_pb2_grpc

__all__ = ["ServerThread", "tensor", "array", "settings_for", "stub_for"]

_CODE = {
    np.dtype("<f4"): vae_pb2.DATA_TYPE_FLOAT32,
    np.dtype("<f2"): vae_pb2.DATA_TYPE_FLOAT16,
    np.dtype("u1"): vae_pb2.DATA_TYPE_UINT8,
}
_DTYPE = {v: k for k, v in _CODE.items()}


def tensor(a: np.ndarray) -> vae_pb2.Tensor:
    a = np.ascontiguousarray(a)
    return vae_pb2.Tensor(shape=a.shape, dtype=_CODE[a.dtype], data=a.tobytes())


def array(t: vae_pb2.Tensor) -> np.ndarray:
    return np.frombuffer(t.data, dtype=_DTYPE[t.dtype]).reshape(tuple(t.shape))


def stub_for(channel: grpc.Channel) -> vae_pb2_grpc.VaeServiceStub:
    return vae_pb2_grpc.VaeServiceStub(channel)
