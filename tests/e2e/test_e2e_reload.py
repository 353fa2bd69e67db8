"""Reload under load: 0 failed requests, every reply from a version that was ready when it was served,
the corrupt version refused and reported, RSS back within 10 % once version 1 is released."""

from __future__ import annotations

from pathlib import Path

import pytest
from reload_load import ReloadRun, run_reload


def _check(run: ReloadRun) -> None:
    assert run.failures == [], run.failures[:5]
    assert run.replies, "no request was served"
    versions = {v for _, _, v, _ in run.replies}
    assert versions == {"1", "2"}, versions  # never the corrupt 3
    # Version 2 cannot have answered a request sent before its folder existed; version 1 none sent
    # after it was seen gone (drained and released).
    assert all(sent >= run.t_v2_added for sent, _, v, _ in run.replies if v == "2")
    assert all(sent <= run.t_v1_gone_seen for sent, _, v, _ in run.replies if v == "1")
    assert any(sent > run.t_v1_gone_seen for sent, _, v, _ in run.replies if v == "2")
    final = {v: (state, reason, latest) for v, state, reason, latest in run.final}
    assert final["2"][0] == "ready" and final["2"][2]
    assert final["3"][0] == "failed" and "sha256" in final["3"][1]
    assert "1" not in final
    assert run.rss_after_unload <= 1.10 * run.rss_one_version, (run.rss_one_version, run.rss_after_unload)


def test_reload_under_load(tiny_model_dir: Path, tiny_conv_model_dir: Path, tmp_path: Path) -> None:
    _check(run_reload(tiny_model_dir, tiny_conv_model_dir, clients=16, seconds=6.0, work=tmp_path))


@pytest.mark.slow
def test_reload_under_load_full_size(tiny_model_dir: Path, tiny_conv_model_dir: Path, tmp_path: Path) -> None:
    _check(run_reload(tiny_model_dir, tiny_conv_model_dir, clients=64, seconds=20.0, work=tmp_path))
