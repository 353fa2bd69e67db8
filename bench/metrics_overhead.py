"""Throughput of the real server with metrics on (latent statistics + /metrics scraped every second)
against metrics off (no metrics server, no latent statistics), side by side in one run.

Both servers run at the same time as `vae serve` processes on one model; the load generator (its own
process, raw-bytes gRPC so that client parsing costs nothing) alternates between them round by round,
so both see the same machine load. While the metrics-on server is under load a scraper GETs its /metrics
once a second (Prometheus's usual interval is 15 s: this is the harsher case). The figure that matters
is the ratio on/off per cell (goal >= 0.95); absolute images/s depend on the machine and its load.
On a shared machine the per-round throughput swings with other processes, so the server's own CPU time
per image served (user + system, all threads, from /proc) is reported too: with the CPU saturated,
throughput is inversely proportional to it, and it is far less sensitive to neighbours.
It ends with in-process costs: what a request pays to hand its arrays over, the worker's rate, and a
scrape at latent sizes 32 and 1024.

    .venv/bin/python bench/metrics_overhead.py [--model-dir DIR] [--rounds 16] [--seconds 1]
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

DATA = ROOT.parent / "shared" / "data" / "fashion-mnist-4k"  # ../shared beside the checkout
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


async def _drive(call: Any, payload: bytes, concurrency: int, warmup: float,
                 seconds: float) -> tuple[int, int, int, float]:
    """Keep `concurrency` requests in flight; count those started after the warm-up, and all."""
    import grpc

    t_measure = time.perf_counter() + warmup
    t_end = t_measure + seconds
    done = total = errors = 0

    async def worker() -> None:
        nonlocal done, total, errors
        while (t0 := time.perf_counter()) < t_end:
            try:
                await call(payload, timeout=30)
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            total += 1
            if t0 >= t_measure:
                done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, total, errors, time.perf_counter() - t_measure


def _load_worker(port: int, conn: Any) -> None:
    """A load-generator process bound to one server: for each (method, payload, concurrency, warmup,
    seconds) it receives it runs `_drive` and answers (done, errors, elapsed). It lives for the whole
    run, so rounds can be short and many (no process start per round)."""
    import grpc

    async def serve() -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            loop = asyncio.get_running_loop()
            while (cmd := await loop.run_in_executor(None, conn.recv)) is not None:
                method, payload, concurrency, warmup, seconds = cmd
                call = ch.unary_unary(f"/vae.v1.VaeService/{method}")
                conn.send(await _drive(call, payload, concurrency, warmup, seconds))

    asyncio.run(serve())


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc; clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class LoadGen:
    def __init__(self, port: int) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_load_worker, args=(port, child), daemon=True)
        self.proc.start()

    def round(self, server: Server, method: str, payload: bytes, concurrency: int, batch: int,
              seconds: float, warmup: float = 0.3) -> tuple[float, float, int, int]:
        """(images/s, server CPU seconds, images served, errors) of one round."""
        cpu0 = _cpu_seconds(server.proc.pid)
        self.conn.send((method, payload, concurrency, warmup, seconds))
        if not self.conn.poll(seconds + warmup + 120):
            raise SystemExit("load generator did not answer")
        done, total, errors, elapsed = self.conn.recv()
        return done * batch / elapsed, _cpu_seconds(server.proc.pid) - cpu0, total * batch, errors

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(30)
        if self.proc.is_alive():
            self.proc.terminate()


def run(model_dir: Path, rounds: int, seconds: float) -> dict[str, Any]:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    off, on = Server(model_dir, metrics=False), Server(model_dir, metrics=True)
    gens = {"off": LoadGen(off.port), "on": LoadGen(on.port)}
    scraper = Scraper(on.metrics_port)
    cells: dict[str, Any] = {}
    try:
        for name, method, batch, conc in CELLS:
            payload = _payload(method, batch, manifest)
            r_off: list[float] = []
            r_on: list[float] = []
            errors = 0
            cpu = {"off": [0.0, 0], "on": [0.0, 0]}   # CPU seconds, images served
            for k in range(rounds):
                # Alternate which server goes first so that neither always follows the other's load.
                order = (off, on) if k % 2 == 0 else (on, off)
                for srv in order:
                    key = "on" if srv is on else "off"
                    if srv is on:
                        with scraper:
                            ips, secs, imgs, err = gens[key].round(srv, method, payload, conc, batch, seconds)
                    else:
                        ips, secs, imgs, err = gens[key].round(srv, method, payload, conc, batch, seconds)
                    errors += err
                    cpu[key][0] += secs
                    cpu[key][1] += imgs
                    (r_on if srv is on else r_off).append(ips)
            ratios = [a / b for a, b in zip(r_on, r_off, strict=True)]
            cpu_us = {k: v[0] / max(1, v[1]) * 1e6 for k, v in cpu.items()}
            cells[name] = {"method": method, "batch": batch, "concurrency": conc,
                           "off_images_per_s": statistics.median(r_off),
                           "on_images_per_s": statistics.median(r_on),
                           "ratio_median": statistics.median(ratios), "ratios": ratios,
                           "server_cpu_us_per_image_off": cpu_us["off"],
                           "server_cpu_us_per_image_on": cpu_us["on"],
                           "cpu_ratio": cpu_us["off"] / cpu_us["on"], "errors": errors}
            c = cells[name]
            rounds_txt = ", ".join(f"{x:.2f}" for x in ratios)
            print(f"  {name:20s} off {c['off_images_per_s']:9.0f}  on {c['on_images_per_s']:9.0f} img/s  "
                  f"ratio {c['ratio_median']:.3f}  cpu ratio {c['cpu_ratio']:.3f}  (rounds {rounds_txt})",
                  flush=True)
        with urllib.request.urlopen(f"http://127.0.0.1:{on.metrics_port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        dropped = sum(float(v) for v in re.findall(
            r'^vae_latent_images_dropped_total\{reason="queue_full"\} (\S+)$', text, re.M))
        folded = float(re.search(r"^vae_latent_images_total (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    finally:
        for g in gens.values():
            g.close()
        off.close()
        on.close()
    return {"model_dir": str(model_dir), "latent_dim": manifest["latent_dim"],
            "input_shape": manifest["input_shape"], "rounds": rounds, "seconds_per_round": seconds,
            "scrape_interval_s": 1.0, "cells": cells,
            "latent_images_folded": folded, "latent_images_dropped_queue_full": dropped}


def _cost_per_call(d: int, ref: dict, method: str, batch: int) -> tuple[float, float]:
    """(wall us the request thread spends in the call, CPU us of all threads per call incl. the worker)."""
    from prometheus_client import CollectorRegistry

    from service.metrics import ServiceMetrics

    rng = np.random.default_rng(0)
    mu = rng.standard_normal((batch, d)).astype(np.float32)
    lv = np.full((batch, d), -1.0, np.float32)
    m = ServiceMetrics(CollectorRegistry(), model_name="m", model_version="1", provider="cpu", latent_dim=d,
                       reference=ref)
    call = (lambda: m.encoded(mu, lv)) if method == "encoded" else (lambda: m.latents("Sample", mu))
    wall, calls = 0.0, 0
    cpu0 = time.process_time()
    for _ in range(20):
        t0 = time.perf_counter()
        for _ in range(100):
            call()
        wall += time.perf_counter() - t0
        calls += 100
        m.flush()          # the worker folds what arrived, as it would every 50 ms in the server
    cpu = time.process_time() - cpu0
    m.close()
    return wall / calls * 1e6, cpu / calls * 1e6


def micro(d_model: int) -> dict[str, Any]:
    """In-process costs at the model's latent size and at the largest supported (1024): what a request
    pays to hand its arrays over, the CPU of that plus the worker's folding per call, one scrape."""
    from prometheus_client import CollectorRegistry, generate_latest

    from service.metrics import ServiceMetrics

    out: dict[str, Any] = {}
    for d in sorted({d_model, 1024}):
        ref = {"n_images": 1000, "mu_mean": [0.0] * d, "mu_var": [1.0] * d, "posterior_var_mean": [0.5] * d,
               "kl_per_dim": [1.0] * d, "active_units": d, "active_threshold": 0.01,
               "kl_per_sample": {"mean": 1.0, "p50": 1.0, "p90": 2.0, "p99": 3.0}}
        row: dict[str, Any] = {}
        for method, batch in (("encoded", 1), ("encoded", 16), ("encoded", 64), ("latents", 64)):
            wall_us, cpu_us = _cost_per_call(d, ref, method, batch)
            row[f"{method}_b{batch}"] = {"request_wall_us": wall_us, "cpu_us_per_call": cpu_us}
        reg = CollectorRegistry()
        m = ServiceMetrics(reg, model_name="m", model_version="1", provider="cpu", latent_dim=d,
                           reference=ref)
        m.encoded(np.zeros((200, d), np.float32), np.zeros((200, d), np.float32))
        m.flush()
        cpu0, n = time.process_time(), 0
        while time.process_time() - cpu0 < 1.0:
            text = generate_latest(reg)
            n += 1
        row["scrape_cpu_ms"] = (time.process_time() - cpu0) / n * 1e3
        row["scrape_kib"] = len(text) / 1024
        m.close()
        out[str(d)] = row
    return out


