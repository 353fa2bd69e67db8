"""`vae serve`: settings from flags and VAE_* variables, start, serve until SIGTERM/SIGINT, drain;
SIGHUP rescans the model repository (load what is new, drain and release what left)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from service.errors import ModelError, SettingsError
from service.settings import Settings, settings_from_args

__all__ = ["serve_main"]

log = logging.getLogger("vae.service")


async def _serve(settings: Settings) -> int:
    from prometheus_client import REGISTRY

    from service.server import create_server

    server, port = create_server(settings, REGISTRY)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[None]] = set()

    def reload() -> None:
        # SIGHUP: rescan the repository now (reloads are serialised inside the registry).
        log.info("SIGHUP: rescanning the model repository")
        task = loop.create_task(server.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
    await server.start(warm=False)
    log.info("listening on %s:%d (provider %s, tls %s, mtls %s, auth %s, dynamic batching %s)%s",
             settings.host, port, server.provider, server.tls, server.mtls, server.auth,
             settings.dynamic_batching,
             f"; metrics on :{server.metrics_port}/metrics" if server.metrics_port else "")
    failed: list[BaseException] = []

    def warmed(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            failed.append(task.exception())  # type: ignore[arg-type]
            stop.set()

    warm = loop.create_task(server.warm_up())
    warm.add_done_callback(warmed)
    await stop.wait()
    if failed:
        log.error("warm-up failed, stopping: %s", failed[0])
        await server.stop(0)
        return 1
    log.info("signal received: NOT_SERVING, draining in-flight requests (grace %.1f s)",
             settings.grace_seconds)
    if not warm.done():
        warm.cancel()
    await server.stop(settings.grace_seconds)
    log.info("stopped")
    return 0


def serve_main(argv: Sequence[str]) -> int:
    try:
        settings = settings_from_args(argv)
    except SettingsError as exc:
        print(f"vae serve: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.tune_malloc:
        from service.memory import tune_malloc

        tune_malloc()  # before any gRPC or onnxruntime thread exists
    try:
        processes = settings.process_count()
        if processes > 1:
            from service.manifest import load_manifest
            from service.supervisor import run_group

            # Checked once here, so that a bad model folder is one line and exit 2, not N of them.
            if settings.model_repository:
                from service.repository import VersionPolicy, scan_repository

                scan_repository(settings.model_repository, VersionPolicy.parse(settings.version_policy))
            else:
                load_manifest(settings.model_dir, fp16=settings.fp16)
            return run_group(settings, processes)
        return asyncio.run(_serve(settings))
    except (ModelError, SettingsError) as exc:
        print(f"vae serve: refusing to start: {exc}", file=sys.stderr)
        return 2
