"""Windowed statistics of a VAE's posterior, pure numpy and vectorised per batch.

The service feeds every batch of encoder outputs (mu, logvar) into a `LatentWindow`; a scrape reads a
`LatentSnapshot`. Nothing here knows about Prometheus, gRPC or threads: the caller serialises access.

Windowing: exponential decay with a half-life measured in images (not seconds), so an idle service keeps
its last picture and a busy one forgets quickly. Image i of a batch of n (i = 0 oldest) gets weight
2^(-(n-1-i)/h); the state accumulated before the batch is multiplied by 2^(-n/h). The sum of weights
converges to h / ln 2 (about 1.44 h images): that is the effective window size. Per-image arithmetic is
float32 (the encoder's precision); each batch's sums are merged into float64 state with the weighted form
of Chan, Golub & LeVeque's parallel variance update (1979), which does not cancel the way the naive
E[x^2] - E[x]^2 does when a dimension's mean is large against its spread.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# logvar above this is clipped before exp (variance e^80 ~ 5.5e34; float32 overflows at e^88.7).
_MAX_LOGVAR = 80.0

__all__ = [
    "LatentReference",
    "LatentSnapshot",
    "LatentWindow",
    "ValueHistogram",
    "kl_per_dim",
    "gaussian_kl_diag",
    "finite_rows",
]


def kl_per_dim(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """KL(q(z|x) || N(0, I)) per sample and dimension, in nats, float64 [N, D].

    Closed form for a diagonal Gaussian posterior against the standard normal prior,
    Kingma & Welling, "Auto-Encoding Variational Bayes" (2014), Appendix B:
    KL_d = 0.5 * (mu_d^2 + sigma_d^2 - 1 - log sigma_d^2).
    """
    mu64 = np.asarray(mu, dtype=np.float64)
    lv64 = np.asarray(logvar, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return 0.5 * (mu64 * mu64 + np.exp(lv64) - 1.0 - lv64)


def gaussian_kl_diag(m1: np.ndarray, v1: np.ndarray, m2: np.ndarray, v2: np.ndarray) -> np.ndarray:
    """KL(N(m1, v1) || N(m2, v2)) per dimension for diagonal Gaussians, in nats.

    KL = 0.5 * (log(v2 / v1) + (v1 + (m1 - m2)^2) / v2 - 1) (e.g. Bishop, PRML (2006), eq. 1.113 family;
    the univariate case of the multivariate Gaussian KL). Variances must be > 0.
    """
    kl: np.ndarray = 0.5 * (np.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1.0)
    return kl


def finite_rows(*arrays: np.ndarray) -> np.ndarray:
    """Boolean mask [N] of the rows that are finite in every array (each [N, ...]).

    One reduction per array: a row sum is NaN or infinite exactly when the row holds a NaN or an
    infinity (or, for float32 rows near 3e38, overflows, which is not a latent code either)."""
    total = np.zeros(arrays[0].shape[0], dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        for a in arrays:
            total += a.reshape(a.shape[0], -1).sum(axis=1, dtype=np.float32)
    return np.isfinite(total)


@dataclass(frozen=True)
class LatentReference:
    """The training reference from manifest.json's `reference` block (statistics over the train split)."""

    mu_mean: np.ndarray
    mu_var: np.ndarray
    posterior_var_mean: np.ndarray
    kl_per_dim: np.ndarray
    active_units: int
    active_threshold: float
    n_images: int
    kl_per_sample: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_manifest(cls, block: dict[str, Any], latent_dim: int) -> LatentReference:
        """Validate and convert the manifest block; raise ValueError naming the first bad field."""
        if not isinstance(block, dict):
            raise ValueError(f"reference: expected an object, got {type(block).__name__}")
        arrays: dict[str, np.ndarray] = {}
        for key in ("mu_mean", "mu_var", "posterior_var_mean", "kl_per_dim"):
            if key not in block:
                raise ValueError(f"reference: missing field {key!r}")
            try:
                arr = np.asarray(block[key], dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"reference: {key} is not a list of numbers") from exc
            if arr.shape != (latent_dim,):
                raise ValueError(
                    f"reference: {key} has shape {list(arr.shape)}, expected [{latent_dim}] "
                    f"(latent_dim)")
            if not np.isfinite(arr).all():
                raise ValueError(f"reference: {key} holds non-finite values")
            arrays[key] = arr
        if (arrays["mu_var"] < 0).any() or (arrays["posterior_var_mean"] <= 0).any():
            raise ValueError("reference: variances must be non-negative (posterior_var_mean > 0)")
        threshold = float(block.get("active_threshold", 0.01))
        active = block.get("active_units")
        if active is None:
            active = int((arrays["mu_var"] > threshold).sum())
        if not isinstance(active, int | float) or not 0 <= int(active) <= latent_dim:
            raise ValueError(f"reference: active_units must be in [0, {latent_dim}], got {active!r}")
        kls = block.get("kl_per_sample") or {}
        if not isinstance(kls, dict):
            raise ValueError("reference: kl_per_sample must be an object")
        return cls(
            mu_mean=arrays["mu_mean"], mu_var=arrays["mu_var"],
            posterior_var_mean=arrays["posterior_var_mean"], kl_per_dim=arrays["kl_per_dim"],
            active_units=int(active), active_threshold=threshold, n_images=int(block.get("n_images", 0)),
            kl_per_sample={str(k): float(v) for k, v in kls.items() if isinstance(v, int | float)},
        )