def estimate(result: dict[str, Any]) -> None:
    """Per cell: on/off throughput implied by the in-process costs added to the off server's measured
    CPU per image (CPU-bound server: throughput ~ 1 / CPU per image); scrape once a second included."""
    costs = result["in_process"][str(result["latent_dim"])]
    for c in result["cells"].values():
        key = ("latents" if c["method"] == "Sample" else "encoded") + f"_b{c['batch']}"
        per_image = costs[key]["cpu_us_per_call"] / c["batch"]
        per_image += costs["scrape_cpu_ms"] * 1e3 / max(1.0, c["on_images_per_s"])
        base = c["server_cpu_us_per_image_off"]
        c["added_cpu_us_per_image"] = per_image
        c["estimated_ratio"] = base / (base + per_image)


def micro_table(rows: dict[str, Any]) -> str:
    lines = ["| latent dim | call | request thread, us/call | CPU incl. worker, us/call |",
             "| ---: | --- | ---: | ---: |"]
    for d, r in rows.items():
        for key, v in r.items():
            if isinstance(v, dict):
                lines.append(f"| {d} | {key} | {v['request_wall_us']:.1f} | {v['cpu_us_per_call']:.1f} |")
        lines.append(f"| {d} | one scrape of /metrics ({r['scrape_kib']:.0f} KiB) | | "
                     f"{r['scrape_cpu_ms'] * 1e3:.0f} |")
    return "\n".join(lines)


