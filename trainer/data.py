"""Image loading: IDX (gzip or raw), .npz/.npy, a folder of PNG/JPEG, or scikit-learn's bundled digits.
Everything becomes float32 [N, C, H, W] in [0, 1]; anything malformed raises DataError naming the file."""

from __future__ import annotations

import gzip
import hashlib
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from trainer.errors import DataError

__all__ = [
    "load_images",
    "fingerprint",
    "split_indices",
    "training_images",
    "split_images",
    "IMAGE_SUFFIXES",
    "parse_idx",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


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
    if len(buf) < 4:
        raise DataError(str(path), f"too short for an IDX header ({len(buf)} bytes)")
    if buf[0] != 0 or buf[1] != 0 or buf[2] not in _IDX_DTYPES:
        raise DataError(str(path), f"bad IDX magic 0x{buf[:4].hex()} (expected 0x000008 03 for images)")
    ndim = buf[3]
    if ndim not in (3, 4):
        raise DataError(
            str(path),
            f"IDX file has {ndim} dimensions; images need 3 (N,H,W) or 4 (N,C,H,W) (is this a labels file?)",
        )
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(str(path), "truncated IDX header")
    shape = tuple(int.from_bytes(buf[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[buf[2]])
    # Exact integer product: np.prod wraps at 2**64, so a forged header could pass the size check.
    count = math.prod(shape)
    if count == 0:
        raise DataError(str(path), f"header shape {shape} holds no pixels")
    expected = count * dtype.itemsize
    got = len(buf) - header
    if got < expected:
        raise DataError(str(path), f"truncated: header says {shape} ({expected} bytes of data), found {got}")
    if got > expected:
        raise DataError(str(path), f"{got - expected} unexpected trailing bytes after {shape} images")
    arr = np.frombuffer(buf, dtype=dtype, offset=header, count=count).reshape(shape)
    return arr if dtype == np.uint8 else arr.astype(np.float32)


def _to_float(arr: np.ndarray, source: str) -> np.ndarray:
    """Validate an (N,H,W) or (N,C,H,W) array and scale it to float32 in [0, 1]."""
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4:
        raise DataError(source, f"expected images of shape (N,H,W) or (N,C,H,W), got {arr.shape}")
    if arr.shape[0] == 0:
        raise DataError(source, "empty image set (0 images)")
    if min(arr.shape[1:]) < 1:
        raise DataError(source, f"images of empty size {arr.shape[1:]}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if not np.issubdtype(arr.dtype, np.floating):
        raise DataError(source, f"unsupported dtype {arr.dtype}; expected uint8 (0-255) or float in [0, 1]")
    out = arr.astype(np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        idx = int(np.argwhere(bad.reshape(len(out), -1).any(axis=1))[0][0])
        raise DataError(source, f"{int(bad.sum())} non-finite values (NaN/inf), first in image {idx}")
    lo, hi = float(out.min()), float(out.max())
    if lo < 0.0 or hi > 1.0:
        raise DataError(
            source, f"values outside [0, 1] (min {lo:g}, max {hi:g}); scale floats to [0, 1] or store uint8"
        )
    return out


def _load_npz(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            if not keys:
                raise DataError(str(path), "empty .npz archive")
            for k in ("images", "x", "x_train", "arr_0"):
                if k in keys:
                    return np.asarray(z[k])
            if len(keys) == 1:
                return np.asarray(z[keys[0]])
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
    found = [
        p
        for p in folder.iterdir()
        if p.is_file() and (p.name.endswith("images-idx3-ubyte") or p.name.endswith("images-idx3-ubyte.gz"))
    ]
    # The official names: train-* first, then t10k-*, then the rest by name.
    return sorted(
        found,
        key=lambda p: (0 if p.name.startswith("train") else 1 if p.name.startswith("t10k") else 2, p.name),
    )


def _load_image_folder(folder: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(str(folder), "no IDX (*images-idx3-ubyte[.gz]) or PNG/JPEG files in this folder")
    imgs: list[np.ndarray] = []
    raw: list[Image.Image] = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                raw.append(im.copy())
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(str(f), f"not a readable image ({exc})") from None
    colour = any(_is_colour(im) for im in raw if im.mode not in ("L", "1", "I;16", "I", "LA"))
    mode = "RGB" if colour else "L"
    size = raw[0].size
    for f, im in zip(files, raw, strict=True):
        if im.size != size:
            raise DataError(
                str(f),
                f"size {im.size[0]}x{im.size[1]} differs from {files[0].name} "
                f"({size[0]}x{size[1]}); all images must share one size",
            )
        a = np.asarray(im.convert(mode), dtype=np.uint8)
        imgs.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    return np.stack(imgs)


def _is_colour(im: object) -> bool:
    from PIL import Image

    assert isinstance(im, Image.Image)
    rgb = np.asarray(im.convert("RGB"))
    return bool((rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 1] != rgb[..., 2]).any())


def load_images(spec: str) -> np.ndarray:
    """float32 [N, C, H, W] in [0, 1] from "digits", a file (IDX, .npz, .npy) or a folder."""
    if spec == "digits":
        from sklearn.datasets import load_digits

        d = load_digits().images.astype(np.float32) / 16.0  # 8x8 grey levels 0..16
        return np.ascontiguousarray(d[:, None])
    path = Path(spec)
    if not path.exists():
        raise DataError(spec, "no such file or folder (use 'digits' for the bundled data)")
    if path.is_dir():
        idx = _idx_files(path)
        if idx:
            parts = [_to_float(parse_idx(p), str(p)) for p in idx]
            shapes = {p.shape[1:] for p in parts}
            if len(shapes) > 1:
                raise DataError(str(path), f"IDX files hold different image shapes {sorted(shapes)}")
            return np.ascontiguousarray(np.concatenate(parts))
        return _to_float(_load_image_folder(path), str(path))
    name = path.name.lower()
    if name.endswith(".npz"):
        arr = _load_npz(path)
    elif name.endswith(".npy"):
        arr = _load_npy(path)
    elif name.endswith(IMAGE_SUFFIXES):
        raise DataError(spec, "a single image; pass the folder that holds the images")
    else:
        arr = parse_idx(path)  # IDX has no fixed suffix (train-images-idx3-ubyte, *.gz, *.idx)
    return np.ascontiguousarray(_to_float(arr, spec))


def fingerprint(images: np.ndarray) -> str:
    """sha256 over shape, dtype and the float32 pixels: identifies the exact data a model saw."""
    a = np.ascontiguousarray(images, dtype=np.float32)
    h = hashlib.sha256()
    h.update(f"{a.shape}|float32|".encode())
    h.update(a.tobytes())
    return h.hexdigest()


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


def training_images(train_config: object) -> np.ndarray:
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
