"""One-file checkpoints, written atomically and loaded with `torch.load(weights_only=True)` so that an
untrusted file cannot run code. Keys are listed in docs/CONTRACTS.md."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from contracts.files import atomic_write_with, fsync_dir
from trainer.config import ModelConfig
from trainer.errors import CheckpointError
from trainer.model import VAE, build_model

__all__ = [
    "link_checkpoint",
    "FORMAT",
    "FORMAT_VERSION",
    "save_checkpoint",
    "load_checkpoint",
    "model_from_checkpoint",
    "resolve_checkpoint",
    "atomic_write_bytes",
]

# The shared atomic writer (contracts.files), under the name trainer code has used.
atomic_write_bytes = atomic_write_with

FORMAT = "vae-checkpoint"
FORMAT_VERSION = 1
_REQUIRED = ("model_config", "train_config", "model_state", "step", "epoch")


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write `state` (format keys added) atomically. Refuses non-finite weights: no NaN model is saved."""
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, **state}
    for name, t in full.get("model_state", {}).items():
        if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(str(path), f"refusing to save non-finite weights ({name})")
    # The shared writer leaves the file with the umask's normal mode (0644 under 022), not mkstemp's 0600.
    atomic_write_with(Path(path), lambda f: torch.save(full, f))


def link_checkpoint(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Make `dst` a second name of the finished file `src` (atomic: link to a temp name, then rename),
    falling back to a copy where hard links are not supported. Saves serialising the same state twice."""
    import shutil

    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    fsync_dir(dst.parent)


def resolve_checkpoint(source: str | os.PathLike[str], prefer: str = "best.pt") -> Path:
    """A checkpoint file, or a run folder's `best.pt` (or `last.pt` when there is no best)."""
    p = Path(source)
    if p.is_dir():
        for name in (prefer, "best.pt", "last.pt"):
            if (p / name).is_file():
                return p / name
        raise CheckpointError(str(p), "run folder holds no best.pt or last.pt")
    return p


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and check a checkpoint; raises CheckpointError naming the file and the problem."""
    p = resolve_checkpoint(path)
    if not p.exists():
        raise CheckpointError(str(p), "no such file")
    if not p.is_file():
        raise CheckpointError(str(p), "not a regular file")
    if p.stat().st_size == 0:
        raise CheckpointError(str(p), "empty file")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses anything but tensors and plain containers: a foreign or malicious file.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(str(p), f"refused by the safe loader (weights_only=True): {first}") from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(str(p), f"not a readable torch file (truncated or foreign?): {msg}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(str(p), f"not a {FORMAT} file (foreign torch file)")
    version = ckpt.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            str(p), f"unknown format_version {version!r}; this trainer reads {FORMAT_VERSION}"
        )
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(str(p), f"missing keys {missing}")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> VAE:
    """Rebuild the model from the stored config and load its weights; eval mode."""
    try:
        cfg = ModelConfig.from_dict(ckpt["model_config"])
        model = build_model(cfg)
        model.load_state_dict(ckpt["model_state"])
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise CheckpointError("<loaded>", f"model does not match its config: {exc}") from None
    model.eval()
    return model
