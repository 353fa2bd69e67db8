"""`vae client score|interpolate|traverse|edit`: JSON out, PNG grids with one row per path / dimension /
image, .npz numbers, and exit 2 with one line for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from client_helpers import ServerThread, run_vae
from PIL import Image

from client.cli import client_main

pytestmark = pytest.mark.timeout(180)


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def _grid_shape(path: Path) -> tuple[int, int]:
    return Image.open(path).size  # (width, height)


def test_score_cli(server: ServerThread, tmp_path: Path, capsys) -> None:
    t = ["--target", server.target]
    assert client_main(["score", *t, "--data", "digits", "--limit", "5", "--k", "3", "--seed", "1"]) == 0
    res = _json(capsys)
    assert res["n"] == 5 and res["k"] == 3 and len(res["elbo"]) == 5 and len(res["iwae"]) == 5
    out = tmp_path / "s.npz"
    assert client_main(["score", *t, "--data", "digits", "--limit", "5", "--k", "3", "--seed", "1",
                        "--out", str(out)]) == 0
    assert "elbo" not in _json(capsys)
    with np.load(out) as z:
        np.testing.assert_allclose(z["elbo"], res["elbo"], atol=1e-5)


def test_interpolate_traverse_edit_cli(server: ServerThread, tmp_path: Path, capsys) -> None:
    t = ["--target", server.target]
    grid, out = tmp_path / "i.png", tmp_path / "i.npz"
    assert client_main(["interpolate", *t, "--data", "digits", "--a", "0", "--b", "7", "--steps", "6",
                        "--grid", str(grid), "--out", str(out), "--scale", "4"]) == 0
    res = _json(capsys)
    assert res["shape"] == [6, 1, 8, 8] and len(res["latent_norms"]) == 6
    assert _grid_shape(grid) == ((6 * 10 + 2) * 4, (1 * 10 + 2) * 4)  # one row of 6, 2 px padding
    with np.load(out) as z:
        assert z["images"].shape == (6, 1, 8, 8) and z["z"].shape == (6, 4)
    assert client_main(["interpolate", *t, "--a", "[0, 0, 0, 0]", "--b", "[1, 1, 1, 1]", "--steps", "3",
                        "--method", "linear"]) == 0
    assert _json(capsys)["latent_norms"] == [0.0, 1.0, 2.0]
    grid = tmp_path / "t.png"
    assert client_main(["traverse", *t, "--data", "digits", "--base", "3", "--dims", "0,2", "--steps", "5",
                        "--grid", str(grid), "--scale", "1"]) == 0
    assert _json(capsys)["dims"] == [0, 2]
    assert _grid_shape(grid) == (5 * 10 + 2, 2 * 10 + 2)  # 2 rows of 5
    grid = tmp_path / "e.png"
    assert client_main(["edit", *t, "--data", "digits", "--limit", "3", "--with", str(_ones(tmp_path)),
                        "--without", str(_sevens(tmp_path)), "--scales=-1,0,1", "--grid", str(grid),
                        "--scale", "1"]) == 0
    res = _json(capsys)
    assert res["shape"] == [9, 1, 8, 8] and len(res["direction"]) == 4
    assert _grid_shape(grid) == (3 * 10 + 2, 3 * 10 + 2)


def _by_label(tmp: Path, label: int) -> Path:
    from sklearn.datasets import load_digits

    d = load_digits()
    path = tmp / f"digit{label}.npy"
    np.save(path, (d.images[d.target == label][:20, None] / 16.0).astype(np.float32))
    return path


def _ones(tmp: Path) -> Path:
    return _by_label(tmp, 1)


def _sevens(tmp: Path) -> Path:
    return _by_label(tmp, 7)


def test_bad_input_exits_2_with_one_line(server: ServerThread, capsys) -> None:
    t = ["--target", server.target]
    for args, needle in (
        (["interpolate", *t, "--data", "digits", "--a", "0", "--b", "99999"], "out of range"),
        (["interpolate", *t, "--a", "0", "--b", "1"], "needs --data"),
        (["traverse", *t, "--base", "[0, 0]"], "a latent of 2 values"),
        (["edit", *t, "--data", "digits", "--limit", "2"], "--direction"),
        (["score", *t, "--data", "digits", "--limit", "2", "--k", "0"], "k must be >= 1"),
        (["edit", *t, "--data", "digits", "--direction", "1,x"], "comma-separated"),
    ):
        code = client_main(args)
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and needle in lines[0], (args, err)
    proc = run_vae(["client", "traverse", *t, "--base", "[0, 0]"])  # the real command, once
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("vae client traverse: error:")
