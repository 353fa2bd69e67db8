"""Training data: the shared image reader (`contracts.images`: IDX gzip or raw, .npz/.npy, a folder of
PNG/JPEG, or scikit-learn's bundled digits) as float32 [N, C, H, W] in [0, 1], its fingerprint, and the
deterministic train/validation split. Malformed data raises DataError naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from contracts import images as contracts_images
from contracts.errors import DataError as CoreDataError
from contracts.images import IMAGE_SUFFIXES
from trainer.errors import DataError

if TYPE_CHECKING:  # only for the annotation: trainer.config stays free to import the readers
    from trainer.config import TrainConfig

__all__ = [
    "load_images",
    "fingerprint",
    "split_indices",
    "training_images",
    "split_images",
    "IMAGE_SUFFIXES",
    "parse_idx",
]


def parse_idx(path: Path) -> np.ndarray:
    """An IDX image file (MNIST format), via the shared reader; DataError on a malformed file."""
    try:
        return contracts_images.parse_idx(Path(path))
    except CoreDataError as exc:
        raise DataError(exc.source, exc.problem) from None


def load_images(spec: str) -> np.ndarray:
    """float32 [N, C, H, W] in [0, 1] from "digits", a file (IDX, .npz, .npy) or a folder."""
    try:
        return contracts_images.to_unit_float(contracts_images.read_images(spec))
    except CoreDataError as exc:
        raise DataError(exc.source, exc.problem) from None


def fingerprint(images: np.ndarray) -> str:
    """sha256 over shape, dtype and the float32 pixels: identifies the exact data a model saw."""
    a = np.ascontiguousarray(images, dtype=np.float32)
    return contracts_images.array_digest(a, f"{a.shape}|float32|")


def split_indices(
    n: int, val_fraction: float, seed: int, rule: str = "random"
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, val) indices. `random`: a seeded permutation; `tail`: the last
    `val_fraction` of the images (in file order) is validation, e.g. "train on the first 90 %"."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError("val_fraction", f"must be in [0, 1), got {val_fraction}")
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n_val == 0 and n > 1:
        n_val = 1
    if n - n_val < 1:
        raise DataError("data", f"{n} images leave nothing to train on with val_fraction={val_fraction}")
    if rule == "tail":
        idx = np.arange(n)
        return idx[: n - n_val], idx[n - n_val :]
    if rule != "random":
        raise DataError("split", f"unknown split rule {rule!r}; expected random or tail")
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=g).numpy()
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def split_images(
    images: np.ndarray, val_fraction: float, seed: int, rule: str = "random"
) -> tuple[np.ndarray, np.ndarray]:
    tr, va = split_indices(len(images), val_fraction, seed, rule)
    return images[tr], images[va]


def training_images(train_config: TrainConfig) -> np.ndarray:
    """The exact train split a run used (same data spec, fraction, seed and rule)."""
    data = train_config.data
    images = load_images(data)
    train, _ = split_images(
        images,
        float(train_config.val_fraction),
        int(train_config.seed),
        str(getattr(train_config, "split", "random")),
    )
    return train
