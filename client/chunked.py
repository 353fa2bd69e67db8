"""The chunked, resumable plan shared by `vae encode` and `vae score`: one place for how a dataset is cut
into chunks (the shards), pinned, written, verified, skipped on a rerun and assembled.

Chunks of `chunk_size` images are the shards: each is computed by one call, written atomically with its
record into `<out>.parts/`, and skipped on a rerun once verified. The job is pinned to the data's
fingerprint, the served model and version and the job's own parameters (job.json), so a rerun against
other data or another model is refused instead of mixing results. Each job brings only what differs:
the call that turns a chunk into arrays, and the assembly of the finished parts.
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from client.aio import AsyncVaeClient
from client.channel import ChannelConfig
from client.data import dataset_fingerprint
from client.pinning import job_pin
from client.runner import Outcome, connect, run_shards
from client.shards import ShardStore, ensure_job_file, select_shards
from protos.vae.v1 import vae_pb2

__all__ = ["ChunkedJob", "ChunkCall", "Assemble", "Chunks", "parts_dir", "run_chunked"]


def parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


class ChunkedJob(Protocol):
    """What the plan reads of a job (EncodeJob, ScoreJob)."""

    @property
    def out(self) -> Path: ...
    @property
    def chunk_size(self) -> int: ...
    @property
    def concurrency(self) -> int: ...
    @property
    def num_shards(self) -> int: ...
    @property
    def shard_index(self) -> int: ...
    @property
    def attempts(self) -> int: ...
    @property
    def progress(self) -> bool: ...


@dataclass(frozen=True)
class Chunks:
    """Chunk c holds images [c * size, min(n, (c + 1) * size))."""

    n: int
    size: int

    @property
    def total(self) -> int:
        return math.ceil(self.n / self.size)

    def bounds(self, c: int) -> tuple[int, int]:
        return c * self.size, min(self.n, (c + 1) * self.size)

    def expect(self, c: int) -> dict[str, Any]:
        """The record a finished chunk must carry."""
        a, b = self.bounds(c)
        return {"shard": c, "start": a, "count": b - a}


# (client, the chunk's images, chunk number, the images' indices in the dataset) -> the arrays its
# shard holds
ChunkCall = Callable[[AsyncVaeClient, np.ndarray, int, np.ndarray], Awaitable[dict[str, np.ndarray]]]
# (store, total chunks, job params, the model's info) -> the job's manifest (under the folder lock)
Assemble = Callable[[ShardStore, int, dict[str, Any], vae_pb2.ModelInfo], dict[str, Any]]


async def run_chunked(job: ChunkedJob, images: np.ndarray, configs: list[ChannelConfig], *, kind: str,
                      desc: str, call: ChunkCall, assemble: Assemble, extra_params: dict[str, Any],
                      model: str = "", version: str = "") -> tuple[Outcome, dict[str, Any], int]:
    """Run this process's chunks of `images`; returns (outcome, manifest, chunks skipped)."""
    # A resumed job, or another shard process, stays on the version the job started on.
    model, version = job_pin(parts_dir(job.out), model, version)
    clients, info = await connect(configs, model=model, version=version)
    try:
        plan = await clients[0].plan()
        plan.check_images(images[:1])  # a clear error before any work when the shapes differ
        chunks = Chunks(len(images), job.chunk_size)
        # The data's path is not pinned (the same data may be reached by another path); its bytes are.
        params = {"data_fingerprint": dataset_fingerprint(images), "n": int(len(images)),
                  "image_shape": list(images.shape[1:]), "chunk_size": job.chunk_size, **extra_params,
                  "model_name": info.model_name, "model_version": info.model_version,
                  "manifest_sha256": info.manifest_sha256, "model": info.model, "version": info.version}
        folder = parts_dir(job.out)
        folder.mkdir(parents=True, exist_ok=True)
        ensure_job_file(folder, kind, params)
        store = ShardStore(folder, prefix="chunk")

        async def work(client: AsyncVaeClient, c: int) -> int:
            a, b = chunks.bounds(c)
            arrays = await call(client, images[a:b], c, np.arange(a, b, dtype=np.int64))
            await asyncio.to_thread(store.write, c, arrays, chunks.expect(c))
            return b - a

        mine = select_shards(chunks.total, job.num_shards, job.shard_index)
        verified = await asyncio.to_thread(lambda: [c for c in mine if store.verify(c, chunks.expect(c))])
        todo = [c for c in mine if c not in set(verified)]
        if verified:
            print(f"resuming: {len(verified)} of {len(mine)} chunks already done and verified",
                  file=sys.stderr)
        outcome = await run_shards(todo, work, clients, concurrency=job.concurrency, attempts=job.attempts,
                                   total_images=sum(chunks.expect(c)["count"] for c in mine),
                                   done_images=sum(chunks.expect(c)["count"] for c in verified),
                                   progress=job.progress, desc=desc)
        manifest = await asyncio.to_thread(assemble, store, chunks.total, params, info)
        return outcome, manifest, len(verified)
    finally:
        for cl in clients:
            await cl.close()
