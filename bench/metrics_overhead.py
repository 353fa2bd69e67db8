"""Throughput of the real server with metrics on (latent statistics + /metrics scraped every second)
against metrics off (no metrics server, no latent statistics), side by side in one run.

Both servers run at the same time as `vae serve` processes on one model; the load generator (its own
process, raw-bytes gRPC so that client parsing costs nothing) alternates between them round by round,
so both see the same machine load. While the metrics-on server is under load a scraper GETs its /metrics
once a second (Prometheus's usual interval is 15 s: this is the harsher case). The figure that matters
is the ratio on/off per cell (goal >= 0.95); absolute images/s depend on the machine and its load.

    .venv/bin/python bench/metrics_overhead.py [--model-dir DIR] [--rounds 8] [--seconds 2]
        [--out .bench/metrics_overhead.json]

Without --model-dir a small conv VAE (1x28x28, latent 32) is trained for one epoch on Fashion-MNIST
(or random pixels where the data is absent: speed does not depend on the weights), exported by the real
exporter and cached under .bench/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

__all__ = ["main"]

DATA = Path("/work/shared/data/fashion-mnist-4k")
CACHE = ROOT / ".bench"
# (cell name, method, images per request, concurrent requests)
CELLS = [
    ("Encode b1 c8", "Encode", 1, 8),
    ("Encode b64 c4", "Encode", 64, 4),
    ("Reconstruct b16 c4", "Reconstruct", 16, 4),
    ("Sample n64 c4", "Sample", 64, 4),
]


def _model(latent_dim: int) -> Path:
    out = CACHE / f"metrics-conv28-z{latent_dim}" / "model"
    if (out / "manifest.json").exists():
        return out
    from exporter.export import export_model
    from trainer.config import ModelConfig, TrainConfig
    from trainer.train import train

    if DATA.exists():
        data = str(DATA)
    else:
        CACHE.mkdir(parents=True, exist_ok=True)
        data = str(CACHE / "metrics-random-28.npy")
        np.save(data, np.random.default_rng(0).random((512, 1, 28, 28), dtype=np.float32))
    print(f"training a small conv VAE (latent {latent_dim}) on {data} for the benchmark ...", flush=True)
    run = train(ModelConfig(input_shape=(1, 28, 28), arch="conv", hidden=(32, 64), latent_dim=latent_dim),
                TrainConfig(data=data, out_dir=str(out.parent / "run"), epochs=1, batch_size=128, seed=0,
                            grids=False, tensorboard=False, progress=False))
    export_model(run, out, model_name=f"bench-z{latent_dim}")
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`vae serve` in its own process; metrics on = its own /metrics port and latent statistics."""

    def __init__(self, model_dir: Path, metrics: bool) -> None:
        self.metrics = metrics
        self.metrics_port = _free_port() if metrics else 0
        args = [sys.executable, "-m", "vae_cli.main", "serve", "--model-dir", str(model_dir),
                "--host", "127.0.0.1", "--port", "0", "--metrics-port", str(self.metrics_port),
                "--latent-metrics" if metrics else "--no-latent-metrics", "--log-level", "INFO"]
        self.proc = subprocess.Popen(args, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                                     stderr=subprocess.PIPE, text=True)
        self.port = 0
        log = []
        for line in self.proc.stderr:  # type: ignore[union-attr]
            log.append(line)
            if m := re.search(r"listening on [^ ]+:(\d+)", line):
                self.port = int(m.group(1))
                break
        if not self.port:
            self.proc.kill()
            raise SystemExit("server did not start:\n" + "".join(log))
        # Keep draining stderr so the server never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()  # type: ignore[union-attr]
        self._wait_serving()

    def _wait_serving(self) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            serving = health_pb2.HealthCheckResponse.SERVING
            while stub.Check(health_pb2.HealthCheckRequest()).status != serving:
                time.sleep(0.01)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


class Scraper:
    """GET /metrics every `every` seconds while running; counts scrapes and bytes."""

    def __init__(self, port: int, every: float = 1.0) -> None:
        self.url, self.every = f"http://127.0.0.1:{port}/metrics", every
        self.scrapes, self.bytes, self.seconds = 0, 0, 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Scraper:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            t0 = time.perf_counter()
            with urllib.request.urlopen(self.url, timeout=10) as resp:
                self.bytes += len(resp.read())
            self.seconds += time.perf_counter() - t0
            self.scrapes += 1

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)


