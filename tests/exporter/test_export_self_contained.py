"""A checkpoint exports without its training data: the trainer stored the reference statistics (and
the parity sample) in it. Trained for real on data in a temp folder, which is then deleted."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from exporter.cli import export_main
from exporter.errors import DataMismatchError, SourceError
from exporter.export import export_model
from exporter.validate import verify_model_dir
from trainer.data import load_images

# Same model, same images, two computations (trainer at checkpoint time, exporter at export time):
# float32 encoder outputs accumulated in float64; thread counts may differ between the two processes.
RTOL, ATOL = 1e-6, 1e-9


def _without(m: dict[str, Any], *paths: str) -> dict[str, Any]:
    out = copy.deepcopy(m)
    for path in paths:
        *parents, leaf = path.split(".")
        node = out
        for p in parents:
            node = node[p]
        node.pop(leaf)
    return out


def _assert_reference_close(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            _assert_reference_close(a[k], b[k])
        elif isinstance(a[k], list | float):
            np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), rtol=RTOL, atol=ATOL, err_msg=k)
        else:
            assert a[k] == b[k], k


@pytest.fixture(scope="module")
def npz_run(tmp_path_factory: pytest.TempPathFactory, train_tiny: Callable[..., Path]) -> tuple[Path, Path]:
    """A tiny run trained on an .npz of uint8 images in its own folder: (run folder, data file)."""
    root = tmp_path_factory.mktemp("self-contained")
    data = root / "data" / "images.npz"
    data.parent.mkdir()
    digits = load_images("digits")
    np.savez(data, images=np.rint(digits * 255).astype(np.uint8))
    return train_tiny(root / "run", data=str(data)), data


def test_export_after_the_data_is_deleted(npz_run: tuple[Path, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    run, data = npz_run
    recomputed = export_model(run, tmp_path / "recomputed", data=str(data))  # read from the data
    present = export_model(run, tmp_path / "present")  # stored statistics, data still there
    moved = data.with_name("moved-away.npz")
    data.rename(moved)
    try:
        assert export_main([str(run), "--out", str(tmp_path / "gone")]) == 0
        out = capsys.readouterr().out
        assert "reference (stored in the checkpoint) on 1617 images" in out
        gone = export_model(run, tmp_path / "gone")
        assert verify_model_dir(tmp_path / "gone", run) == []  # parity on the stored sample
        with pytest.raises(DataMismatchError, match="no such file"):
            export_model(run, tmp_path / "x", data=str(data))  # an explicit path must exist
    finally:
        moved.rename(data)
    # With the data present or gone, the exporter writes the same manifest (its clock aside).
    assert _without(present, "model.created_at") == _without(gone, "model.created_at")
    assert gone["training_data"]["reference_from"] == "checkpoint"
    assert gone["training_data"]["source"] == str(data) and gone["training_data"]["override"] is False
    # And the same one as computing the statistics from the data: the trainer's block is exact.
    assert recomputed["training_data"]["reference_from"] == "data"
    skip = ("model.created_at", "training_data.reference_from", "reference")
    assert _without(recomputed, *skip) == _without(gone, *skip)
    _assert_reference_close(recomputed["reference"], gone["reference"])
    assert gone["reference"]["n_images"] == 1617 and gone["verification"]["inputs"] == ["random", "real"]


def test_reference_data_recomputes_on_other_images(npz_run: tuple[Path, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = npz_run
    stored = export_model(run, tmp_path / "stored")
    # The digits in float (k/16) are other images than the uint8 file the run was trained on.
    assert export_main([str(run), "--out", str(tmp_path / "other"), "--reference-data", "digits"]) == 0
    assert "computed on digits, an override" in capsys.readouterr().out
    other = export_model(run, tmp_path / "other")
    td = export_model(run, tmp_path / "other2", data="digits")["training_data"]
    assert td["override"] is True and td["reference_from"] == "data" and td["source"] == "digits"
    assert td["fingerprint"] != td["checkpoint_fingerprint"] == stored["training_data"]["fingerprint"]
    assert other["reference"] == stored["reference"]  # without the flag: the stored statistics again
    ref_other = export_model(run, tmp_path / "other3", data="digits")["reference"]
    assert ref_other["n_images"] == stored["reference"]["n_images"]
    assert not np.allclose(ref_other["mu_mean"], stored["reference"]["mu_mean"], rtol=1e-4, atol=0)


def test_old_checkpoint_falls_back_to_its_data(npz_run: tuple[Path, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    run, data = npz_run
    ck = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    stored = ck.pop("reference")
    old = tmp_path / "old.pt"
    torch.save(ck, old)
    m = export_model(old, tmp_path / "model")
    assert m["training_data"]["reference_from"] == "data" and m["training_data"]["override"] is False
    _assert_reference_close(m["reference"], stored["statistics"])
    moved = data.with_name("moved-away.npz")
    data.rename(moved)
    try:
        code = export_main([str(old), "--out", str(tmp_path / "model2")])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert err.strip() == (f"vae export: checkpoint has no stored reference statistics and its "
                               f"training data {data} is missing; pass --reference-data PATH")
        # Pointing at the moved data works (same images: same fingerprint, no override).
        m2 = export_model(old, tmp_path / "model2", data=str(moved))
        assert m2["training_data"]["override"] is False and m2["reference"] == m["reference"]
        # verify --checkpoint on an old checkpoint without its data still checks parity (random inputs).
        assert verify_model_dir(tmp_path / "model", old) == []
    finally:
        moved.rename(data)


@pytest.mark.parametrize(("edit", "expect"), [
    (lambda b: b.pop("statistics"), "malformed stored reference block (KeyError"),
    (lambda b: b.__setitem__("sample_encoding", "jpeg"), "unknown sample encoding 'jpeg'"),
    (lambda b: b.__setitem__("sample", torch.zeros(4, 1, 5, 5, dtype=torch.uint8)),
     "stored reference sample has shape [4, 1, 5, 5]"),
    (lambda b: b.__setitem__("statistics", [1, 2]), "statistics is not a mapping"),
])
def test_malformed_reference_block(edit: Callable[[dict[str, Any]], Any], expect: str,
                                   npz_run: tuple[Path, Path], tmp_path: Path) -> None:
    run, _ = npz_run
    ck = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    edit(ck["reference"])
    bad = tmp_path / "bad.pt"
    torch.save(ck, bad)
    with pytest.raises(SourceError, match=r"bad\.pt: .*" + re.escape(expect)):
        export_model(bad, tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_data_flag_is_an_alias_of_reference_data() -> None:
    from exporter.cli import build_export_parser

    parse = build_export_parser().parse_args
    assert parse(["run", "--out", "m", "--data", "digits"]).data == "digits"
    assert parse(["run", "--out", "m", "--reference-data", "x.npz"]).data == "x.npz"
    assert parse(["run", "--out", "m"]).data is None
