"""Soak (slow suite): a bounded 10-minute run of a real `vae serve` process under 32 closed-loop clients;
0 errors, exit 0 on SIGTERM, resident memory growth after warm-up < 5 % (reported)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.soak import soak


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_soak_ten_minutes(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = soak(tiny_model_dir, seconds=600.0, clients=32)
    print("\nsoak: " + json.dumps(out, sort_keys=True))
    (tmp_path / "soak.json").write_text(json.dumps(out, indent=2))
    assert out["errors"] == 0 and out["requests"] > 0, out
    assert out["server_exit"] == 0, out
    assert out["rss_growth_after_warmup_pct"] < 5.0, out