def table(result: dict[str, Any]) -> str:
    lines = [f"model latent_dim={result['latent_dim']} input={result['input_shape']}; "
             f"{result['rounds']} alternating rounds of {result['seconds_per_round']:g} s per server and "
             "cell; metrics-on server scraped every 1 s",
             "| cell | off img/s | on img/s | on/off img/s (median of rounds) | server CPU us/image off / on "
             "| on/off from CPU per image | on/off from in-process cost |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, c in result["cells"].items():
        lines.append(f"| {name} | {c['off_images_per_s']:.0f} | {c['on_images_per_s']:.0f} | "
                     f"{c['ratio_median']:.3f} | {c['server_cpu_us_per_image_off']:.1f} / "
                     f"{c['server_cpu_us_per_image_on']:.1f} | {c['cpu_ratio']:.3f} | "
                     f"{c['estimated_ratio']:.3f} |")
    lines.append(f"latent statistics: {result['latent_images_folded']:.0f} images folded, "
                 f"{result['latent_images_dropped_queue_full']:.0f} dropped (queue full)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", type=Path, help="exported model folder (default: build a small one)")
    ap.add_argument("--latent-dim", type=int, default=32, help="latent size of the default model")
    ap.add_argument("--rounds", type=int, default=16, help="alternating rounds per server and cell")
    ap.add_argument("--seconds", type=float, default=1.0, help="measured seconds per round")
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
    result["in_process"] = micro(result["latent_dim"])
    estimate(result)
    print(table(result))
    print("\nin-process costs (this process; the worker folds after every 100 calls):")
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
