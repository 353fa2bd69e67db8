"""Latent metrics fed by the real exported tiny model (onnxruntime) on a fresh CollectorRegistry:
counts, per-dimension values against a direct computation, collapse and drift responses."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from obs_helpers import find, per_dim, value
from prometheus_client import CollectorRegistry

from service.metrics import ServiceMetrics

# Half-life far beyond the test's traffic: the window then holds plain (unweighted) statistics, which is
# what the direct computation below produces. The decay itself is tested in test_obs_latent_stats.py.
FOREVER = 10**12


@pytest.fixture
def make(encoder) -> Iterator:  # type: ignore[no-untyped-def]
    made: list[ServiceMetrics] = []

    def build(window: int = FOREVER, **kw: object) -> tuple[ServiceMetrics, CollectorRegistry]:
        reg = CollectorRegistry()
        m = ServiceMetrics(reg, model_name="tiny", model_version="1", provider="CPUExecutionProvider",
                           latent_dim=encoder.manifest["latent_dim"], reference=encoder.manifest["reference"],
                           window=window, **kw)
        made.append(m)
        return m, reg

    yield build
    for m in made:
        m.close()


def _feed(m: ServiceMetrics, encoder, images: np.ndarray, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    mus, lvs = [], []
    for start in range(0, len(images), batch):
        mu, lv = encoder(images[start:start + batch])
        m.encoded(mu, lv)
        mus.append(mu)
        lvs.append(lv)
    assert m.flush(30)
    return np.concatenate(mus).astype(np.float64), np.concatenate(lvs).astype(np.float64)


def test_kl_count_and_per_dim_values_match_direct_computation(make, encoder, digits) -> None:  # type: ignore[no-untyped-def]
    m, reg = make()
    images = digits[:700]
    mu, lv = _feed(m, encoder, images, batch=48)
    d = encoder.manifest["latent_dim"]
    assert value(reg, "vae_latent_kl_per_sample_nats_count") == len(images)
    kl = 0.5 * (mu**2 + np.exp(lv) - 1.0 - lv)        # Kingma & Welling (2014), Appendix B
    assert value(reg, "vae_latent_kl_per_sample_nats_sum") == pytest.approx(kl.sum(), rel=1e-5)
    np.testing.assert_allclose(per_dim(reg, "vae_latent_mu_mean", d), mu.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(per_dim(reg, "vae_latent_mu_var", d), mu.var(0), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(per_dim(reg, "vae_latent_posterior_var", d), np.exp(lv).mean(0), rtol=1e-5)
    np.testing.assert_allclose(per_dim(reg, "vae_latent_kl_dim_nats", d), kl.mean(0), rtol=1e-5, atol=1e-7)
    assert value(reg, "vae_latent_kl_mean_nats") == pytest.approx(kl.sum(1).mean(), rel=1e-5)
    below_8 = int((kl.sum(1) <= 8.0).sum())
    assert value(reg, "vae_latent_kl_per_sample_nats_bucket", le="8.0") == below_8
    ref = encoder.manifest["reference"]
    assert value(reg, "vae_latent_active_units") == int((mu.var(0) > ref["active_threshold"]).sum())
    # The reference block is exposed as gauges, for dashboards to draw next to the live values.
    np.testing.assert_allclose(per_dim(reg, "vae_latent_reference_mu_var", d), ref["mu_var"])
    assert value(reg, "vae_latent_reference_active_units") == ref["active_units"]
    assert value(reg, "vae_latent_reference_kl_per_sample_nats", stat="p99") == ref["kl_per_sample"]["p99"]


def test_collapse_gauge_responds_to_one_repeated_image(make, encoder, digits) -> None:  # type: ignore[no-untyped-def]
    assert encoder.manifest["reference"]["active_units"] >= 1, "the tiny model must use its latent space"
    healthy, reg_h = make()
    _feed(healthy, encoder, digits[:400])
    collapsed, reg_c = make()
    _feed(collapsed, encoder, np.repeat(digits[5:6], 400, axis=0))
    assert value(reg_h, "vae_latent_collapse") == 0
    assert value(reg_h, "vae_latent_active_units") >= 0.5 * encoder.manifest["reference"]["active_units"]
    assert value(reg_c, "vae_latent_active_units") == 0
    assert value(reg_c, "vae_latent_collapse") == 1


def test_collapse_and_drift_wait_for_a_warm_window(make, encoder, digits) -> None:  # type: ignore[no-untyped-def]
    m, reg = make(min_images=100)
    _feed(m, encoder, np.repeat(digits[:1], 20, axis=0))
    assert find(reg, "vae_latent_collapse") is None
    assert find(reg, "vae_latent_drift_score") is None
    assert value(reg, "vae_latent_window_images") == pytest.approx(20)
    _feed(m, encoder, np.repeat(digits[:1], 100, axis=0))
    assert value(reg, "vae_latent_collapse") == 1


def test_drift_low_for_training_like_inputs_and_high_for_inverted(make, encoder, digits) -> None:  # type: ignore[no-untyped-def]
    like, reg_like = make()
    _feed(like, encoder, digits)
    inverted, reg_inv = make()
    _feed(inverted, encoder, 1.0 - digits)
    low = value(reg_like, "vae_latent_drift_score")
    high = value(reg_inv, "vae_latent_drift_score")
    assert low < 0.05
    assert high > 0.5 and high > 20 * low
    # And live: a short half-life window that saw training-like traffic moves once inverted images arrive.
    live, reg_live = make(window=200)
    _feed(live, encoder, digits[:600])
    before = value(reg_live, "vae_latent_drift_score")
    _feed(live, encoder, 1.0 - digits[600:1400])
    after = value(reg_live, "vae_latent_drift_score")
    assert after > 0.5 and after > 10 * before


def test_z_norm_of_prior_samples_centres_on_sqrt_dim(make, encoder) -> None:  # type: ignore[no-untyped-def]
    m, reg = make()
    d = encoder.manifest["latent_dim"]
    z = np.random.default_rng(0).standard_normal((500, d)).astype(np.float32)
    m.latents("Sample", z)
    assert m.flush()
    assert value(reg, "vae_latent_z_norm_count", method="Sample") == 500
    assert value(reg, "vae_latent_z_norm_sum", method="Sample") == pytest.approx(
        np.linalg.norm(z.astype(np.float64), axis=1).sum(), rel=1e-6)
    # The KL histogram only counts Encode/Reconstruct images.
    assert value(reg, "vae_latent_kl_per_sample_nats_count") == 0
