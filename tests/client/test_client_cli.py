"""`vae client ...` and `vae health` (JSON out, PNG grids, exit codes), the dataset reader, and the
job files' helpers (deterministic .npz, atomic writes, shard verification)."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
from client_helpers import ServerThread, run_vae

from client.cli import client_main, health_main
from client.data import load_dataset
from client.errors import DataError
from client.shards import ShardStore, atomic_write_bytes, npz_bytes, select_shards

pytestmark = pytest.mark.timeout(180)


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_client_info_health_sample(server: ServerThread, tmp_path: Path, capsys) -> None:
    assert client_main(["info", "--target", server.target]) == 0
    info = _json(capsys)
    assert info["input_shape"] == [1, 8, 8] and info["latent_dim"] == 4
    assert info["limits"]["max_sample_n"] > 0 and info["execution_provider"].endswith("ExecutionProvider")
    assert client_main(["health", "--target", server.target]) == 0
    assert _json(capsys)["status"] == "SERVING"
    grid, out = tmp_path / "grid.png", tmp_path / "s.npz"
    assert client_main(["sample", "--target", server.target, "--n", "12", "--seed", "4", "--grid", str(grid),
                        "--out", str(out)]) == 0
    res = _json(capsys)
    assert res["n"] == 12 and res["grid"] == str(grid.resolve())
    from PIL import Image

    with Image.open(grid) as im:
        assert im.mode == "L" and im.size[0] > 8 * 4
    with np.load(out) as z:
        assert z["images"].shape == (12, 1, 8, 8) and z["latents"].shape == (12, 4)
        latents = z["latents"]
    np.save(tmp_path / "z.npy", latents)
    assert client_main(["decode", "--target", server.target, "--z", str(tmp_path / "z.npy"),
                        "--out", str(tmp_path / "d.npz")]) == 0
    assert _json(capsys)["shape"] == [12, 1, 8, 8]
    with np.load(tmp_path / "d.npz") as d, np.load(out) as z:
        assert np.array_equal(d["images"], z["images"])  # decoding the latents gives the samples back
    assert client_main(["decode", "--target", server.target, "--z", "[[0, 0, 0, 0]]"]) == 0
    assert _json(capsys)["n"] == 1


def test_client_encode_prints_numbers(server: ServerThread, capsys) -> None:
    assert client_main(["encode", "--target", server.target, "--data", "digits", "--limit", "3"]) == 0
    res = _json(capsys)
    assert res["n"] == 3 and len(res["mu"]) == 3 and len(res["logvar"][0]) == 4


def test_client_bad_input(server: ServerThread, tmp_path: Path, capsys) -> None:
    assert client_main(["sample", "--target", server.target, "--n", "0"]) == 2
    assert "n must be >= 1" in capsys.readouterr().err
    assert client_main(["decode", "--target", server.target, "--z", "[[1, 2]]"]) == 2
    assert "z must have shape [N, 4]" in capsys.readouterr().err
    assert client_main(["encode", "--target", server.target, "--data", str(tmp_path / "nope")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert client_main(["frobnicate", "--target", server.target]) == 2
    assert client_main(["sample", "--target", server.target, "--n", "2", "--temperature", "0"]) == 2
    assert "temperature" in capsys.readouterr().err
    assert client_main(["sample", "--target", server.target, "--token-file", str(tmp_path / "t")]) == 2
    assert "cannot read --token-file" in capsys.readouterr().err


def test_health_command(server: ServerThread, capsys) -> None:
    assert health_main(["--target", server.target]) == 0
    assert "SERVING" in capsys.readouterr().out
    assert health_main(["--target", server.target, "--service", "vae.v1.VaeService"]) == 0
    assert health_main(["--target", server.target, "--service", "no.such.Service"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    assert health_main(["--target", "nocolon"]) == 2


def test_vae_entry_point_runs_the_client(server: ServerThread) -> None:
    r = run_vae(["client", "sample", "--target", server.target, "--n", "3", "--seed", "1"])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["shape"] == [3, 1, 8, 8]


def _idx(images: np.ndarray) -> bytes:
    head = bytes([0, 0, 0x08, images.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in images.shape)
    return head + images.tobytes()


def test_dataset_formats(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5, 6, 7), dtype=np.uint8)
    (tmp_path / "a-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(imgs)))
    (tmp_path / "raw.idx").write_bytes(_idx(imgs))
    np.save(tmp_path / "a.npy", imgs)
    np.savez(tmp_path / "a.npz", images=imgs, labels=np.arange(5))
    np.save(tmp_path / "f.npy", imgs.astype(np.float32) / 255)
    for spec in ("a-images-idx3-ubyte.gz", "raw.idx", "a.npy", "a.npz"):
        got = load_dataset(str(tmp_path / spec))
        assert got.dtype == np.uint8 and np.array_equal(got, imgs[:, None]), spec
    assert np.allclose(load_dataset(str(tmp_path / "f.npy")), imgs[:, None] / 255, atol=1e-6)
    idx_dir = tmp_path / "idx"
    idx_dir.mkdir()
    (idx_dir / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(imgs[:3])))
    (idx_dir / "t10k-images-idx3-ubyte").write_bytes(_idx(imgs[3:]))
    assert np.array_equal(load_dataset(str(idx_dir)), imgs[:, None])
    from PIL import Image

    png = tmp_path / "png"
    png.mkdir()
    for i, im in enumerate(imgs):
        Image.fromarray(im).convert("RGB").save(png / f"{i:03d}.png")  # grey stored as RGB stays grey
    assert np.array_equal(load_dataset(str(png)), imgs[:, None])
    assert load_dataset("digits").shape == (1797, 1, 8, 8)


@pytest.mark.parametrize("content, match", [
    (b"\x00\x00\x08\x03\x00\x00\x00\x02\x00\x00\x00\x02\x00\x00\x00\x02\x01", "file holds 1"),
    (b"\x1f\x8b\x08garbage", "gzip"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x02\x00\x00", "1 dimensions"),
    (b"hello world", "bad magic"),
    # Forged sizes: 2**64 pixels (wraps to 0 in int64) and a 0 axis beside unaddressable ones.
    (b"\x00\x00\x08\x04" + b"\x00\x01\x00\x00" * 4, "file holds 0"),
    (b"\x00\x00\x08\x03\x00\x00\x00\x00" + b"\xff\xff\xff\xff" * 2, "holds no pixels"),
])
def test_dataset_errors(tmp_path: Path, content: bytes, match: str) -> None:
    (tmp_path / "bad.idx").write_bytes(content)
    with pytest.raises(DataError, match=match):
        load_dataset(str(tmp_path / "bad.idx"))


def test_dataset_value_errors(tmp_path: Path) -> None:
    np.save(tmp_path / "big.npy", np.full((2, 3, 3), 2.0, np.float32))
    with pytest.raises(DataError, match=r"outside \[0, 1\]"):
        load_dataset(str(tmp_path / "big.npy"))
    np.save(tmp_path / "int.npy", np.zeros((2, 3, 3), np.int64))
    with pytest.raises(DataError, match="unsupported dtype"):
        load_dataset(str(tmp_path / "int.npy"))
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 3, 3)), b=np.zeros((2, 3, 3)))
    with pytest.raises(DataError, match="name the images array"):
        load_dataset(str(tmp_path / "two.npz"))


def test_npz_bytes_deterministic_and_loadable(tmp_path: Path) -> None:
    arrays = {"b": np.arange(6, dtype=np.uint64), "a": np.ones((2, 3), np.float32)}
    first = npz_bytes(arrays)
    assert first == npz_bytes(dict(reversed(list(arrays.items()))))
    atomic_write_bytes(tmp_path / "x.npz", first)
    with np.load(tmp_path / "x.npz") as z:
        assert np.array_equal(z["b"], arrays["b"]) and np.array_equal(z["a"], arrays["a"])
    assert [p.name for p in tmp_path.iterdir()] == ["x.npz"]  # no temp file left behind


def test_atomic_write_failure_leaves_old_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def failing_fsync(fd: int) -> None:  # a disk error cannot be produced for real in a test
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["f.bin"]


def test_shard_store_verify(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    rec = store.write(0, {"x": np.arange(3)}, {"count": 3, "seed": 9}, pngs={"a.png": b"png"})
    assert rec["count"] == 3 and store.verify(0, {"count": 3, "seed": 9})
    assert not store.verify(0, {"count": 3, "seed": 10})
    (store.png_dir(0) / "a.png").write_bytes(b"PNG")
    assert not store.verify(0, {"count": 3})
    assert select_shards(10, 3, 1) == [1, 4, 7]
    with pytest.raises(ValueError):
        select_shards(10, 3, 3)
