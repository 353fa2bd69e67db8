"""Reading image collections for `vae encode` and `vae client encode`: the one reader of
`contracts.images` (the formats the trainer accepts), without torch. Images come back [N, C, H, W],
uint8 when stored as integers (sent as UINT8 on the wire: a quarter of the bytes) or float32 in
[0, 1]; anything malformed raises the client's DataError naming the file."""

from __future__ import annotations

import numpy as np

from client.errors import DataError
from contracts.errors import DataError as CoreDataError
from contracts.images import IMAGE_SUFFIXES, array_digest, read_images

__all__ = ["load_dataset", "dataset_fingerprint", "IMAGE_SUFFIXES"]


def load_dataset(spec: str) -> np.ndarray:
    """[N, C, H, W] uint8 or float32 in [0, 1] from "digits", a file or a folder."""
    try:
        return read_images(spec)
    except CoreDataError as exc:
        raise DataError(str(exc)) from None


def dataset_fingerprint(images: np.ndarray) -> str:
    """sha256 over shape, dtype and bytes: a rerun of `vae encode` checks it is the same data."""
    a = np.ascontiguousarray(images)
    return array_digest(a, f"{list(a.shape)}|{a.dtype.str}|")
