"""Images out of the client: uint8 conversion, single PNGs and PNG grids (Pillow; no torchvision)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

__all__ = ["to_uint8", "png_bytes", "grid_image", "save_grid"]


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float in [0, 1] -> uint8 by rounding (uint8 passes through)."""
    if images.dtype == np.uint8:
        return images
    out: np.ndarray = np.clip(np.rint(np.asarray(images, np.float32) * 255.0), 0, 255).astype(np.uint8)
    return out


def _pil(image_chw: np.ndarray) -> object:
    from PIL import Image

    img = to_uint8(image_chw)
    if img.shape[0] == 1:
        return Image.fromarray(img[0], mode="L")
    if img.shape[0] == 3:
        return Image.fromarray(img.transpose(1, 2, 0), mode="RGB")
    raise ValueError(f"PNG needs 1 or 3 channels, got {img.shape[0]}")


def png_bytes(image_chw: np.ndarray) -> bytes:
    """One [C, H, W] image as PNG bytes (no metadata, so the bytes depend only on the pixels)."""
    buf = io.BytesIO()
    _pil(image_chw).save(buf, format="PNG", optimize=False)  # type: ignore[attr-defined]
    return buf.getvalue()


def grid_image(images: np.ndarray, ncol: int | None = None, pad: int = 2, scale: int = 1) -> np.ndarray:
    """[N, C, H, W] -> one [C, H', W'] uint8 mosaic, `ncol` per row (default: near square)."""
    imgs = to_uint8(images)
    n, c, h, w = imgs.shape
    cols = ncol or max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    out = np.full((c, rows * (h + pad) + pad, cols * (w + pad) + pad), 255, np.uint8)
    for k in range(n):
        r, q = divmod(k, cols)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        out[:, y:y + h, x:x + w] = imgs[k]
    if scale > 1:
        out = out.repeat(scale, axis=1).repeat(scale, axis=2)
    return out


def save_grid(images: np.ndarray, path: Path, ncol: int | None = None, scale: int = 1) -> None:
    """Write a PNG grid atomically (the image bytes are built first, then renamed into place)."""
    from client.shards import atomic_write_bytes

    atomic_write_bytes(Path(path), png_bytes(grid_image(images, ncol=ncol, scale=scale)))
