"""`vae serve --processes N`: N server processes on one port under one supervising parent.

The parent reserves the port (a socket bound with SO_REUSEPORT and never listened on, so port 0 works:
the kernel's choice is read back and given to every process), then starts N `service.worker` processes
that bind the same port with SO_REUSEPORT and each run the normal server with the same settings. The
kernel spreads *connections* over the listening processes; one client channel stays on one process.

The parent owns:
- signals: SIGTERM / SIGINT -> health NOT_SERVING everywhere and SIGTERM to every process, which
  drains as a single `vae serve` does; the parent exits when all have exited (0 when all drained).
- health, one status: every process reports the group's status (NOT_SERVING until all N are warm,
  then SERVING, NOT_SERVING again while draining); a process only listens once warm, so whichever
  process a health check reaches answers the same.
- restarts: a process that dies while the group serves is started again (its slot keeps its index),
  counted in `vae_process_restarts_total{process}` and logged in one line; the others keep serving.
  A process that fails before the group first became SERVING (bad model, port taken) stops the group.
- metrics: one /metrics on `--metrics-port` (service/group_metrics.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from types import FrameType

from prometheus_client import CollectorRegistry

from service.errors import SettingsError
from service.group_metrics import GroupMetrics
from service.metrics import start_metrics_server
from service.settings import Settings

__all__ = ["Supervisor", "reserve_port", "run_group"]

log = logging.getLogger("vae.service")

# A process that dies within this long of its start counts as failing fast: the next restart of its
# slot waits twice as long as the last (from RESTART_DELAY_S up to MAX_RESTART_DELAY_S), so a process
# that can never stay up does not spin the CPU.
STABLE_AFTER_S = 10.0
RESTART_DELAY_S = 0.5
MAX_RESTART_DELAY_S = 10.0
# After the grace, processes get this long to close before they are killed.
KILL_AFTER_S = 10.0
_POLL_S = 0.1


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """Bind (without listening) a SO_REUSEPORT socket on host:port; returns it and the bound port."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise SettingsError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise SettingsError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock, int(sock.getsockname()[1])


@dataclass
class _Slot:
    """One process slot: index, the live process (if any) and its pipes."""

    index: int
    proc: subprocess.Popen[bytes] | None = None
    control: int = -1           # write end, parent -> child
    report: int = -1            # read end, child -> parent
    buffer: bytes = b""
    warm: bool = False
    metrics_port: int = 0
    started_at: float = 0.0
    restart_at: float = 0.0     # when a dead slot may be started again (0 = not waiting)
    delay: float = RESTART_DELAY_S
    restarts: int = 0
    exit_codes: list[int] = field(default_factory=list)


