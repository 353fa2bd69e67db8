"""The one image reader: "digits" (scikit-learn's bundled 8x8 digits), an IDX file (gzip or raw),
.npz / .npy arrays, or a folder holding IDX image files or PNG/JPEG files.

`read_images` returns [N, C, H, W] as stored: uint8 (0-255) for integer images, float32 in [0, 1]
otherwise; `to_unit_float` turns that into float32 in [0, 1] (what the trainer works in). The client
sends uint8 as UINT8 on the wire, a quarter of the bytes. Anything malformed raises DataError naming
the file and the problem."""

from __future__ import annotations

import gzip
import hashlib
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from contracts.errors import DataError

__all__ = ["read_images", "to_unit_float", "parse_idx", "array_digest", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# IDX element type byte -> numpy dtype (big-endian, as the format stores it).
_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_NPZ_KEYS = ("images", "x", "x_train", "arr_0")
_GREY_MODES = ("L", "1", "I;16", "I", "LA")


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(str(path), f"cannot read: {exc.strerror or exc}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise DataError(str(path), f"corrupt or truncated gzip stream ({exc})") from None
    return raw


def parse_idx(path: Path) -> np.ndarray:
    """An IDX image file (MNIST format): magic 0x0000 <dtype> <ndim>, big-endian sizes, then the data."""
    buf = _read_bytes(path)
    if len(buf) < 4 or buf[0] != 0 or buf[1] != 0 or buf[2] not in _IDX_DTYPES:
        raise DataError(str(path), f"not an IDX file: bad magic 0x{buf[:4].hex()} "
                                   "(expected 0x00000803 for images)")
    ndim = buf[3]
    if ndim not in (3, 4):
        raise DataError(str(path), f"IDX file has {ndim} dimensions; images need 3 (N,H,W) or 4 (N,C,H,W) "
                                   "(is this a labels file?)")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(str(path), "truncated IDX header")
    shape = tuple(int.from_bytes(buf[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[buf[2]]
    # Exact integer product: np.prod wraps at 2**64, so a forged header could pass the size check.
    count = math.prod(shape)
    if count == 0:
        raise DataError(str(path), f"header shape {list(shape)} holds no pixels")
    expected, got = count * dtype.itemsize, len(buf) - header
    if got < expected:
        raise DataError(str(path), f"truncated: header says {list(shape)} ({expected} data bytes), "
                                   f"file holds {got}")
    if got > expected:
        raise DataError(str(path), f"header says {list(shape)} ({expected} data bytes), file holds {got}: "
                                   f"{got - expected} unexpected trailing bytes")
    arr = np.frombuffer(buf, dtype=dtype, offset=header, count=count).reshape(shape)
    return arr if dtype == np.uint8 else arr.astype(np.float32)


def _validated(arr: np.ndarray, source: str) -> np.ndarray:
    """An (N,H,W) or (N,C,H,W) array as [N, C, H, W]: uint8 kept, bool as 0/255, floats checked."""
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4:
        raise DataError(source, f"expected images of shape (N,H,W) or (N,C,H,W), got {list(arr.shape)}")
    if arr.shape[0] == 0:
        raise DataError(source, "empty image set (0 images)")
    if min(arr.shape[1:]) < 1:
        raise DataError(source, f"images of empty size {list(arr.shape[1:])}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * np.uint8(255)
    if not np.issubdtype(arr.dtype, np.floating):
        raise DataError(source, f"unsupported dtype {arr.dtype}; expected uint8 (0-255) or float in [0, 1]")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        idx = int(np.argwhere(bad.reshape(len(out), -1).any(axis=1))[0][0])
        raise DataError(source, f"{int(bad.sum())} non-finite values (NaN/inf), first in image {idx}")
    lo, hi = float(out.min()), float(out.max())
    if lo < 0.0 or hi > 1.0:
        raise DataError(source, f"values outside [0, 1] (min {lo:g}, max {hi:g}); scale floats to [0, 1] "
                                "or store uint8")
    return out


def to_unit_float(images: np.ndarray) -> np.ndarray:
    """float32 in [0, 1] from what `read_images` returns (uint8 is divided by 255)."""
    if images.dtype == np.uint8:
        return np.ascontiguousarray(images, dtype=np.float32) / np.float32(255.0)
    return np.ascontiguousarray(images, dtype=np.float32)


def _load_npz(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.keys())
            if not keys:
                raise DataError(str(path), "empty .npz archive")
            for key in _NPZ_KEYS:
                if key in keys:
                    return np.asarray(archive[key])
            if len(keys) == 1:
                return np.asarray(archive[keys[0]])
            raise DataError(str(path), f"several arrays {keys}; name the images array 'images'")
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(str(path), f"not a readable .npz file ({exc})") from None


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.asarray(np.load(path, allow_pickle=False))
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(str(path), f"not a readable .npy file ({exc})") from None


def _idx_files(folder: Path) -> list[Path]:
    found = [p for p in folder.iterdir()
             if p.is_file() and p.name.endswith(("images-idx3-ubyte", "images-idx3-ubyte.gz"))]
    # The official names: train-* first, then t10k-*, then the rest by name.
    def rank(p: Path) -> tuple[int, str]:
        return (0 if p.name.startswith("train") else 1 if p.name.startswith("t10k") else 2, p.name)

    return sorted(found, key=rank)


def _load_image_folder(folder: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(str(folder), "no IDX (*images-idx3-ubyte[.gz]) or PNG/JPEG files in this folder")
    raw: list[Any] = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                raw.append(im.copy())
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(str(f), f"not a readable image ({exc})") from None
    size = raw[0].size
    for f, im in zip(files, raw, strict=True):
        if im.size != size:
            raise DataError(str(f), f"size {im.size[0]}x{im.size[1]} differs from {files[0].name} "
                                    f"({size[0]}x{size[1]}); all images must share one size")
    # Colour only when some image really has colour: greyscale saved as RGB stays one channel.
    colour = any(_is_colour(im) for im in raw if im.mode not in _GREY_MODES)
    mode = "RGB" if colour else "L"
    out = []
    for im in raw:
        a = np.asarray(im.convert(mode), dtype=np.uint8)
        out.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    return np.stack(out)


def _is_colour(im: Any) -> bool:
    rgb = np.asarray(im.convert("RGB"))
    return bool((rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 1] != rgb[..., 2]).any())


def _digits() -> np.ndarray:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("digits", "needs scikit-learn (pip install scikit-learn)") from None
    grey = load_digits().images.astype(np.float32) / np.float32(16.0)  # 8x8 grey levels 0..16
    return np.ascontiguousarray(grey[:, None])


def read_images(spec: str) -> np.ndarray:
    """[N, C, H, W] uint8 or float32 in [0, 1] from "digits", a file (IDX, .npz, .npy) or a folder."""
    if spec == "digits":
        return _digits()
    path = Path(spec)
    if not path.exists():
        raise DataError(spec, "no such file or folder (use 'digits' for the bundled data)")
    if path.is_dir():
        idx = _idx_files(path)
        if not idx:
            return _validated(_load_image_folder(path), str(path))
        parts = [_validated(parse_idx(p), str(p)) for p in idx]
        if len({p.shape[1:] for p in parts}) > 1 or len({p.dtype for p in parts}) > 1:
            shapes = sorted({(p.shape[1:], str(p.dtype)) for p in parts})
            raise DataError(str(path), f"IDX files hold different image shapes or types {shapes}")
        return np.ascontiguousarray(np.concatenate(parts))
    name = path.name.lower()
    if name.endswith(".npz"):
        arr = _load_npz(path)
    elif name.endswith(".npy"):
        arr = _load_npy(path)
    elif name.endswith(IMAGE_SUFFIXES):
        raise DataError(spec, "a single image; pass the folder that holds the images")
    else:
        arr = parse_idx(path)  # IDX has no fixed suffix (train-images-idx3-ubyte, *.gz, *.idx)
    return _validated(arr, spec)


def array_digest(array: np.ndarray, header: str) -> str:
    """sha256 over `header` then the array's C-order bytes; the header pins shape and dtype, so two
    arrays with the same bytes but another layout differ."""
    h = hashlib.sha256(header.encode())
    h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()
