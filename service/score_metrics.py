"""Score metrics: the served ELBO distribution against the training reference.

- `vae_score_elbo_nats` histogram (labels model, version) of the per-image ELBO Score returned; its
  buckets sit on the reference's quantiles (p01 .. p99, plus spreads beyond them) so that
  `histogram_quantile` is read against the training distribution directly;
- `vae_score_images_total` and `vae_score_below_reference_p01_total`: the fraction below the training
  split's 1st percentile is their rate ratio, ~0.01 for in-distribution traffic (alert:
  VaeScoreBelowReferenceRising in deploy/prometheus/alerts.yml);
- `vae_score_reference_elbo_nats{quantile}`: the reference quantiles themselves, for the dashboard.
A manifest without `reference.elbo_per_sample` gives the histogram on default buckets and no fraction.
"""

from __future__ import annotations

import math
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ScoreMetrics", "reference_quantiles", "score_buckets", "DEFAULT_SCORE_BUCKETS"]

# Without a reference: symmetric, roughly logarithmic, nats (ELBOs span -1e4 .. +1e4 across likelihoods).
DEFAULT_SCORE_BUCKETS = tuple(sorted({s * m for s in (-1, 1) for m in (1, 3, 10, 30, 100, 300, 1000, 3000,
                                                                           10000)} | {0}))
_QUANTILE_KEYS = ("p01", "p05", "p50", "p95", "p99")


def reference_quantiles(reference: dict[str, Any] | None) -> dict[str, float] | None:
    """reference.elbo_per_sample from a manifest, or None when absent or malformed."""
    block = (reference or {}).get("elbo_per_sample")
    if not isinstance(block, dict):
        return None
    try:
        out = {k: float(block[k]) for k in _QUANTILE_KEYS}
    except (KeyError, TypeError, ValueError):
        return None
    return out if all(math.isfinite(v) for v in out.values()) else None


def score_buckets(q: dict[str, float] | None) -> tuple[float, ...]:
    """Bucket bounds on the reference quantiles, plus 1, 2, 4 and 8 spreads (p99 - p01) below p01 and
    one and two above p99 (anomalies sit below: low ELBO)."""
    if q is None:
        return DEFAULT_SCORE_BUCKETS
    spread = max(q["p99"] - q["p01"], 1e-6)
    edges = {q[k] for k in _QUANTILE_KEYS}
    edges |= {q["p01"] - m * spread for m in (1, 2, 4, 8)} | {q["p99"] + m * spread for m in (1, 2)}
    return tuple(sorted(round(e, 6) for e in edges))


@dataclass
class _ScoreFamilies:
    elbo: Histogram
    images: Counter
    below: Counter
    reference: Gauge


_FAMILIES: weakref.WeakKeyDictionary[CollectorRegistry, _ScoreFamilies] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()
_LABELS = ["model", "version"]


def _families(registry: CollectorRegistry, buckets: tuple[float, ...]) -> _ScoreFamilies:
    """One set of families per registry, shared by every served version (labelled by model and
    version). The histogram's bounds are fixed when it is created: those of the first version scored
    into this registry (a one-model server: its own reference); the fraction below p01 and the
    reference gauge are exact per version whatever the bounds."""
    with _LOCK:
        fam = _FAMILIES.get(registry)
        if fam is None:
            fam = _ScoreFamilies(
                elbo=Histogram("vae_score_elbo_nats", "Per-image ELBO returned by Score, nats.", _LABELS,
                               buckets=buckets, registry=registry),
                images=Counter("vae_score_images", "Images scored by Score.", _LABELS, registry=registry),
                below=Counter("vae_score_below_reference_p01",
                              "Scored images whose ELBO is below the training split's 1st percentile.",
                              _LABELS, registry=registry),
                reference=Gauge("vae_score_reference_elbo_nats",
                                "The training split's ELBO quantiles (manifest).", [*_LABELS, "quantile"],
                                registry=registry))
            _FAMILIES[registry] = fam
        return fam


class ScoreMetrics:
    def __init__(self, registry: CollectorRegistry, *, model_name: str, model_version: str,
                 reference: dict[str, Any] | None) -> None:
        self.quantiles = reference_quantiles(reference)
        self._key = (model_name, model_version)
        self._fam = _families(registry, score_buckets(self.quantiles))
        self._below: Any = None
        if not model_name:  # the server's catch-all for calls that reach no model: no series at all
            return
        self._elbo = self._fam.elbo.labels(*self._key)
        self._images = self._fam.images.labels(*self._key)
        if self.quantiles is not None:
            self._below = self._fam.below.labels(*self._key)
            for key, value in self.quantiles.items():
                self._fam.reference.labels(*self._key, key).set(value)

    def remove(self) -> None:
        """Drop this version's series (an unloaded version stops being exported)."""
        for family in (self._fam.elbo, self._fam.images, self._fam.below):
            try:
                family.remove(*self._key)
            except KeyError:
                pass
        for key in _QUANTILE_KEYS:
            try:
                self._fam.reference.remove(*self._key, key)
            except KeyError:
                pass

    def observe(self, elbo: np.ndarray) -> None:
        """Fold one reply's per-image ELBOs in (a handful of numbers: cheap on the request path)."""
        if not self._key[0]:  # the server's catch-all for calls that reach no model scores nothing
            return
        finite = elbo[np.isfinite(elbo)]
        for v in finite.tolist():
            self._elbo.observe(v)
        self._images.inc(len(finite))
        if self._below is not None and self.quantiles is not None:
            self._below.inc(int((finite < self.quantiles["p01"]).sum()))
