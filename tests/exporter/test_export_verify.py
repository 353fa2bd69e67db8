"""Fail closed: a graph that does not reproduce the model is caught at export (nothing written) and by
`vae verify` afterwards (hashes, and parity with the checkpoint)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import exporter.export as export_mod
from exporter.cli import export_main, verify_main
from exporter.errors import VerificationError
from exporter.export import export_model
from exporter.manifest import sha256_file
from exporter.validate import verify_model_dir


def _alter_weights(path: Path, delta: float = 0.05) -> None:
    """Shift the largest float initializer of a graph, as a corrupted or tampered file would be."""
    proto = onnx.load(str(path))
    init = max((t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT),
               key=lambda t: int(np.prod(t.dims)))
    arr = numpy_helper.to_array(init).copy() + np.float32(delta)
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(proto, str(path))


def _rehash(model_dir: Path, graph: str) -> None:
    """Make the manifest agree with the altered file, so that only parity can tell."""
    m = json.loads((model_dir / "manifest.json").read_text())
    path = model_dir / m["graphs"][graph]["file"]
    m["graphs"][graph].update(sha256=sha256_file(path), size_bytes=path.stat().st_size)
    (model_dir / "manifest.json").write_text(json.dumps(m))


@pytest.fixture()
def model_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(tiny_model_dir, dst)
    return dst


def test_verify_ok(tiny_model_dir: Path, tiny_run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert verify_main([str(tiny_model_dir), "--checkpoint", str(tiny_run_dir)]) == 0
    assert "OK" in capsys.readouterr().out


def test_altered_weights_fail_the_hash_check(model_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _alter_weights(model_copy / "encoder.onnx")
    problems = verify_model_dir(model_copy)
    assert any("encoder" in p and "sha256" in p for p in problems), problems
    assert verify_main([str(model_copy)]) == 1
    assert "sha256" in capsys.readouterr().err


def test_altered_weights_with_matching_hash_fail_parity(model_copy: Path, tiny_run_dir: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    _alter_weights(model_copy / "decoder.onnx")
    _rehash(model_copy, "decoder")
    assert verify_model_dir(model_copy) == []  # structurally fine: only parity can catch it
    problems = verify_model_dir(model_copy, tiny_run_dir)
    assert problems and all(p.startswith("parity: decoder.x_mean") for p in problems), problems
    # Every batch and input kind is reported, not only the first failure.
    assert {p.split("batch=")[1].split(" ")[0] for p in problems} == {"1", "7", "256"}
    assert verify_main([str(model_copy), "--checkpoint", str(tiny_run_dir)]) == 1
    err = capsys.readouterr().err
    assert "decoder.x_mean" in err and "Traceback" not in err


def test_verify_other_problems(model_copy: Path, tiny_conv_run_dir: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    # A checkpoint of another model.
    problems = verify_model_dir(model_copy, tiny_conv_run_dir)
    assert any("is not the one this model was exported from" in p for p in problems), problems
    # A graph file that is gone; a folder that is not a model; a missing folder.
    (model_copy / "decoder.onnx").unlink()
    assert any("decoder.onnx is missing" in p for p in verify_model_dir(model_copy))
    assert verify_model_dir(tmp_path) == [f"{tmp_path}: no manifest.json (not an exported model folder)"]
    assert verify_main([str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_export_fails_closed_on_mismatch(tiny_run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    real_export_graph = export_mod.export_graph

    def export_then_corrupt(module, example, path, **kw):  # type: ignore[no-untyped-def]
        real_export_graph(module, example, path, **kw)
        if path.name == "decoder.onnx":
            _alter_weights(path)

    monkeypatch.setattr(export_mod, "export_graph", export_then_corrupt)
    out = tmp_path / "model"
    with pytest.raises(VerificationError) as info:
        export_model(tiny_run_dir, out)
    found = {(m.graph, m.output, m.batch, m.inputs) for m in info.value.mismatches}
    assert found == {("decoder", "x_mean", b, k) for b in (1, 7, 256) for k in ("random", "real")}
    assert all(m.max_abs_diff > 1e-4 for m in info.value.mismatches)
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing written, no staging left
    assert export_main([str(tiny_run_dir), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "verification failed" in err and "decoder.x_mean batch=7" in err and "Traceback" not in err
    assert not out.exists()
