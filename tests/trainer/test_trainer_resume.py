"""A run killed with SIGKILL and resumed ends with exactly the weights of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from trainer.checkpoint import load_checkpoint
from trainer.cli import train_main

ARGS = (
    "--data digits --hidden 48 --latent-dim 3 --epochs 4 --batch-size 32 --lr 3e-3 --ckpt-every 7 "
    "--beta-schedule cyclical --free-bits 0.05 --warmup-steps 20 --cosine --grad-clip 5 --optimizer adamw "
    "--weight-decay 1e-4 --no-grids --no-progress --no-tensorboard -q"
).split()


def _env() -> dict[str, str]:
    root = Path(__file__).resolve().parents[2]
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}


def test_sigkill_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    ref, run = tmp_path / "ref", tmp_path / "run"
    cmd = [sys.executable, "-m", "vae_cli.main", "train", *ARGS]
    subprocess.run([*cmd, "--out", str(ref), "--num-threads", "1"], env=_env(), check=True, timeout=300)

    proc = subprocess.Popen([*cmd, "--out", str(run), "--num-threads", "1"], env=_env())
    try:
        deadline = time.monotonic() + 240
        # Kill as soon as a mid-run checkpoint exists (and the run is not over yet).
        while not (run / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL, "the run ended before it could be killed"
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = load_checkpoint(run / "last.pt")["step"]
    final = load_checkpoint(ref / "last.pt")["step"]
    assert 0 < killed_at < final

    assert train_main(["--resume", str(run), "-q", "--num-threads", "1"]) == 0
    a, b = load_checkpoint(ref / "last.pt"), load_checkpoint(run / "last.pt")
    assert a["step"] == b["step"] == final
    for k, v in a["model_state"].items():
        assert torch.equal(v, b["model_state"][k]), k
    sa, sb = a["optimizer_state"]["state"], b["optimizer_state"]["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    assert torch.equal(a["rng_state"]["torch"], b["rng_state"]["torch"])
    # The log reads like the uninterrupted run's: each step once, same values.
    ref_steps = [
        line for line in (ref / "metrics.jsonl").read_text().splitlines() if '"type": "step"' in line
    ]
    run_steps = [
        line for line in (run / "metrics.jsonl").read_text().splitlines() if '"type": "step"' in line
    ]
    assert run_steps == ref_steps
