"""Reload under load: 0 failed requests, every reply from a version that was ready when it was served,
the corrupt version refused and reported, RSS back within 10 % once version 1 is released."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from reload_load import ReloadRun, check, run_reload, summary


def _check(run: ReloadRun) -> None:
    print(json.dumps(summary(run)))  # the figures of the run (shown with -s)
    problems = check(run)
    assert problems == [], problems


def test_reload_under_load(tiny_model_dir: Path, tiny_conv_model_dir: Path, tmp_path: Path) -> None:
    _check(run_reload(tiny_model_dir, tiny_conv_model_dir, clients=16, seconds=6.0, work=tmp_path))


@pytest.mark.slow
def test_reload_under_load_full_size(tiny_model_dir: Path, tiny_conv_model_dir: Path, tmp_path: Path) -> None:
    _check(run_reload(tiny_model_dir, tiny_conv_model_dir, clients=64, seconds=20.0, work=tmp_path))
