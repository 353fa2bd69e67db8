"""`vae encode`: a dataset -> posterior parameters (mu, logvar), chunked and resumable.

Chunks of `chunk_size` images are the shards: each is encoded, written atomically with its record
into `<out>.parts/`, and skipped on a rerun once verified. When every chunk is there, the process that
notices assembles `<out>` (mu, logvar, index) atomically, under the folder lock. The job is pinned to
the data's fingerprint and the served model, so a rerun against other data or another model is
refused instead of mixing latents."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from client.aio import AsyncVaeClient
from client.channel import ChannelConfig
from client.chunked import parts_dir, run_chunked
from client.runner import Outcome
from client.shards import (
    ShardStore,
    atomic_write_bytes,
    atomic_write_json,
    folder_lock,
    npz_bytes,
    select_shards,
    sha256_bytes,
)

__all__ = ["EncodeJob", "run_encode", "JOB_KIND", "parts_dir"]

JOB_KIND = "vae-encode-job"


@dataclass(frozen=True)
class EncodeJob:
    data: str
    out: Path
    chunk_size: int = 1024
    concurrency: int = 4
    num_shards: int = 1
    shard_index: int = 0
    attempts: int = 3
    progress: bool = True
    model: str = ""             # model to ask for ("" = the server's default)
    version: str = ""           # version to pin ("" = the version of the first reply)

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ValueError(f"--chunk-size must be >= 1, got {self.chunk_size}")
        if self.concurrency < 1 or self.attempts < 1:
            raise ValueError("--concurrency and --shard-attempts must be >= 1")
        if self.out.suffix != ".npz":
            raise ValueError(f"--out must name a .npz file, got {self.out}")
        select_shards(1, self.num_shards, 0)  # validates --num-shards
        if not 0 <= self.shard_index < self.num_shards:
            raise ValueError(f"--shard-index must be in [0, {self.num_shards - 1}], got {self.shard_index}")


def _assemble(job: EncodeJob, store: ShardStore, total: int, params: dict[str, Any]) -> dict[str, Any]:
    """Under the lock: manifest of the parts; when all are there and verify, the final .npz."""
    with folder_lock(store.folder):
        records = store.done_records(total)
        manifest: dict[str, Any] = {
            "format": JOB_KIND, "format_version": 1, "params": params, "data": job.data,
            "total_shards": total, "shards_done": len(records), "complete": False,
            "shards": [records[i] for i in sorted(records)],
        }
        if len(records) == total and all(store.verify(i, {"count": records[i]["count"]}) for i in records):
            mus, logvars = [], []
            for i in range(total):
                with np.load(store.npz_path(i), allow_pickle=False) as z:
                    mus.append(z["mu"])
                    logvars.append(z["logvar"])
            mu, logvar = np.concatenate(mus), np.concatenate(logvars)
            data = npz_bytes({"mu": mu, "logvar": logvar, "index": np.arange(len(mu), dtype=np.int64)})
            atomic_write_bytes(job.out, data)
            manifest.update(complete=True, output={"file": str(job.out), "sha256": sha256_bytes(data),
                                                   "n": int(len(mu)), "latent_dim": int(mu.shape[1])})
        atomic_write_json(store.folder / "manifest.json", manifest)
        if manifest["complete"]:
            store.remove_leftovers()
    return manifest


async def run_encode(job: EncodeJob, images: np.ndarray,
                     configs: list[ChannelConfig]) -> tuple[Outcome, dict[str, Any], int]:
    """Encode this process's chunks of `images`; returns (outcome, manifest, chunks skipped)."""

    async def call(client: AsyncVaeClient, x: np.ndarray, c: int, index: np.ndarray) -> dict[str, np.ndarray]:
        res = await client.encode(x)
        return {"mu": res.mu, "logvar": res.logvar, "index": index}

    return await run_chunked(job, images, configs, kind=JOB_KIND, desc="encode", call=call,
                             assemble=lambda store, total, params, info: _assemble(job, store, total, params),
                             extra_params={}, model=job.model, version=job.version)
