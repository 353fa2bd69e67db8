"""Client-test helpers: `vae` runs and a TCP listener that accepts and never speaks. The real servers
live once in tests/servers.py (re-exported here)."""

from __future__ import annotations

import socket
import subprocess
import threading

from servers import ROOT, VAE, ServeProcess, ServerThread, child_env, free_port

__all__ = ["ServerThread", "ServeProcess", "SilentServer", "free_port", "run_vae", "env", "ROOT", "VAE"]


def env() -> dict[str, str]:
    return child_env()


def run_vae(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VAE, *args], capture_output=True, text=True, timeout=timeout, env=env(), cwd=ROOT)


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
