"""`vae serve --processes 2`: real processes on 127.0.0.1 serving one port under one parent.

Each test starts the real command (parent + two server processes) in its own session and kills the
whole process group at the end, whatever happened."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from e2e_helpers import stub_for, tensor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from servers import free_port

from protos.vae.v1 import vae_pb2

pytestmark = pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="needs SO_REUSEPORT")

# A fresh connection per channel: grpc shares subchannels between identical channels otherwise, and
# SO_REUSEPORT spreads connections, not requests.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


class Group:
    """The parent process; its log is a file the tests read."""

    def __init__(self, model_dir: Path, log: Path, *extra: str) -> None:
        self.log_path = log
        self.metrics_port = free_port()  # metrics_port=0 means no metrics server
        cmd = [sys.executable, "-m", "vae_cli.main", "serve", "--model-dir", str(model_dir),
               "--host", "127.0.0.1", "--port", "0", "--metrics-port", str(self.metrics_port),
               "--processes", "2", "--grace-seconds", "5", *extra]
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.port = int(self.wait_for(r"starting 2 server processes on 127\.0\.0\.1:(\d+)").group(1))
        self.wait_for(rf"listening on 127\.0\.0\.1:{self.port}: all 2 processes warm, SERVING")

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 60.0, after: int = 0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.compile(pattern).search(self.text(), after)
            if m:
                return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in the log (exit {self.proc.poll()}):\n{self.text()[-3000:]}")

    def pids(self) -> dict[int, int]:
        """Process slot -> pid of its latest process, from the parent's log."""
        return {int(i): int(p) for i, p in re.findall(r"process (\d+) \(pid (\d+)\) is warm", self.text())}

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            return str(r.read().decode())

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(f"127.0.0.1:{self.port}", options=OWN_CONNECTION)

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self._log.close()


def _value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        named = line.startswith(name + "{") or line.startswith(name + " ")
        if named and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _decode_ok(stub: object, z: np.ndarray) -> None:
    reply = stub.Decode(vae_pb2.DecodeRequest(z=tensor(z)), timeout=10)  # type: ignore[attr-defined]
    assert list(reply.images.shape)[0] == z.shape[0]


@pytest.fixture(scope="module")
def group(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Group]:
    g = Group(model_dir, tmp_path_factory.mktemp("procs") / "serve.log")
    try:
        yield g
    finally:
        g.kill()


def _shape(model_dir: Path) -> list[int]:
    import json
    return list(json.loads((model_dir / "manifest.json").read_text())["input_shape"])


def _latent(model_dir: Path) -> int:
    import json
    return int(json.loads((model_dir / "manifest.json").read_text())["latent_dim"])


def test_two_processes_serve_one_port_and_one_scrape_shows_both(group: Group, model_dir: Path) -> None:
    z = np.zeros((2, _latent(model_dir)), np.float32)
    seen: set[str] = set()
    for _ in range(40):  # new connections until both processes answered (each is 1/2 per connection)
        with group.channel() as ch:
            _decode_ok(stub_for(ch), z)
        text = group.scrape()
        seen = {p for p in ("0", "1") if _value(text, "vae_requests_total", method="Decode", code="OK",
                                                process=p) > 0}
        if seen == {"0", "1"}:
            break
    assert seen == {"0", "1"}, "one scrape did not show requests served by both processes"
    assert _value(text, "vae_processes") == 2
    assert _value(text, "vae_process_ready", process="0") == 1
    assert _value(text, "vae_process_ready", process="1") == 1
    # One HELP/TYPE per family even though two processes expose it, and the whole page parses.
    assert text.count("# TYPE vae_requests_total counter") == 1
    names = [f.name for f in text_string_to_metric_families(text)]
    assert len(names) == len(set(names))


def test_latent_windows_of_both_processes_pool_into_one(group: Group, model_dir: Path) -> None:
    images = np.random.default_rng(0).random((8, *_shape(model_dir)), dtype=np.float32)
    for _ in range(40):
        with group.channel() as ch:
            stub_for(ch).Encode(vae_pb2.EncodeRequest(images=tensor(images)), timeout=10)
        time.sleep(0.06)  # > the latent worker's fold interval
        text = group.scrape()
        per = [_value(text, "vae_latent_window_images", process=p) for p in ("0", "1")]
        if all(per):
            break
    assert all(per), "both processes should have encoded images"
    pooled = _value(text, "vae_latent_window_images", process="all")
    assert pooled == pytest.approx(sum(per), rel=1e-9)
    assert _value(text, "vae_latent_mu_mean", process="all", dim="0") != 0


