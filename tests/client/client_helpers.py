"""Real servers for the client tests: in a background thread (own asyncio loop) or in a subprocess
(`vae serve`, for kill/restart), plus a TCP listener that accepts and never speaks."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
VAE = [sys.executable, "-m", "vae_cli.main"]

__all__ = ["ServerThread", "ServeProcess", "SilentServer", "free_port", "run_vae", "ROOT", "VAE"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env() -> dict[str, str]:
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    e.pop("JOB_COMPLETION_INDEX", None)
    return e


def run_vae(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VAE, *args], capture_output=True, text=True, timeout=timeout, env=env(), cwd=ROOT)


class ServerThread:
    """`with ServerThread(model_dir, max_sample_n=8) as srv: srv.target`."""

    def __init__(self, model_dir: Path, **overrides: Any) -> None:
        from service.settings import Settings

        base: dict[str, Any] = {"model_dir": str(model_dir), "host": "127.0.0.1", "port": 0,
                                "metrics_port": 0, "grace_seconds": 2.0}
        base.update(overrides)
        self.settings = Settings(**base)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="client-test-server")
        self.server: Any = None
        self.registry: Any = None
        self.port = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _call(self, coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        from prometheus_client import CollectorRegistry

        from service.server import create_server

        self.registry = CollectorRegistry()
        self.server, self.port = create_server(self.settings, self.registry)
        await self.server.start(warm=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        try:
            self._call(self._start())
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.server is not None:
                self._call(self.server.stop(0.5))
                self.server = None
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=30)
            self.loop.close()


class ServeProcess:
    """`vae serve` in a subprocess on a given port; `kill()` sends SIGKILL (a crash, no drain)."""

    def __init__(self, model_dir: Path, port: int, log: Path) -> None:
        self.model_dir, self.port, self.log = model_dir, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> ServeProcess:
        with open(self.log, "ab") as f:
            cmd = [*VAE, "serve", "--model-dir", str(self.model_dir), "--host", "127.0.0.1",
                   "--port", str(self.port), "--metrics-port", "0"]
            self.proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env(), cwd=ROOT)
        if wait:
            self.wait_serving()
        return self

    def wait_serving(self, limit: float = 60.0) -> None:
        end = time.monotonic() + limit
        while time.monotonic() < end:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            if run_vae(["health", "--target", self.target, "--timeout", "2"], timeout=30).returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError(f"server on {self.target} not SERVING: {self.log.read_text()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc = None

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


class SilentServer:
    """A TCP listener that accepts connections and never sends a byte: a server that never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.conns: list[socket.socket] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
                self.conns.append(conn)
            except OSError:
                continue

    def __enter__(self) -> SilentServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
        for c in self.conns:
            c.close()
        self.sock.close()
