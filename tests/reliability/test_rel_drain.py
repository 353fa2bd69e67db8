"""SIGTERM drain on the work, not on the callers: clients that retry every 50 ms after each refusal do
not hold the process up. It exits within 2 s of its last in-flight reply, and no call is CANCELLED: the
last arrivals are parked in their handlers while grpc stops (service/admission.py, PARK_BEFORE_S)."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from rel_helpers import ServeProcess

from protos.vae.v1 import vae_pb2, vae_pb2_grpc

CLIENTS = 8
RETRY_S = 0.05
GRACE = 30.0
STREAM_N = 100_000  # read slowly: in flight on the server for seconds after the signal
BOUND_S = 90.0  # every loop below stops by then whatever happens


@dataclass
class Call:
    start: float
    end: float
    code: str
    details: str


def _retrying_client(target: str, stop: threading.Event, calls: list[Call]) -> None:
    """Closed loop of small Samples; after a refusal (or no server) wait 50 ms and try again."""
    with grpc.insecure_channel(target) as ch:
        stub = vae_pb2_grpc.VaeServiceStub(ch)
        deadline = time.monotonic() + BOUND_S
        while not stop.is_set() and time.monotonic() < deadline:
            t0 = time.monotonic()
            try:
                stub.Sample(vae_pb2.SampleRequest(n=4, seed=1), timeout=10)
                calls.append(Call(t0, time.monotonic(), "OK", ""))
            except grpc.RpcError as exc:
                calls.append(Call(t0, time.monotonic(), exc.code().name, exc.details() or ""))
                time.sleep(RETRY_S)


def _slow_stream(target: str, started: threading.Event, box: dict) -> None:
    with grpc.insecure_channel(target) as ch:
        rows = 0
        try:
            request = vae_pb2.SampleRequest(n=STREAM_N, seed=3, chunk_size=50)
            for msg in vae_pb2_grpc.VaeServiceStub(ch).SampleStream(request, timeout=BOUND_S):
                rows += msg.images.shape[0]
                started.set()
                time.sleep(0.003)
            box["code"] = "OK"
        except grpc.RpcError as exc:
            box["code"] = exc.code().name
        box.update(rows=rows, end=time.monotonic())


def test_sigterm_with_retrying_clients_exits_after_the_work(tiny_model_dir: Path, tmp_path: Path) -> None:
    srv = ServeProcess(tiny_model_dir, tmp_path / "serve.log", "--grace-seconds", str(GRACE))
    stop = threading.Event()
    with srv:
        calls: list[Call] = []
        clients = [threading.Thread(target=_retrying_client, args=(srv.target, stop, calls), daemon=True)
                   for _ in range(CLIENTS)]
        started, box = threading.Event(), {}
        stream = threading.Thread(target=_slow_stream, args=(srv.target, started, box), daemon=True)
        for t in [*clients, stream]:
            t.start()
        assert started.wait(60), "stream never started"
        time.sleep(1.0)
        t_signal = time.monotonic()
        srv.terminate()
        rc = srv.wait(timeout=GRACE + 30)
        t_exit = time.monotonic()
        time.sleep(0.3)  # clients see the closed port (UNAVAILABLE) and go on retrying, then stop
        stop.set()
        for t in [*clients, stream]:
            t.join(timeout=30)
    assert rc == 0, srv.text()[-2000:]
    assert box.get("code") == "OK" and box.get("rows") == STREAM_N, box  # in flight at the signal: whole
    m = re.search(r"grpc stop at monotonic ([0-9.]+)", srv.text())
    assert m, srv.text()[-1500:]
    t_stop = float(m.group(1))
    other = [c for c in calls if c.code not in ("OK", "UNAVAILABLE")]
    assert not other, ([(c.code, c.details, round(c.start - t_stop, 4)) for c in other][:10],
                       round(t_stop - t_signal, 3), srv.text()[-1500:])
    refused = [c for c in calls if c.code == "UNAVAILABLE" and t_signal < c.end < t_exit]
    assert refused, "no call was refused while draining: the clients did not retry during the drain"
    last_reply = max([box["end"], *(c.end for c in calls if c.code == "OK")])
    print(f"\nSIGTERM with {CLIENTS} clients retrying every {RETRY_S * 1000:.0f} ms: "
          f"{sum(c.code == 'OK' for c in calls)} OK, {len(refused)} refused UNAVAILABLE while draining, "
          "0 CANCELLED; "
          f"last in-flight reply {last_reply - t_signal:.2f} s after the signal, exit "
          f"{t_exit - t_signal:.2f} s after it, {t_exit - last_reply:.2f} s after the last reply "
          f"(grace {GRACE:.0f} s; shared 2-core machine, timing noisy)")
    assert t_exit - last_reply < 2.0