def test_every_connection_reports_the_one_status(group: Group) -> None:
    statuses = set()
    for _ in range(12):
        with group.channel() as ch:
            health = health_pb2_grpc.HealthStub(ch)
            for service in ("", "vae.v1.VaeService"):
                statuses.add(health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)
    assert statuses == {health_pb2.HealthCheckResponse.SERVING}


def test_a_dead_process_is_restarted_with_a_metric_and_a_log_line(group: Group, model_dir: Path) -> None:
    before = len(group.text())
    victim = group.pids()[1]
    os.kill(victim, signal.SIGKILL)
    group.wait_for(rf"process 1 \(pid {victim}\) died \(exit code -9\); restarting it", after=before)
    group.wait_for(r"process 1 \(pid \d+\) is warm", after=before)
    assert group.pids()[1] != victim
    text = group.scrape()
    assert _value(text, "vae_process_restarts_total", process="1") == 1
    assert _value(text, "vae_process_restarts_total", process="0") == 0
    assert _value(text, "vae_process_ready", process="1") == 1
    z = np.zeros((1, _latent(model_dir)), np.float32)
    for _ in range(8):  # the group serves on, the new process included
        with group.channel() as ch:
            _decode_ok(stub_for(ch), z)
            status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING


def test_sigterm_drains_every_process_without_failing_in_flight_requests(model_dir: Path,
                                                                        tmp_path: Path) -> None:
    g = Group(model_dir, tmp_path / "serve.log")
    try:
        z = np.zeros((4, _latent(model_dir)), np.float32)
        sent_before: list[tuple[float, str]] = []   # (start time, outcome) of every call
        stop = threading.Event()
        lock = threading.Lock()

        def load() -> None:
            with g.channel() as ch:
                stub = stub_for(ch)
                while not stop.is_set():
                    t0 = time.monotonic()
                    try:
                        _decode_ok(stub, z)
                        outcome = "OK"
                    except grpc.RpcError as exc:
                        outcome = exc.code().name
                    with lock:
                        sent_before.append((t0, outcome))

        threads = [threading.Thread(target=load, daemon=True) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        t_signal = time.monotonic()
        g.proc.send_signal(signal.SIGTERM)
        time.sleep(0.4)
        draining = set()
        for _ in range(6):  # during the lame-duck moment every process answers NOT_SERVING
            with g.channel() as ch:
                draining.add(health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                                  timeout=5).status)
        stop.set()
        for t in threads:
            t.join(15)
        assert g.proc.wait(30) == 0
        for pid in g.pids().values():  # the parent reaped every process it started
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        assert draining == {health_pb2.HealthCheckResponse.NOT_SERVING}
        before = [o for t0, o in sent_before if t0 < t_signal]
        assert len(before) > 20
        assert set(before) == {"OK"}, f"calls sent before SIGTERM failed: {set(before)}"
        log = g.text()
        assert "draining 2 processes" in log and log.count("draining in-flight requests") == 2
        assert "died" not in log and "killed" not in log
    finally:
        g.kill()


def test_bad_process_counts_and_folders_are_one_line_and_exit_2(model_dir: Path, tmp_path: Path) -> None:
    taken = socket.socket()  # a port held without SO_REUSEPORT cannot be shared
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = str(taken.getsockname()[1])
    for argv in (["--model-dir", str(model_dir), "--processes", "2", "--host", "127.0.0.1", "--port", busy],
                 ["--model-dir", str(model_dir), "--processes", "0"],
                 ["--model-dir", str(model_dir), "--processes", "many"],
                 ["--model-dir", str(tmp_path / "missing"), "--processes", "2"]):
        r = subprocess.run([sys.executable, "-m", "vae_cli.main", "serve", "--port", "0",
                            "--metrics-port", "0", *argv], capture_output=True, text=True, timeout=60)
        assert not re.search(r"starting \d+ server processes", r.stderr)
        assert r.returncode == 2, r.stderr
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("vae serve:")]
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    taken.close()
