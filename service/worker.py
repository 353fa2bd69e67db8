"""One server process of a `vae serve --processes N` group, started by service/supervisor.py.

It runs the normal server (its own sessions, batchers and metrics) on the port the parent reserved,
with SO_REUSEPORT so that the kernel spreads connections over the group. It talks to the parent over
two pipes, one JSON object per line:

- control (parent -> child): first `{"settings": {...}, "index": i, "metrics": bool}`, then
  `{"health": "SERVING"}` or `{"health": "NOT_SERVING"}`: the group's one status, which this
  process's health service reports. End of file means the parent is gone: the process drains and
  exits, it never outlives the group.
- report (child -> parent): `{"event": "warm", "pid": ..., "metrics_port": ...}` once the graphs are warm
  and the port is served, `{"event": "stopped"}` after the drain.

It warms both graphs up *before* it starts listening: a restarted process joins the port only when it
can answer at once, so the group never sends a connection to a cold process. SIGTERM / SIGINT drain it
exactly as a single-process `vae serve` drains (the parent sends SIGTERM to every process at once).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from prometheus_client import REGISTRY

from service.errors import ModelError, SettingsError
from service.settings import Settings

__all__ = ["worker_main"]

log = logging.getLogger("vae.service")


def _report(fd: int, **event: Any) -> None:
    try:
        os.write(fd, (json.dumps(event) + "\n").encode())
    except OSError:  # the parent is gone; the control pipe's end of file stops us
        pass


async def _serve(settings: Settings, metrics: bool, control: asyncio.StreamReader, report_fd: int) -> int:
    from grpc_health.v1 import health_pb2

    from service.metrics import start_metrics_server
    from service.server import SERVICE_NAME, create_server

    server, _ = create_server(settings, REGISTRY)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[None]] = set()

    def reload() -> None:  # SIGHUP (forwarded by the parent): rescan the model repository
        task = loop.create_task(server.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
    # Warm first, listen second (see the module docstring); start() reports NOT_SERVING until the
    # parent says the whole group is up.
    await server.warm_up()
    await server.start(warm=False)
    metrics_server, metrics_port = None, 0
    if metrics:
        # Loopback only, port chosen by the kernel: the parent scrapes it and serves the one /metrics.
        metrics_server, metrics_port = start_metrics_server("127.0.0.1", 0, REGISTRY)
    _report(report_fd, event="warm", pid=os.getpid(), metrics_port=metrics_port)
    statuses = {"SERVING": health_pb2.HealthCheckResponse.SERVING,
                "NOT_SERVING": health_pb2.HealthCheckResponse.NOT_SERVING}

    async def follow_parent() -> None:
        while True:
            line = await control.readline()
            if not line:
                log.warning("the supervising process is gone: draining")
                stop.set()
                return
            status = statuses.get(json.loads(line).get("health", ""))
            if status is not None and not stop.is_set():
                for name in ("", SERVICE_NAME):
                    await server.health.set(name, status)

    follower = loop.create_task(follow_parent())
    await stop.wait()
    follower.cancel()
    log.info("draining in-flight requests (grace %.1f s)", settings.grace_seconds)
    await server.stop(settings.grace_seconds)
    if metrics_server is not None:
        metrics_server.close()
    _report(report_fd, event="stopped")
    return 0


async def _main(control_fd: int, report_fd: int) -> int:
    loop = asyncio.get_running_loop()
    control = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(control),
                                 os.fdopen(control_fd, "rb", buffering=0))
    first = await control.readline()
    if not first:
        return 1
    hello = json.loads(first)
    settings = Settings(**hello["settings"])
    logging.basicConfig(level=settings.log_level, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s %(name)s[process {hello['index']}]: %(message)s")
    if settings.tune_malloc:
        from service.memory import tune_malloc

        tune_malloc()  # before this process's gRPC server and sessions exist
    try:
        return await _serve(settings, bool(hello.get("metrics")), control, report_fd)
    except (ModelError, SettingsError) as exc:
        print(f"vae serve: refusing to start: {exc}", file=sys.stderr)
        return 2


def worker_main(argv: Sequence[str]) -> int:
    """`python -m service.worker CONTROL_FD REPORT_FD` (only the supervisor starts this)."""
    control_fd, report_fd = (int(a) for a in argv)
    try:
        return asyncio.run(_main(control_fd, report_fd))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
