"""End to end: the real service (create_server, real gRPC) serving the real exported tiny model; known
requests; then GET /metrics from the service's own metrics server and check what it says."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from obs_helpers import array, sample, scrape, tensor, wait_for
from prometheus_client import CollectorRegistry
from servers import ServerThread

from protos.vae.v1 import vae_pb2


@pytest.fixture(scope="module")
def service(tiny_model_dir: Path) -> Iterator[ServerThread]:
    with ServerThread(tiny_model_dir, CollectorRegistry(), metrics=True, max_queue_delay_ms=0.0) as srv:
        yield srv


def test_metrics_after_known_requests(service: ServerThread, digits: np.ndarray) -> None:
    channel, stub = service.stub()
    port = service.metrics_port
    mus, lvs = [], []
    with channel:
        for k in range(3):
            resp = stub.Encode(vae_pb2.EncodeRequest(images=tensor(digits[10 * k:10 * k + 10])), timeout=30)
            mus.append(array(resp.mu).astype(np.float64))
            lvs.append(array(resp.logvar).astype(np.float64))
        fams = wait_for(lambda: (f := scrape(port)) and sample(f, "vae_latent_kl_per_sample_nats_count") == 30
                        and f, "30 encoded images in the KL histogram")
        mu, lv = np.concatenate(mus), np.concatenate(lvs)
        kl = 0.5 * (mu**2 + np.exp(lv) - 1.0 - lv).sum(axis=1)   # Kingma & Welling (2014), Appendix B
        assert sample(fams, "vae_latent_kl_per_sample_nats_sum") == pytest.approx(kl.sum(), rel=1e-5)
        assert sample(fams, "vae_latent_images_total") == 30

        stub.Reconstruct(vae_pb2.ReconstructRequest(images=tensor(digits[100:105])), timeout=30)
        stub.Sample(vae_pb2.SampleRequest(n=7, seed=3), timeout=30)
        d = int(mu.shape[1])
        stub.Decode(vae_pb2.DecodeRequest(z=tensor(np.zeros((4, d), np.float32))), timeout=30)
        with pytest.raises(grpc.RpcError) as bad:
            stub.Encode(vae_pb2.EncodeRequest(images=tensor(np.zeros((2, 3, 3), np.float32))), timeout=30)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    fams = wait_for(lambda: (f := scrape(port)) and sample(f, "vae_latent_kl_per_sample_nats_count") == 35
                    and sample(f, "vae_latent_z_norm_count", method="Decode") == 4 and f,
                    "Reconstruct and Decode folded into the latent statistics")
    assert sample(fams, "vae_latent_z_norm_count", method="Sample") == 7
    # Decode of z = 0: every norm is 0, in the lowest bucket.
    assert sample(fams, "vae_latent_z_norm_sum", method="Decode") == 0
    assert sample(fams, "vae_requests_total", method="Encode", code="OK") == 3
    assert sample(fams, "vae_requests_total", method="Encode", code="INVALID_ARGUMENT") == 1
    for method in ("Reconstruct", "Sample", "Decode"):
        assert sample(fams, "vae_requests_total", method=method, code="OK") == 1
        assert sample(fams, "vae_requests_in_flight", method=method) == 0
    assert sample(fams, "vae_request_duration_seconds_count", method="Encode") == 4
    assert sample(fams, "vae_errors_total", reason="invalid_argument") == 1
    # Encoder rows: 30 + 5 (Reconstruct); every batch the encoder ran is in the batch-size histogram.
    assert sample(fams, "vae_batch_size_sum", graph="encoder") == 35
    assert sample(fams, "vae_inference_duration_seconds_count", graph="encoder") >= 1
    assert sample(fams, "vae_queue_wait_seconds_count", graph="encoder") >= 1
    assert sample(fams, "vae_model_info", provider="CPUExecutionProvider", latent_dim=str(d)) == 1
    for name in ("vae_latent_mu_mean", "vae_latent_mu_var", "vae_latent_posterior_var",
                 "vae_latent_kl_dim_nats", "vae_latent_reference_mu_mean"):
        dims = sorted(int(s.labels["dim"]) for s in fams[name].samples)
        assert dims == list(range(d)), name
    # 35 images < the 100-image warm-up of the default window: no verdict on collapse or drift yet.
    assert "vae_latent_collapse" not in fams
    assert sample(fams, "vae_latent_window_images") == pytest.approx(35, rel=0.05)
