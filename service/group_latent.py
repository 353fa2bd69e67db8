"""The group's one latent window, pooled exactly from the windows of its server processes.

Each server process folds the images it encodes into its own exponentially decayed window
(service/latent_stats.py); its gauges are correct for the traffic that process served. The parent adds
the pooled window of the whole group as the same families with `process="all"`, from the scraped
per-process gauges alone. With w_p the effective images of process p's window (the sum of its decayed
weights, `vae_latent_window_images`), m_p, v_p its weighted mean and population variance of mu:

    W = sum_p w_p,   m = sum_p w_p m_p / W,   v = sum_p w_p (v_p + (m_p - m)^2) / W

(the weighted law of total variance, the same merge as Chan, Golub & LeVeque's parallel update, 1979),
and weighted means for the posterior variance and the KL terms. That is exactly the statistic of one
window holding every process's weighted images; each image keeps the decay weight its own process gave
it (half-life counted in that process's images), so the pooled window spans about N x 1.44 half-lives
of group traffic. Active units, collapse and drift are then computed from the pooled mean and variance
with the same rules and reference as a single process (docs/metrics.md).
"""

from __future__ import annotations

import numpy as np
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

from service.latent_stats import gaussian_kl_diag

__all__ = ["add_pooled", "ALL"]

ALL = "all"
# Weighted means pooled per dimension (family -> how the pooled value is formed).
_PER_DIM_MEANS = ("vae_latent_mu_mean", "vae_latent_posterior_var", "vae_latent_kl_dim_nats")
# A window judges collapse and drift only once it holds this many effective images (as one process).
_MIN_IMAGES = 100.0


def _scalar(families: dict[str, Metric], name: str) -> dict[str, float]:
    fam = families.get(name)
    return {} if fam is None else {s.labels["process"]: s.value for s in fam.samples}


def _per_dim(families: dict[str, Metric], name: str) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    fam = families.get(name)
    for s in fam.samples if fam is not None else ():
        out.setdefault(s.labels["process"], {})[int(s.labels["dim"])] = s.value
    return out


def _vector(values: dict[int, float], dims: int) -> np.ndarray | None:
    return np.array([values[d] for d in range(dims)]) if len(values) == dims else None


def _emit(families: dict[str, Metric], name: str, doc: str, value: float | np.ndarray) -> None:
    fam = families.get(name)
    if fam is None:
        fam = families[name] = Metric(name, doc or 'Latent statistics pooled over the server processes '
                                      '(process="all").', "gauge")
    if isinstance(value, np.ndarray):
        for d, v in enumerate(value.tolist()):
            fam.samples.append(Sample(name, {"dim": str(d), "process": ALL}, float(v)))
    else:
        fam.samples.append(Sample(name, {"process": ALL}, float(value)))


def add_pooled(families: dict[str, Metric]) -> None:
    """Append the pooled window (`process="all"`) to the scraped, process-labelled families."""
    weights = {p: w for p, w in _scalar(families, "vae_latent_window_images").items() if w > 0}
    means = _per_dim(families, "vae_latent_mu_mean")
    variances = _per_dim(families, "vae_latent_mu_var")
    dims = max((len(v) for v in means.values()), default=0)
    procs = [p for p in weights if p in means and p in variances]
    if not procs or dims == 0:
        _emit(families, "vae_latent_window_images", "", sum(weights.values()))
        return
    w = np.array([weights[p] for p in procs])
    total = float(w.sum())
    vectors = {p: (_vector(means[p], dims), _vector(variances[p], dims)) for p in procs}
    if any(m is None or v is None for m, v in vectors.values()):
        return  # a process with a different latent width: not one model, nothing to pool
    m_p = np.stack([vectors[p][0] for p in procs])  # type: ignore[misc]
    v_p = np.stack([vectors[p][1] for p in procs])  # type: ignore[misc]
    mean = (w[:, None] * m_p).sum(axis=0) / total
    var = (w[:, None] * (v_p + (m_p - mean) ** 2)).sum(axis=0) / total
    _emit(families, "vae_latent_window_images", "", total)
    _emit(families, "vae_latent_mu_var", "", var)
    for name in _PER_DIM_MEANS:
        if name == "vae_latent_mu_mean":
            _emit(families, name, "", mean)
            continue
        per = _per_dim(families, name)
        rows = [_vector(per.get(p, {}), dims) for p in procs]
        if all(r is not None for r in rows):
            _emit(families, name, "", (w[:, None] * np.stack(rows)).sum(axis=0) / total)  # type: ignore[arg-type]
    kl = _scalar(families, "vae_latent_kl_mean_nats")
    if all(p in kl for p in procs):
        _emit(families, "vae_latent_kl_mean_nats", "", sum(kl[p] * weights[p] for p in procs) / total)
    threshold = next(iter(_scalar(families, "vae_latent_active_threshold").values()), 0.01)
    half_life = next(iter(_scalar(families, "vae_latent_window_half_life_images").values()), _MIN_IMAGES)
    if total < min(_MIN_IMAGES, half_life):
        return
    active = int((var > threshold).sum())
    _emit(families, "vae_latent_active_units", "", active)
    bound = next(iter(_scalar(families, "vae_latent_collapse_threshold_units").values()), None)
    _emit(families, "vae_latent_collapse", "", float(active < bound if bound is not None else active == 0))
    ref_mean = _vector(next(iter(_per_dim(families, "vae_latent_reference_mu_mean").values()), {}), dims)
    ref_var = _vector(next(iter(_per_dim(families, "vae_latent_reference_mu_var").values()), {}), dims)
    ref_active = next(iter(_scalar(families, "vae_latent_reference_active_units").values()), None)
    if ref_mean is None or ref_var is None or ref_active is None:
        return
    # Variances floored at the active threshold, as in LatentWindow._drift_per_dim.
    drift = gaussian_kl_diag(mean, np.maximum(var, threshold), ref_mean, np.maximum(ref_var, threshold))
    _emit(families, "vae_latent_drift_dim_nats", "", drift)
    _emit(families, "vae_latent_drift_score", "", float(drift.sum() / max(1.0, ref_active)))