def _payload(method: str, batch: int, manifest: dict[str, Any]) -> bytes:
    from protos.vae.v1 import vae_pb2

    rng = np.random.default_rng(1)
    if method == "Sample":
        return vae_pb2.SampleRequest(n=batch, seed=5).SerializeToString()
    x = rng.random((batch, *manifest["input_shape"]), dtype=np.float32)
    t = vae_pb2.Tensor(shape=x.shape, dtype=vae_pb2.DATA_TYPE_FLOAT32, data=x.tobytes())
    if method == "Encode":
        return vae_pb2.EncodeRequest(images=t).SerializeToString()
    return vae_pb2.ReconstructRequest(images=t).SerializeToString()


def _load(port: int, method: str, payload: bytes, concurrency: int, warmup: float, seconds: float,
          out: Any) -> None:
    """Closed-loop load: `concurrency` requests always in flight; requests done in the measured part."""
    import grpc

    async def run() -> tuple[int, int, float]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.unary_unary(f"/vae.v1.VaeService/{method}")
            t_measure = time.perf_counter() + warmup
            t_end = t_measure + seconds
            done = errors = 0

            async def worker() -> None:
                nonlocal done, errors
                while (t0 := time.perf_counter()) < t_end:
                    try:
                        await call(payload, timeout=30)
                    except grpc.aio.AioRpcError:
                        errors += 1
                        continue
                    if t0 >= t_measure:
                        done += 1

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return done, errors, time.perf_counter() - t_measure

    out.put(asyncio.run(run()))


def _round(server: Server, method: str, payload: bytes, concurrency: int, batch: int,
           seconds: float) -> tuple[float, int]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_load, args=(server.port, method, payload, concurrency, 0.5, seconds, q))
    if server.metrics:
        with Scraper(server.metrics_port):
            p.start()
            done, errors, elapsed = q.get(timeout=seconds + 120)
    else:
        p.start()
        done, errors, elapsed = q.get(timeout=seconds + 120)
    p.join(30)
    return done * batch / elapsed, errors


