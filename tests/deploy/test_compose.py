"""deploy/compose.yaml and the Prometheus scrape config it mounts: structure, GPU reservation, the files
it mounts exist, and names and ports agree with the service defaults, the alert rules and Grafana's
provisioning. `promtool check config` runs when Prometheus is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import PurePosixPath
from typing import Any

import pytest
from deploy_helpers import ROOT, load_yaml_docs, parse_dockerfile

from service.settings import Settings

DEPLOY = ROOT / "deploy"
(COMPOSE,) = load_yaml_docs(DEPLOY / "compose.yaml")
(PROM,) = load_yaml_docs(DEPLOY / "prometheus" / "prometheus.yml")
SERVICES: dict[str, Any] = COMPOSE["services"]
DEFAULTS = Settings()


def _seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)(s|m)", text)
    assert m, f"unparsed duration {text!r}"
    return int(m.group(1)) * (60 if m.group(2) == "m" else 1)


def _binds(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """target -> (source, read_only) for the bind mounts of a service (short and long syntax)."""
    out = {}
    for vol in service.get("volumes", []):
        if isinstance(vol, str):
            parts = vol.split(":")
            if parts[0].startswith((".", "/")):
                out[parts[1]] = (parts[0], parts[2:] == ["ro"])
        elif vol["type"] == "bind":
            out[vol["target"]] = (vol["source"], bool(vol.get("read_only")))
    return out


def test_three_services() -> None:
    assert {"vae", "prometheus", "grafana"} <= set(SERVICES)


def test_vae_service_gpu_model_volume_ports() -> None:
    vae = SERVICES["vae"]
    (device,) = vae["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert vae["build"]["context"] == ".." and (DEPLOY / vae["build"]["context"] / "Dockerfile").is_file()
    _, stages = parse_dockerfile(ROOT / "Dockerfile")
    image_env = stages[-1].env()
    assert vae["environment"]["VAE_MODEL_DIR"] == image_env["VAE_MODEL_DIR"] == "/models"
    source, read_only = _binds(vae)["/models"]
    assert read_only and source.startswith("${VAE_MODEL")
    published = {p.split(":")[-1] for p in vae["ports"]}
    assert published == {str(DEFAULTS.port), str(DEFAULTS.metrics_port)}
    grace = float(vae["environment"].get("VAE_GRACE_SECONDS", DEFAULTS.grace_seconds))
    assert _seconds(vae["stop_grace_period"]) > grace
    assert vae["read_only"] is True and "/tmp" in vae["tmpfs"]
    assert vae["user"].split(":")[0] != "0"


def test_mounted_files_exist() -> None:
    for name in ("prometheus", "grafana"):
        for target, (source, read_only) in _binds(SERVICES[name]).items():
            assert (DEPLOY / source).exists(), f"{name}: {source} (-> {target}) missing"
            assert read_only, f"{name}: {target} should be mounted read-only"


def test_prometheus_loads_the_alert_rules() -> None:
    prom = SERVICES["prometheus"]
    binds = _binds(prom)
    config_target = next(a.split("=", 1)[1] for a in prom["command"] if a.startswith("--config.file="))
    assert binds[config_target][0] == "./prometheus/prometheus.yml"
    # rule_files are relative to the config file: they must be mounted beside it.
    for rule in PROM["rule_files"]:
        target = str(PurePosixPath(config_target).parent / rule)
        assert target in binds, f"rule file {rule} is not mounted at {target}"
        assert binds[target][0] == "./prometheus/alerts.yml"


def test_scrape_target_is_the_service_metrics_port() -> None:
    (job,) = [j for j in PROM["scrape_configs"] if j["job_name"] == "vae"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    (target,) = job["static_configs"][0]["targets"]
    assert target == f"vae:{DEFAULTS.metrics_port}"
    # The job label the ServiceMonitor sets too (the alert tests and the dashboard use job="vae").
    sm = load_yaml_docs(DEPLOY / "k8s" / "servicemonitor.yaml")[0]
    assert {"targetLabel": "job", "replacement": job["job_name"]} in sm["spec"]["endpoints"][0]["relabelings"]


def test_grafana_provisioning_matches_the_mounts() -> None:
    graf = SERVICES["grafana"]
    binds = _binds(graf)
    assert binds["/etc/grafana/provisioning"][0] == "./grafana/provisioning"
    provisioning = DEPLOY / "grafana" / "provisioning"
    providers = load_yaml_docs(provisioning / "dashboards" / "vae.yaml")[0]["providers"]
    dash_path = providers[0]["options"]["path"]
    assert binds[dash_path][0] == "./grafana/dashboards"
    assert list((DEPLOY / "grafana" / "dashboards").glob("*.json"))
    home = graf["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (DEPLOY / "grafana" / "dashboards" / home.rsplit("/", 1)[1]).is_file()
    (ds,) = load_yaml_docs(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml")[0][
        "datasources"]
    assert ds["url"] == "http://prometheus:9090"


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not installed (apt-get install prometheus)")
def test_promtool_check_config() -> None:
    proc = subprocess.run(["promtool", "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout
