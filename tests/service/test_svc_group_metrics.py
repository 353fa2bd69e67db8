"""The group's one scrape: per-process relabelling and the pooled latent window (`process="all"`).

Two real ServiceMetrics (real registries, the real latent worker) stand for two server processes; the
pooled gauges are checked against the window computed directly from every image and its decay weight."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from service.group_latent import add_pooled
from service.group_metrics import relabel
from service.latent_stats import gaussian_kl_diag
from service.metrics import ServiceMetrics

HALF_LIFE = 50


def _metrics(manifest: dict) -> ServiceMetrics:
    return ServiceMetrics(CollectorRegistry(), model_name="m", model_version="1", provider="cpu",
                          latent_dim=manifest["latent_dim"], reference=manifest["reference"],
                          window=HALF_LIFE, interval=0.01)


def _weights(n: int) -> np.ndarray:
    # LatentWindow's decay: image i of n (oldest first) weighs 2^(-(n-1-i)/h), one batch or many alike.
    return 2.0 ** (-(n - 1 - np.arange(n)) / HALF_LIFE)


def _series(families: dict[str, Metric], name: str, process: str) -> np.ndarray:
    rows = sorted((int(s.labels.get("dim", 0)), s.value) for s in families[name].samples
                  if s.labels["process"] == process)
    return np.array([v for _, v in rows])


@pytest.fixture()
def manifest(model_dir: Path) -> dict:
    return dict(json.loads((model_dir / "manifest.json").read_text()))


def test_pooled_window_equals_the_window_of_every_image_with_its_own_weight(manifest: dict) -> None:
    d = manifest["latent_dim"]
    rng = np.random.default_rng(0)
    # Process 1 sees shifted inputs: the pooled variance must include the spread between the means.
    data = {"0": rng.normal(0.0, 1.0, (300, d)).astype(np.float32),
            "1": rng.normal(2.0, 0.5, (120, d)).astype(np.float32)}
    logvar = {p: np.full_like(mu, -1.0) for p, mu in data.items()}
    families: dict[str, Metric] = {}
    for process, mu in data.items():
        m = _metrics(manifest)
        try:
            for chunk in range(0, len(mu), 40):
                m.encoded(mu[chunk:chunk + 40], logvar[process][chunk:chunk + 40])
            assert m.flush()
            relabel(generate_latest(m.registry).decode(), process, families)
        finally:
            m.close()
    add_pooled(families)

    w = np.concatenate([_weights(len(data["0"])), _weights(len(data["1"]))])
    mu_all = np.concatenate([data["0"], data["1"]]).astype(np.float64)
    mean = (w[:, None] * mu_all).sum(0) / w.sum()
    var = (w[:, None] * (mu_all - mean) ** 2).sum(0) / w.sum()
    assert _series(families, "vae_latent_window_images", "all")[0] == pytest.approx(w.sum(), rel=1e-9)
    np.testing.assert_allclose(_series(families, "vae_latent_mu_mean", "all"), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_series(families, "vae_latent_mu_var", "all"), var, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_series(families, "vae_latent_posterior_var", "all"), np.exp(-1.0), rtol=1e-5)
    ref = manifest["reference"]
    threshold = ref["active_threshold"]
    assert _series(families, "vae_latent_active_units", "all")[0] == int((var > threshold).sum())
    drift = gaussian_kl_diag(mean, np.maximum(var, threshold), np.array(ref["mu_mean"]),
                             np.maximum(np.array(ref["mu_var"]), threshold))
    assert _series(families, "vae_latent_drift_score", "all")[0] == pytest.approx(
        drift.sum() / max(1, ref["active_units"]), rel=1e-4)
    collapse = float(int((var > threshold).sum()) < 0.5 * ref["active_units"])
    assert _series(families, "vae_latent_collapse", "all")[0] == collapse
    # The per-process series are still there, each its own process's window.
    own = _series(families, "vae_latent_window_images", "1")[0]
    assert own == pytest.approx(_weights(120).sum(), rel=1e-9)


def test_relabel_merges_families_and_keeps_counters_exact(manifest: dict) -> None:
    families: dict[str, Metric] = {}
    for process, n in (("0", 3), ("1", 5)):
        m = ServiceMetrics(CollectorRegistry(), model_name="m", model_version="1", provider="cpu",
                           latent_dim=manifest["latent_dim"], reference=None, latent_stats=False)
        for _ in range(n):
            m.request_started("Decode")
            m.request_finished("Decode", "OK", 0.001)
        relabel(generate_latest(m.registry).decode(), process, families)
        m.close()
    registry = CollectorRegistry()

    class Fixed:
        def collect(self) -> list[Metric]:
            return list(families.values())

    registry.register(Fixed())  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    assert text.count("# TYPE vae_requests_total counter") == 1
    assert 'vae_requests_total{code="OK",method="Decode",model="m",process="0",version="1"} 3.0' in text
    assert 'vae_requests_total{code="OK",method="Decode",model="m",process="1",version="1"} 5.0' in text
    # Too few images for a verdict: no pooled collapse/drift, as a single window would say nothing yet.
    add_pooled(families)
    assert "vae_latent_collapse" not in families
