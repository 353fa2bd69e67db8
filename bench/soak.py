"""Soak: a real `vae serve` process under steady closed-loop load for a bounded time, its resident memory
sampled every second. Reports errors, throughput, p50/p99 latency and the RSS growth after warm-up:
(median RSS over the last 10 % of the run - median RSS over the 10 % just after warm-up) / the latter.
Prints a table and writes JSON (default .bench/soak.json). `make bench` runs the 60 s default; the slow
test suite runs it for 600 s (tests/reliability/test_rel_soak.py).

    .venv/bin/python bench/soak.py [--model-dir DIR] [--seconds 600] [--clients 32] [--out FILE]

Without --model-dir it trains and exports a tiny VAE on scikit-learn's bundled digits (about 30 s).
On a shared machine latency figures are noisy; the memory figure is what this bench is for.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.loadgen import run_load_in_thread, serve_command  # noqa: E402

__all__ = ["soak", "main"]


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _tiny_model(folder: Path) -> Path:
    from exporter.export import export_model
    from trainer.config import ModelConfig, TrainConfig
    from trainer.train import train

    run = train(
        ModelConfig(input_shape=(1, 8, 8), latent_dim=4, arch="mlp", hidden=(32,)),
        TrainConfig(
            data="digits",
            out_dir=str(folder / "run"),
            epochs=3,
            batch_size=64,
            lr=3e-3,
            seed=0,
            grids=False,
            tensorboard=False,
            progress=False,
        ),
    )
    export_model(run, folder / "model")
    return folder / "model"


def _start_server(model_dir: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            serve_command(model_dir),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=fh,
            cwd=ROOT,
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vae serve exited {proc.returncode}: {log.read_text()}")
        text = log.read_text(errors="replace")
        m = re.search(r"listening on [^\s]+:(\d+)", text)
        if m and "warm-up done" in text:
            return proc, f"127.0.0.1:{m.group(1)}"
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("vae serve did not warm up within 120 s")


def soak(model_dir: Path, seconds: float, clients: int, warmup_fraction: float = 0.2) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        proc, target = _start_server(model_dir, Path(tmp) / "serve.log")
        try:
            samples: list[tuple[float, int]] = []
            thread, box = run_load_in_thread(target, clients=clients, seconds=seconds)
            t0 = time.monotonic()
            while thread.is_alive():
                samples.append((time.monotonic() - t0, _rss(proc.pid)))
                thread.join(timeout=1.0)
            proc.send_signal(signal.SIGTERM)
            exit_code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    if "error" in box:
        raise box["error"]
    result = box["result"]
    warm_end = seconds * warmup_fraction
    window = max(1.0, seconds * 0.1)
    after_warm = [r for t, r in samples if warm_end <= t < warm_end + window]
    last = [r for t, r in samples if t >= seconds - window]
    base, end = statistics.median(after_warm), statistics.median(last)
    return {
        **result.summary(),
        "clients": clients,
        "server_exit": exit_code,
        "rss_start_mib": round(samples[0][1] / 2**20, 1),
        "rss_after_warmup_mib": round(base / 2**20, 1),
        "rss_end_mib": round(end / 2**20, 1),
        "rss_max_mib": round(max(r for _, r in samples) / 2**20, 1),
        "rss_growth_after_warmup_pct": round(100.0 * (end - base) / base, 2),
        "warmup_s": warm_end,
        "rss_samples": len(samples),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/soak.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, help="exported model (default: a tiny digits VAE, built here)")
    p.add_argument("--seconds", type=float, default=60.0, help="load duration (default 60)")
    p.add_argument("--clients", type=int, default=32, help="concurrent closed-loop clients (default 32)")
    p.add_argument("--out", type=Path, default=ROOT / ".bench" / "soak.json", help="JSON output")
    args = p.parse_args(argv)
    if args.seconds < 10 or args.clients < 1:
        p.error("--seconds must be >= 10 and --clients >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or _tiny_model(Path(tmp))
        out = soak(model_dir, args.seconds, args.clients)
    out.update(machine=platform.machine(), cpus=os.cpu_count(), python=platform.python_version())
    rows = [
        ("duration", f"{out['seconds']:.0f} s, {out['clients']} clients"),
        ("requests", f"{out['requests']} ({out['errors']} errors, codes {out['codes']})"),
        ("throughput", f"{out['rps']} req/s"),
        ("latency p50 / p99", f"{out['p50_ms']} / {out['p99_ms']} ms"),
        (
            "RSS start / after warm-up / end / max",
            f"{out['rss_start_mib']} / {out['rss_after_warmup_mib']} / {out['rss_end_mib']} / "
            f"{out['rss_max_mib']} MiB",
        ),
        ("RSS growth after warm-up", f"{out['rss_growth_after_warmup_pct']} %"),
        ("server exit after SIGTERM", str(out["server_exit"])),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_name(f".{args.out.name}.tmp")
    tmp_out.write_text(json.dumps(out, indent=2) + "\n")
    os.replace(tmp_out, args.out)
    print(f"wrote {args.out}")
    return 0 if out["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