@dataclass(frozen=True)
class LatentSnapshot:
    """What a scrape shows: the windowed statistics at one moment (float64 copies)."""

    images_total: int            # images ever folded in
    window_images: float         # sum of decayed weights = effective number of images in the window
    mu_mean: np.ndarray          # [D] windowed mean of mu
    mu_var: np.ndarray           # [D] windowed variance of mu (population form)
    posterior_var_mean: np.ndarray  # [D] windowed mean of exp(logvar)
    kl_per_dim: np.ndarray       # [D] windowed mean of KL_d
    kl_mean: float               # windowed mean of the per-sample KL
    active_units: int            # dims with mu_var > threshold
    ready: bool                  # window_images >= min_images: judgements (collapse, drift) are meaningful
    collapse: bool               # ready and active_units below the configured fraction of the reference
    drift_per_dim: np.ndarray | None  # [D] KL(window || reference) per dim; None without a reference
    drift_score: float | None    # sum of drift_per_dim / max(1, reference active units)


class LatentWindow:
    """Exponentially decayed statistics of mu, exp(logvar) and KL over the recent images.

    Not thread-safe: the metrics worker owns it and takes a lock around `update` and `snapshot`.
    """

    def __init__(self, latent_dim: int, *, half_life: float = 1000.0,
                 reference: LatentReference | None = None, active_threshold: float | None = None,
                 collapse_fraction: float = 0.5,
                 min_images: float | None = None) -> None:
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        if not half_life > 0:
            raise ValueError(f"half_life must be > 0 images, got {half_life}")
        if not 0.0 < collapse_fraction <= 1.0:
            raise ValueError(f"collapse_fraction must be in (0, 1], got {collapse_fraction}")
        self.latent_dim = latent_dim
        self.half_life = float(half_life)
        self.reference = reference
        # The reference's own threshold keeps "active" meaning the same thing in training and serving.
        if active_threshold is None:
            active_threshold = reference.active_threshold if reference is not None else 0.01
        self.active_threshold = float(active_threshold)
        self.collapse_fraction = float(collapse_fraction)
        self.min_images = float(min_images) if min_images is not None else min(100.0, self.half_life)
        self._ln_decay = -math.log(2.0) / self.half_life
        d = latent_dim
        self._w = 0.0
        self._n_total = 0
        self._mu_mean = np.zeros(d)
        self._mu_m2 = np.zeros(d)      # weighted sum of squared deviations from _mu_mean
        self._pv_mean = np.zeros(d)
        self._kld_mean = np.zeros(d)
        self._kl_mean = 0.0

    def update(self, mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
        """Fold a batch [N, D] in (rows must be finite); return the per-sample KL [N] in nats."""
        # Per-image arithmetic in float32 (the encoder's own precision; half the memory traffic of
        # float64 and a vectorised exp); the per-dimension batch sums are converted to float64 before
        # they are merged into the window, so error does not build up across batches.
        mu32 = np.asarray(mu, dtype=np.float32).reshape(-1, self.latent_dim)
        lv32 = np.asarray(logvar, dtype=np.float32).reshape(-1, self.latent_dim)
        n = mu32.shape[0]
        if n == 0:
            return np.zeros(0)
        if lv32.max() > _MAX_LOGVAR:
            # exp overflows float32 near 88.7: a broken posterior shows as a huge, finite KL instead.
            lv32 = np.minimum(lv32, _MAX_LOGVAR)
        # The closed form of kl_per_dim, in place (one pass per operation); exp(logvar) is needed twice
        # (KL and posterior variance) and computed once.
        pv = np.exp(lv32)
        kld = mu32 * mu32
        kld += pv
        kld -= lv32
        kld -= 1.0
        kld *= 0.5
        kl: np.ndarray = kld.sum(axis=1).astype(np.float64)
        # Newest image weight 1, oldest 2^(-(n-1)/h): the decay inside a batch matches the decay across.
        w = np.exp(self._ln_decay * np.arange(n - 1, -1, -1, dtype=np.float64))
        wb = float(w.sum())
        wn64 = w / wb
        wn = wn64.astype(np.float32)
        b_mu32 = wn @ mu32
        dev = mu32 - b_mu32      # centred before squaring: no cancellation for a dim with |mean| >> std
        dev *= dev
        b_m2 = (wn @ dev).astype(np.float64) * wb
        b_mu = b_mu32.astype(np.float64)
        b_pv = (wn @ pv).astype(np.float64)
        b_kld = (wn @ kld).astype(np.float64)
        b_kl = float(wn64 @ kl)

        wa = self._w * math.exp(self._ln_decay * n)
        total = wa + wb
        frac = wb / total
        delta = b_mu - self._mu_mean
        # Weighted parallel merge (Chan et al. 1979): M2 = M2_a + M2_b + delta^2 * wa * wb / (wa + wb).
        self._mu_m2 = self._mu_m2 * (wa / self._w if self._w > 0 else 0.0) + b_m2 + delta * delta * wa * frac
        self._mu_mean = self._mu_mean + delta * frac
        self._pv_mean = self._pv_mean + (b_pv - self._pv_mean) * frac
        self._kld_mean = self._kld_mean + (b_kld - self._kld_mean) * frac
        self._kl_mean = self._kl_mean + (b_kl - self._kl_mean) * frac
        self._w = total
        self._n_total += n
        return kl

    def snapshot(self) -> LatentSnapshot:
        d = self.latent_dim
        if self._w > 0:
            mu_var = np.maximum(self._mu_m2 / self._w, 0.0)
        else:
            mu_var = np.zeros(d)
        active = int((mu_var > self.active_threshold).sum())
        ready = self._w >= self.min_images
        ref = self.reference
        if ref is not None:
            # Collapse is relative to what training achieved; a model that never used more than k units
            # is not "collapsed" at k. Without a reference only total collapse (0 units) counts.
            collapse = ready and active < self.collapse_fraction * ref.active_units
            drift_dim = self._drift_per_dim(self._mu_mean, mu_var, ref)
            drift = float(drift_dim.sum() / max(1, ref.active_units))
        else:
            collapse = ready and active == 0
            drift_dim, drift = None, None
        return LatentSnapshot(
            images_total=self._n_total, window_images=self._w, mu_mean=self._mu_mean.copy(), mu_var=mu_var,
            posterior_var_mean=self._pv_mean.copy(), kl_per_dim=self._kld_mean.copy(),
            kl_mean=self._kl_mean, active_units=active, ready=ready, collapse=collapse,
            drift_per_dim=drift_dim, drift_score=drift,
        )

    def _drift_per_dim(self, mean: np.ndarray, var: np.ndarray, ref: LatentReference) -> np.ndarray:
        """KL(N(window mean, window var) || N(ref mean, ref var)) per dim, variances floored.

        The floor (the active threshold) keeps inactive dimensions, whose Var(mu) is ~1e-6 both in training
        and in serving, from turning float noise into huge ratios: below the floor a dimension carries no
        information, so it can only drift by its mean moving by more than ~sqrt(floor).
        """
        floor = self.active_threshold
        return gaussian_kl_diag(mean, np.maximum(var, floor), ref.mu_mean, np.maximum(ref.mu_var, floor))


class ValueHistogram:
    """A cumulative histogram filled with whole arrays at once (Prometheus `le` semantics: v <= bound)."""

    def __init__(self, bounds: Sequence[float] | np.ndarray) -> None:
        b = np.asarray(sorted(float(x) for x in bounds), dtype=np.float64)
        if b.size == 0 or not np.isfinite(b).all():
            raise ValueError("histogram bounds must be a non-empty list of finite numbers")
        self.bounds = b
        self._counts = np.zeros(b.size + 1, dtype=np.int64)   # last slot: above every bound (+Inf)
        self._sum = 0.0

    def observe_many(self, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.size == 0:
            return
        idx = np.searchsorted(self.bounds, v, side="left")
        self._counts += np.bincount(idx, minlength=self._counts.size)
        self._sum += float(v.sum())

    def snapshot(self) -> tuple[list[tuple[str, int]], float, int]:
        """(cumulative [(le, count)], sum, count) in the shape prometheus-client's families take."""
        cum = np.cumsum(self._counts)
        les = [_format_le(x) for x in self.bounds] + ["+Inf"]
        return list(zip(les, (int(c) for c in cum), strict=True)), self._sum, int(cum[-1])


def _format_le(x: float) -> str:
    return repr(float(x))
