"""contracts.images: the one reader keeps uint8 as stored and refuses malformed data naming the file."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from contracts.errors import DataError
from contracts.images import array_digest, read_images, to_unit_float


def _idx(a: np.ndarray) -> bytes:
    return struct.pack(">BBBB", 0, 0, 0x08, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def test_formats_agree(tmp_path: Path) -> None:
    u8 = np.random.default_rng(0).integers(0, 256, (4, 5, 6), dtype=np.uint8)
    (tmp_path / "a.idx").write_bytes(gzip.compress(_idx(u8)))
    np.save(tmp_path / "a.npy", u8)
    np.savez(tmp_path / "a.npz", images=u8, labels=np.arange(4))
    np.save(tmp_path / "b.npy", u8.astype(bool))
    for name in ("a.idx", "a.npy", "a.npz"):
        got = read_images(str(tmp_path / name))
        assert got.dtype == np.uint8 and np.array_equal(got, u8[:, None]), name
    assert set(np.unique(read_images(str(tmp_path / "b.npy")))) <= {0, 255}
    f = to_unit_float(read_images(str(tmp_path / "a.npy")))
    assert f.dtype == np.float32 and np.allclose(f, u8[:, None] / 255.0)
    digits = read_images("digits")
    assert digits.shape == (1797, 1, 8, 8) and digits.dtype == np.float32 and digits.max() == 1.0


def test_colour_folder(tmp_path: Path) -> None:
    from PIL import Image

    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(np.full((3, 4), 7, np.uint8)).save(tmp_path / "b.png")
    got = read_images(str(tmp_path))
    assert got.shape == (2, 3, 3, 4) and got[0, 0].max() == 200 and (got[1] == 7).all()


@pytest.mark.parametrize("content, match", [
    (b"hello world", "bad magic"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x02\x00\x00", "1 dimensions.*labels"),
    (b"\x00\x00\x08\x03" + b"\x00\x00\x00\x02" * 3 + b"\x01", "truncated: .* file holds 1"),
    (b"\x00\x00\x08\x03" + b"\x00\x00\x00\x01" * 3 + b"\x01\x02", "1 unexpected trailing bytes"),
    (b"\x00\x00\x08\x04" + b"\x00\x01\x00\x00" * 4, "file holds 0"),  # 2**64 pixels: exact product
    (b"\x00\x00\x08\x03\x00\x00\x00\x00" + b"\xff\xff\xff\xff" * 2, "holds no pixels"),
    (b"\x1f\x8b\x08garbage", "gzip"),
])
def test_idx_errors_name_the_file(tmp_path: Path, content: bytes, match: str) -> None:
    p = tmp_path / "bad.idx"
    p.write_bytes(content)
    with pytest.raises(DataError, match=match) as info:
        read_images(str(p))
    assert info.value.source == str(p) and str(info.value).startswith(f"{p}: ")


def test_value_errors(tmp_path: Path) -> None:
    np.save(tmp_path / "nan.npy", np.array([[[0.5, np.nan]]], np.float32))
    np.save(tmp_path / "int.npy", np.zeros((2, 3, 3), np.int64))
    np.save(tmp_path / "empty.npy", np.zeros((0, 3, 3), np.uint8))
    for name, match in (("nan.npy", "non-finite.*image 0"), ("int.npy", "unsupported dtype int64"),
                        ("empty.npy", "empty image set"), ("nope", "no such file")):
        with pytest.raises(DataError, match=match):
            read_images(str(tmp_path / name))


def test_digest_pins_layout() -> None:
    a = np.arange(6, dtype=np.uint8)
    assert array_digest(a, "h") == array_digest(a.copy(), "h") != array_digest(a, "g")
    assert array_digest(a.reshape(2, 3), "x") == array_digest(a, "x")  # the header is what pins shape
