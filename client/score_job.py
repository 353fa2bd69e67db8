"""`vae score`: a dataset -> a score per image (ELBO, its parts, IWAE with k > 1), chunked and resumable.

Like `vae encode`: chunks of `chunk_size` images are the shards, each scored, written atomically with
its record into `<out>.parts/` and skipped on a rerun once verified; when all are there, `<out>` (CSV:
index, elbo, log_px, kl[, iwae]) is assembled atomically under the folder lock, with a histogram PNG
against the training reference. The job is pinned to the data, the model, k, the seed and the chunk
size: chunk c draws its posterior noise from seed chunk_seed(seed, c), so a rerun gives the same scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from client.aio import AsyncVaeClient
from client.channel import ChannelConfig
from client.chunked import parts_dir, run_chunked
from client.histogram import histogram_png
from client.messages import chunk_seed
from client.runner import Outcome
from client.shards import (
    ShardStore,
    atomic_write_bytes,
    atomic_write_json,
    folder_lock,
    select_shards,
    sha256_bytes,
)
from protos.vae.v1 import vae_pb2

__all__ = ["ScoreJob", "run_score", "JOB_KIND", "parts_dir", "summarise", "reference_of"]

JOB_KIND = "vae-score-job"
_QUANTILES = {"p01": 0.01, "p05": 0.05, "p50": 0.5, "p95": 0.95, "p99": 0.99}


@dataclass(frozen=True)
class ScoreJob:
    data: str
    out: Path
    k: int = 1
    seed: int = 0
    chunk_size: int = 1024
    histogram: Path | None = None
    concurrency: int = 4
    num_shards: int = 1
    shard_index: int = 0
    attempts: int = 3
    progress: bool = True

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"--k must be >= 1, got {self.k}")
        if self.chunk_size < 1:
            raise ValueError(f"--chunk-size must be >= 1, got {self.chunk_size}")
        if self.concurrency < 1 or self.attempts < 1:
            raise ValueError("--concurrency and --shard-attempts must be >= 1")
        if self.out.suffix != ".csv":
            raise ValueError(f"--out must name a .csv file, got {self.out}")
        select_shards(1, self.num_shards, 0)
        if not 0 <= self.shard_index < self.num_shards:
            raise ValueError(f"--shard-index must be in [0, {self.num_shards - 1}], got {self.shard_index}")

    @property
    def histogram_path(self) -> Path:
        return self.histogram or self.out.with_suffix(".png")


def reference_of(info: vae_pb2.ModelInfo) -> dict[str, float] | None:
    if not info.HasField("elbo_reference"):
        return None
    r = info.elbo_reference
    return {"mean": r.mean, "p01": r.p01, "p05": r.p05, "p50": r.p50, "p95": r.p95, "p99": r.p99}


def summarise(elbo: np.ndarray, reference: dict[str, float] | None) -> dict[str, Any]:
    """Mean and quantiles of the scores, and the fraction below the reference's p01 (~0.01 when the
    data looks like the training data; far more for anomalous data)."""
    out: dict[str, Any] = {"n": int(len(elbo)), "elbo_mean": float(elbo.mean())}
    out.update({f"elbo_{k}": float(np.quantile(elbo, q)) for k, q in _QUANTILES.items()})
    if reference is not None:
        out["reference"] = reference
        out["fraction_below_reference_p01"] = float((elbo < reference["p01"]).mean())
    return out


def _csv(index: np.ndarray, cols: dict[str, np.ndarray]) -> bytes:
    names = list(cols)
    lines = ["index," + ",".join(names)]
    for i, row in zip(index.tolist(), zip(*(cols[n].tolist() for n in names), strict=True), strict=True):
        lines.append(f"{i}," + ",".join(f"{v:.9g}" for v in row))
    return ("\n".join(lines) + "\n").encode()


def _assemble(job: ScoreJob, store: ShardStore, total: int, params: dict[str, Any],
              reference: dict[str, float] | None) -> dict[str, Any]:
    with folder_lock(store.folder):
        records = store.done_records(total)
        manifest: dict[str, Any] = {
            "format": JOB_KIND, "format_version": 1, "params": params, "data": job.data,
            "total_shards": total, "shards_done": len(records), "complete": False,
            "shards": [records[i] for i in sorted(records)],
        }
        if len(records) == total and all(store.verify(i, {"count": records[i]["count"]}) for i in records):
            keys = ["elbo", "log_px", "kl"] + (["iwae"] if job.k > 1 else [])
            parts: dict[str, list[np.ndarray]] = {k: [] for k in [*keys, "index"]}
            for i in range(total):
                with np.load(store.npz_path(i), allow_pickle=False) as z:
                    for k in parts:
                        parts[k].append(z[k])
            cols = {k: np.concatenate(parts[k]) for k in keys}
            data = _csv(np.concatenate(parts["index"]), cols)
            atomic_write_bytes(job.out, data)
            atomic_write_bytes(job.histogram_path, histogram_png(cols["elbo"], reference))
            manifest.update(complete=True, summary=summarise(cols["elbo"], reference),
                            output={"file": str(job.out), "sha256": sha256_bytes(data),
                                    "n": int(len(cols["elbo"])), "histogram": str(job.histogram_path)})
        atomic_write_json(store.folder / "manifest.json", manifest)
        if manifest["complete"]:
            store.remove_leftovers()
    return manifest


async def run_score(job: ScoreJob, images: np.ndarray,
                    configs: list[ChannelConfig]) -> tuple[Outcome, dict[str, Any], int]:
    """Score this process's chunks of `images`; returns (outcome, manifest, chunks skipped).
    Pinned like `vae encode`: scores of two versions are not comparable."""

    async def call(client: AsyncVaeClient, x: np.ndarray, c: int, index: np.ndarray) -> dict[str, np.ndarray]:
        res = await client.score(x, k=job.k, seed=chunk_seed(job.seed, c))
        arrays = {"elbo": res.elbo, "log_px": res.log_px, "kl": res.kl, "index": index}
        if res.iwae is not None:
            arrays["iwae"] = res.iwae
        return arrays

    return await run_chunked(
        job, images, configs, kind=JOB_KIND, desc="score", call=call,
        assemble=lambda store, total, params, info: _assemble(job, store, total, params, reference_of(info)),
        extra_params={"k": job.k, "seed": job.seed})
