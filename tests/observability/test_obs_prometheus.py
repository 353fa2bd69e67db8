"""A real Prometheus server (Debian package `prometheus`) on loopback scrapes the real service, loads the
repository's alert rules, and is queried over its HTTP API for the latent metrics after known traffic.
Skipped where the binary is absent (install: `apt-get install -y prometheus`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from obs_helpers import tensor, wait_for
from prometheus_client import CollectorRegistry
from servers import ServerThread, free_port

from protos.vae.v1 import vae_pb2

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "vae.json"

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="the `prometheus` binary is not installed (apt-get install -y prometheus)")


class Prometheus:
    def __init__(self, base: str) -> None:
        self.base = base

    def get(self, path: str, **params: str) -> dict:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.get("/api/v1/query", query=expr)["result"]

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if len(result) == 1 else None


@pytest.fixture(scope="module")
def stack(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerThread,
                                                                                           Prometheus]]:
    with ServerThread(tiny_model_dir, CollectorRegistry(), metrics=True) as srv:
        tmp = tmp_path_factory.mktemp("prometheus")
        prom_port = free_port()
        config = tmp / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {json.dumps(str(ALERTS))}\n"
            "scrape_configs:\n  - job_name: vae\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{srv.metrics_port}']\n", encoding="utf-8")
        proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=(tmp / "prometheus.log").open("wb"))
        try:
            prom = Prometheus(f"http://127.0.0.1:{prom_port}")
            wait_for(lambda: _ready(prom.base) or proc.poll() is not None, "Prometheus to be ready")
            assert proc.poll() is None, (tmp / "prometheus.log").read_text()
            yield srv, prom
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _encode_all(srv: ServerThread, images: np.ndarray, batch: int = 50) -> None:
    channel, stub = srv.stub()
    with channel:
        for start in range(0, len(images), batch):
            stub.Encode(vae_pb2.EncodeRequest(images=tensor(images[start:start + batch])), timeout=30)


def test_prometheus_scrapes_latent_metrics_and_sees_drift(stack, digits, tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    srv, prom = stack
    manifest = json.loads((tiny_model_dir / "manifest.json").read_text())
    d, ref = manifest["latent_dim"], manifest["reference"]
    wait_for(lambda: prom.scalar('up{job="vae"}') == 1.0, "the service target to be up")
    # The alert rules of the repository loaded and evaluate without error against the live series.
    groups = prom.get("/api/v1/rules")["groups"]
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    assert {"VaePosteriorCollapse", "VaeLatentDrift", "VaeHighErrorRatio", "VaeHighLatencyP99"} <= set(rules)

    training_like = digits[:600]
    _encode_all(srv, training_like)
    channel, stub = srv.stub()
    with channel:
        stub.Sample(vae_pb2.SampleRequest(n=32, seed=1), timeout=30)
    wait_for(lambda: prom.scalar('vae_latent_kl_per_sample_nats_count{job="vae"}') == 600,
             "Prometheus to hold the KL histogram of the 600 encoded images")
    assert prom.scalar('vae_latent_z_norm_count{job="vae", method="Sample"}') == 32
    assert prom.scalar('vae_requests_total{job="vae", method="Encode", code="OK"}') == 12
    assert len(prom.query('vae_latent_mu_mean{job="vae"}')) == d
    assert len(prom.query('vae_latent_posterior_var{job="vae"}')) == d
    assert prom.scalar('vae_latent_reference_active_units{job="vae"}') == ref["active_units"]
    assert prom.scalar('vae_latent_collapse{job="vae"}') == 0
    low = prom.scalar('vae_latent_drift_score{job="vae"}')
    assert low is not None and low < 0.1
    active = prom.scalar('vae_latent_active_units{job="vae"}')
    assert active is not None and active >= 0.5 * ref["active_units"]

    # Every dashboard query is valid PromQL for this Prometheus and, for the latent panels, has data.
    exprs = _dashboard_exprs()
    assert len(exprs) > 20
    for group in prom.get("/api/v1/rules")["groups"]:
        for rule in group["rules"]:
            assert rule["health"] == "ok", rule
    for expr in exprs:
        prom.query(expr)   # raises on a PromQL error (status != success)
    for metric in ("vae_latent_mu_mean", "vae_latent_posterior_var", "vae_latent_drift_score",
                   "vae_latent_active_units", "vae_latent_kl_per_sample_nats_bucket"):
        with_data = [e for e in exprs if metric in e and prom.query(e)]
        assert with_data, f"no dashboard panel on {metric} returned data"

    # Inverted images: the window moves away from the training reference and the drift alert goes
    # pending (it needs 15 minutes to fire, so pending is the most a test can see).
    _encode_all(srv, 1.0 - digits[600:1800])
    drift = 'vae_latent_drift_score{job="vae"}'
    high = wait_for(lambda: (v := prom.scalar(drift)) is not None and v > 0.5 and v,
                    "the drift score to rise above 0.5 for inverted images")
    assert high > 5 * low
    wait_for(lambda: any(a["labels"]["alertname"] == "VaeLatentDrift" and a["state"] == "pending"
                         for a in prom.get("/api/v1/alerts")["alerts"]),
             "the VaeLatentDrift alert to be pending")


def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "30s")
            out.append(expr.replace("$job", ".*").replace("$instance", ".*"))
    return out