def run(model_dir: Path, rounds: int, seconds: float) -> dict[str, Any]:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    off, on = Server(model_dir, metrics=False), Server(model_dir, metrics=True)
    cells: dict[str, Any] = {}
    try:
        for name, method, batch, conc in CELLS:
            payload = _payload(method, batch, manifest)
            r_off, r_on, errors = [], [], 0
            for k in range(rounds):
                # Alternate which server goes first so that neither always follows the other's load.
                order = (off, on) if k % 2 == 0 else (on, off)
                for srv in order:
                    ips, err = _round(srv, method, payload, conc, batch, seconds)
                    errors += err
                    (r_on if srv is on else r_off).append(ips)
            ratios = [a / b for a, b in zip(r_on, r_off, strict=True)]
            cells[name] = {"method": method, "batch": batch, "concurrency": conc,
                           "off_images_per_s": statistics.median(r_off),
                           "on_images_per_s": statistics.median(r_on),
                           "ratio_median": statistics.median(ratios), "ratios": ratios, "errors": errors}
            c = cells[name]
            rounds_txt = ", ".join(f"{x:.2f}" for x in ratios)
            print(f"  {name:20s} off {c['off_images_per_s']:9.0f}  on {c['on_images_per_s']:9.0f} img/s  "
                  f"ratio {c['ratio_median']:.3f}  (rounds {rounds_txt})", flush=True)
        with urllib.request.urlopen(f"http://127.0.0.1:{on.metrics_port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        dropped = sum(float(v) for v in re.findall(
            r'^vae_latent_images_dropped_total\{reason="queue_full"\} (\S+)$', text, re.M))
        folded = float(re.search(r"^vae_latent_images_total (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    finally:
        off.close()
        on.close()
    return {"model_dir": str(model_dir), "latent_dim": manifest["latent_dim"],
            "input_shape": manifest["input_shape"], "rounds": rounds, "seconds_per_round": seconds,
            "scrape_interval_s": 1.0, "cells": cells,
            "latent_images_folded": folded, "latent_images_dropped_queue_full": dropped}


def micro(dims: tuple[int, ...] = (32, 1024)) -> dict[str, Any]:
    """In-process costs, one thread: what a request pays (encoded(): copy + enqueue), what the worker
    pays per image, and what one scrape costs, at a small and at the largest supported latent size."""
    from prometheus_client import CollectorRegistry, generate_latest

    from service.latent_collector import LatentState
    from service.latent_stats import LatentReference, LatentWindow
    from service.metrics import ServiceMetrics

    out: dict[str, Any] = {}
    rng = np.random.default_rng(0)
    for d in dims:
        ref = {"n_images": 1000, "mu_mean": [0.0] * d, "mu_var": [1.0] * d, "posterior_var_mean": [0.5] * d,
               "kl_per_dim": [1.0] * d, "active_units": d, "active_threshold": 0.01,
               "kl_per_sample": {"mean": 1.0, "p50": 1.0, "p90": 2.0, "p99": 3.0}}
        row: dict[str, float] = {}
        for batch in (1, 64):
            mu = rng.standard_normal((batch, d)).astype(np.float32)
            lv = np.full((batch, d), -1.0, np.float32)
            reg = CollectorRegistry()
            m = ServiceMetrics(reg, model_name="m", model_version="1", provider="cpu", latent_dim=d,
                               reference=ref)
            spent, calls = 0.0, 0
            for _ in range(20):
                t0 = time.perf_counter()
                for _ in range(100):   # < queue size: every call takes the enqueue path, none is dropped
                    m.encoded(mu, lv)
                spent += time.perf_counter() - t0
                calls += 100
                m.flush()
            row[f"encoded_call_us_b{batch}"] = spent / calls * 1e6
            t0 = time.perf_counter()
            n = 0
            while time.perf_counter() - t0 < 1.0:
                text = generate_latest(reg)
                n += 1
            row["scrape_ms"] = (time.perf_counter() - t0) / n * 1e3
            row["scrape_kib"] = len(text) / 1024
            m.close()
            window = LatentWindow(d, half_life=1000, reference=LatentReference.from_manifest(ref, d))
            state = LatentState(window)
            t0, n = time.perf_counter(), 0
            while time.perf_counter() - t0 < 1.0:
                state.fold_encoded(mu, lv)
                n += batch
            row[f"worker_images_per_s_b{batch}"] = n / (time.perf_counter() - t0)
        out[str(d)] = row
    return out


def micro_table(rows: dict[str, Any]) -> str:
    lines = ["| latent dim | encoded() per call, b1 / b64 | worker images/s, batches of 1 / 64 | "
             "one scrape (ms, KiB) |", "| ---: | ---: | ---: | ---: |"]
    for d, r in rows.items():
        lines.append(f"| {d} | {r['encoded_call_us_b1']:.1f} us / {r['encoded_call_us_b64']:.1f} us | "
                     f"{r['worker_images_per_s_b1']:.0f} / {r['worker_images_per_s_b64']:.0f} | "
                     f"{r['scrape_ms']:.1f} ms, {r['scrape_kib']:.0f} KiB |")
    return "\n".join(lines)


def table(result: dict[str, Any]) -> str:
    lines = [f"model latent_dim={result['latent_dim']} input={result['input_shape']}; "
             f"{result['rounds']} alternating rounds of {result['seconds_per_round']:g} s per server and "
             "cell; metrics-on server scraped every 1 s",
             "| cell | metrics off img/s | metrics on img/s | on/off (median of rounds) |",
             "| --- | ---: | ---: | ---: |"]
    for name, c in result["cells"].items():
        lines.append(f"| {name} | {c['off_images_per_s']:.0f} | {c['on_images_per_s']:.0f} | "
                     f"{c['ratio_median']:.3f} |")
    lines.append(f"latent statistics: {result['latent_images_folded']:.0f} images folded, "
                 f"{result['latent_images_dropped_queue_full']:.0f} dropped (queue full)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", type=Path, help="exported model folder (default: build a small one)")
    ap.add_argument("--latent-dim", type=int, default=32, help="latent size of the default model")
    ap.add_argument("--rounds", type=int, default=8, help="alternating rounds per server and cell")
    ap.add_argument("--seconds", type=float, default=2.0, help="measured seconds per round")
    ap.add_argument("--out", type=Path, default=CACHE / "metrics_overhead.json")
    args = ap.parse_args(argv)
    if args.model_dir is not None and not (args.model_dir / "manifest.json").is_file():
        print(f"error: {args.model_dir} has no manifest.json (export a model with `vae export`)",
              file=sys.stderr)
        return 2
    model_dir = args.model_dir or _model(args.latent_dim)
    result = run(model_dir, args.rounds, args.seconds)
    result["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(),
                         "load_average": os.getloadavg()}
    print(table(result))
    result["in_process"] = micro()
    print("\nin-process costs (one thread):")
    print(micro_table(result["in_process"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    with tmp.open("w") as fh:
        json.dump(result, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
