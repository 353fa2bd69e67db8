"""Trainer faults. A failed write during checkpointing (no space left, fsync error, rename error) leaves
the previous checkpoint intact and loadable, no temp file behind, and the run can be resumed; a
malicious pickle in a checkpoint never executes, through the CLIs a user would point at it.

A real full disk is hard to make in a test: the write faults are injected by monkeypatching
os.replace / os.fsync / torch.save to raise OSError(ENOSPC) (a mock, for a fault not producible for
real). SIGKILL mid-epoch + resume and injected NaN losses are proven by tests/trainer/test_resume.py
and tests/trainer/test_train.py (cited in RELIABILITY.md, not duplicated here)."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from rel_helpers import ROOT, child_env

from trainer import checkpoint as ckpt_mod
from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.cli import train_main

ARGS = (
    "--data digits --hidden 16 --latent-dim 2 --epochs 2 --batch-size 128 --ckpt-every 4 --no-grids "
    "--no-progress --no-tensorboard -q --num-threads 1"
).split()


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _enospc(*_: Any, **__: Any) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _half_then_enospc(obj: Any, f: Any, *a: Any, **kw: Any) -> None:
    f.write(b"PK\x03\x04 half a checkpoint")  # the disk fills up in the middle of the file
    _enospc()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rel-train") / "run"
    assert train_main([*ARGS, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("fault", ["replace", "fsync", "half-written"])
def test_failed_checkpoint_write_keeps_previous(
    run_dir: Path, tmp_path: Path, fault: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    last = folder / "last.pt"
    last.write_bytes((run_dir / "last.pt").read_bytes())
    before = _sha(last)
    state = load_checkpoint(last)
    state["step"] += 1
    state["model_state"] = {k: v + 1 for k, v in state["model_state"].items()}
    target = {
        "replace": (ckpt_mod.os, "replace", _enospc),
        "fsync": (ckpt_mod.os, "fsync", _enospc),
        "half-written": (ckpt_mod.torch, "save", _half_then_enospc),
    }[fault]
    with monkeypatch.context() as m:
        m.setattr(*target)
        with pytest.raises(OSError) as err:
            save_checkpoint(last, state)
    assert err.value.errno == errno.ENOSPC
    assert _sha(last) == before  # the previous checkpoint, byte for byte
    assert load_checkpoint(last)["step"] == state["step"] - 1
    assert sorted(p.name for p in folder.iterdir()) == ["last.pt"]  # no temp file left behind


def test_run_with_failing_disk_stops_cleanly_and_resumes(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real run whose third checkpoint write fails: exit 1 with one clear line (no traceback), the
    second checkpoint intact, and --resume finishes with the weights of the uninterrupted run."""
    out = tmp_path / "run"
    real_replace, calls = os.replace, {"n": 0}

    def replace(src: Any, dst: Any) -> None:
        if str(dst).endswith("last.pt"):
            calls["n"] += 1
            if calls["n"] == 3:
                _enospc()
        real_replace(src, dst)

    with monkeypatch.context() as m:
        m.setattr(ckpt_mod.os, "replace", replace)
        rc = train_main([*ARGS, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "No space left on device" in err and "Traceback" not in err
    kept = load_checkpoint(out / "last.pt")
    assert 0 < kept["step"] < load_checkpoint(run_dir / "last.pt")["step"]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]

    assert train_main(["--resume", str(out), "-q", "--num-threads", "1"]) == 0
    a, b = load_checkpoint(run_dir / "last.pt"), load_checkpoint(out / "last.pt")
    assert a["step"] == b["step"]
    for k, v in a["model_state"].items():
        assert torch.equal(v, b["model_state"][k]), k


class _Payload:
    """Unpickling this calls open(marker, "w"): proof of execution if the file appears."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def test_malicious_pickle_never_runs(run_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = load_checkpoint(run_dir / "last.pt")
    evil["metrics"] = {"x": _Payload(marker)}  # a real checkpoint with a payload inside
    torch.save(evil, tmp_path / "evil.pt")
    for argv in (
        ["export", str(tmp_path / "evil.pt"), "--out", str(tmp_path / "model")],
        ["evaluate", str(tmp_path / "evil.pt")],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "vae_cli.main", *argv],
            env=child_env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert proc.returncode == 2, (argv, proc.stderr)
        assert "weights_only" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert not marker.exists(), f"payload executed by `vae {argv[0]}`"
    assert not (tmp_path / "model").exists()


def test_injected_nan_losses_skipped_then_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """From step 10 on every loss is NaN (injected: real data would only do this by chance): each such
    step is skipped (weights untouched), and after --max-skips in a row the run stops: exit 1, one clear
    line, and the checkpoint on disk holds only finite weights from before the fault."""
    from trainer import train as train_mod

    real, calls = train_mod.elbo_terms, {"n": 0}

    def poisoned(*a: Any, **kw: Any) -> Any:
        terms = real(*a, **kw)
        calls["n"] += 1
        if calls["n"] > 10:
            terms.loss = terms.loss * float("nan")
        return terms

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(train_mod, "elbo_terms", poisoned)
        rc = train_main([*ARGS, "--epochs", "3", "--max-skips", "4", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "4 non-finite steps in a row" in err and "Traceback" not in err, err
    assert calls["n"] == 14  # 10 good steps, then exactly 4 skipped ones before the stop
    kept = load_checkpoint(out / "last.pt")
    assert kept["step"] < 14  # saved before the stop; skipped steps never touched the weights
    assert all(bool(torch.isfinite(v).all()) for v in kept["model_state"].values())
    steps = [line for line in (out / "metrics.jsonl").read_text().splitlines() if '"type": "step"' in line]
    # The first 3 skipped steps are logged; the 4th stops the run before its record is written.
    assert sum('"skipped": true' in line for line in steps) == 3
