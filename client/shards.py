"""Files of the batch jobs: atomic writes, byte-deterministic .npz shards, per-shard records, the job
file that pins a folder to one job, and the lock that serialises manifest updates.

Layout of a job folder (shared by every process of the job, on one or several machines):
  job.json                 parameters; a rerun with other parameters is refused
  <prefix>-00000.npz       one shard, written atomically
  <prefix>-00000.json      its record (sha256, count, seed, ...), written after the shard: a shard
                           counts as done only when its record exists and its sha256 matches
  manifest.json            parameters + every finished shard's record, rebuilt under .lock"""

from __future__ import annotations

import contextlib
import fcntl
import io
import shutil
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from client.errors import JobError
from contracts import files
from contracts.errors import JsonError
from contracts.files import atomic_write_bytes, sha256_bytes, sha256_file
from contracts.jsonio import read_json

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "npz_bytes",
    "sha256_bytes",
    "sha256_file",
    "ShardStore",
    "ensure_job_file",
    "folder_lock",
    "select_shards",
]


def atomic_write_json(path: Path, obj: Any) -> None:
    """Sorted keys: job files and records compare byte for byte across reruns."""
    files.atomic_write_json(path, obj, sort_keys=True)


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An .npz (readable by np.load) whose bytes depend only on the arrays: np.savez stamps each
    member with the current time, so the same shard would hash differently on every run."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive flock on <folder>/.lock: processes of one job take turns rebuilding the manifest."""
    with open(Path(folder) / ".lock", "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def select_shards(total: int, num_shards: int, shard_index: int) -> list[int]:
    """The job's shards this process owns: every num_shards-th one starting at shard_index, so
    processes split the work with no coordination and each shard has exactly one owner."""
    if num_shards < 1:
        raise ValueError(f"--num-shards must be >= 1, got {num_shards}")
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"--shard-index must be in [0, {num_shards - 1}], got {shard_index}")
    return list(range(shard_index, total, num_shards))


def _kind(job: Any) -> Any:
    return job.get("format") if isinstance(job, dict) else type(job).__name__


def ensure_job_file(folder: Path, kind: str, params: dict[str, Any]) -> None:
    """Create job.json, or check that the one there describes the same job."""
    path = Path(folder) / "job.json"
    record = {"format": kind, "format_version": 1, "params": params}
    if path.exists():
        try:
            old = read_json(path)
        except (OSError, JsonError) as exc:
            raise JobError(f"{path}: unreadable job file ({exc}); remove it to start over") from None
        if not isinstance(old, dict) or old.get("format") != kind:
            raise JobError(f"{path}: this folder holds a {_kind(old)!r} job, not {kind!r}")
        old_params = old.get("params", {})
        diff = sorted(k for k in set(old_params) | set(params) if old_params.get(k) != params.get(k))
        if diff:
            shown = ", ".join(f"{k}: {old_params.get(k)!r} here vs {params.get(k)!r} asked" for k in diff)
            raise JobError(f"{folder} holds a different job ({shown}); use another --out or the same "
                           "parameters")
        return
    atomic_write_json(path, record)


class ShardStore:
    """Shard files and their records in one folder."""

    def __init__(self, folder: Path, prefix: str = "shard") -> None:
        self.folder = Path(folder)
        self.prefix = prefix

    def name(self, index: int) -> str:
        return f"{self.prefix}-{index:05d}"

    def npz_path(self, index: int) -> Path:
        return self.folder / f"{self.name(index)}.npz"

    def record_path(self, index: int) -> Path:
        return self.folder / f"{self.name(index)}.json"

    def png_dir(self, index: int) -> Path:
        return self.folder / self.name(index)

    def record(self, index: int) -> dict[str, Any] | None:
        try:
            rec = read_json(self.record_path(index))
        except (OSError, JsonError):
            return None
        return rec if isinstance(rec, dict) else None

    def verify(self, index: int, expect: Mapping[str, Any]) -> bool:
        """Done means: the record exists, agrees with `expect` (count, seed, ...), and the shard file's
        sha256 (and each PNG's, when listed) matches it. Anything else is redone."""
        rec = self.record(index)
        if rec is None or any(rec.get(k) != v for k, v in expect.items()):
            return False
        try:
            if sha256_file(self.npz_path(index)) != rec.get("sha256"):
                return False
            for fname, digest in (rec.get("png") or {}).items():
                if sha256_file(self.png_dir(index) / fname) != digest:
                    return False
        except OSError:
            return False
        return True

    def write(self, index: int, arrays: Mapping[str, np.ndarray], record: dict[str, Any],
              pngs: Mapping[str, bytes] | None = None) -> dict[str, Any]:
        """Write PNGs (into a temp folder renamed into place), the shard, then its record."""
        rec = dict(record)
        self.record_path(index).unlink(missing_ok=True)  # a stale record must never vouch for new files
        if pngs:
            final = self.png_dir(index)
            tmp = files.stage_dir(final)  # a normal folder mode, not mkdtemp's private 0700
            for fname, data in pngs.items():
                files.write_bytes_synced(tmp / fname, data)
            files.replace_dir(tmp, final)
            rec["png"] = {fname: sha256_bytes(data) for fname, data in pngs.items()}
        data = npz_bytes(arrays)
        atomic_write_bytes(self.npz_path(index), data)
        rec.update(file=self.npz_path(index).name, sha256=sha256_bytes(data), size_bytes=len(data))
        atomic_write_json(self.record_path(index), rec)
        return rec

    def remove_leftovers(self) -> int:
        """Delete temp files and folders a killed process left behind. Call only when the job is
        complete: then no process of the job still writes into the folder."""
        removed = 0
        for p in self.folder.glob(f".{self.prefix}-*"):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed += 1
        return removed

    def done_records(self, total: int) -> dict[int, dict[str, Any]]:
        """Records present for shards 0..total-1 (not re-hashed: verification is the owner's job)."""
        out = {}
        for i in range(total):
            rec = self.record(i)
            if rec is not None:
                out[i] = rec
        return out