class Supervisor:
    """Runs the group until a signal (or a start-up failure); `run()` returns the exit code."""

    def __init__(self, settings: Settings, processes: int) -> None:
        self.settings = settings
        self.n = processes
        self.sock, self.port = reserve_port(settings.host, settings.port)
        # The resolved count, so that `auto` means the same number in every process.
        child = dataclasses.replace(settings, port=self.port, metrics_port=0, processes=str(processes))
        self._child_settings = dataclasses.asdict(child)
        self.slots = [_Slot(i) for i in range(processes)]
        self.selector = selectors.DefaultSelector()
        self.registry = CollectorRegistry()
        self.metrics = GroupMetrics(self.registry, processes, self._scrape_targets)
        self.metrics_server: object | None = None
        self.metrics_port = 0
        self.serving = False
        self.draining = False
        self._signalled = False

    # ---- processes ----
    def _scrape_targets(self) -> list[tuple[str, int]]:
        return [(str(s.index), s.metrics_port) for s in self.slots if s.warm and s.metrics_port]

    def _spawn(self, slot: _Slot) -> None:
        control_r, control_w = os.pipe()
        report_r, report_w = os.pipe()
        slot.proc = subprocess.Popen([sys.executable, "-m", "service.worker", str(control_r), str(report_w)],
                                     pass_fds=(control_r, report_w))
        os.close(control_r)
        os.close(report_w)
        slot.control, slot.report, slot.buffer = control_w, report_r, b""
        slot.warm, slot.metrics_port, slot.started_at, slot.restart_at = False, 0, time.monotonic(), 0.0
        self.selector.register(report_r, selectors.EVENT_READ, slot)
        self._send(slot, {"settings": self._child_settings, "index": slot.index,
                          "metrics": bool(self.settings.metrics_port)})

    def _send(self, slot: _Slot, message: dict[str, object]) -> None:
        try:
            os.write(slot.control, (json.dumps(message) + "\n").encode())
        except OSError:
            pass  # the process died; its exit is handled by _reap

    def _close_pipes(self, slot: _Slot) -> None:
        if slot.report >= 0:
            self.selector.unregister(slot.report)
            os.close(slot.report)
        if slot.control >= 0:
            os.close(slot.control)
        slot.report = slot.control = -1

    def _read_reports(self, timeout: float) -> None:
        for key, _ in self.selector.select(timeout):
            slot: _Slot = key.data
            try:
                chunk = os.read(slot.report, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                self.selector.unregister(slot.report)
                os.close(slot.report)
                slot.report = -1
                continue
            slot.buffer += chunk
            while b"\n" in slot.buffer:
                line, slot.buffer = slot.buffer.split(b"\n", 1)
                try:
                    event = json.loads(line)
                except ValueError:
                    log.warning("process %d sent an unreadable report line; ignored", slot.index)
                    continue
                self._on_report(slot, event)

    def _on_report(self, slot: _Slot, event: dict[str, object]) -> None:
        if event.get("event") == "warm":
            slot.warm = True
            slot.metrics_port = int(event.get("metrics_port", 0))  # type: ignore[call-overload]
            self.metrics.ready(slot.index, True)
            log.info("process %d (pid %s) is warm and serving the port", slot.index, event.get("pid"))
            if self.serving and not self.draining:
                self._send(slot, {"health": "SERVING"})
            elif not self.serving and all(s.warm for s in self.slots):
                self.serving = True
                for s in self.slots:
                    self._send(s, {"health": "SERVING"})
                metrics = f"; metrics on :{self.metrics_port}/metrics" if self.metrics_port else ""
                log.info("listening on %s:%d: all %d processes warm, SERVING%s", self.settings.host,
                         self.port, self.n, metrics)

    def _reap(self) -> int | None:
        """Handle processes that exited; returns an exit code when the group must stop."""
        now = time.monotonic()
        for slot in self.slots:
            if slot.proc is None or slot.proc.poll() is None:
                continue
            code, pid = slot.proc.returncode, slot.proc.pid
            slot.proc = None
            slot.exit_codes.append(code)
            self._close_pipes(slot)
            slot.warm, slot.metrics_port = False, 0
            self.metrics.ready(slot.index, False)
            if self.draining:
                continue
            if not self.serving:
                log.error("process %d (pid %d) exited with code %d before the group was up: stopping",
                          slot.index, pid, code)
                return 2 if code == 2 else 1
            slot.delay = RESTART_DELAY_S if now - slot.started_at > STABLE_AFTER_S else min(
                MAX_RESTART_DELAY_S, slot.delay * 2)
            slot.restart_at = now + (0.0 if now - slot.started_at > STABLE_AFTER_S else slot.delay)
            slot.restarts += 1
            self.metrics.restarted(slot.index)
            log.error("process %d (pid %d) died (exit code %d); restarting it (restart %d of this slot)",
                      slot.index, pid, code, slot.restarts)
        for slot in self.slots:
            if slot.proc is None and slot.restart_at and now >= slot.restart_at and not self.draining:
                self._spawn(slot)
        return None

    # ---- signals and drain ----
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signalled = True

    def _on_hangup(self, signum: int, frame: FrameType | None) -> None:
        """SIGHUP: each process rescans the model repository (service/registry.py)."""
        for s in self.slots:
            if s.proc is not None and s.proc.poll() is None:
                s.proc.send_signal(signal.SIGHUP)

    def _drain(self) -> int:
        self.draining = True
        log.info("signal received: NOT_SERVING, draining %d processes (grace %.1f s)", self.n,
                 self.settings.grace_seconds)
        live = [s for s in self.slots if s.proc is not None]
        # A process still loading when the signal came has no handler yet: SIGTERM ends it at once,
        # which is a clean stop too (it had admitted nothing).
        cold = {s.index for s in live if not s.warm}
        for s in live:
            self._send(s, {"health": "NOT_SERVING"})
            s.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + self.settings.grace_seconds + KILL_AFTER_S
        while any(s.proc is not None for s in self.slots) and time.monotonic() < deadline:
            self._read_reports(_POLL_S)
            self._reap()
        for s in self.slots:
            if s.proc is not None:
                log.error("process %d (pid %d) did not stop in time: killed", s.index, s.proc.pid)
                s.proc.kill()
                s.proc.wait()
                s.exit_codes.append(-9)
                s.proc = None
                self._close_pipes(s)
        clean = all(s.exit_codes and (s.exit_codes[-1] == 0 or (s.index in cold
                                                                 and s.exit_codes[-1] == -signal.SIGTERM))
                    for s in live)
        return 0 if clean else 1

    # ---- the loop ----
    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_hangup)
        try:
            if self.settings.metrics_port:
                try:
                    self.metrics_server, self.metrics_port = start_metrics_server(
                        self.settings.host, self.settings.metrics_port, self.registry)
                except OSError as exc:
                    raise SettingsError(f"cannot serve metrics on {self.settings.host}:"
                                        f"{self.settings.metrics_port}: {exc.strerror}") from None
            log.info("starting %d server processes on %s:%d%s", self.n, self.settings.host, self.port,
                     f"; one /metrics for all on :{self.metrics_port}" if self.metrics_port else "")
            for slot in self.slots:
                self._spawn(slot)
            while not self._signalled:
                self._read_reports(_POLL_S)
                failed = self._reap()
                if failed is not None:
                    self._drain()
                    return failed
            code = self._drain()
            log.info("stopped")
            return code
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.close()

    def close(self) -> None:
        for s in self.slots:
            if s.proc is not None:
                s.proc.kill()
                s.proc.wait()
                s.proc = None
            self._close_pipes(s)
        if self.metrics_server is not None:
            self.metrics_server.close()  # type: ignore[attr-defined]
            self.metrics_server = None
        self.metrics.close()
        self.selector.close()
        self.sock.close()


def run_group(settings: Settings, processes: int) -> int:
    """Run `processes` server processes until SIGTERM/SIGINT; the exit code of `vae serve`."""
    return Supervisor(settings, processes).run()
