"""Atomic file writes and file hashing.

A reader never sees half a file: the bytes go to a temp file in the same folder (same filesystem, so
the rename is atomic), are fsynced, then renamed over the target. mkstemp/mkdtemp create private
entries (0600 / 0700); the final file gets the mode a plain `open()` would give under the current
umask (0644 under 022), so checkpoints, model folders and job shards stay readable on a shared volume
or by a service running as another uid."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_with",
    "write_bytes_synced",
    "fsync_dir",
    "stage_dir",
    "replace_dir",
    "sha256_file",
    "sha256_bytes",
    "file_mode",
    "dir_mode",
]


def _umask() -> int:
    """The process umask. Linux reports it in /proc; setting and restoring it with os.umask would
    leave a moment in which files other threads create (job shards are written concurrently) get
    umask 0, so that is only the fallback."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a normal new file gets under the current umask (0644 under 022)."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """The mode a normal new folder gets under the current umask (0755 under 022)."""
    return 0o777 & ~_umask()


def fsync_dir(folder: Path) -> None:
    """Persist a rename in `folder` (not every filesystem allows it; the rename stays atomic)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_with(path: Path | str, write: Callable[[IO[bytes]], Any], *, durable: bool = True) -> None:
    """Call `write(fileobj)` on a temp file beside `path`, fsync, rename over `path`.
    `durable=False` skips the fsyncs: still atomic for readers (for pictures that are redrawn anyway)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_bytes(path: Path | str, data: bytes, *, durable: bool = True) -> None:
    atomic_write_with(path, lambda fh: fh.write(data), durable=durable)


def atomic_write_json(path: Path | str, obj: Any, *, sort_keys: bool = False) -> None:
    """Indented JSON plus a final newline, written atomically."""
    text = json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def write_bytes_synced(path: Path, data: bytes) -> None:
    """Write and fsync a file inside a staging folder (the folder itself is renamed into place)."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def stage_dir(final: Path) -> Path:
    """A fresh hidden folder beside `final` to build its contents in, with a normal folder mode."""
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    os.chmod(stage, dir_mode())
    return stage


def replace_dir(stage: Path, final: Path) -> None:
    """Move the finished `stage` folder to `final`. An existing `final` is first renamed aside and
    restored if the second rename fails, then deleted: `final` is always the old or the new complete
    folder (absent only for the instant between the two renames)."""
    if final.exists() or final.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
        old.rmdir()
        os.replace(final, old)
        try:
            os.replace(stage, final)
        except BaseException:
            os.replace(old, final)
            raise
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    else:
        os.replace(stage, final)
    fsync_dir(final.parent)


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file's bytes, read in blocks by hashlib.file_digest."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
