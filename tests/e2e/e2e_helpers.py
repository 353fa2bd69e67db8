"""A real service in a background thread (own asyncio loop), plus tensor helpers for test clients."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

import grpc
import numpy as np

from protos.vae.v1 import vae_pb2, vae_pb2_grpc
from service.server import VaeServer, create_server
from service.settings import Settings

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


def settings_for(model_dir: Any, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "model_dir": str(model_dir),
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": 0,
        "grace_seconds": 5.0,
    }
    base.update(overrides)
    return Settings(**base)


class ServerThread:
    """Runs create_server + start in a thread's event loop; `with ServerThread(s) as srv: srv.port`."""

    def __init__(self, settings: Settings, registry: Any = None, warm: bool = True) -> None:
        self.settings = settings
        self.registry = registry
        self.warm = warm
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="test-server")
        self.server: VaeServer | None = None
        self.port = 0

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        self.server, self.port = create_server(self.settings, self.registry)
        await self.server.start(warm=self.warm)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        try:
            self.call(self._start())
        except BaseException:
            self._close()
            raise
        return self

    def stop(self, grace: float | None = 1.0) -> None:
        if self.server is not None:
            self.call(self.server.stop(grace), timeout=60)
            self.server = None

    def _close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            self._close()

    def channel(self, **kw: Any) -> grpc.Channel:
        return grpc.insecure_channel(f"127.0.0.1:{self.port}", **kw)


def stub_for(channel: grpc.Channel) -> vae_pb2_grpc.VaeServiceStub:
    return vae_pb2_grpc.VaeServiceStub(channel)
