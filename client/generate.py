"""`vae generate`: a sharded, resumable, deterministic prior-sampling job.

Shard k holds images [k*S, min(n, (k+1)*S)) of the job. Its request seed comes from the job seed and
k alone, through numpy's SeedSequence (spawn key (k,), as SeedSequence.spawn would give child k), and
the server makes SampleStream byte-identical for the same (seed, n, temperature); so every shard's
bytes are fixed by the job's parameters, whatever the concurrency, the number of processes or
machines, the order shards are done in, or how often the job was interrupted and resumed."""

from __future__ import annotations

import asyncio
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from client.aio import AsyncVaeClient
from client.channel import ChannelConfig
from client.errors import JobError
from client.images import png_bytes
from client.pinning import job_pin
from client.runner import Outcome, connect, run_shards
from client.shards import ShardStore, atomic_write_json, ensure_job_file, folder_lock, select_shards

__all__ = ["GenerateJob", "shard_seed", "run_generate", "JOB_KIND"]

JOB_KIND = "vae-generate-job"


def shard_seed(job_seed: int, shard: int) -> int:
    """The uint64 seed of shard `shard`: independent streams for different shards (SeedSequence)."""
    seq = np.random.SeedSequence(entropy=job_seed, spawn_key=(shard,))
    return int(seq.generate_state(1, np.uint64)[0])


@dataclass(frozen=True)
class GenerateJob:
    n: int
    out: Path
    shard_size: int = 1000
    seed: int = 0
    temperature: float = 1.0
    fmt: str = "npz"            # npz | png (png: the .npz plus one PNG per image)
    concurrency: int = 4
    num_shards: int = 1         # processes splitting the job
    shard_index: int = 0
    attempts: int = 3           # per shard, on top of each RPC's own retries
    progress: bool = True
    model: str = ""             # model to ask for ("" = the server's default)
    version: str = ""           # version to pin ("" = the version of the first reply)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"--n must be >= 1, got {self.n}")
        if self.shard_size < 1:
            raise ValueError(f"--shard-size must be >= 1, got {self.shard_size}")
        if not 0 <= self.seed < 2**64:
            raise ValueError(f"--seed must be in [0, 2^64), got {self.seed}")
        if not math.isfinite(self.temperature) or self.temperature <= 0:
            raise ValueError(f"--temperature must be finite and > 0, got {self.temperature}")
        if self.fmt not in ("npz", "png"):
            raise ValueError(f"--format must be npz or png, got {self.fmt!r}")
        if self.concurrency < 1 or self.attempts < 1:
            raise ValueError("--concurrency and --shard-attempts must be >= 1")
        select_shards(self.total_shards, self.num_shards, self.shard_index)  # validates the split

    @property
    def total_shards(self) -> int:
        return math.ceil(self.n / self.shard_size)

    def bounds(self, shard: int) -> tuple[int, int]:
        return shard * self.shard_size, min(self.n, (shard + 1) * self.shard_size)

    def expect(self, shard: int) -> dict[str, Any]:
        a, b = self.bounds(shard)
        return {"shard": shard, "start": a, "count": b - a, "seed": shard_seed(self.seed, shard)}


def _params(job: GenerateJob, info: Any) -> dict[str, Any]:
    """What fixes the output bytes; concurrency, targets and the process split do not."""
    return {"n": job.n, "shard_size": job.shard_size, "seed": job.seed, "temperature": job.temperature,
            "format": job.fmt, "model_name": info.model_name, "model_version": info.model_version,
            "manifest_sha256": info.manifest_sha256, "input_shape": list(info.input_shape),
            "latent_dim": int(info.latent_dim), "model": info.model, "version": info.version}


async def _make_shard(job: GenerateJob, store: ShardStore, client: AsyncVaeClient, shard: int) -> int:
    exp = job.expect(shard)
    a, count = exp["start"], exp["count"]
    images: list[np.ndarray] = []
    latents: list[np.ndarray] = []
    async for part in client.sample_stream(count, seed=exp["seed"], temperature=job.temperature,
                                           uint8=True, return_latents=True):
        assert part.z is not None  # asked with return_latents
        images.append(part.images)
        latents.append(part.z)
    arrays = {
        "images": np.concatenate(images),
        "latents": np.concatenate(latents).astype(np.float32),
        # Image i is sample sample_index[i] of Sample(seed=seeds[i], n=count, temperature): the same
        # seed with n = sample_index[i] + 1 ends with it (the server's noise stream has no cut points).
        "seeds": np.full(count, exp["seed"], dtype=np.uint64),
        "sample_index": np.arange(count, dtype=np.uint32),
        "index": np.arange(a, a + count, dtype=np.int64),
    }
    pngs = None
    if job.fmt == "png":
        pngs = {f"{a + i:08d}.png": png_bytes(img) for i, img in enumerate(arrays["images"])}
    record = dict(exp, temperature=job.temperature)
    await asyncio.to_thread(store.write, shard, arrays, record, pngs)
    return int(count)


def write_manifest(job: GenerateJob, store: ShardStore, params: dict[str, Any]) -> dict[str, Any]:
    """Rebuild manifest.json from the shard records under the folder lock (last writer sees all)."""
    with folder_lock(job.out):
        records = store.done_records(job.total_shards)
        manifest = {
            "format": JOB_KIND, "format_version": 1, "params": params,
            "total_shards": job.total_shards,
            "shards_done": len(records),
            "images_done": sum(int(r.get("count", 0)) for r in records.values()),
            "complete": len(records) == job.total_shards,
            "shards": [records[i] for i in sorted(records)],
        }
        atomic_write_json(job.out / "manifest.json", manifest)
        if manifest["complete"]:
            store.remove_leftovers()
    return manifest


async def run_generate(job: GenerateJob, configs: list[ChannelConfig]) -> tuple[Outcome, dict[str, Any], int]:
    """Run this process's part of the job. Returns (outcome, manifest, shards skipped as verified)."""
    model, version = job_pin(job.out, job.model, job.version)
    clients, info = await connect(configs, model=model, version=version)
    try:
        params = _params(job, info)
        job.out.mkdir(parents=True, exist_ok=True)
        ensure_job_file(job.out, JOB_KIND, params)
        plan = await clients[0].plan()
        if plan.max_stream_n and job.shard_size > plan.max_stream_n:
            raise JobError(f"--shard-size {job.shard_size} exceeds the server's max_stream_n "
                           f"{plan.max_stream_n}")
        store = ShardStore(job.out)
        mine = select_shards(job.total_shards, job.num_shards, job.shard_index)
        verified = await asyncio.to_thread(lambda: [s for s in mine if store.verify(s, job.expect(s))])
        todo = [s for s in mine if s not in set(verified)]
        mine_images = sum(job.expect(s)["count"] for s in mine)
        done_images = sum(job.expect(s)["count"] for s in verified)
        if verified:
            print(f"resuming: {len(verified)} of {len(mine)} shards already done and verified",
                  file=sys.stderr)
        outcome = await run_shards(todo, lambda c, s: _make_shard(job, store, c, s), clients,
                                   concurrency=job.concurrency, attempts=job.attempts,
                                   total_images=mine_images, done_images=done_images,
                                   progress=job.progress, desc="generate")
        manifest = await asyncio.to_thread(write_manifest, job, store, params)
        return outcome, manifest, len(verified)
    finally:
        for c in clients:
            await c.close()
