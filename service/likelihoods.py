"""The decoder likelihoods p(x|z) in numpy: log p(x | params) per image, in nats (sum over pixels),
from the params graph's output. The same formulas as trainer/likelihoods.py (the service never imports
torch); tests/service/test_svc_score.py cross-checks them on a real export.

Computed in float64: a sum over thousands of pixels in float32 would lose ~1e-4 nats per image.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["LIKELIHOODS", "LogLikelihood", "build_log_likelihood", "bce_with_logits", "cb_log_norm"]

LIKELIHOODS = ("bernoulli", "gaussian", "gaussian_learned", "continuous_bernoulli")
_LOG_2PI = math.log(2.0 * math.pi)
_CB_NORM_CUT = 0.5


def bce_with_logits(logits: np.ndarray, x: np.ndarray) -> np.ndarray:
    """-[x log sigmoid(l) + (1-x) log(1 - sigmoid(l))], stable for any l: max(l, 0) - l x + log1p(e^-|l|)."""
    return np.asarray(np.maximum(logits, 0.0) - logits * x + np.log1p(np.exp(-np.abs(logits))))


def cb_log_norm(logits: np.ndarray) -> np.ndarray:
    """log C(lambda) of the continuous Bernoulli (Loaiza-Ganem & Cunningham 2019, eq. 7) from logits:
    log(l / tanh(l / 2)), with its Taylor series in t = l/2 near 0, where the closed form is 0/0."""
    a = np.abs(logits)
    small = a < _CB_NORM_CUT
    safe = np.where(small, 1.0, a)
    exact = np.log(safe) - np.log(np.tanh(safe / 2.0))
    t2 = (logits / 2.0) ** 2
    series = math.log(2.0) + t2 * (1.0 / 3 + t2 * (-7.0 / 90 + t2 * (62.0 / 2835)))
    return np.where(small, series, exact)


def _sum_pixels(t: np.ndarray) -> np.ndarray:
    return np.asarray(t.reshape(t.shape[0], -1).sum(axis=1))


@dataclass(frozen=True)
class LogLikelihood:
    """`log_prob(x, params) -> [N]` float64 nats per image; x and params [N, C, H, W]."""

    name: str
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray]

    def log_prob(self, x: np.ndarray, params: np.ndarray) -> np.ndarray:
        return self.fn(x.astype(np.float64), params.astype(np.float64))


def build_log_likelihood(name: str, params: dict[str, float] | None = None) -> LogLikelihood:
    """The likelihood a manifest names, with its constants (manifest `likelihood_params`).
    Raises ValueError for an unknown name or a Gaussian without `log_sigma`."""
    if name == "bernoulli":
        # Bernoulli on logits (Kingma & Welling 2014, app. C.1).
        return LogLikelihood(name, lambda x, p: -_sum_pixels(bce_with_logits(p, x)))
    if name == "continuous_bernoulli":
        return LogLikelihood(name, lambda x, p: _sum_pixels(cb_log_norm(p) - bce_with_logits(p, x)))
    if name in ("gaussian", "gaussian_learned"):
        log_sigma = (params or {}).get("log_sigma")
        if not isinstance(log_sigma, int | float) or not math.isfinite(log_sigma):
            raise ValueError(f"likelihood {name} needs a finite likelihood_params.log_sigma in the manifest")
        ls = float(log_sigma)
        inv = math.exp(-ls)

        def gaussian(x: np.ndarray, p: np.ndarray) -> np.ndarray:
            # N(x; mean, sigma^2) per pixel: -(x - mean)^2 / (2 sigma^2) - log sigma - log(2 pi) / 2.
            r = (x - p) * inv
            return _sum_pixels(-0.5 * r * r - ls - 0.5 * _LOG_2PI)

        return LogLikelihood(name, gaussian)
    raise ValueError(f"unknown likelihood {name!r}; expected one of {', '.join(LIKELIHOODS)}")
