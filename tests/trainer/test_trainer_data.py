"""Loaders: every format, and every kind of malformed input with its precise error (exit 2 in the CLI)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from trainer.data import fingerprint, load_images, split_indices, training_images
from trainer.errors import DataError


def _idx_bytes(arr: np.ndarray) -> bytes:
    return (
        struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    )


@pytest.fixture()
def u8() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(5, 6, 7), dtype=np.uint8)


def test_digits_is_bundled_and_scaled() -> None:
    x = load_images("digits")
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float32
    assert x.min() == 0.0 and x.max() == 1.0


@pytest.mark.parametrize("gz", [False, True])
def test_idx_file_raw_and_gzip(tmp_path: Path, u8: np.ndarray, gz: bool) -> None:
    p = tmp_path / ("x-images-idx3-ubyte" + (".gz" if gz else ""))
    data = _idx_bytes(u8)
    p.write_bytes(gzip.compress(data) if gz else data)
    x = load_images(str(p))
    assert x.shape == (5, 1, 6, 7)
    np.testing.assert_allclose(x[:, 0], u8 / 255.0, rtol=0, atol=1e-7)


def test_idx_folder_official_names_train_then_t10k(tmp_path: Path, u8: np.ndarray) -> None:
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(u8[:2])))
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_bytes(u8[2:]))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(
        b"\x00\x00\x08\x01" + struct.pack(">I", 3) + b"\x01\x02\x03"
    )
    x = load_images(str(tmp_path))
    assert x.shape == (5, 1, 6, 7)
    np.testing.assert_allclose(x[:3, 0], u8[2:] / 255.0, atol=1e-7)  # train- first
    np.testing.assert_allclose(x[3:, 0], u8[:2] / 255.0, atol=1e-7)


def test_npz_npy_uint8_and_float(tmp_path: Path, u8: np.ndarray) -> None:
    np.savez(tmp_path / "a.npz", images=u8)
    np.save(tmp_path / "b.npy", (u8 / 255.0).astype(np.float32)[:, None])
    a, b = load_images(str(tmp_path / "a.npz")), load_images(str(tmp_path / "b.npy"))
    assert a.shape == b.shape == (5, 1, 6, 7)
    np.testing.assert_allclose(a, b, atol=1e-7)


def test_png_folder_grey_and_colour(tmp_path: Path, u8: np.ndarray) -> None:
    from PIL import Image

    grey, colour = tmp_path / "grey", tmp_path / "colour"
    grey.mkdir()
    colour.mkdir()
    for i, im in enumerate(u8):
        Image.fromarray(im).save(grey / f"{i:02d}.png")
        rgb = np.stack([im, 255 - im, im // 2], axis=-1)
        Image.fromarray(rgb).save(colour / f"{i:02d}.png")
    g = load_images(str(grey))
    assert g.shape == (5, 1, 6, 7)
    np.testing.assert_allclose(g[:, 0], u8 / 255.0, atol=1e-7)
    c = load_images(str(colour))
    assert c.shape == (5, 3, 6, 7)
    np.testing.assert_allclose(c[:, 1], (255 - u8) / 255.0, atol=1e-7)


def _err(spec: str) -> str:
    with pytest.raises(DataError) as info:
        load_images(spec)
    return str(info.value)


def test_bad_magic(tmp_path: Path, u8: np.ndarray) -> None:
    p = tmp_path / "bad-images-idx3-ubyte"
    p.write_bytes(b"\x12\x34" + _idx_bytes(u8)[2:])
    msg = _err(str(p))
    assert str(p) in msg and "magic" in msg


def test_labels_file_is_not_images(tmp_path: Path) -> None:
    p = tmp_path / "labels-idx1-ubyte"
    p.write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 3) + b"\x01\x02\x03")
    assert "labels" in _err(str(p))


@pytest.mark.parametrize("gz", [False, True])
def test_truncated(tmp_path: Path, u8: np.ndarray, gz: bool) -> None:
    data = _idx_bytes(u8)
    p = tmp_path / "t-images-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(data)[:-20] if gz else data[:-10])
    msg = _err(str(p))
    assert str(p) in msg and "truncated" in msg


@pytest.mark.parametrize("shape", [(2**16, 2**16, 2**16, 2**16), (0, 2**32 - 1, 2**32 - 1)])
def test_forged_idx_header(tmp_path: Path, shape: tuple[int, ...]) -> None:
    # Sizes whose product wraps to 0 in int64, or a 0 axis beside axes too large to address: both
    # once passed the byte-count check and crashed in numpy's reshape.
    p = tmp_path / "f-images-idx3-ubyte"
    p.write_bytes(struct.pack(">BBBB", 0, 0, 0x08, len(shape)) + struct.pack(f">{len(shape)}I", *shape))
    msg = _err(str(p))
    assert str(p) in msg and ("no pixels" in msg or "truncated" in msg)


def test_empty_set(tmp_path: Path) -> None:
    p = tmp_path / "e.npy"
    np.save(p, np.zeros((0, 4, 4), dtype=np.uint8))
    assert "empty" in _err(str(p))
    empty = tmp_path / "folder"
    empty.mkdir()
    assert "no IDX" in _err(str(empty))


def test_mixed_shapes_in_folder(tmp_path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((5, 4), np.uint8)).save(tmp_path / "b.png")
    msg = _err(str(tmp_path))
    assert "b.png" in msg and "differs" in msg


def test_nan_and_range(tmp_path: Path) -> None:
    a = np.full((3, 4, 4), 0.5, np.float32)
    a[1, 2, 2] = np.nan
    np.save(tmp_path / "nan.npy", a)
    msg = _err(str(tmp_path / "nan.npy"))
    assert "nan.npy" in msg and "non-finite" in msg and "image 1" in msg
    np.save(tmp_path / "range.npy", np.full((3, 4, 4), 2.0, np.float32))
    assert "outside [0, 1]" in _err(str(tmp_path / "range.npy"))


def test_missing_and_garbage(tmp_path: Path) -> None:
    assert "no such file" in _err(str(tmp_path / "nope.npz"))
    (tmp_path / "g.npz").write_bytes(b"not a zip")
    assert "g.npz" in _err(str(tmp_path / "g.npz"))
    (tmp_path / "x.png").write_bytes(b"junk")
    sub = tmp_path / "imgs"
    sub.mkdir()
    (sub / "x.png").write_bytes(b"junk")
    assert "x.png" in _err(str(sub))


def test_split_deterministic_and_tail() -> None:
    a = split_indices(100, 0.1, seed=3)
    b = split_indices(100, 0.1, seed=3)
    c = split_indices(100, 0.1, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[1], c[1])
    assert len(a[1]) == 10 and len(np.intersect1d(*a)) == 0
    tr, va = split_indices(4443, 0.1, seed=0, rule="tail")
    assert tr[-1] == 3998 and va[0] == 3999 and len(va) == 444


def test_fingerprint_and_training_images() -> None:
    from trainer.config import TrainConfig

    x = load_images("digits")
    assert fingerprint(x) == fingerprint(x.copy()) != fingerprint(x[:-1])
    t = training_images(TrainConfig(data="digits", val_fraction=0.1, seed=0))
    assert len(t) == 1797 - 180


def test_cli_bad_data_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trainer.cli import train_main

    p = tmp_path / "bad-images-idx3-ubyte"
    p.write_bytes(b"\x00\x00\x08\x03\x00")
    assert train_main(["--data", str(p), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert str(p) in err and "Traceback" not in err and err.count("\n") == 1
