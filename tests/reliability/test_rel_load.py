"""Load against a real `vae serve` process: 64 concurrent clients for a bounded time with 0 errors
(p99 reported), then SIGTERM during that load: 0 failed in-flight requests, exit 0 within the grace,
new calls refused once draining."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rel_helpers import ServeProcess

from bench.loadgen import run_load_in_thread
from protos.vae.v1 import vae_pb2, vae_pb2_grpc

CLIENTS = 64
GRACE = 30.0


def _report(name: str, summary: dict[str, Any]) -> None:
    print(f"\n{name}: " + json.dumps(summary, sort_keys=True))


def _load(target: str, seconds: float) -> dict[str, Any]:
    thread, box = run_load_in_thread(target, clients=CLIENTS, seconds=seconds)
    thread.join(timeout=seconds + 120)
    assert not thread.is_alive(), "load generator did not finish"
    assert "error" not in box, box.get("error")
    result = box["result"]
    summary = result.summary()
    assert summary["requests"] > CLIENTS, summary
    assert result.errors() == [], summary
    return summary


def test_64_clients_zero_errors(tiny_model_dir: Path, tmp_path: Path, record_property: Any) -> None:
    with ServeProcess(tiny_model_dir, tmp_path / "serve.log") as srv:
        summary = _load(srv.target, seconds=6.0)
    _report("load 64 clients, 6 s", summary)
    record_property("load", summary)


@pytest.mark.slow
def test_64_clients_two_minutes_zero_errors(tiny_model_dir: Path, tmp_path: Path) -> None:
    with ServeProcess(tiny_model_dir, tmp_path / "serve.log") as srv:
        summary = _load(srv.target, seconds=120.0)
    _report("load 64 clients, 120 s", summary)


STREAM_N = 60_000  # float32 8x8: 15 MB per stream, beyond what flow control lets the server send ahead


def _slow_stream(target: str, started: threading.Event, box: dict[str, Any]) -> None:
    """A SampleStream read slowly: flow control keeps it in flight on the server for seconds."""
    with grpc.insecure_channel(target) as ch:
        got = 0
        try:
            request = vae_pb2.SampleRequest(n=STREAM_N, seed=7, chunk_size=50)
            for msg in vae_pb2_grpc.VaeServiceStub(ch).SampleStream(request, timeout=120):
                got += msg.images.shape[0]
                started.set()
                time.sleep(0.0025)
            box["code"] = "OK"
        except grpc.RpcError as exc:
            box["code"] = exc.code().name
        box["rows"] = got


def test_sigterm_under_load_drains(tiny_model_dir: Path, tmp_path: Path) -> None:
    """64 clients that, like clients with other replicas, leave at their first UNAVAILABLE; 4 slow
    streams in flight at the signal. Every call is OK or refused UNAVAILABLE by the draining server,
    every stream finishes whole, and the process exits 0 within the grace."""
    srv = ServeProcess(tiny_model_dir, tmp_path / "serve.log", "--grace-seconds", str(GRACE))
    with srv:
        streams = []
        for _ in range(4):
            started, box = threading.Event(), {}
            t = threading.Thread(target=_slow_stream, args=(srv.target, started, box), daemon=True)
            t.start()
            streams.append((t, started, box))
        load, load_box = run_load_in_thread(
            srv.target, clients=CLIENTS, seconds=120.0, leave_on_unavailable=True
        )
        for _, started, _ in streams:
            assert started.wait(60), "stream never started"
        time.sleep(2.0)  # load running: calls in flight at every instant
        t_signal = time.monotonic()
        srv.terminate()

        # Health turns NOT_SERVING at once (balancers and probes stop sending), process still up.
        not_serving_while_up = False
        with grpc.insecure_channel(srv.target) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            deadline = time.monotonic() + 20
            while not not_serving_while_up and time.monotonic() < deadline:
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    not_serving_while_up = (
                        reply.status == health_pb2.HealthCheckResponse.NOT_SERVING and srv.proc.poll() is None
                    )  # type: ignore[union-attr]
                except grpc.RpcError:
                    pass
                time.sleep(0.02)
        assert not_serving_while_up, "never saw NOT_SERVING from the live process"

        rc = srv.wait(timeout=GRACE + 15)
        drain_s = time.monotonic() - t_signal
        load.join(timeout=120)
    assert rc == 0, srv.text()[-2000:]
    assert drain_s < GRACE
    for t, _, box in streams:
        t.join(timeout=10)
        assert box == {"code": "OK", "rows": STREAM_N}, box  # in flight at SIGTERM: finished whole
    assert "error" not in load_box, load_box.get("error")
    result = load_box["result"]
    bad = [
        (c.method, c.code, round(c.start - t_signal, 3), c.details)
        for c in result.calls
        if c.code not in ("OK", "UNAVAILABLE")
    ]
    assert not bad, (bad[:10], result.summary(), srv.text()[-3000:])
    refused = [c for c in result.calls if c.code == "UNAVAILABLE"]
    around = [c for c in result.calls if c.start < t_signal < c.end]
    # In flight = sent before the signal: every one of them was served (the server's lame-duck period
    # admits what is still queued), none refused, none cut.
    sent_before = [c for c in result.calls if c.start < t_signal]
    assert sent_before and all(c.code == "OK" for c in sent_before), [
        (c.method, c.code, c.details) for c in sent_before if c.code != "OK"
    ][:10]
    # New calls once draining: refused UNAVAILABLE by the live server itself (its own message).
    assert refused and all(c.start > t_signal and "shutting down" in c.details for c in refused)
    print(
        f"\nSIGTERM under load: {len(result.ok())} OK calls, {len(around)} in flight at the signal "
        f"({sum(c.code == 'OK' for c in around)} OK), {len(refused)} refused UNAVAILABLE while draining "
        f"({sorted({c.details[:60] for c in refused})}), 4/4 streams of {STREAM_N} complete; exit {rc} "
        f"{drain_s:.2f} s after the signal (grace {GRACE:.0f} s)"
    )
