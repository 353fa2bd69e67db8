"""Helpers shared by the observability tests: registry readers, scraping, polling. The real servers live
once in tests/servers.py (`ServerThread(..., metrics=True)` serves /metrics too)."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Metric
from prometheus_client.parser import text_string_to_metric_families
from servers import ServerThread, free_port

from protos.vae.v1 import vae_pb2

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


def ServiceThread(model_dir: Path, registry: CollectorRegistry, **settings: Any) -> ServerThread:  # noqa: N802
    """The old name, kept for branches still using it: a ServerThread that also serves /metrics."""
    return ServerThread(model_dir, registry, metrics=True, **settings)
