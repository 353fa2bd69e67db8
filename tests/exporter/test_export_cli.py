"""`vae export` / `vae verify` through the real `vae` entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vae_cli.main import main


def test_vae_export_then_verify(tiny_run_dir: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "model"
    assert main(["export", str(tiny_run_dir), "--out", str(out), "--name", "digits-vae",
                 "--model-version", "2024.1"]) == 0
    text = capsys.readouterr().out
    assert "exported digits-vae 2024.1" in text and "active units" in text
    m = json.loads((out / "manifest.json").read_text())
    assert (m["model"]["name"], m["model"]["version"]) == ("digits-vae", "2024.1")
    assert main(["verify", str(out), "--checkpoint", str(tiny_run_dir)]) == 0
    assert "OK" in capsys.readouterr().out


def test_bad_model_name(tiny_run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(tiny_run_dir), "--out", str(tmp_path / "m"), "--name", "a/b"]) == 2
    assert "model name" in capsys.readouterr().err


def test_console_script_verify(tiny_model_dir: Path) -> None:
    vae = Path(sys.executable).with_name("vae")
    cmd = [str(vae)] if vae.exists() else [sys.executable, "-m", "vae_cli.main"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ok = subprocess.run([*cmd, "verify", str(tiny_model_dir)], capture_output=True, text=True, timeout=120,
                        env=env)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([*cmd, "verify", str(tiny_model_dir / "nope")], capture_output=True, text=True,
                         timeout=120, env=env)
    assert bad.returncode == 2 and "no such folder" in bad.stderr and "Traceback" not in bad.stderr
