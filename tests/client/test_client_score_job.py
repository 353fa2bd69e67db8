"""`vae score`: a sharded, resumable job writing a CSV of per-image scores, a summary against the
training reference and a histogram PNG; deterministic for a seed; bad input exits 2."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from client_helpers import ServerThread, run_vae
from PIL import Image

from client.score_cli import score_main

pytestmark = pytest.mark.timeout(180)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_score_job_resumes_and_matches_score(server: ServerThread, tmp_path: Path, capsys) -> None:
    from client import VaeClient
    from client.data import load_dataset

    data = tmp_path / "x.npy"
    x = load_dataset("digits")[:50]
    np.save(data, np.concatenate([x, np.random.default_rng(0).random((10, 1, 8, 8), dtype=np.float32)]))
    out = tmp_path / "scores.csv"
    args = ["--target", server.target, "--data", str(data), "--out", str(out), "--chunk-size", "16",
            "--k", "3", "--seed", "5", "--no-progress"]
    # Only this process's half first (2 processes): no CSV yet, the job is not complete.
    assert score_main([*args, "--num-shards", "2", "--shard-index", "0"]) == 0
    assert not out.exists()
    capsys.readouterr()
    assert score_main([*args, "--num-shards", "2", "--shard-index", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = _rows(out)
    assert [int(r["index"]) for r in rows] == list(range(60)) and set(rows[0]) == {
        "index", "elbo", "log_px", "kl", "iwae"}
    elbo = np.array([float(r["elbo"]) for r in rows])
    # The first chunk's seed is the job seed: the same numbers as one Score call with it.
    with VaeClient(server.target) as c:
        np.testing.assert_allclose(elbo[:16], c.score(x[:16], k=3, seed=5).elbo, rtol=0, atol=1e-6)
        info = c.info()
    assert summary["n"] == 60 and summary["reference"]["p01"] == pytest.approx(info.elbo_reference.p01)
    # The 10 noise images sit below the training split's 1st percentile.
    assert summary["fraction_below_reference_p01"] >= 10 / 60
    # The job is pinned to the version of its first reply, as `vae encode` is (a resume stays on it).
    from client.score_job import parts_dir
    params = json.loads((parts_dir(out) / "job.json").read_text())["params"]
    assert (params["model"], params["version"]) == (info.model, info.version) and info.version
    png = Image.open(summary["histogram"])
    assert png.size == (720, 360)
    # A rerun skips every verified chunk and rewrites identical bytes.
    before = out.read_bytes()
    assert score_main(args) == 0
    assert out.read_bytes() == before


def test_score_job_bad_input(server: ServerThread, tmp_path: Path) -> None:
    t = ["--target", server.target, "--data", "digits"]
    for extra, needle in ((["--out", str(tmp_path / "s.txt")], "--out must name a .csv"),
                          (["--out", str(tmp_path / "s.csv"), "--k", "0"], "--k must be >= 1")):
        proc = run_vae(["score", *t, *extra])
        assert proc.returncode == 2 and needle in proc.stderr.strip().splitlines()[-1], proc.stderr
        assert "Traceback" not in proc.stderr
