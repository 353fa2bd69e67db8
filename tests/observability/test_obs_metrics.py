"""ServiceMetrics on a fresh CollectorRegistry: request metrics, the bounded worker, the HTTP endpoint."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
from obs_helpers import find, value
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from service.errors import ModelError
from service.metrics import ServiceMetrics, start_metrics_server

D = 4


def _metrics(registry: CollectorRegistry, **kw: object) -> ServiceMetrics:
    args: dict = {"model_name": "tiny", "model_version": "7", "provider": "CPUExecutionProvider",
                  "latent_dim": D, "reference": None}
    args.update(kw)
    return ServiceMetrics(registry, **args)


@pytest.fixture
def reg() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(reg: CollectorRegistry) -> Iterator[ServiceMetrics]:
    m = _metrics(reg)
    yield m
    m.close()


def test_request_metrics(reg: CollectorRegistry, metrics: ServiceMetrics) -> None:
    metrics.request_started("Encode")
    metrics.request_started("Encode")
    assert value(reg, "vae_requests_in_flight", method="Encode") == 2
    metrics.request_finished("Encode", "OK", 0.003)
    metrics.request_finished("Encode", "INVALID_ARGUMENT", 0.0002)
    assert value(reg, "vae_requests_in_flight", method="Encode") == 0
    assert value(reg, "vae_requests_total", method="Encode", code="OK") == 1
    assert value(reg, "vae_requests_total", method="Encode", code="INVALID_ARGUMENT") == 1
    assert value(reg, "vae_request_duration_seconds_count", method="Encode") == 2
    assert value(reg, "vae_request_duration_seconds_bucket", method="Encode", le="0.0005") == 1
    assert value(reg, "vae_request_duration_seconds_sum", method="Encode") == pytest.approx(0.0032)
    metrics.queue_wait("encoder", 0.0004)
    metrics.inference("encoder", 0.002, 48)
    metrics.inference("encoder", 0.001, 1)
    assert value(reg, "vae_queue_wait_seconds_count", graph="encoder") == 1
    assert value(reg, "vae_inference_duration_seconds_count", graph="encoder") == 2
    assert value(reg, "vae_batch_size_bucket", graph="encoder", le="1.0") == 1
    assert value(reg, "vae_batch_size_bucket", graph="encoder", le="64.0") == 2
    assert value(reg, "vae_batch_size_sum", graph="encoder") == 49
    metrics.error("queue_full")
    metrics.nonfinite("input", 3)
    metrics.nonfinite("output", 0)
    assert value(reg, "vae_errors_total", reason="queue_full") == 1
    assert value(reg, "vae_nonfinite_values_total", where="input") == 3
    assert find(reg, "vae_nonfinite_values_total", where="output") is None
    assert value(reg, "vae_model_info", name="tiny", version="7", provider="CPUExecutionProvider",
                 latent_dim="4") == 1


def test_latent_histograms_count_every_image_and_skip_nonfinite(reg: CollectorRegistry,
                                                                metrics: ServiceMetrics) -> None:
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(10, D)).astype(np.float32)
    lv = np.zeros((10, D), np.float32)
    mu[3, 1] = np.nan
    metrics.encoded(mu, lv)
    metrics.encoded(mu[:2], lv[:2])
    metrics.latents("Sample", rng.normal(size=(5, D)))
    metrics.latents("Decode", np.zeros((3, D)))
    metrics.encoded(np.zeros((2, D + 1)), np.zeros((2, D + 1)))   # wrong width: counted, not folded
    assert metrics.flush()
    assert value(reg, "vae_latent_kl_per_sample_nats_count") == 11
    assert value(reg, "vae_latent_images_total") == 11
    assert value(reg, "vae_latent_images_dropped_total", reason="nonfinite") == 1
    assert value(reg, "vae_latent_images_dropped_total", reason="shape") == 2
    assert value(reg, "vae_latent_z_norm_count", method="Sample") == 5
    assert value(reg, "vae_latent_z_norm_count", method="Decode") == 3
    assert value(reg, "vae_latent_z_norm_bucket", method="Decode", le="0.5") == 3   # |0| <= 0.25*sqrt(4)


def test_full_queue_drops_and_counts_without_blocking(reg: CollectorRegistry) -> None:
    one_batch = 2 * 4 * D * 4   # mu + logvar, 4 rows, float32
    m = _metrics(reg, max_pending_bytes=2 * one_batch, interval=0.001)
    try:
        state = m._state
        assert state is not None
        one = (np.zeros((4, D), np.float32), np.zeros((4, D), np.float32))
        # Hold the state lock so the worker stalls inside its first batch. If encoded() waited for the
        # worker it would deadlock here and pytest-timeout would fail the test.
        with state.lock:
            m.encoded(*one)
            deadline = time.monotonic() + 10
            while len(m._pending) > 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            m.encoded(*one)                  # the second batch fills the byte budget
            for _ in range(5):
                m.encoded(*one)              # dropped at once
        assert m.flush()
        assert value(reg, "vae_latent_images_dropped_total", reason="queue_full") == 20
        assert value(reg, "vae_latent_kl_per_sample_nats_count") == 8
    finally:
        m.close()


def test_close_stops_the_worker_and_flushes(reg: CollectorRegistry) -> None:
    m = _metrics(reg)
    for _ in range(50):
        m.encoded(np.ones((8, D), np.float32), np.zeros((8, D), np.float32))
    m.close()
    assert m._worker is not None and not m._worker.is_alive()
    assert value(reg, "vae_latent_kl_per_sample_nats_count") == 400
    m.encoded(np.ones((8, D), np.float32), np.zeros((8, D), np.float32))   # after close: ignored
    m.close()
    assert value(reg, "vae_latent_kl_per_sample_nats_count") == 400


def test_latent_stats_off_registers_no_latent_families(reg: CollectorRegistry) -> None:
    m = _metrics(reg, latent_stats=False)
    m.encoded(np.ones((8, D), np.float32), np.zeros((8, D), np.float32))
    m.latents("Sample", np.ones((8, D), np.float32))
    assert m.flush()
    m.close()
    names = {s.name for fam in reg.collect() for s in fam.samples}
    assert not any(n.startswith("vae_latent_") and not n.startswith("vae_latent_images_dropped")
                   for n in names)
    assert m._worker is None


def test_bad_reference_is_a_precise_error(reg: CollectorRegistry) -> None:
    expected = r"manifest.json: reference: mu_mean has shape \[2\], expected \[4\]"
    with pytest.raises(ModelError, match=expected):
        _metrics(reg, reference={"mu_mean": [0, 0], "mu_var": [1] * 4, "posterior_var_mean": [1] * 4,
                                 "kl_per_dim": [1] * 4})


def test_metrics_http_endpoint_serves_the_registry(reg: CollectorRegistry, metrics: ServiceMetrics) -> None:
    metrics.request_started("Sample")
    metrics.request_finished("Sample", "OK", 0.01)
    metrics.encoded(np.ones((3, D), np.float32), np.zeros((3, D), np.float32))
    assert metrics.flush()
    server, port = start_metrics_server("127.0.0.1", 0, reg)
    try:
        assert port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            assert resp.status == 200
            text = resp.read().decode()
    finally:
        server.close()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert fams["vae_latent_kl_per_sample_nats"].type == "histogram"
    count = [s.value for s in fams["vae_latent_kl_per_sample_nats"].samples if s.name.endswith("_count")]
    assert count == [3.0]
    mu_mean = {s.labels["dim"]: s.value for s in fams["vae_latent_mu_mean"].samples}
    assert mu_mean == {str(d): 1.0 for d in range(D)}
    assert [s.value for s in fams["vae_requests"].samples if s.name == "vae_requests_total"] == [1.0]
