"""`vae score`: flags, the process split, the summary (JSON on stdout) and the exit code.

Exit 0 when every chunk of this process is done, 1 when chunks still fail after retries or no server
answers, 2 for bad input (flags, data, an output holding another job)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from client.errors import DataError, JobError, VaeClientError
from client.jobs_cli import _add_job_args, _summary, resolve_split
from client.options import ArgParser, BadInput, add_connection_args, configs_from_args, fail

__all__ = ["score_main"]


def score_main(argv: list[str]) -> int:
    from client.data import load_dataset
    from client.score_job import ScoreJob, parts_dir, run_score

    p = ArgParser(prog="vae score", description="Score a dataset (ELBO per image, nats), chunked and "
                                                "resumable; a CSV, a summary and a histogram PNG.")
    add_connection_args(p, default_retries=5, many_targets=True)
    p.add_argument("--data", "--input", dest="data", required=True,
                   help="'digits', an IDX file (.gz or raw), .npz, .npy, or a folder of IDX or "
                        "PNG/JPEG files")
    p.add_argument("--out", required=True, type=Path, help="output .csv (index, elbo, log_px, kl[, iwae])")
    p.add_argument("--k", type=int, default=1, help="posterior samples per image; > 1 adds IWAE (default 1)")
    p.add_argument("--seed", type=int, default=0, help="job seed of the posterior noise (default 0)")
    p.add_argument("--chunk-size", type=int, default=1024, metavar="S",
                   help="images per chunk, the unit of resuming (default 1024)")
    p.add_argument("--histogram", type=Path, help="histogram PNG against the training reference "
                                                  "(default: --out with .png)")
    _add_job_args(p, "chunk")
    try:
        args = p.parse_args(argv)
        configs = configs_from_args(args, job_backoff=True)
        num, idx = resolve_split(args.num_shards, args.shard_index)
        job = ScoreJob(data=args.data, out=args.out, k=args.k, seed=args.seed, chunk_size=args.chunk_size,
                       histogram=args.histogram, concurrency=args.concurrency, num_shards=num,
                       shard_index=idx, attempts=args.shard_attempts, progress=not args.no_progress)
        images = load_dataset(args.data)
    except (BadInput, ValueError, DataError) as exc:
        return fail("vae score", str(exc).removeprefix("vae score: "), 2)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        outcome, manifest, skipped = asyncio.run(run_score(job, images, configs))
    except (JobError, ValueError) as exc:
        return fail("vae score", str(exc), 2)
    except VaeClientError as exc:
        return fail("vae score", str(exc), 1)
    except OSError as exc:
        return fail("vae score", f"cannot write {job.out}: {exc.strerror or exc}", 2)
    if manifest.get("complete"):
        print(json.dumps({**manifest["summary"], "out": str(job.out.resolve()),
                          "histogram": str(job.histogram_path.resolve())}, indent=2))
    where = job.out.resolve() if manifest.get("complete") else parts_dir(job.out).resolve()
    return _summary("vae score", outcome, skipped, manifest, where, "chunk")
