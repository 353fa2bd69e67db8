"""contracts.files: atomic writes with a normal final mode, no temp file left behind, folder swaps,
and file hashing."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from contracts import files


@pytest.fixture()
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_atomic_writes_get_the_umask_mode(tmp_path: Path, umask_022: None) -> None:
    files.atomic_write_bytes(tmp_path / "a.bin", b"abc")
    files.atomic_write_json(tmp_path / "sub" / "b.json", {"z": 1, "a": [1]}, sort_keys=True)
    files.atomic_write_with(tmp_path / "c.bin", lambda fh: fh.write(b"x"), durable=False)
    assert (tmp_path / "a.bin").read_bytes() == b"abc"
    assert (tmp_path / "sub" / "b.json").read_text() == '{\n  "a": [\n    1\n  ],\n  "z": 1\n}\n'
    assert {_mode(tmp_path / n) for n in ("a.bin", "sub/b.json", "c.bin")} == {0o644}
    os.umask(0o077)
    files.atomic_write_bytes(tmp_path / "private.bin", b"p")
    assert _mode(tmp_path / "private.bin") == 0o600  # the umask decides, not the writer


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "t.bin"
    files.atomic_write_bytes(target, b"old")

    def boom(fh: object) -> None:
        fh.write(b"half")  # type: ignore[attr-defined]
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        files.atomic_write_with(target, boom)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.bin"]


def test_stage_and_replace_dir(tmp_path: Path, umask_022: None) -> None:
    final = tmp_path / "model"
    for content in (b"one", b"two"):
        stage = files.stage_dir(final)
        assert _mode(stage) == 0o755  # mkdtemp alone would give 0700
        files.write_bytes_synced(stage / "f", content)
        files.replace_dir(stage, final)
        assert (final / "f").read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert _mode(final) == 0o755 and _mode(final / "f") == 0o644


def test_sha256(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)  # several read blocks
    (tmp_path / "d").write_bytes(data)
    assert files.sha256_file(tmp_path / "d") == hashlib.sha256(data).hexdigest() == files.sha256_bytes(data)
