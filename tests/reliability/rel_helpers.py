"""Helpers of the reliability suite: `vae serve` as a real subprocess (port 0, port read from its log),
health probes, resident memory of a process, and a throwaway PKI made with the openssl CLI."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["ServeProcess", "serving", "rss_bytes", "make_pki", "ROOT", "child_env"]

ROOT = Path(__file__).resolve().parents[2]
_LISTENING = re.compile(r"listening on [^\s]+:(\d+)")


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAE_")}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)})
    env.update(extra)
    return env


def serving(target: str, timeout: float = 2.0, credentials: Any = None) -> bool:
    """True when the health service answers SERVING (the check a container probe makes)."""
    channel = (
        grpc.secure_channel(target, credentials) if credentials is not None else grpc.insecure_channel(target)
    )
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def rss_bytes(pid: int) -> int:
    """Resident set size of a live process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class ServeProcess:
    """`vae serve` in a child process on port 0; stderr goes to a file (read back for the port and for
    the token-leak check). Always killed on exit."""

    def __init__(self, model_dir: Path, log: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.log = log
        self.cmd = [
            sys.executable,
            "-m",
            "vae_cli.main",
            "serve",
            "--model-dir",
            str(model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--metrics-port",
            "0",
            *args,
        ]
        self.env = env or child_env()
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 90.0, credentials: Any = None) -> ServeProcess:
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                self.cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=fh, cwd=ROOT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vae serve exited {self.proc.returncode}: {self.text()}")
            if not self.port:
                m = _LISTENING.search(self.text())
                self.port = int(m.group(1)) if m else 0
            if self.port and serving(self.target, credentials=credentials):
                return self
            time.sleep(0.1)
        raise RuntimeError(f"vae serve not SERVING within {timeout} s: {self.text()}")

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


def _openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(folder: Path) -> Path:
    """ca.pem + server.pem/key (127.0.0.1) + client.pem/key signed by ca; stranger.pem/key signed by
    another CA (an intruder's)."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "rogue-ca"):
        _openssl(
            folder,
            "req",
            "-x509",
            *key,
            "-keyout",
            f"{ca}.key",
            "-out",
            f"{ca}.pem",
            "-days",
            "1",
            "-subj",
            f"/CN=reliability {ca}",
        )
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, ca in (("server", "ca"), ("client", "ca"), ("stranger", "rogue-ca")):
        _openssl(folder, "req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        ext = ["-extfile", "san.ext"] if name == "server" else []
        _openssl(
            folder,
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            f"{ca}.pem",
            "-CAkey",
            f"{ca}.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "1",
            *ext,
        )
    return folder
