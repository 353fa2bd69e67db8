"""The engine both batch jobs share: connect to one or more replicas, then run shards with K in
flight, spreading them over the targets, retrying a failed shard on the next target, with a tqdm
progress bar in images/s. Work is a coroutine `work(client, shard) -> images done`."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from client.aio import AsyncVaeClient
from client.channel import ChannelConfig
from client.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    JobError,
    PermissionDeniedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    UnreachableError,
    VaeClientError,
)
from protos.vae.v1 import vae_pb2

__all__ = ["Outcome", "connect", "run_shards"]

# Every attempt failing like this (after each RPC's own retries) means the servers are gone.
_DOWN = (UnavailableError, DeadlineExceededError)
# Errors no retry can fix: fail the shard at once.
_FINAL = (InvalidArgumentError, UnauthenticatedError, PermissionDeniedError, UnimplementedError)

Work = Callable[[AsyncVaeClient, int], Awaitable[int]]


@dataclass
class Outcome:
    done: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    images: int = 0
    seconds: float = 0.0


async def connect(configs: Sequence[ChannelConfig], *, model: str = "",
                  version: str = "") -> tuple[list[AsyncVaeClient], vae_pb2.ModelInfo]:
    """Open a client per target and read each one's ModelInfo. Unreachable targets are dropped with a
    warning while at least one answers; all that answer must serve the same model (same manifest).

    The job is pinned to one model version: the one asked for, else the version of the first reply
    (see client.pinning); every other client is pinned to that same version."""
    clients: list[AsyncVaeClient] = []
    infos: list[vae_pb2.ModelInfo] = []
    errors: list[str] = []
    for cfg in configs:
        if clients:
            model, version = clients[0].pin.model, clients[0].pin.version
        c = AsyncVaeClient(config=cfg, model=model, version=version, pin=True)
        try:
            infos.append(await c.info())
            clients.append(c)
        except VaeClientError as exc:
            await c.close()
            errors.append(str(exc))
    if not clients:
        raise UnreachableError("no server answered: " + "; ".join(errors))
    for e in errors:
        print(f"warning: dropping a target: {e}", file=sys.stderr)
    shas = {i.manifest_sha256 for i in infos}
    if len(shas) > 1:
        for c in clients:
            await c.close()
        listing = ", ".join(f"{c.target} serves {i.model_name} {i.model_version} ({i.manifest_sha256[:12]})"
                            for c, i in zip(clients, infos, strict=True))
        raise JobError(f"targets serve different models: {listing}")
    return clients, infos[0]


async def run_shards(shards: Sequence[int], work: Work, clients: Sequence[AsyncVaeClient], *,
                     concurrency: int, attempts: int, total_images: int, done_images: int = 0,
                     progress: bool = True, desc: str = "shards") -> Outcome:
    """Run every shard; a shard that fails is retried (on the next target) up to `attempts` times."""
    from tqdm import tqdm

    queue: asyncio.Queue[int] = asyncio.Queue()
    for s in shards:
        queue.put_nowait(s)
    out = Outcome()
    turn = 0
    bar = tqdm(total=total_images, initial=done_images, unit="img", unit_scale=True, desc=desc,
               disable=None if progress else True, file=sys.stderr, dynamic_ncols=True)
    start = time.perf_counter()

    down = ""  # set when a shard found every target unreachable through all its retries

    async def worker() -> None:
        nonlocal turn, down
        while True:
            try:
                shard = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if down:  # stop early instead of spending every shard's retries on dead servers
                out.failed[shard] = f"not started: servers unreachable ({down})"
                continue
            last, ok, unreachable = "", False, True
            for _ in range(attempts):
                client = clients[turn % len(clients)]
                turn += 1
                try:
                    n = await work(client, shard)
                except (VaeClientError, OSError) as exc:
                    last = str(exc)
                    unreachable = unreachable and isinstance(exc, _DOWN)
                    if isinstance(exc, _FINAL):
                        break  # the same request would be refused again, on any replica
                    continue
                out.done.append(shard)
                out.images += n
                bar.update(n)
                ok = True
                break
            if not ok:
                out.failed[shard] = last
                if unreachable:
                    down = last

    try:
        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    finally:
        bar.close()
        out.seconds = time.perf_counter() - start
    out.done.sort()
    return out
