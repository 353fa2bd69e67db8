"""The run folder's logs: config.json, metrics.jsonl (one JSON object per line: `type` step | epoch |
event), optional TensorBoard. Only rank 0 writes."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import IO, Any

from trainer.checkpoint import atomic_write_bytes

__all__ = ["RunLog", "write_config", "truncate_metrics", "epoch_row"]

log = logging.getLogger("trainer")


def _clean(v: Any) -> Any:
    """JSON has no NaN/inf: write them as null (a skipped step's loss)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    return v


def write_config(
    path: Path, model_config: dict[str, Any], train_config: dict[str, Any], extra: dict[str, Any]
) -> None:
    doc = {"model_config": model_config, "train_config": train_config, **extra}
    data = (json.dumps(_clean(doc), indent=2) + "\n").encode()
    atomic_write_bytes(path, lambda f: f.write(data))


def truncate_metrics(path: Path, step: int) -> None:
    """On resume: keep only what happened up to the checkpoint's step, so the log of a resumed run
    reads like the log of an uninterrupted one (a half-written last line after SIGKILL is dropped)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("type") == "step" and row.get("step", 0) >= step:
            continue
        if row.get("type") == "epoch" and row.get("step", 0) > step:
            continue
        kept.append(line)
    data = ("\n".join(kept) + ("\n" if kept else "")).encode()
    atomic_write_bytes(path, lambda f: f.write(data))


def epoch_row(
    m: dict[str, Any],
    *,
    epoch: int,
    step: int,
    latent_dim: int,
    skipped_steps: int,
    collapse_reason: str | None,
    beta: float,
    train_seconds: float,
) -> dict[str, Any]:
    """The `epoch` row of metrics.jsonl from the validation metrics `m` (see docs/trainer.md)."""
    return {
        "type": "epoch",
        "epoch": epoch,
        "step": step,
        "val_rec": m["rec"],
        "val_kl": m["kl"],
        "val_neg_elbo": m["neg_elbo"],
        "kl_per_dim": m["kl_per_dim"],
        "active_units": m["active_units"],
        "latent_dim": latent_dim,
        "mi": m["mi"],
        "skipped_steps": skipped_steps,
        "collapse": collapse_reason is not None,
        "collapse_reason": collapse_reason,
        "beta": beta,
        "train_seconds": round(train_seconds, 3),
        "time": round(time.time(), 3),
    }


class RunLog:
    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool) -> None:
        self.enabled = enabled
        self._f: IO[str] | None = None
        self._tb: Any = None
        if not enabled:
            return
        self._f = open(out_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.debug("tensorboard is not installed; TensorBoard logging off")
            else:
                self._tb = SummaryWriter(log_dir=str(out_dir / "tensorboard"))

    def write(self, row: dict[str, Any]) -> None:
        if self._f is None:
            return
        flat = all(isinstance(v, int | float | str | bool) or v is None for v in row.values())
        # Per-step rows are flat: a cheap NaN -> null pass instead of the recursive one.
        clean = (
            {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
            if flat
            else _clean(row)
        )
        self._f.write(json.dumps(clean) + "\n")
        if self._tb is not None:
            kind = row.get("type")
            for k, v in row.items():
                if isinstance(v, int | float) and not isinstance(v, bool) and k not in ("step", "epoch"):
                    self._tb.add_scalar(f"{kind}/{k}", v, row.get("step", 0))

    def flush(self) -> None:
        if self._f is not None:
            self._f.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
