"""perf_analyzer (Triton's load generator) against a real `vae serve`, from the Debian trixie root that
`scripts/perf_analyzer.sh prepare` makes (its wheels need glibc >= 2.38; this Debian has 2.36).
Slow suite only: it measures for seconds and needs root for chroot."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from servers import ServeProcess

ROOT = Path(__file__).resolve().parents[2]
BINARY = ROOT / ".perf-analyzer" / "root" / "pa" / "perf_analyzer" / "bin" / "perf_analyzer"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not BINARY.exists() or os.geteuid() != 0,
                       reason="needs root and `scripts/perf_analyzer.sh prepare` (perf_analyzer in a "
                              "trixie root under .perf-analyzer/)"),
]


@pytest.mark.parametrize("graph", ["encoder", "decoder"])
def test_perf_analyzer_measures_both_graphs(model_dir, graph, tmp_path):
    with ServeProcess(Path(model_dir), tmp_path / "vae-serve.log", "--grace-seconds", "2") as srv:
        port = srv.port
        name = json.loads((Path(model_dir) / "manifest.json").read_text())["model"]["name"]
        run = subprocess.run(
            ["bash", str(ROOT / "scripts" / "perf_analyzer.sh"), "run", f"127.0.0.1:{port}",
             f"{name}-{graph}", "-b", "4", "--concurrency-range", "2", "--measurement-interval", "3000",
             "--stability-percentage", "50"], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout + run.stderr
        assert re.search(r"Concurrency: 2, throughput: [\d.]+ infer/sec", run.stdout), run.stdout
        assert "error" not in run.stdout.lower(), run.stdout
