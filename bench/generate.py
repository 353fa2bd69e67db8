"""Generation benchmark: `vae generate` throughput (images/s, shards written to disk) at concurrency
1, 2, 4, 8 against the in-process decoder (onnxruntime on the model's decoder.onnx) as a ratio.

The server runs as `vae serve` in its own process (or use --target for a running one, with the
--model-dir it serves). The job runs the real job engine (client.generate.run_generate): SampleStream
per shard, uint8 images + latents + seeds, deterministic .npz written atomically with fsync.
The in-process reference runs the decoder alone at the server's batch size, with the server's thread
setting, and converts to uint8 as the server does: the ceiling a job over gRPC could approach.
Figures on a shared machine are noisy: compare the ratios measured in one run.

    .venv/bin/python bench/generate.py [--model-dir DIR] [--n 20000] [--out .bench/generate.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.loadgen import serve_command  # noqa: E402

__all__ = ["main"]

DATA = ROOT.parent / "shared" / "data" / "fashion-mnist-4k"  # ../shared beside the checkout
CACHE = ROOT / ".bench"


def _model(cache: Path) -> Path:
    """A small conv VAE on 1x28x28 (Fashion-MNIST when present, else random pixels: speed does not
    depend on the weights), trained briefly and exported by the real exporter; cached."""
    out = cache / "gen-conv28" / "model"
    if (out / "manifest.json").exists():
        return out
    from exporter.export import export_model
    from trainer.config import ModelConfig, TrainConfig
    from trainer.train import train

    if DATA.exists():
        data = str(DATA)
    else:
        cache.mkdir(parents=True, exist_ok=True)
        data = str(cache / "gen-random-28.npy")
        np.save(data, np.random.default_rng(0).random((512, 1, 28, 28), dtype=np.float32))
    run = train(
        ModelConfig(input_shape=(1, 28, 28), arch="conv", hidden=(32, 64), latent_dim=16),
        TrainConfig(
            data=data,
            out_dir=str(cache / "gen-conv28" / "run"),
            epochs=1,
            batch_size=128,
            seed=0,
            grids=False,
            tensorboard=False,
            progress=False,
        ),
    )
    export_model(run, out, model_name="conv28")
    return out


def in_process(model_dir: Path, batch: int, seconds: float, threads: int) -> float:
    """Decoder images/s in this process: z ~ N(0, I) -> decoder.onnx -> uint8, batch rows per run."""
    import onnxruntime as ort

    manifest = json.loads((model_dir / "manifest.json").read_text())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(
        str(model_dir / manifest["graphs"]["decoder"]["file"]), opts, providers=["CPUExecutionProvider"]
    )
    name = sess.get_inputs()[0].name
    rng = np.random.default_rng(0)
    z = rng.standard_normal((batch, int(manifest["latent_dim"])), dtype=np.float32)
    for _ in range(3):
        sess.run(None, {name: z})
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        x = sess.run(None, {name: z})[0]
        np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
        done += batch
    return done / (time.perf_counter() - t0)


class Server:
    """`vae serve` on a free port in its own process."""

    def __init__(self, model_dir: Path) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        args = serve_command(model_dir)
        self.proc = subprocess.Popen(args, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        self.port = 0
        for line in self.proc.stderr:  # type: ignore[union-attr]
            if m := re.search(r"listening on [^ ]+:(\d+)", line):
                self.port = int(m.group(1))
                break
        if not self.port:
            raise SystemExit(f"bench: vae serve did not start (exit {self.proc.wait()})")
        # Keep reading its log so that a full pipe can never block the server.
        threading.Thread(target=lambda: [None for _ in self.proc.stderr or []], daemon=True).start()
        self.target = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _health(target: str) -> None:
    from client import VaeClient

    end = time.monotonic() + 120
    with VaeClient(target, timeout=5) as c:
        while time.monotonic() < end:
            try:
                if c.health() == "SERVING":
                    return
            except Exception:  # noqa: BLE001 - still starting
                pass
            time.sleep(0.2)
    raise SystemExit(f"bench: {target} never became SERVING")


def job_rate(target: str, n: int, shard_size: int, concurrency: int, work: Path) -> dict[str, Any]:
    from client.channel import ChannelConfig
    from client.generate import GenerateJob, run_generate

    out = work / f"c{concurrency}"
    shutil.rmtree(out, ignore_errors=True)
    job = GenerateJob(n=n, out=out, shard_size=shard_size, seed=1, concurrency=concurrency, progress=False)
    outcome, manifest, _ = asyncio.run(run_generate(job, [ChannelConfig(target=target)]))
    if outcome.failed or not manifest["complete"]:
        raise SystemExit(f"bench: job at concurrency {concurrency} failed: {outcome.failed}")
    shas = [s["sha256"] for s in manifest["shards"]]
    shutil.rmtree(out, ignore_errors=True)
    return {"images_per_s": outcome.images / outcome.seconds, "seconds": outcome.seconds, "shards_sha": shas}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, help="exported model (default: a small conv VAE, built once)")
    p.add_argument("--target", help="a running server serving --model-dir (default: start one)")
    p.add_argument("--n", type=int, default=20000, help="images per job (default 20000)")
    p.add_argument("--shard-size", type=int, default=1000, help="images per shard (default 1000)")
    p.add_argument("--concurrency", default="1,2,4,8", help="levels (default 1,2,4,8)")
    p.add_argument("--seconds", type=float, default=3.0, help="in-process measuring window (default 3)")
    p.add_argument("--out", type=Path, default=CACHE / "generate.json", help="JSON results")
    args = p.parse_args(argv)
    if args.target and not args.model_dir:
        p.error("--target needs the --model-dir that server serves (for the in-process reference)")
    model_dir = args.model_dir or _model(CACHE)
    levels = [int(c) for c in args.concurrency.split(",")]
    server = None if args.target else Server(model_dir)
    target = args.target or server.target  # type: ignore[union-attr]
    work = Path(tempfile.mkdtemp(prefix="gen-bench-", dir=CACHE if CACHE.exists() else None))
    try:
        _health(target)
        from client import VaeClient

        with VaeClient(target) as c:
            info = c.info()
        # The job streams each shard in chunks of min(shard size, max_sample_n) rows: the reference runs
        # the decoder at that batch, once with the server's 1 intra-op thread, once with every core.
        batch = min(args.shard_size, int(info.limits.max_sample_n) or args.shard_size)
        ref = in_process(model_dir, batch, args.seconds, threads=1)
        ref_all = in_process(model_dir, batch, args.seconds, threads=0)
        rows = []
        first_shas = None
        for k in levels:
            r = job_rate(target, args.n, args.shard_size, k, work)
            first_shas = first_shas or r["shards_sha"]
            rows.append(
                {
                    "concurrency": k,
                    "images_per_s": round(r["images_per_s"], 1),
                    "seconds": round(r["seconds"], 3),
                    "ratio_to_in_process": round(r["images_per_s"] / ref, 3),
                    "ratio_to_in_process_all_cores": round(r["images_per_s"] / ref_all, 3),
                    "identical_shards": r["shards_sha"] == first_shas,
                }
            )
    finally:
        if server:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"model {info.model_name} {list(info.input_shape)} z={info.latent_dim} on "
        f"{info.execution_provider}; n={args.n}, shard size {args.shard_size}; {os.cpu_count()} cores"
    )
    print(
        f"in-process decoder + uint8, batch {batch}: {ref:,.0f} images/s with 1 thread (the server's "
        f"setting), {ref_all:,.0f} images/s with all cores"
    )
    print(
        f"{'concurrency':>11} {'images/s':>10} {'seconds':>8} {'ratio 1 thread':>14} "
        f"{'ratio all cores':>15} {'same bytes':>10}"
    )
    for r in rows:
        print(
            f"{r['concurrency']:>11} {r['images_per_s']:>10,.0f} {r['seconds']:>8.2f} "
            f"{r['ratio_to_in_process']:>14.2f} {r['ratio_to_in_process_all_cores']:>15.2f} "
            f"{str(r['identical_shards']):>10}"
        )
    result = {
        "bench": "generate",
        "model_dir": str(model_dir),
        "input_shape": list(info.input_shape),
        "latent_dim": int(info.latent_dim),
        "provider": info.execution_provider,
        "n": args.n,
        "shard_size": args.shard_size,
        "in_process_images_per_s": round(ref, 1),
        "in_process_all_cores_images_per_s": round(ref_all, 1),
        "in_process_batch": batch,
        "rows": rows,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
