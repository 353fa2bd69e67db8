"""Writing files and folders so that a reader never sees half of one: temp file or folder in the same
folder (same filesystem, so rename is atomic), fsync, then rename into place."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["write_bytes", "write_json_atomic", "stage_dir", "replace_dir", "fsync_dir"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder: Path) -> None:
    """Persist a rename in `folder` (not supported on every platform; the rename stays atomic)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path: Path, data: bytes) -> None:
    """Write and fsync a file (used inside a staging folder, which is itself renamed into place)."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to `path` via a temp file in the same folder, fsync, rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); a model folder is read by the service's own user.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def stage_dir(final: Path) -> Path:
    """A fresh hidden folder beside `final` to build its contents in."""
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    os.chmod(stage, 0o777 & ~_umask())  # mkdtemp's 0700 would hide the model from other users
    return stage


def replace_dir(stage: Path, final: Path) -> None:
    """Move the finished `stage` folder to `final`. An existing `final` is first renamed aside and
    restored if the second rename fails, then deleted: `final` is always either the old or the new
    complete folder (absent only for the instant between the two renames)."""
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
