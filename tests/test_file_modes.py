"""Files that cross a wall get a normal mode: under umask 022 the trainer's checkpoints, the exporter's
model folder and a `vae generate` job's shards are readable by group and other (0644; folders 0755), so
a service or job running as another uid on a shared volume can read them. Every writer is the real
one, run as a real `vae` process with its umask set to 022."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from servers import ROOT, ServerThread

pytestmark = pytest.mark.timeout(300)
TRAIN = ("--data digits --hidden 16 --latent-dim 2 --epochs 1 --batch-size 64 --no-grids --no-progress "
         "--no-tensorboard -q --num-threads 1").split()


def _vae(*args: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("JOB_COMPLETION_INDEX", None)
    proc = subprocess.run([sys.executable, "-m", "vae_cli.main", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=240,
                          umask=0o022)  # the child's umask, not ours
    assert proc.returncode == 0, proc.stderr


def _modes(folder: Path) -> dict[str, int]:
    """Mode of every entry under `folder` (and the folder itself, as '.'), lock files aside."""
    out = {".": stat.S_IMODE(folder.stat().st_mode)}
    for p in sorted(folder.rglob("*")):
        if p.name != ".lock":
            out[str(p.relative_to(folder))] = stat.S_IMODE(p.stat().st_mode)
    return out


def _assert_normal(modes: dict[str, int], folder: Path) -> None:
    wrong = {name: oct(mode) for name, mode in modes.items()
             if mode != (0o755 if (folder / name).is_dir() else 0o644)}
    assert not wrong, wrong


def test_checkpoints_and_model_files_are_readable_by_others(tmp_path: Path) -> None:
    run, model = tmp_path / "run", tmp_path / "model"
    _vae("train", *TRAIN, "--out", str(run))
    modes = _modes(run)
    assert {"last.pt", "best.pt", "config.json", "metrics.jsonl"} <= set(modes), modes
    _assert_normal(modes, run)
    _vae("export", str(run), "--out", str(model))
    modes = _modes(model)
    assert {"encoder.onnx", "decoder.onnx", "manifest.json"} <= set(modes), modes
    _assert_normal(modes, model)


def test_generated_shards_are_readable_by_others(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "gen"
    with ServerThread(tiny_model_dir) as server:
        _vae("generate", "--target", server.target, "--n", "20", "--shard-size", "10", "--seed", "3",
             "--format", "png", "--out", str(out), "--no-progress")
    modes = _modes(out)
    assert {"job.json", "manifest.json", "shard-00000.npz", "shard-00001.json", "shard-00001"} <= set(modes)
    assert any(name.startswith("shard-00000/") and name.endswith(".png") for name in modes), modes
    _assert_normal(modes, out)
