"""Batch jobs as real processes against a real `vae serve` process: a job killed with SIGKILL and rerun,
and a job whose server crashes mid-job (SIGKILL, no drain) then rerun against a new server, both end
byte-identical to an uninterrupted run, with no half-written file left behind."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from rel_helpers import ROOT, ServeProcess, child_env

N, SHARD = 2400, 100


def _job(target: str, out: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vae_cli.main",
            "generate",
            "--target",
            target,
            "--n",
            str(N),
            "--shard-size",
            str(SHARD),
            "--seed",
            "11",
            "--out",
            str(out),
            "--concurrency",
            "2",
            "--no-progress",
            *extra,
        ],
        env=child_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str], timeout: float = 240) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def _digest(out: Path) -> dict[str, str]:
    """sha256 of every shard's arrays file, by name: what must not depend on interruptions."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("shard-*.npz"))}


def _wait_for_shards(out: Path, k: int, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(list(out.glob("shard-*.json"))) < k and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)


def _clean(out: Path) -> None:
    leftovers = [
        p.name
        for p in out.rglob("*")
        if p.name.endswith((".tmp", ".part")) or (p.name.startswith(".") and p.name != ".lock")
    ]
    assert leftovers == [], leftovers
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is True


def test_job_sigkill_rerun_and_server_crash_mid_job(tiny_model_dir: Path, tmp_path: Path) -> None:
    with ServeProcess(tiny_model_dir, tmp_path / "serve1.log") as srv:
        rc, err = _finish(_job(srv.target, tmp_path / "ref"))
        assert rc == 0, err
        reference = _digest(tmp_path / "ref")
        assert len(reference) == N // SHARD

        # 1. The job itself is killed mid-way, then rerun: it redoes only what is missing.
        killed = tmp_path / "killed"
        proc = _job(srv.target, killed)
        _wait_for_shards(killed, 3, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        done_before = len(list(killed.glob("shard-*.json")))
        assert 0 < done_before < N // SHARD, "the job ended before it could be killed"
        rc, err = _finish(_job(srv.target, killed))
        assert rc == 0, err
        assert _digest(killed) == reference
        _clean(killed)

        # 2. The server crashes (SIGKILL: no drain) mid-job: the job fails clearly, naming shards.
        crashed = tmp_path / "crashed"
        proc = _job(srv.target, crashed, "--retries", "2", "--shard-attempts", "1", "--timeout", "10")
        _wait_for_shards(crashed, 3, proc)
        srv.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        rc, err = _finish(proc)
    assert rc == 1, err
    assert "shard" in err and "Traceback" not in err, err

    # 3. A new server (another port) and a rerun: complete and identical to the uninterrupted job.
    with ServeProcess(tiny_model_dir, tmp_path / "serve2.log") as srv2:
        rc, err = _finish(_job(srv2.target, crashed))
    assert rc == 0, err
    assert _digest(crashed) == reference
    _clean(crashed)
