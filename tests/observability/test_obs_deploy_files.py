"""The Prometheus alert rules and the Grafana files in deploy/: promtool checks and unit-tests the rules;
every metric the dashboard and the rules name is one the service really exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry

from service.metrics import ServiceMetrics

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = Path(__file__).parent / "promtool" / "alerts_test.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "vae.json"

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool is not installed (apt-get install -y prometheus)")


@needs_promtool
def test_promtool_check_rules() -> None:
    out = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 7 rules found" in out.stdout


@needs_promtool
def test_promtool_rule_unit_tests_fire_and_stay_quiet() -> None:
    out = subprocess.run(["promtool", "test", "rules", RULE_TESTS.name], capture_output=True, text=True,
                         timeout=60, cwd=RULE_TESTS.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def _exported_names() -> set[str]:
    """Every sample name a fully used ServiceMetrics exposes (with a reference, after traffic)."""
    d = 3
    reg = CollectorRegistry()
    ref = {"n_images": 10, "mu_mean": [0.0] * d, "mu_var": [1.0] * d, "posterior_var_mean": [0.5] * d,
           "kl_per_dim": [1.0] * d, "active_units": d, "active_threshold": 0.01,
           "kl_per_sample": {"mean": 3.0, "p50": 3.0, "p90": 4.0, "p99": 5.0},
           "elbo_per_sample": {"mean": -30.0, "p01": -40.0, "p05": -37.0, "p50": -30.0, "p95": -25.0,
                               "p99": -22.0}}
    m = ServiceMetrics(reg, model_name="m", model_version="1", provider="CPUExecutionProvider", latent_dim=d,
                       reference=ref, min_images=1)
    m.request_started("Encode")
    m.request_finished("Encode", "OK", 0.01)
    m.queue_wait("encoder", 0.001)
    m.inference("encoder", 0.001, 2)
    m.error("deadline")
    m.nonfinite("output", 1)
    m.encoded(np.random.default_rng(0).normal(size=(8, d)), np.zeros((8, d)))
    m.latents("Sample", np.ones((2, d)))
    m.scored(np.array([-50.0, -30.0]))
    m.close()
    return {s.name for fam in reg.collect() for s in fam.samples}


_METRIC = re.compile(r"\b(vae_[a-z0-9_]+)")


def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dash["templating"]["list"]]
    return exprs


def test_dashboard_and_rules_name_only_exported_metrics() -> None:
    names = _exported_names()
    rules = yaml.safe_load(ALERTS.read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]] + _dashboard_exprs()
    used = {m for e in exprs for m in _METRIC.findall(e)}
    assert used, "no metric found in the dashboard"
    missing = sorted(used - names)
    assert not missing, f"dashboard/rules use metrics the service does not export: {missing}"


def test_dashboard_covers_the_issue_panels() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "vae-service"
    exprs = " ".join(_dashboard_exprs())
    for needle in ("rate(vae_requests_total", "histogram_quantile(0.99, sum by (le, method) "
                   "(rate(vae_request_duration_seconds_bucket", "histogram_quantile(0.5, sum by (le, method)",
                   "vae_batch_size_bucket", "vae_latent_kl_per_sample_nats_bucket", "vae_latent_active_units",
                   "vae_latent_reference_active_units", "vae_latent_collapse", "vae_latent_drift_score",
                   "vae_score_elbo_nats_bucket", "vae_score_below_reference_p01_total",
                   "vae_score_reference_elbo_nats"):
        assert needle in exprs, needle
    heatmaps = {t["expr"] for p in dash["panels"] if p["type"] == "heatmap" for t in p["targets"]}
    assert any("vae_latent_mu_mean" in e for e in heatmaps)
    assert any("vae_latent_posterior_var" in e for e in heatmaps)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "prometheus", p["title"]


def test_grafana_provisioning_points_at_the_mounted_paths() -> None:
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    (ds,) = sources["datasources"]
    assert ds["uid"] == "prometheus" and ds["type"] == "prometheus" and ds["url"].startswith("http://")
    boards = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "vae.yaml").read_text())
    (provider,) = boards["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
