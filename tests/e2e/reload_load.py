"""Reload under load, for real: a `vae serve --model-repository` process, N concurrent clients, and
while they run version 2 is added, then version 1 removed, then a corrupt version 3 added (each
followed by SIGHUP). Used by tests/e2e/test_e2e_reload.py (short in `make test`, full size as a slow
test) and runnable alone: `python tests/e2e/reload_load.py --clients 64 --seconds 20`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from protos.vae.v1 import vae_pb2, vae_pb2_grpc  # noqa: E402

__all__ = ["ReloadRun", "run_reload", "rss_bytes", "check", "summary", "serve_repository", "wait_ready"]


@dataclass
class ReloadRun:
    clients: int
    seconds: float
    replies: list[tuple[float, float, str, str]] = field(default_factory=list)  # sent, got, version, method
    failures: list[str] = field(default_factory=list)
    t_v2_added: float = 0.0
    t_v1_gone_seen: float = 0.0
    rss_one_version: int = 0
    rss_after_unload: int = 0
    final: list[tuple[str, str, str, bool]] = field(default_factory=list)  # version, state, reason, latest


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _tensor(a: np.ndarray) -> vae_pb2.Tensor:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return vae_pb2.Tensor(shape=a.shape, dtype=vae_pb2.DATA_TYPE_FLOAT32, data=a.tobytes())


def _add_version(repo: Path, num: int, source: Path, corrupt: bool = False) -> None:
    stage = repo / "vae" / f".{num}.tmp"
    shutil.copytree(source, stage)
    if corrupt:
        enc = stage / "encoder.onnx"
        data = bytearray(enc.read_bytes())
        data[len(data) // 2] ^= 0xFF
        enc.write_bytes(bytes(data))
    stage.rename(repo / "vae" / str(num))  # the folder appears whole, as `vae export --repository` does


def _remove_version(repo: Path, num: int) -> None:
    aside = repo / "vae" / f".{num}.old"
    (repo / "vae" / str(num)).rename(aside)
    shutil.rmtree(aside)


async def _versions(stub: vae_pb2_grpc.VaeServiceStub) -> dict[str, vae_pb2.ModelVersionStatus]:
    listing = await stub.ListModels(vae_pb2.ListModelsRequest(), timeout=10)
    return {v.version: v for v in listing.versions if v.model == "vae"}


async def _until(stub: vae_pb2_grpc.VaeServiceStub, check, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check(await _versions(stub)):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"repository state not reached; now {await _versions(stub)}")


async def _client(i: int, stub: vae_pb2_grpc.VaeServiceStub, run: ReloadRun, stop: asyncio.Event) -> None:
    rng = np.random.default_rng(i)
    images = _tensor(rng.random((2, 1, 8, 8), dtype=np.float32))
    z = _tensor(rng.standard_normal((2, 4), dtype=np.float32))
    k = 0
    while not stop.is_set():
        method = ("Encode", "Decode", "Sample")[k % 3]
        k += 1
        sent = time.monotonic()
        try:
            if method == "Encode":
                reply = await stub.Encode(vae_pb2.EncodeRequest(images=images), timeout=30)
            elif method == "Decode":
                reply = await stub.Decode(vae_pb2.DecodeRequest(z=z), timeout=30)
            else:
                reply = await stub.Sample(vae_pb2.SampleRequest(n=2, seed=k), timeout=30)
        except grpc.aio.AioRpcError as exc:
            run.failures.append(f"{method}: {exc.code().name} {exc.details()}")
            continue
        run.replies.append((sent, time.monotonic(), reply.version, method))


async def _drive(port: int, pid: int, repo: Path, v2: Path, run: ReloadRun) -> None:
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(max(1, run.clients // 16))]
    stubs = [vae_pb2_grpc.VaeServiceStub(ch) for ch in channels]
    admin = stubs[0]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(_client(i, stubs[i % len(stubs)], run, stop)) for i in range(run.clients)]
    phase = run.seconds / 4
    try:
        await asyncio.sleep(phase)
        run.rss_one_version = rss_bytes(pid)
        run.t_v2_added = time.monotonic()
        _add_version(repo, 2, v2)
        os.kill(pid, signal.SIGHUP)
        await _until(admin, lambda vs: "2" in vs and vs["2"].state == "ready")
        await asyncio.sleep(phase)
        _remove_version(repo, 1)
        os.kill(pid, signal.SIGHUP)
        await _until(admin, lambda vs: "1" not in vs)  # drained, then released
        run.t_v1_gone_seen = time.monotonic()
        await asyncio.sleep(phase / 2)
        _add_version(repo, 3, v2, corrupt=True)
        os.kill(pid, signal.SIGHUP)
        await _until(admin, lambda vs: "3" in vs and vs["3"].state == "failed")
        await asyncio.sleep(phase / 2)
        run.rss_after_unload = rss_bytes(pid)
        await asyncio.sleep(phase)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    run.final = [(v.version, v.state, v.reason, v.latest) for v in (await _versions(admin)).values()]
    for ch in channels:
        await ch.close()


@contextlib.contextmanager
def serve_repository(repo: Path, work: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A `vae serve --model-repository` process on a free port; (process, port); SIGTERM at the end."""
    log_path = work / "serve.log"
    cmd = [sys.executable, "-m", "vae_cli.main", "serve", "--model-repository", str(repo), "--host",
           "127.0.0.1", "--port", "0", "--metrics-port", "0", "--grace-seconds", "10"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stderr=log, stdout=log, env=env)
    try:
        port = 0
        deadline = time.monotonic() + 120
        while not port and time.monotonic() < deadline:
            found = re.search(r"listening on 127\.0\.0\.1:(\d+)", log_path.read_text())
            if found:
                port = int(found.group(1))
            elif proc.poll() is not None:
                raise RuntimeError(f"vae serve exited: {log_path.read_text()}")
            time.sleep(0.1)
        yield proc, port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


