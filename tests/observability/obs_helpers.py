"""Helpers shared by the observability tests: registry readers, a real service in a thread, scraping."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from prometheus_client import CollectorRegistry, Metric
from prometheus_client.parser import text_string_to_metric_families

from protos.vae.v1 import vae_pb2, vae_pb2_grpc

__all__ = ["find", "value", "per_dim", "free_port", "scrape", "sample", "tensor", "array", "ServiceThread",
           "wait_for"]


def find(registry: CollectorRegistry, name: str, /, **labels: str) -> float | None:
    """The sum of the samples called `name` whose labels include `labels` (every series also carries
    `model` and `version`, which a test may leave out), or None when there is none."""
    got = [s.value for fam in registry.collect() for s in fam.samples
           if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    return float(sum(got)) if got else None


def value(registry: CollectorRegistry, name: str, /, **labels: str) -> float:
    """A sample's value; fails (rather than returning None) when the sample is absent."""
    got = find(registry, name, **labels)
    assert got is not None, f"no sample {name}{labels} on the registry"
    return got


def per_dim(registry: CollectorRegistry, name: str, dim: int) -> np.ndarray:
    return np.array([value(registry, name, dim=str(d)) for d in range(dim)])


def free_port() -> int:
    """A loopback port free right now (for servers whose settings take a fixed port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, Metric]:
    """GET /metrics on loopback and parse it with prometheus-client's own text parser."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {fam.name: fam for fam in text_string_to_metric_families(text)}


def sample(families: dict[str, Metric], name: str, /, **labels: str) -> float | None:
    """The value of one sample in parsed families, or None when absent."""
    for fam in families.values():
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def tensor(a: np.ndarray) -> vae_pb2.Tensor:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return vae_pb2.Tensor(shape=a.shape, dtype=vae_pb2.DATA_TYPE_FLOAT32, data=a.tobytes())


def array(t: vae_pb2.Tensor) -> np.ndarray:
    assert t.dtype == vae_pb2.DATA_TYPE_FLOAT32
    return np.frombuffer(t.data, dtype="<f4").reshape(tuple(t.shape))


class ServiceThread:
    """The real service (create_server + start) on its own asyncio loop in a thread."""

    def __init__(self, model_dir: Path, registry: CollectorRegistry, **settings: Any) -> None:
        from service.settings import Settings

        base: dict[str, Any] = {"model_dir": str(model_dir), "host": "127.0.0.1", "port": 0,
                                "metrics_port": free_port(), "grace_seconds": 2.0}
        base.update(settings)
        self.settings = Settings(**base)
        self.registry = registry
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="obs-test-server")
        self.server: Any = None
        self.port = 0

    def _call(self, coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        from service.server import create_server

        self.server, self.port = create_server(self.settings, self.registry)
        await self.server.start()

    def __enter__(self) -> ServiceThread:
        self.thread.start()
        try:
            self._call(self._start())
        except BaseException:
            self.__exit__()
            raise
        return self

    @property
    def metrics_port(self) -> int:
        return int(self.server.metrics_port)

    def stub(self) -> tuple[grpc.Channel, vae_pb2_grpc.VaeServiceStub]:
        channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        return channel, vae_pb2_grpc.VaeServiceStub(channel)

    def __exit__(self, *exc: object) -> None:
        try:
            if self.server is not None:
                self._call(self.server.stop(1.0))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30.0, every: float = 0.2) -> Any:
    """Poll `check` until it returns a truthy value; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
