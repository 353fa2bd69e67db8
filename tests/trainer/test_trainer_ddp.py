"""Distributed data parallel for real: two CPU processes under torchrun (gloo); rank 0 writes the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from trainer.checkpoint import load_checkpoint


def test_torchrun_two_cpu_processes(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        "--nproc-per-node=2",
        "-m",
        "vae_cli.main",
        "train",
        "--data",
        "digits",
        "--out",
        str(out),
        "--hidden",
        "32",
        "--latent-dim",
        "4",
        "--epochs",
        "2",
        "--batch-size",
        "64",
        "--lr",
        "3e-3",
        "--no-grids",
        "--no-progress",
        "--no-tensorboard",
        "-q",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["world_size"] == 2
    ck = load_checkpoint(out / "last.pt")
    # 1617 training images, global batch 64 split 32 + 32 over the ranks, short last batch dropped
    assert ck["step"] == 2 * (1617 // 64) and ck["epoch"] == 2
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["type"] == "step"]
    assert [r["step"] for r in steps] == list(range(ck["step"]))  # one writer: rank 0
    assert steps[-1]["rec"] < steps[0]["rec"]
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".pt") == ["best.pt", "last.pt"]
