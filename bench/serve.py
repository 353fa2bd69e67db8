"""Serving benchmark: the gRPC service (batching on and off) against the in-process onnxruntime limit.

For each model: start `vae serve` in its own process (time to SERVING measured), then a load generator
in another process (grpc.aio, pre-serialised requests, loopback) runs each cell for a warm-up and a
measured window; prints a table and writes JSON. Models: a small conv VAE (1x28x28, z=16) and the
grey28 preset, each trained briefly and exported by the real exporter (or given with --model-dir /
--grey28-dir). Figures on a shared machine are noisy: compare ratios measured in one run.

    .venv/bin/python bench/serve.py [--duration 8 --warmup 2] [--out .bench/serve.json]
    .venv/bin/python bench/serve.py --against-naive [...]   # beside ../shared/peers' naive server:
                                                            # the issue's table (bench/side_by_side.py)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

__all__ = ["main"]

DATA = ROOT.parent / "shared" / "data" / "fashion-mnist-4k"  # ../shared beside the checkout
# (cell name, method, rows per request, concurrency)
CELLS = [
    ("decode b256 c4", "Decode", 256, 4),
    ("sample n256 c4", "Sample", 256, 4),
    ("decode b1 c1", "Decode", 1, 1),
    ("decode b1 c16", "Decode", 1, 16),
    ("decode b1 c64", "Decode", 1, 64),
    ("encode b1 c64", "Encode", 1, 64),
]


# ---------------------------------------------------------------- models
def _train_export(name: str, model_kw: dict[str, Any], train_kw: dict[str, Any], cache: Path) -> Path:
    """Train briefly (speed does not depend on the weights) and export with the real exporter."""
    out = cache / name / "model"
    if (out / "manifest.json").exists():
        return out
    from exporter.export import export_model
    from trainer.config import ModelConfig, TrainConfig
    from trainer.train import train

    data = str(DATA) if DATA.exists() else _random_data(cache)
    run = train(
        ModelConfig(input_shape=(1, 28, 28), **model_kw),
        TrainConfig(
            data=data,
            out_dir=str(cache / name / "run"),
            seed=0,
            grids=False,
            tensorboard=False,
            progress=False,
            **train_kw,
        ),
    )
    export_model(run, out, model_name=name)
    return out


def _random_data(cache: Path) -> str:
    path = cache / "random-28.npy"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        np.save(path, np.random.default_rng(0).random((512, 1, 28, 28), dtype=np.float32))
    return str(path)


def small_conv(cache: Path) -> Path:
    return _train_export(
        "conv28",
        {"arch": "conv", "hidden": (32, 64), "latent_dim": 16},
        {"epochs": 1, "batch_size": 128},
        cache,
    )


def grey28(cache: Path) -> Path:
    from trainer.presets import PRESETS

    _, model_kw, train_kw = PRESETS["grey28"]
    train_kw = {**train_kw, "epochs": 1, "max_minutes": 0.5}
    return _train_export("grey28", dict(model_kw), train_kw, cache)


# ---------------------------------------------------------------- in-process limit
def ort_limit(model_dir: Path, seconds: float) -> dict[str, float]:
    """images/s of onnxruntime called directly (one intra-op thread, no spinning): the ceiling."""
    import onnxruntime as ort

    manifest = json.loads((model_dir / "manifest.json").read_text())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    out = {}
    rng = np.random.default_rng(0)
    for graph, feed_name, shape in (
        ("decoder", "z", [manifest["latent_dim"]]),
        ("encoder", "x", manifest["input_shape"]),
    ):
        sess = ort.InferenceSession(
            str(model_dir / f"{graph}.onnx"), opts, providers=["CPUExecutionProvider"]
        )
        for batch in (1, 256):
            if graph == "encoder" and batch != 1:
                continue
            x = rng.random((batch, *shape), dtype=np.float32)
            for _ in range(20):
                sess.run(None, {feed_name: x})
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                sess.run(None, {feed_name: x})
                n += 1
            out[f"{graph} b{batch}"] = n * batch / (time.perf_counter() - t0)
    return out


# ---------------------------------------------------------------- server process
class Server:
    def __init__(self, model_dir: Path, batching: bool, extra: list[str]) -> None:
        self.model_dir, self.batching, self.extra = model_dir, batching, extra

    def __enter__(self) -> Server:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        args = [
            sys.executable,
            "-m",
            "vae_cli.main",
            "serve",
            "--model-dir",
            str(self.model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--metrics-port",
            "0",
            "--log-level",
            "INFO",
            "--dynamic-batching" if self.batching else "--no-dynamic-batching",
            *self.extra,
        ]
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(args, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        self.port = 0
        for line in self.proc.stderr:  # type: ignore[union-attr]
            self.log.append(line)
            if m := re.search(r"listening on [^ ]+:(\d+)", line):
                self.port = int(m.group(1))
                break
        if not self.port:
            raise SystemExit("server did not start:\n" + "".join(self.log))
        threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True).start()  # type: ignore[arg-type]
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            while (
                health.Check(health_pb2.HealthCheckRequest()).status != health_pb2.HealthCheckResponse.SERVING
            ):
                time.sleep(0.005)
        self.start_to_serving_s = time.perf_counter() - t0
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


# ---------------------------------------------------------------- load generator (own process)
def _payload(method: str, batch: int, manifest: dict[str, Any]) -> bytes:
    from protos.vae.v1 import vae_pb2

    rng = np.random.default_rng(1)

    def tensor(a: np.ndarray) -> vae_pb2.Tensor:
        return vae_pb2.Tensor(shape=a.shape, dtype=vae_pb2.DATA_TYPE_FLOAT32, data=a.tobytes())

    if method == "Decode":
        z = rng.standard_normal((batch, manifest["latent_dim"]), dtype=np.float32)
        return vae_pb2.DecodeRequest(z=tensor(z)).SerializeToString()
    if method == "Encode":
        x = rng.random((batch, *manifest["input_shape"]), dtype=np.float32)
        return vae_pb2.EncodeRequest(images=tensor(x)).SerializeToString()
    return vae_pb2.SampleRequest(n=batch, seed=5).SerializeToString()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all threads), from /proc: unlike wall-clock figures,
    CPU time per request barely moves when other jobs share the machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load(
    port: int,
    method: str,
    payload: bytes,
    concurrency: int,
    warmup: float,
    duration: float,
    results: Any,
    server_pid: int,
) -> None:
    import grpc

    async def run() -> dict[str, Any]:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 256 * 1024 * 1024)]
        ) as ch:
            call = ch.unary_unary(
                f"/vae.v1.VaeService/{method}"
            )  # bytes in, bytes out: no client-side parsing
            t_start = time.perf_counter()
            t_measure, t_end = t_start + warmup, t_start + warmup + duration
            lat: list[float] = []
            errors = 0

            async def worker() -> None:
                nonlocal errors
                while True:
                    t0 = time.perf_counter()
                    if t0 >= t_end:
                        return
                    try:
                        await call(payload, timeout=30)
                    except grpc.aio.AioRpcError:
                        errors += 1
                        continue
                    if t0 >= t_measure:
                        lat.append(time.perf_counter() - t0)

            async def cpu_at_measure() -> float:
                await asyncio.sleep(max(0.0, t_measure - time.perf_counter()))
                return _cpu_seconds(server_pid)

            cpu0, *_ = await asyncio.gather(cpu_at_measure(), *(worker() for _ in range(concurrency)))
            cpu = _cpu_seconds(server_pid) - cpu0
            return {
                "latencies": lat,
                "errors": errors,
                "seconds": time.perf_counter() - t_measure,
                "server_cpu_s": cpu,
            }

    results.put(asyncio.run(run()))


def _py_spy(pid: int, out: Path, warmup: float, duration: float) -> threading.Thread:
    """Sample the server with py-spy over the cell's measured window (speedscope JSON at `out`).
    --nonblocking: the server is not paused for each sample, so the figures stay those of a free run."""

    def record() -> None:
        time.sleep(warmup)
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [str(Path(sys.executable).with_name("py-spy")), "record", "-p", str(pid), "-d",
               str(max(1, int(duration))), "-r", "200", "-f", "speedscope", "-o", str(out),
               "--nonblocking", "--threads"]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"  py-spy failed ({done.returncode}): {done.stderr.strip()[-300:]}", flush=True)

    t = threading.Thread(target=record, daemon=True)
    t.start()
    return t


def run_cell(
    port: int,
    method: str,
    batch: int,
    concurrency: int,
    manifest: dict[str, Any],
    warmup: float,
    duration: float,
    server_pid: int,
    profile: Path | None = None,
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(
        target=_load,
        args=(port, method, _payload(method, batch, manifest), concurrency, warmup, duration, q, server_pid),
    )
    p.start()
    spy = _py_spy(server_pid, profile, warmup, duration) if profile is not None else None
    r = q.get(timeout=warmup + duration + 120)
    p.join(timeout=30)
    if spy is not None:
        spy.join()
    lat = np.array(r["latencies"]) * 1000
    return {
        "method": method,
        "batch": batch,
        "concurrency": concurrency,
        "images_per_s": len(lat) * batch / r["seconds"],
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
        "requests": len(lat),
        "errors": r["errors"],
        "server_cpu_us_per_request": r["server_cpu_s"] / max(1, len(lat)) * 1e6,
    }


# ---------------------------------------------------------------- main
def bench_model(name: str, model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    print(
        f"\n== {name}: {model_dir} (input {manifest['input_shape']}, z={manifest['latent_dim']})", flush=True
    )
    limit = ort_limit(model_dir, args.limit_seconds)
    out: dict[str, Any] = {
        "model_dir": str(model_dir),
        "input_shape": manifest["input_shape"],
        "latent_dim": manifest["latent_dim"],
        "ort_limit_images_per_s": limit,
        "servers": {},
    }
    for mode in args.modes:
        with Server(model_dir, mode == "batching", args.server_args) as srv:
            cells = {}
            for cell, method, batch, conc in CELLS:
                if args.cells and cell not in args.cells:
                    continue
                profile = (args.py_spy / f"{name}-{mode}-{cell.replace(' ', '-')}.speedscope.json"
                           if args.py_spy else None)
                r = run_cell(
                    srv.port, method, batch, conc, manifest, args.warmup, args.duration, srv.proc.pid, profile
                )
                cells[cell] = r
                print(
                    f"  {mode:9s} {cell:15s} {r['images_per_s']:10.0f} img/s  p50 {r['p50_ms']:7.2f} ms  "
                    f"p99 {r['p99_ms']:7.2f} ms  server CPU {r['server_cpu_us_per_request']:7.0f} us/req  "
                    f"errors {r['errors']}",
                    flush=True,
                )
            out["servers"][mode] = {"start_to_serving_s": srv.start_to_serving_s, "cells": cells}
    return out


def table(results: dict[str, Any]) -> str:
    lines = []
    for name, r in results["models"].items():
        lim = r["ort_limit_images_per_s"]
        lines.append(
            f"\n{name}  (in-process onnxruntime limit, 1 thread: decode b1 {lim['decoder b1']:.0f}, "
            f"b256 {lim['decoder b256']:.0f}, encode b1 {lim['encoder b1']:.0f} images/s)"
        )
        lines.append(
            "| server | cell | images/s | p50 ms | p99 ms | x limit | server CPU us/request | errors |"
        )
        lines.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for mode, s in r["servers"].items():
            for cell, c in s["cells"].items():
                key = (
                    "encoder" if c["method"] == "Encode" else "decoder"
                ) + f" b{1 if c['batch'] == 1 else 256}"
                lines.append(
                    f"| {mode} | {cell} | {c['images_per_s']:.0f} | {c['p50_ms']:.2f} | "
                    f"{c['p99_ms']:.2f} | {c['images_per_s'] / lim[key]:.2f} | "
                    f"{c['server_cpu_us_per_request']:.0f} | {c['errors']} |"
                )
            lines.append(f"| {mode} | start to SERVING | {s['start_to_serving_s']:.2f} s | | | | | |")
    return "\n".join(lines)


def goals(results: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The issue's goals, checked on the figures of this run (batching-on server)."""
    rows: list[dict[str, Any]] = []
    for name, r in results["models"].items():
        on = r["servers"].get("batching", {}).get("cells", {})
        off = r["servers"].get("off", {}).get("cells", {})
        lim = r["ort_limit_images_per_s"]

        def add(goal: str, value: float, ok: bool, model: str = name) -> None:
            rows.append({"model": model, "goal": goal, "value": round(value, 3), "met": ok})

        if "decode b256 c4" in on:
            v = on["decode b256 c4"]["images_per_s"] / lim["decoder b256"]
            add("decode b256 c4 >= 0.9 x limit", v, v >= 0.9)
        if "decode b1 c64" in on:
            c = on["decode b1 c64"]
            add("decode b1 c64 >= 6000 images/s", c["images_per_s"], c["images_per_s"] >= 6000)
            add("decode b1 c64 p99 <= 20 ms", c["p99_ms"], c["p99_ms"] <= 20)
        if "decode b1 c1" in on:
            add(
                "decode b1 c1 p50 <= 0.5 ms",
                on["decode b1 c1"]["p50_ms"],
                on["decode b1 c1"]["p50_ms"] <= 0.5,
            )
        if "batching" in r["servers"]:
            s = r["servers"]["batching"]["start_to_serving_s"]
            add("start to SERVING <= 1.5 s", s, s <= 1.5)
        for cell in on:
            if cell in off:
                v = on[cell]["images_per_s"] / off[cell]["images_per_s"]
                add(f"{cell}: batching on / off >= 1", v, v >= 1.0)
    lines = ["\n| model | goal | value | met |", "| --- | --- | ---: | --- |"]
    lines += [f"| {g['model']} | {g['goal']} | {g['value']} | {'yes' if g['met'] else 'NO'} |" for g in rows]
    return "\n".join(lines), rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--against-naive" in argv:
        # The side-by-side run in the peers' harness (bench/side_by_side.py), the issue's table.
        from side_by_side import main as side_by_side  # type: ignore[import-not-found]

        return int(side_by_side([a for a in argv if a != "--against-naive"]))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, help="small conv model folder (default: train + export one)")
    p.add_argument("--grey28-dir", type=Path, help="grey28 preset model folder (default: train + export one)")
    p.add_argument("--models", nargs="+", default=["conv28", "grey28"], choices=["conv28", "grey28"])
    p.add_argument("--modes", nargs="+", default=["batching", "off"], choices=["batching", "off"])
    p.add_argument("--cells", nargs="*", help="subset of cells by name, e.g. 'decode b1 c64'")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--limit-seconds", type=float, default=3.0)
    p.add_argument(
        "--server-args",
        nargs=argparse.REMAINDER,
        default=[],
        help="extra `vae serve` flags, e.g. --provider cuda (must come last)",
    )
    p.add_argument(
        "--py-spy",
        type=Path,
        metavar="DIR",
        help="profile the server with py-spy (pip install py-spy) during each measured cell; "
        "writes DIR/<model>-<mode>-<cell>.speedscope.json",
    )
    p.add_argument("--cache", type=Path, default=ROOT / ".bench" / "models")
    p.add_argument("--out", type=Path, default=ROOT / ".bench" / "serve.json")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    dirs = {"conv28": args.model_dir or None, "grey28": args.grey28_dir or None}
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "server_args": args.server_args,
        "load_average_start": os.getloadavg(),
        "models": {},
    }
    for name in args.models:
        model_dir = dirs[name] or (small_conv if name == "conv28" else grey28)(args.cache)
        results["models"][name] = bench_model(name, model_dir, args)
    results["load_average_end"] = os.getloadavg()
    goal_text, results["goals"] = goals(results)
    text = table(results) + "\n" + goal_text
    print(text)
    print(
        f"\nload average (1, 5, 15 min) at start {results['load_average_start']}, at end "
        f"{results['load_average_end']} on {os.cpu_count()} CPUs: figures are only comparable within one run"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, args.out)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
