"""Where a manifest's latent reference statistics come from.

By default from the checkpoint: the trainer stores them (with the data's fingerprint, size and source and
a sample of training images for the parity check) in the checkpoint's `reference` block when it writes
it, so a checkpoint exports on a machine without its training data. `--reference-data PATH` recomputes
them on other images, and a checkpoint written before the block existed falls back to reading its
training data. Both computations are the trainer's own `model_statistics` (trainer/reference.py): the
exporter defines no statistic and knows no split rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from exporter.errors import ExportError, SourceError
from exporter.source import Source, load_training_data
from trainer.reference import (
    QUANTILES,
    decode_sample,
    kl_to_standard_normal,
    model_statistics,
    reference_statistics,
)

__all__ = [
    "QUANTILES",
    "Reference",
    "kl_to_standard_normal",
    "reference_statistics",
    "stored_reference",
    "load_reference",
]

ORIGIN_CHECKPOINT = "checkpoint"  # stored by the trainer when it wrote the checkpoint
ORIGIN_DATA = "data"  # computed by the exporter on images it read


@dataclass
class Reference:
    """The manifest's `reference` statistics and what they were computed on."""

    statistics: dict[str, Any]
    fingerprint: str
    n_images: int
    source: str
    checkpoint_fingerprint: str | None
    overridden: bool
    origin: str  # ORIGIN_CHECKPOINT | ORIGIN_DATA
    parity_images: np.ndarray  # float32 [k,C,H,W]: the "real" inputs of the parity check


def stored_reference(src: Source) -> Reference | None:
    """The checkpoint's stored reference block, checked; None for a checkpoint that has none."""
    block = src.ckpt.get("reference")
    if block is None:
        return None
    where = str(src.path)
    try:
        stats = block["statistics"]
        data = block["data"]
        images = decode_sample(block["sample"], str(block["sample_encoding"]))
        fp, n, source = str(data["fingerprint"]), int(data["n_images"]), str(data["source"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SourceError(where, f"malformed stored reference block ({type(exc).__name__}: {exc})") from None
    if not isinstance(stats, dict):
        raise SourceError(where, "malformed stored reference block (statistics is not a mapping)")
    want = tuple(int(v) for v in src.model_cfg.input_shape)
    if images.ndim != 4 or tuple(images.shape[1:]) != want or images.shape[0] == 0:
        raise SourceError(where, f"stored reference sample has shape {list(images.shape)}, the model takes "
                                 f"[N, {', '.join(map(str, want))}]")
    recorded = (src.ckpt.get("data") or {}).get("fingerprint")
    return Reference(statistics=dict(stats), fingerprint=fp, n_images=n, source=source,
                     checkpoint_fingerprint=recorded, overridden=False, origin=ORIGIN_CHECKPOINT,
                     parity_images=images)


def load_reference(src: Source, data: str | None = None) -> Reference:
    """The stored statistics, or (with `data`, or for a checkpoint without them) statistics computed on
    the train split of `data` (default: the checkpoint's own training data, fingerprint checked)."""
    if data is None:
        stored = stored_reference(src)
        if stored is not None:
            return stored
    training = load_training_data(src, data)
    try:
        stats = model_statistics(src.model, training.images,
                                 active_threshold=float(src.train_cfg.active_threshold))
    except ValueError as exc:
        raise ExportError(f"reference statistics: {exc}") from None
    return Reference(statistics=stats, fingerprint=training.fingerprint,
                     n_images=int(training.images.shape[0]), source=training.source,
                     checkpoint_fingerprint=training.checkpoint_fingerprint, overridden=training.overridden,
                     origin=ORIGIN_DATA, parity_images=training.images)
