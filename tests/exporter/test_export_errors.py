"""Bad input: each a precise message and a non-zero exit, never a traceback, never a partial folder."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from exporter.cli import export_main
from exporter.errors import DataMismatchError, OutputExistsError, SourceError, UnsupportedModelError
from exporter.export import export_model
from exporter.manifest import read_manifest


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = export_main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def _edited_checkpoint(src: Path, dst: Path, edit: Any) -> Path:
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    edit(ckpt)
    torch.save(ckpt, dst)
    return dst


@pytest.mark.parametrize("case", ["missing", "empty_run_dir", "truncated", "foreign", "garbage"])
def test_bad_checkpoints(case: str, tiny_checkpoint: Path, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "ckpt.pt"
    expect = {"missing": "no such file", "empty_run_dir": "no best.pt or last.pt",
              "truncated": "truncated", "foreign": "not a vae-checkpoint", "garbage": "ckpt.pt: "}
    if case == "empty_run_dir":
        src = tmp_path / "run"
        src.mkdir()
    elif case == "truncated":
        data = tiny_checkpoint.read_bytes()
        src.write_bytes(data[: len(data) // 2])
    elif case == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(3)}}, src)
    elif case == "garbage":
        src.write_bytes(b"\x00not a checkpoint at all" * 10)
    out = tmp_path / "model"
    with pytest.raises(SourceError, match=expect[case]):
        export_model(src, out)
    code, err = _run_cli([str(src), "--out", str(out)], capsys)
    assert code == 2 and expect[case] in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(("field", "value", "expect"), [
    ("arch", "transformer", "architecture 'transformer'"),
    ("likelihood", "poisson", "likelihood 'poisson'"),
    ("flow_layers", 4, "unknown model config fields"),
])
def test_unknown_architecture(field: str, value: object, expect: str, tiny_checkpoint: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    src = _edited_checkpoint(tiny_checkpoint, tmp_path / "odd.pt",
                             lambda c: c["model_config"].__setitem__(field, value))
    with pytest.raises(UnsupportedModelError, match=expect):
        export_model(src, tmp_path / "model")
    code, err = _run_cli([str(src), "--out", str(tmp_path / "model")], capsys)
    assert code == 2 and "cannot export this model" in err


def test_occupied_output_folder(tiny_model_dir: Path, tiny_run_dir: Path, tiny_conv_run_dir: Path,
                                tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "model"
    shutil.copytree(tiny_model_dir, out)
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(OutputExistsError, match="holds another model"):
        export_model(tiny_conv_run_dir, out)
    code, err = _run_cli([str(tiny_conv_run_dir), "--out", str(out)], capsys)
    assert code == 2 and "--force" in err
    assert (out / "manifest.json").read_bytes() == before  # untouched
    # The same model may be exported again in place; --force replaces another one.
    assert export_model(tiny_run_dir, out)["arch"] == "mlp"
    assert export_model(tiny_conv_run_dir, out, force=True)["arch"] == "conv"
    assert read_manifest(out)["arch"] == "conv"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging or backup left


def test_output_folder_holding_the_source(tiny_checkpoint: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(tiny_checkpoint, run / "best.pt")
    for out in (run, tmp_path):
        with pytest.raises(OutputExistsError, match="holds the source checkpoint"):
            export_model(run, out, force=True)
    assert (run / "best.pt").read_bytes() == tiny_checkpoint.read_bytes()


def test_output_folder_with_foreign_files(tiny_run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "stuff"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="holds no model manifest"):
        export_model(tiny_run_dir, out)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputExistsError, match="not a folder"):
        export_model(tiny_run_dir, tmp_path / "file")
    assert (out / "notes.txt").read_text() == "mine"


def _old_format(c: dict[str, Any]) -> None:
    """A checkpoint as written before the trainer stored the reference block."""
    c.pop("reference")


def test_training_data_mismatch(tiny_checkpoint: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    def edit(c: dict[str, Any]) -> None:
        _old_format(c)
        c["data"]["fingerprint"] = "0" * 64

    src = _edited_checkpoint(tiny_checkpoint, tmp_path / "ck.pt", edit)
    with pytest.raises(DataMismatchError, match="the data changed since training"):
        export_model(src, tmp_path / "model")
    code, err = _run_cli([str(src), "--out", str(tmp_path / "model")], capsys)
    assert code == 2 and "--reference-data" in err and not (tmp_path / "model").exists()
    # An explicit --reference-data overrides, and the manifest records it.
    m = export_model(src, tmp_path / "model", data="digits")
    td = m["training_data"]
    assert td["override"] is True and td["checkpoint_fingerprint"] == "0" * 64
    assert td["fingerprint"] != td["checkpoint_fingerprint"] and td["source"] == "digits"
    assert td["reference_from"] == "data"


def test_training_data_missing(tiny_checkpoint: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    gone = tmp_path / "gone.npz"

    def edit(c: dict[str, Any]) -> None:
        _old_format(c)
        c["train_config"]["data"] = str(gone)

    src = _edited_checkpoint(tiny_checkpoint, tmp_path / "ck.pt", edit)
    expect = (f"checkpoint has no stored reference statistics and its training data {gone} is missing; "
              "pass --reference-data PATH")
    with pytest.raises(DataMismatchError) as info:
        export_model(src, tmp_path / "model")
    assert str(info.value) == expect
    code, err = _run_cli([str(src), "--out", str(tmp_path / "model")], capsys)
    assert code == 2 and err.strip() == f"vae export: {expect}"
    with pytest.raises(DataMismatchError, match="no such file"):
        export_model(src, tmp_path / "model", data=str(tmp_path / "also-gone"))
    assert not (tmp_path / "model").exists()


def test_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        export_main(["somewhere"])  # --out is required
    assert info.value.code == 2
    assert "--out" in capsys.readouterr().err
