"""The one set of real servers the tests start: the service in a background thread (own asyncio loop,
port 0) and `vae serve` in a subprocess (port 0, the bound port read back from its log line
`listening on HOST:PORT`). Importable from every test folder as `from servers import ...`
(tests/conftest.py puts this folder on sys.path)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from protos.vae.v1 import vae_pb2_grpc
from service.settings import Settings

__all__ = ["LoopThread", "ServerThread", "ServeProcess", "settings_for", "serving", "child_env", "free_port",
           "ROOT", "VAE"]

ROOT = Path(__file__).resolve().parents[1]
VAE = [sys.executable, "-m", "vae_cli.main"]
# The line service/cli.py logs once the port is bound (the supervisor of --processes logs the same).
_LISTENING = re.compile(r"listening on [^\s:]+:(\d+)")


def free_port() -> int:
    """A loopback port free right now. Only for what cannot bind port 0 and report it: the metrics
    server (metrics_port=0 means "no metrics server"), an external Prometheus, a port nobody listens
    on. A gRPC server under test binds port 0 instead."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child `vae` process: this tree first on the path, no stray VAE_* settings,
    one OpenMP thread (two cores are shared), unbuffered logs, no Kubernetes job index."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAE_") and k != "JOB_COMPLETION_INDEX"}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)})
    env.update(extra)
    return env


def settings_for(model_dir: Any, **overrides: Any) -> Settings:
    """Settings of a test server: loopback, port 0, no metrics server, a short drain."""
    base: dict[str, Any] = {"model_dir": str(model_dir), "host": "127.0.0.1", "port": 0, "metrics_port": 0,
                            "grace_seconds": 5.0}
    base.update(overrides)
    return Settings(**base)


def serving(target: str, timeout: float = 2.0, credentials: Any = None) -> bool:
    """True when the health service answers SERVING (the check a container probe makes)."""
    channel = (
        grpc.secure_channel(target, credentials) if credentials is not None else grpc.insecure_channel(target)
    )
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                              timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


class LoopThread:
    """An asyncio event loop running in a daemon thread: the plumbing under every in-thread server, so
    blocking and asyncio clients in the test can both call it. `call(coro)` runs a coroutine there."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name=name)

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
        """Run a coroutine on the thread's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def _open(self, start: Coroutine[Any, Any, Any]) -> None:
        self.thread.start()
        try:
            self.call(start)
        except BaseException:
            self._close()
            raise

    def _close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


class ServerThread(LoopThread):
    """create_server + start on a thread's own event loop, bound to 127.0.0.1 port 0.

    `source` is a Settings or a model folder (then `overrides` are Settings fields). `registry` defaults
    to a fresh CollectorRegistry, kept as `.registry`. `metrics=True` also starts the /metrics HTTP
    server on a free port (`.metrics_port`).
        with ServerThread(model_dir, max_sample_n=8) as srv, srv.channel() as ch: ..."""

    def __init__(self, source: Settings | Path | str, registry: CollectorRegistry | None = None,
                 warm: bool = True, *, metrics: bool = False, grace: float = 1.0, **overrides: Any) -> None:
        if isinstance(source, Settings):
            if overrides:
                raise TypeError("pass overrides with a model folder, not with a Settings")
            self.settings = source
        else:
            self.settings = settings_for(source, **{"grace_seconds": 2.0, **overrides})
        if metrics and not self.settings.metrics_port:
            self.settings = dataclasses.replace(self.settings, metrics_port=free_port())
        self.registry = registry if registry is not None else CollectorRegistry()
        self.warm, self.grace = warm, grace
        super().__init__("test-server")
        self.server: Any = None
        self.port = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_port(self) -> int:
        return int(self.server.metrics_port)

    async def _start(self) -> None:
        from service.server import create_server

        self.server, self.port = create_server(self.settings, self.registry)
        await self.server.start(warm=self.warm)

    def __enter__(self) -> ServerThread:
        self._open(self._start())
        return self

    def stop(self, grace: float | None = 1.0) -> None:
        if self.server is not None:
            self.call(self.server.stop(grace), timeout=60)
            self.server = None

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop(self.grace)
        finally:
            self._close()

    def channel(self, **kw: Any) -> grpc.Channel:
        return grpc.insecure_channel(self.target, **kw)

    def stub(self) -> tuple[grpc.Channel, vae_pb2_grpc.VaeServiceStub]:
        channel = self.channel()
        return channel, vae_pb2_grpc.VaeServiceStub(channel)


class ServeProcess:
    """`vae serve` in a child process (its own process group) on port 0; stdout and stderr go to `log`,
    and the bound port is read back from the `listening on` line. `start()` again after `kill()`
    restarts on the same port (a crash and restart at one address). `__exit__` kills the group."""

    def __init__(self, model_dir: Path, log: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.model_dir, self.log, self.args = model_dir, log, args
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

    def start(self, timeout: float = 90.0, credentials: Any = None, wait: bool = True) -> ServeProcess:
        """Start and wait until SERVING; `wait=False` (only on a restart, the port being known) returns
        at once."""
        if not wait and not self.port:
            raise ValueError("wait=False needs a known port: start once with wait=True")
        cmd = [*VAE, "serve", "--model-dir", str(self.model_dir), "--host", "127.0.0.1",
               "--port", str(self.port), "--metrics-port", "0", *self.args]
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT,
                                         start_new_session=True)
        if not wait:
            return self
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vae serve exited {self.proc.returncode}: {self.text()}")
            if not self.port:
                m = _LISTENING.search(self.text()[offset:])
                self.port = int(m.group(1)) if m else 0
            if self.port and serving(self.target, credentials=credentials):
                return self
            time.sleep(0.1)
        raise RuntimeError(f"vae serve not SERVING within {timeout} s: {self.text()}")

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def terminate(self) -> None:
        """SIGTERM to the server process itself (a drain)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL to the whole process group (a crash, no drain); the port is kept for a restart."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