async def wait_ready(port: int, model: str = "vae", version: str = "1") -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = vae_pb2_grpc.VaeServiceStub(ch)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            listing = await stub.ListModels(vae_pb2.ListModelsRequest(), timeout=10)
            if any((v.model, v.version, v.state) == (model, version, "ready") for v in listing.versions):
                return
            await asyncio.sleep(0.05)
    raise TimeoutError(f"{model} {version} not ready")


def run_reload(v1: Path, v2: Path, *, clients: int, seconds: float, work: Path) -> ReloadRun:
    """Serve v1 from a fresh repository under `work`, run the three changes under load, stop."""
    repo = work / "repo"
    shutil.copytree(v1, repo / "vae" / "1")
    with serve_repository(repo, work) as (proc, port):

        async def ready_then_drive() -> ReloadRun:
            run = ReloadRun(clients, seconds)
            await wait_ready(port)
            await _drive(port, proc.pid, repo, v2, run)
            return run

        return asyncio.run(ready_then_drive())


def check(run: ReloadRun) -> list[str]:
    """The acceptance rules; an empty list when they all hold."""
    problems = []
    if run.failures:
        problems.append(f"{len(run.failures)} failed requests, e.g. {run.failures[:3]}")
    versions = {v for _, _, v, _ in run.replies}
    if versions != {"1", "2"}:
        problems.append(f"replies from versions {sorted(versions)}, expected exactly 1 and 2 (never 3)")
    # A request is routed when the server reads it, somewhere between sending and the reply: version 2
    # cannot have answered before its folder existed, version 1 none sent after it was seen released.
    if any(got < run.t_v2_added for _, got, v, _ in run.replies if v == "2"):
        problems.append("a reply from version 2 before its folder was added")
    if any(sent > run.t_v1_gone_seen for sent, _, v, _ in run.replies if v == "1"):
        problems.append("a reply from version 1 to a request sent after it was released")
    if not any(sent > run.t_v1_gone_seen for sent, _, v, _ in run.replies if v == "2"):
        problems.append("no reply from version 2 after version 1 left")
    final = {v: (state, reason, latest) for v, state, reason, latest in run.final}
    if final.get("2", ("", "", False))[0::2] != ("ready", True):
        problems.append(f"version 2 is not the ready latest version at the end: {final}")
    if final.get("3", ("", "", False))[0] != "failed" or "sha256" not in final["3"][1]:
        problems.append(f"the corrupt version 3 is not reported failed (sha256): {final}")
    if "1" in final:
        problems.append(f"version 1 still listed at the end: {final}")
    if run.rss_after_unload > 1.10 * run.rss_one_version:
        problems.append(f"RSS {run.rss_after_unload / 2**20:.1f} MiB after version 1 left, more than 10 % "
                        f"above {run.rss_one_version / 2**20:.1f} MiB with version 1 alone")
    return problems


def summary(run: ReloadRun) -> dict[str, object]:
    by_version: dict[str, int] = {}
    for _, _, v, _ in run.replies:
        by_version[v] = by_version.get(v, 0) + 1
    lat = sorted(got - sent for sent, got, _, _ in run.replies)
    return {"clients": run.clients, "seconds": run.seconds, "replies": len(run.replies),
            "failed": len(run.failures), "replies_by_version": by_version,
            "latency_p50_ms": round(1000 * lat[len(lat) // 2], 1) if lat else None,
            "latency_p99_ms": round(1000 * lat[int(len(lat) * 0.99)], 1) if lat else None,
            "rss_one_version_mib": round(run.rss_one_version / 2**20, 1),
            "rss_after_unload_mib": round(run.rss_after_unload / 2**20, 1), "final": run.final,
            "problems": check(run)}


def main() -> int:
    p = argparse.ArgumentParser(description="reload under load against a real `vae serve`")
    p.add_argument("v1", type=Path, help="model folder served as version 1")
    p.add_argument("v2", type=Path, help="model folder added as version 2 (and, corrupted, as 3)")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=20.0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = run_reload(args.v1, args.v2, clients=args.clients, seconds=args.seconds, work=Path(tmp))
    print(json.dumps(summary(run), indent=2))
    return 0 if not check(run) else 1


if __name__ == "__main__":
    raise SystemExit(main())
