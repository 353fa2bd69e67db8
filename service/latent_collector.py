"""The latent-statistics state shared by the metrics worker and the Prometheus collector that shows it.

Per-dimension gauges for up to 1024 dims would cost thousands of labelled-child updates per batch if kept
as ordinary prometheus-client Gauges; instead the worker updates numpy arrays and the families are built
from one consistent snapshot only when Prometheus scrapes.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from service.latent_stats import LatentSnapshot, LatentWindow, ValueHistogram

__all__ = ["LatentState", "LatentCollector", "KL_BUCKETS", "z_norm_buckets"]

# Per-sample KL in nats: from a nearly collapsed posterior (<1) to a 1024-dim latent (thousands).
KL_BUCKETS: tuple[float, ...] = (0.5, 1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768,
                                 1024, 2048, 4096)
# |z| of a prior sample concentrates at sqrt(D) (chi distribution), so the buckets are relative to it.
_Z_NORM_FACTORS = (0.25, 0.5, 0.75, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15, 1.25, 1.5, 2.0, 3.0, 4.0)


def z_norm_buckets(latent_dim: int) -> list[float]:
    root = math.sqrt(latent_dim)
    return [round(f * root, 6) for f in _Z_NORM_FACTORS]


class LatentState:
    """The window, the histograms and their lock. The worker writes, the collector reads."""

    def __init__(self, window: LatentWindow) -> None:
        self.window = window
        self.lock = threading.Lock()
        self.kl_hist = ValueHistogram(KL_BUCKETS)
        self.z_buckets = z_norm_buckets(window.latent_dim)
        self.z_hists: dict[str, ValueHistogram] = {}

    def fold_encoded(self, mu: np.ndarray, logvar: np.ndarray) -> None:
        if mu.shape[0] == 0:
            return
        with self.lock:
            kl = self.window.update(mu, logvar)
            self.kl_hist.observe_many(kl)

    def fold_latents(self, method: str, z: np.ndarray) -> None:
        z32 = np.asarray(z, dtype=np.float32)
        norms = np.sqrt(np.einsum("ij,ij->i", z32, z32)).astype(np.float64)
        with self.lock:
            hist = self.z_hists.get(method)
            if hist is None:
                hist = self.z_hists[method] = ValueHistogram(self.z_buckets)
            hist.observe_many(norms)

    def snapshot(self) -> tuple[LatentSnapshot, list[tuple[list[tuple[str, int]], float, int]],
                                dict[str, tuple[list[tuple[str, int]], float, int]]]:
        with self.lock:
            return (self.window.snapshot(), [self.kl_hist.snapshot()],
                    {m: h.snapshot() for m, h in self.z_hists.items()})


def _per_dim(name: str, doc: str, values: np.ndarray, dims: list[str]) -> GaugeMetricFamily:
    fam = GaugeMetricFamily(name, doc, labels=["dim"])
    for d, v in zip(dims, values.tolist(), strict=True):
        fam.add_metric([d], v)
    return fam


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class LatentCollector:
    """Builds the vae_latent_* families from a `LatentState` at scrape time."""

    def __init__(self, state: LatentState, queue_depth: Callable[[], int]) -> None:
        self._state = state
        self._queue_depth = queue_depth
        self._dims = [str(d) for d in range(state.window.latent_dim)]

    def collect(self) -> Iterator[Metric]:
        snap, (kl,), zs = self._state.snapshot()
        dims = self._dims
        win = self._state.window
        buckets, total, _count = kl
        fam = HistogramMetricFamily("vae_latent_kl_per_sample_nats",
                                    "Per-image KL(q(z|x) || N(0, I)) of Encode/Reconstruct inputs, nats.")
        fam.add_metric([], buckets, total)
        yield fam
        zfam = HistogramMetricFamily("vae_latent_z_norm", "Euclidean norm of z fed to the decoder by "
                                     "Sample/Decode (prior samples concentrate at sqrt(latent_dim)).",
                                     labels=["method"])
        for method, (b, s, _c) in sorted(zs.items()):
            zfam.add_metric([method], b, s)
        yield zfam
        yield CounterMetricFamily("vae_latent_images", "Images folded into the latent statistics.",
                                  value=snap.images_total)
        yield _gauge("vae_latent_window_images", "Effective number of images in the decayed window "
                     f"(half-life {win.half_life:g} images; converges to ~1.44x that).", snap.window_images)
        yield _gauge("vae_latent_window_half_life_images", "Half-life of the latent window, images.",
                     win.half_life)
        yield _gauge("vae_latent_stats_queue_depth", "Batches waiting for the latent-statistics worker.",
                     self._queue_depth())
        if snap.images_total > 0:
            yield _per_dim("vae_latent_mu_mean", "Windowed mean of mu per latent dimension.",
                           snap.mu_mean, dims)
            yield _per_dim("vae_latent_mu_var", "Windowed variance of mu per latent dimension "
                           "(a dimension is active when this exceeds the active threshold).",
                           snap.mu_var, dims)
            yield _per_dim("vae_latent_posterior_var", "Windowed mean of the posterior variance exp(logvar) "
                           "per latent dimension.", snap.posterior_var_mean, dims)
            yield _per_dim("vae_latent_kl_dim_nats", "Windowed mean KL(q(z_d|x) || N(0,1)) per latent "
                           "dimension, nats.", snap.kl_per_dim, dims)
            yield _gauge("vae_latent_kl_mean_nats", "Windowed mean of the per-image KL, nats.", snap.kl_mean)
        if snap.ready:
            yield _gauge("vae_latent_active_units", "Latent dimensions whose windowed Var(mu) exceeds "
                         f"{win.active_threshold:g}.", snap.active_units)
            yield _gauge("vae_latent_collapse", "1 when active units fell below the collapse threshold "
                         "(a fraction of the training reference's active units), else 0.",
                         float(snap.collapse))
            if snap.drift_score is not None and snap.drift_per_dim is not None:
                yield _gauge("vae_latent_drift_score", "KL(window || training reference) of the diagonal "
                             "Gaussians fitted to mu, summed over dims, per reference-active unit, nats.",
                             snap.drift_score)
                yield _per_dim("vae_latent_drift_dim_nats", "Per-dimension KL(window || training reference) "
                               "of the Gaussians fitted to mu, nats.", snap.drift_per_dim, dims)
        yield _gauge("vae_latent_active_threshold",
                     "Var(mu) above which a latent dimension counts as active.", win.active_threshold)
        ref = win.reference
        if ref is None:
            return
        yield _gauge("vae_latent_collapse_threshold_units", "Active units below which vae_latent_collapse "
                     "fires (collapse fraction x reference active units).",
                     win.collapse_fraction * ref.active_units)
        yield _gauge("vae_latent_reference_active_units", "Active units of the training reference.",
                     ref.active_units)
        yield _per_dim("vae_latent_reference_mu_mean", "Training reference: mean of mu per dimension.",
                       ref.mu_mean, dims)
        yield _per_dim("vae_latent_reference_mu_var", "Training reference: variance of mu per dimension.",
                       ref.mu_var, dims)
        yield _per_dim("vae_latent_reference_posterior_var", "Training reference: mean exp(logvar) per "
                       "dimension.", ref.posterior_var_mean, dims)
        yield _per_dim("vae_latent_reference_kl_dim_nats", "Training reference: mean KL per dimension, nats.",
                       ref.kl_per_dim, dims)
        if ref.kl_per_sample:
            ref_kl = GaugeMetricFamily("vae_latent_reference_kl_per_sample_nats",
                                    "Training reference: per-image KL statistics (mean, p50, p90, p99), "
                                    "nats.",
                                    labels=["stat"])
            for stat, v in sorted(ref.kl_per_sample.items()):
                ref_kl.add_metric([stat], v)
            yield ref_kl
