"""Reading image collections for `vae encode`, in the formats the trainer accepts, without torch.

The client may not import the trainer, so this is its own small reader: "digits" (scikit-learn's
bundled 8x8 digits, optional import), an IDX file (gzip or raw), .npz / .npy, or a folder holding
IDX image files or PNG/JPEG files. Images come back [N, C, H, W], uint8 when stored as integers
(sent as UINT8 on the wire: a quarter of the bytes) or float32 in [0, 1]."""

from __future__ import annotations

import gzip
import hashlib
import math
import zlib
from pathlib import Path

import numpy as np

from client.errors import DataError

__all__ = ["load_dataset", "dataset_fingerprint", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# IDX element type byte -> numpy dtype (big-endian, as the format stores it).
_IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}


def _fail(where: object, problem: str) -> DataError:
    return DataError(f"{where}: {problem}")


def _raw(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _fail(path, f"cannot read ({exc.strerror or exc})") from None
    if data.startswith(b"\x1f\x8b"):
        try:
            return gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise _fail(path, f"corrupt or truncated gzip data ({exc})") from None
    return data


def _idx(path: Path) -> np.ndarray:
    buf = _raw(path)
    if len(buf) < 4 or buf[0] or buf[1] or buf[2] not in _IDX_TYPES:
        raise _fail(path, "not an IDX file (bad magic number)")
    ndim = buf[3]
    if ndim not in (3, 4):
        raise _fail(path, f"IDX file with {ndim} dimensions; images need 3 (N,H,W) or 4 (N,C,H,W)")
    start = 4 + 4 * ndim
    if len(buf) < start:
        raise _fail(path, "truncated IDX header")
    shape = tuple(int.from_bytes(buf[4 + 4 * k:8 + 4 * k], "big") for k in range(ndim))
    dtype = _IDX_TYPES[buf[2]]
    count = math.prod(shape)  # exact: np.prod wraps at 2**64 and a forged header could pass
    if count == 0:
        raise _fail(path, f"IDX header shape {list(shape)} holds no pixels")
    if len(buf) - start != count * dtype.itemsize:
        raise _fail(path, f"IDX header says {list(shape)} ({count * dtype.itemsize} data bytes), "
                          f"file holds {len(buf) - start}")
    arr = np.frombuffer(buf, dtype=dtype, count=count, offset=start).reshape(shape)
    return arr if dtype == np.uint8 else arr.astype(np.float32)


def _npz(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.keys())
            for key in ("images", "x", "x_train", "arr_0"):
                if key in names:
                    return np.asarray(archive[key])
            if len(names) == 1:
                return np.asarray(archive[names[0]])
    except (OSError, ValueError, EOFError) as exc:
        raise _fail(path, f"not a readable .npz archive ({exc})") from None
    raise _fail(path, f"holds arrays {names}; name the images array 'images'")


def _npy(path: Path) -> np.ndarray:
    try:
        return np.asarray(np.load(path, allow_pickle=False))
    except (OSError, ValueError, EOFError) as exc:
        raise _fail(path, f"not a readable .npy file ({exc})") from None


def _pictures(folder: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise _fail(folder, "no IDX (*images-idx3-ubyte[.gz]) or PNG/JPEG files here")
    loaded = []
    for f in files:
        try:
            with Image.open(f) as im:
                grey = im.mode in ("L", "1", "I", "I;16")
                loaded.append(im.convert("L") if grey else im.convert("RGB"))
        except (UnidentifiedImageError, OSError) as exc:
            raise _fail(f, f"not a readable image ({exc})") from None
    if len({im.size for im in loaded}) > 1:
        raise _fail(folder, "images differ in size; all must share one size")
    arrays = [np.asarray(im, dtype=np.uint8) for im in loaded]
    # Colour only when some image really has colour: greyscale saved as RGB stays one channel.
    colour = any(a.ndim == 3 and (np.ptp(a.astype(np.int16), axis=2) > 0).any() for a in arrays)
    out = []
    for a in arrays:
        if colour:
            a = np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a
            out.append(a.transpose(2, 0, 1))
        else:
            out.append((a if a.ndim == 2 else a[..., 0])[None])
    return np.stack(out)


def _idx_in(folder: Path) -> list[Path]:
    found = [p for p in folder.iterdir() if p.is_file()
             and p.name.endswith(("images-idx3-ubyte", "images-idx3-ubyte.gz"))]
    # train-* then t10k-* then others: the order the trainer reads them in.
    rank = lambda p: (0 if p.name.startswith("train") else 1 if p.name.startswith("t10k") else 2, p.name)
    return sorted(found, key=rank)


def _normalise(arr: np.ndarray, where: object) -> np.ndarray:
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[0] == 0 or min(arr.shape[1:]) < 1:
        raise _fail(where, f"expected a non-empty image array (N,H,W) or (N,C,H,W), "
                           f"got shape {list(arr.shape)}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * np.uint8(255)
    if not np.issubdtype(arr.dtype, np.floating):
        raise _fail(where, f"unsupported dtype {arr.dtype}; store uint8 (0-255) or floats in [0, 1]")
    out = arr.astype(np.float32)
    if not np.isfinite(out).all():
        raise _fail(where, f"{int((~np.isfinite(out)).sum())} NaN or infinite values")
    lo, hi = float(out.min()), float(out.max())
    if lo < 0.0 or hi > 1.0:
        raise _fail(where, f"values outside [0, 1] (min {lo:g}, max {hi:g}); scale floats to [0, 1]")
    return np.ascontiguousarray(out)


def load_dataset(spec: str) -> np.ndarray:
    """[N, C, H, W] uint8 or float32 in [0, 1] from "digits", a file or a folder."""
    if spec == "digits":
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise DataError("digits: needs scikit-learn (pip install scikit-learn)") from None
        return np.ascontiguousarray(load_digits().images.astype(np.float32)[:, None] / 16.0)
    path = Path(spec)
    if not path.exists():
        raise _fail(spec, "no such file or folder (or 'digits' for the bundled data)")
    if path.is_dir():
        idx = _idx_in(path)
        if not idx:
            return _normalise(_pictures(path), path)
        parts = [_normalise(_idx(p), p) for p in idx]
        if len({p.shape[1:] for p in parts}) > 1 or len({p.dtype for p in parts}) > 1:
            raise _fail(path, "IDX files hold different image shapes or types")
        return np.concatenate(parts)
    low = path.name.lower()
    if low.endswith(".npz"):
        arr = _npz(path)
    elif low.endswith(".npy"):
        arr = _npy(path)
    elif low.endswith(IMAGE_SUFFIXES):
        raise _fail(spec, "a single image; pass the folder that holds the images")
    else:
        arr = _idx(path)
    return _normalise(arr, spec)


def dataset_fingerprint(images: np.ndarray) -> str:
    """sha256 over shape, dtype and bytes: a rerun of `vae encode` checks it is the same data."""
    a = np.ascontiguousarray(images)
    h = hashlib.sha256(f"{list(a.shape)}|{a.dtype.str}|".encode())
    h.update(a.tobytes())
    return h.hexdigest()
