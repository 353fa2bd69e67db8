"""A closed-loop gRPC load generator: K clients, each on its own channel, each sending its next request
as soon as the last one answered, for a bounded time. Used by bench/soak.py and by the reliability
tests (load, SIGTERM under load). It records every call (start, end, method, status code), so that
callers can count errors and take percentiles without trusting a summary.

The request mix touches every unary RPC: Encode (1-4 images, sometimes with a posterior sample),
Decode, Sample (seeded, UINT8) and Reconstruct, with shapes read from GetModelInfo.
"""

from __future__ import annotations

import asyncio
import math
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from protos.vae.v1 import vae_pb2, vae_pb2_grpc

__all__ = ["Call", "LoadResult", "run_load", "run_load_in_thread", "percentile", "METHODS", "serve_command"]

METHODS = ("Encode", "Decode", "Sample", "Reconstruct")


@dataclass(frozen=True)
class Call:
    client: int
    method: str
    start: float  # time.monotonic()
    end: float
    code: str  # grpc.StatusCode name
    details: str = ""  # the status message when not OK


@dataclass
class LoadResult:
    calls: list[Call] = field(default_factory=list)
    seconds: float = 0.0

    def ok(self) -> list[Call]:
        return [c for c in self.calls if c.code == "OK"]

    def errors(self) -> list[Call]:
        return [c for c in self.calls if c.code != "OK"]

    def latencies_ms(self) -> list[float]:
        return sorted((c.end - c.start) * 1000.0 for c in self.ok())

    def summary(self) -> dict[str, Any]:
        lat = self.latencies_ms()
        codes: dict[str, int] = {}
        for c in self.calls:
            codes[c.code] = codes.get(c.code, 0) + 1
        return {
            "requests": len(self.calls),
            "ok": len(lat),
            "errors": len(self.calls) - len(lat),
            "codes": codes,
            "seconds": round(self.seconds, 3),
            "rps": round(len(lat) / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": round(percentile(lat, 50), 3),
            "p99_ms": round(percentile(lat, 99), 3),
            "max_ms": round(lat[-1], 3) if lat else math.nan,
        }


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (nan when empty)."""
    if not sorted_values:
        return math.nan
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100.0 * len(sorted_values)) - 1))
    return sorted_values[k]


def _requests(info: vae_pb2.ModelInfo, rng: random.Random) -> tuple[str, Any]:
    c, h, w = info.input_shape
    d = info.latent_dim
    method = rng.choice(METHODS)
    if method in ("Encode", "Reconstruct"):
        n = rng.randint(1, 4)
        x = np.random.default_rng(rng.getrandbits(32)).random((n, c, h, w), dtype=np.float32)
        images = vae_pb2.Tensor(shape=x.shape, dtype=vae_pb2.DATA_TYPE_FLOAT32, data=x.tobytes())
        if method == "Encode":
            return method, vae_pb2.EncodeRequest(images=images, sample=rng.random() < 0.5)
        return method, vae_pb2.ReconstructRequest(images=images, format=vae_pb2.IMAGE_FORMAT_UINT8)
    if method == "Decode":
        z = np.random.default_rng(rng.getrandbits(32)).standard_normal(
            (rng.randint(1, 4), d), dtype=np.float32
        )
        return method, vae_pb2.DecodeRequest(
            z=vae_pb2.Tensor(shape=z.shape, dtype=vae_pb2.DATA_TYPE_FLOAT32, data=z.tobytes())
        )
    return method, vae_pb2.SampleRequest(
        n=rng.randint(1, 8), seed=rng.getrandbits(63), format=vae_pb2.IMAGE_FORMAT_UINT8
    )


async def _client(
    i: int,
    target: str,
    seconds: float,
    stop: threading.Event,
    out: list[Call],
    metadata: Any,
    timeout: float,
    credentials: Any,
    leave_on_unavailable: bool,
) -> None:
    rng = random.Random(i)
    channel = (
        grpc.aio.secure_channel(target, credentials)
        if credentials is not None
        else grpc.aio.insecure_channel(target)
    )
    async with channel:
        stub = vae_pb2_grpc.VaeServiceStub(channel)
        info = await stub.GetModelInfo(vae_pb2.GetModelInfoRequest(), timeout=timeout, metadata=metadata)
        end = time.monotonic() + seconds
        while time.monotonic() < end and not stop.is_set():
            method, request = _requests(info, rng)
            t0 = time.monotonic()
            try:
                await getattr(stub, method)(request, timeout=timeout, metadata=metadata)
                code, details = "OK", ""
            except grpc.aio.AioRpcError as exc:
                code, details = exc.code().name, exc.details() or ""
            out.append(Call(i, method, t0, time.monotonic(), code, details))
            if code == "UNAVAILABLE":
                if leave_on_unavailable:
                    break  # as a client with other replicas would: take the refusal and go elsewhere
                await asyncio.sleep(0.05)  # refused (draining or gone): do not spin


async def run_load(
    target: str,
    *,
    clients: int = 64,
    seconds: float = 5.0,
    stop: threading.Event | None = None,
    metadata: Any = None,
    timeout: float = 30.0,
    credentials: Any = None,
    leave_on_unavailable: bool = False,
) -> LoadResult:
    """`clients` concurrent closed-loop clients for `seconds` (or until `stop` is set); with
    `leave_on_unavailable` a client stops at its first UNAVAILABLE (a refusal while draining)."""
    result = LoadResult()
    stop = stop or threading.Event()
    t0 = time.monotonic()
    await asyncio.gather(
        *(
            _client(
                i, target, seconds, stop, result.calls, metadata, timeout, credentials, leave_on_unavailable
            )
            for i in range(clients)
        )
    )
    result.seconds = time.monotonic() - t0
    return result


def run_load_in_thread(target: str, **kw: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Start run_load in a thread with its own event loop; `box["result"]` is set when it ends (or
    `box["error"]` if it raised)."""
    box: dict[str, Any] = {}

    def main() -> None:
        try:
            box["result"] = asyncio.run(run_load(target, **kw))
        except BaseException as exc:  # handed to the caller, who asserts on it
            box["error"] = exc

    thread = threading.Thread(target=main, name="loadgen", daemon=True)
    thread.start()
    return thread, box


def serve_command(model_dir: object, *extra: str) -> list[str]:
    """argv of `vae serve` on loopback, gRPC and metrics on free ports (0), for a child process."""
    return [sys.executable, "-m", "vae_cli.main", "serve", "--model-dir", str(model_dir),
            "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0", *extra]
