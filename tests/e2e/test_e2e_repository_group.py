"""`vae serve --model-repository REPO --processes 2`: SIGHUP to the parent reaches every process, each
loads the new version and releases the old one (seen per process on the group's one /metrics)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="needs SO_REUSEPORT")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _info_series(port: int) -> set[tuple[str, str]]:
    """(process, version) of every vae_model_info series of model `vae` on the group's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = set()
    for line in text.splitlines():
        if line.startswith("vae_model_info{") and 'model="vae"' in line:
            proc = re.search(r'process="(\d+)"', line)
            ver = re.search(r',version="(\d+)"|\{version="(\d+)"', line)
            if proc and ver:
                out.add((proc.group(1), ver.group(1) or ver.group(2)))
    return out


def _until(check, what: str, timeout: float = 90.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(what)


def test_sighup_reloads_every_process(tiny_model_dir: Path, tiny_conv_model_dir: Path,
                                      tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(tiny_model_dir, repo / "vae" / "1")
    metrics_port = _free_port()
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "vae_cli.main", "serve", "--model-repository", str(repo), "--host",
           "127.0.0.1", "--port", "0", "--metrics-port", str(metrics_port), "--processes", "2",
           "--grace-seconds", "5"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _until(lambda: "all 2 processes warm, SERVING" in log.read_text(errors="replace"),
               f"the group did not start: {log.read_text(errors='replace')[-2000:]}")
        _until(lambda: _info_series(metrics_port) == {("0", "1"), ("1", "1")}, "version 1 not on both")
        shutil.copytree(tiny_conv_model_dir, repo / "vae" / ".2.tmp")
        (repo / "vae" / ".2.tmp").rename(repo / "vae" / "2")
        proc.send_signal(signal.SIGHUP)
        _until(lambda: _info_series(metrics_port) == {("0", "2"), ("1", "2")},
               f"not every process moved to version 2: {_info_series(metrics_port)}")
        assert proc.poll() is None  # SIGHUP did not end the group
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
