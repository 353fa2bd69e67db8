"""`vae generate` and `vae encode`: flags, the process split, the summary and the exit code.

Exit 0 when every shard of this process is done, 1 when shards still fail after retries (they are
named) or no server answers, 2 for bad input (flags, data, an output folder holding another job)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from client.errors import DataError, JobError, VaeClientError
from client.options import ArgParser, BadInput, add_connection_args, configs_from_args, fail
from client.runner import Outcome

__all__ = ["generate_main", "encode_main", "resolve_split"]

INDEX_ENV = "JOB_COMPLETION_INDEX"  # set by a Kubernetes Indexed Job in each pod


def _add_job_args(p: ArgParser, unit: str) -> None:
    p.add_argument("--concurrency", type=int, default=4, metavar="K",
                   help=f"{unit}s in flight in this process (default 4)")
    p.add_argument("--num-shards", type=int, default=1, metavar="M",
                   help="processes splitting the job; this one does every M-th " + unit + " (default 1)")
    p.add_argument("--shard-index", type=int, default=None, metavar="I",
                   help=f"this process's index in [0, M) (default ${INDEX_ENV}, else 0)")
    p.add_argument("--shard-attempts", type=int, default=3, metavar="N",
                   help=f"tries per {unit}, each on the next target (default 3)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--model", default="", help="model to use (default: the server's default model)")
    p.add_argument("--model-version", default="", metavar="V",
                   help="version to use (default: the version of the first reply, kept for the whole job)")


def resolve_split(num_shards: int, shard_index: int | None) -> tuple[int, int]:
    """--shard-index, else $JOB_COMPLETION_INDEX (Kubernetes Indexed Job), else 0."""
    if shard_index is None:
        env = os.environ.get(INDEX_ENV)
        if env is not None and env.strip():
            if not env.strip().isdigit():
                raise ValueError(f"${INDEX_ENV} must be a non-negative integer, got {env!r}")
            shard_index = int(env)
            if num_shards == 1 and shard_index > 0:
                raise ValueError(f"${INDEX_ENV}={shard_index} but --num-shards is 1: set --num-shards to "
                                 "the Indexed Job's completions")
        else:
            shard_index = 0
    return num_shards, shard_index


def _summary(what: str, out: Outcome, skipped: int, manifest: dict[str, Any], where: Path, unit: str) -> int:
    rate = out.images / out.seconds if out.seconds > 0 else 0.0
    print(f"{what}: {len(out.done)} {unit}s written, {skipped} already done, {len(out.failed)} failed; "
          f"{out.images} images in {out.seconds:.1f} s ({rate:,.0f} images/s)", file=sys.stderr)
    state = "complete" if manifest.get("complete") else (
        f"{manifest.get('shards_done')}/{manifest.get('total_shards')} {unit}s done over all processes")
    print(f"{what}: job {state}; files in {where}", file=sys.stderr)
    if out.failed:
        for s, err in sorted(out.failed.items()):
            print(f"{what}: {unit} {s:05d} failed: {err}", file=sys.stderr)
        names = ", ".join(f"{s:05d}" for s in sorted(out.failed))
        print(f"{what}: error: {len(out.failed)} {unit}(s) failed after retries: {names}; rerun to resume",
              file=sys.stderr)
        return 1
    return 0


def generate_main(argv: list[str]) -> int:
    from client.generate import GenerateJob, run_generate

    p = ArgParser(prog="vae generate", description="Sharded, resumable, deterministic prior sampling.")
    add_connection_args(p, default_retries=5, many_targets=True)
    p.add_argument("--n", type=int, required=True, help="number of images")
    p.add_argument("--out", required=True, type=Path, help="output folder (shards, manifest.json)")
    p.add_argument("--shard-size", type=int, default=1000, metavar="S",
                   help="images per shard (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="job seed; shard seeds derive from it (default 0)")
    p.add_argument("--temperature", type=float, default=1.0, help="prior std scale (default 1.0)")
    p.add_argument("--format", choices=("npz", "png"), default="npz",
                   help="npz: shards only; png: also one PNG per image in shard-XXXXX/ (default npz)")
    _add_job_args(p, "shard")
    try:
        args = p.parse_args(argv)
        configs = configs_from_args(args, job_backoff=True)
        num, idx = resolve_split(args.num_shards, args.shard_index)
        job = GenerateJob(n=args.n, out=args.out, shard_size=args.shard_size, seed=args.seed,
                          temperature=args.temperature, fmt=args.format, concurrency=args.concurrency,
                          num_shards=num, shard_index=idx, attempts=args.shard_attempts,
                          progress=not args.no_progress, model=args.model, version=args.model_version)
    except (BadInput, ValueError) as exc:
        return fail("vae generate", str(exc).removeprefix("vae generate: "), 2)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    try:
        outcome, manifest, skipped = asyncio.run(run_generate(job, configs))
    except (JobError, ValueError) as exc:
        return fail("vae generate", str(exc), 2)
    except VaeClientError as exc:
        return fail("vae generate", str(exc), 1)
    except OSError as exc:
        return fail("vae generate", f"cannot write {job.out}: {exc.strerror or exc}", 2)
    return _summary("vae generate", outcome, skipped, manifest, job.out.resolve(), "shard")


def encode_main(argv: list[str]) -> int:
    from client.data import load_dataset
    from client.encode import EncodeJob, parts_dir, run_encode

    p = ArgParser(prog="vae encode", description="Encode a dataset to mu and logvar, chunked and resumable.")
    add_connection_args(p, default_retries=5, many_targets=True)
    p.add_argument("--data", required=True,
                   help="'digits', an IDX file (.gz or raw), .npz, .npy, or a folder of IDX or "
                        "PNG/JPEG files")
    p.add_argument("--out", required=True, type=Path, help="output .npz (mu, logvar, index)")
    p.add_argument("--chunk-size", type=int, default=1024, metavar="S",
                   help="images per chunk, the unit of resuming (default 1024)")
    _add_job_args(p, "chunk")
    try:
        args = p.parse_args(argv)
        configs = configs_from_args(args, job_backoff=True)
        num, idx = resolve_split(args.num_shards, args.shard_index)
        job = EncodeJob(data=args.data, out=args.out, chunk_size=args.chunk_size,
                        concurrency=args.concurrency, num_shards=num, shard_index=idx,
                        attempts=args.shard_attempts, progress=not args.no_progress, model=args.model,
                        version=args.model_version)
        images = load_dataset(args.data)
    except (BadInput, ValueError, DataError) as exc:
        return fail("vae encode", str(exc).removeprefix("vae encode: "), 2)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        outcome, manifest, skipped = asyncio.run(run_encode(job, images, configs))
    except (JobError, ValueError) as exc:
        return fail("vae encode", str(exc), 2)
    except VaeClientError as exc:
        return fail("vae encode", str(exc), 1)
    except OSError as exc:
        return fail("vae encode", f"cannot write {job.out}: {exc.strerror or exc}", 2)
    where = job.out.resolve() if manifest.get("complete") else parts_dir(job.out).resolve()
    return _summary("vae encode", outcome, skipped, manifest, where, "chunk")
