"""Score: the ELBO per image, its two parts, and the IWAE estimate of log p(x), in numpy.

Noise: eps [N, k, D] float32 from the request's Generator(PCG64(seed)), drawn image after image, then
z = mu + exp(logvar / 2) * eps (Kingma & Welling 2014, eq. 10); the k latents of one image are decoded
in one batch. Per image (docs/service.md, "Score"):
  log_px = (1/k) sum_i log p(x|z_i)                       reconstruction term, model's own likelihood
  kl     = KL(N(mu, sigma^2) || N(0, I)), closed form     (Kingma & Welling 2014, appendix B)
  elbo   = log_px - kl                                     (Kingma & Welling 2014, eq. 7)
  iwae   = log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x)      (Burda et al. 2016, eq. 8), for k > 1
trainer/scoring.py computes the same on the same noise with torch (`vae evaluate --per-image`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from service.likelihoods import LogLikelihood

__all__ = ["Scores", "posterior_latents", "score"]

_LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class Scores:
    elbo: np.ndarray  # [N] float64 nats
    log_px: np.ndarray
    kl: np.ndarray
    iwae: np.ndarray | None  # [N] when k > 1


def posterior_latents(gen: np.random.Generator, mu: np.ndarray, logvar: np.ndarray,
                      k: int) -> tuple[np.ndarray, np.ndarray]:
    """(z [N*k, D] float32, image-major, and eps [N, k, D]) for k posterior samples per image."""
    n, d = mu.shape
    eps = gen.standard_normal((n, k, d), dtype=np.float32)
    z = mu[:, None, :] + np.exp(np.float32(0.5) * logvar)[:, None, :] * eps
    return z.reshape(n * k, d).astype(np.float32, copy=False), eps


def score(likelihood: LogLikelihood, x: np.ndarray, mu: np.ndarray, logvar: np.ndarray, z: np.ndarray,
          eps: np.ndarray, params: np.ndarray, k: int) -> Scores:
    """Scores of images x [N, C, H, W] from their posterior (mu, logvar), the latents z [N*k, D] drawn by
    `posterior_latents` and the params graph's output on them, params [N*k, C, H, W]."""
    n = len(x)
    xr = np.repeat(x, k, axis=0)  # image-major, as z
    log_px = likelihood.log_prob(xr, params).reshape(n, k)
    mu64, lv64 = mu.astype(np.float64), logvar.astype(np.float64)
    kl = 0.5 * (mu64 * mu64 + np.exp(lv64) - 1.0 - lv64).sum(axis=1)
    rec = log_px.mean(axis=1)
    iwae = None
    if k > 1:
        z64 = z.astype(np.float64).reshape(n, k, -1)
        log_pz = (-0.5 * (_LOG_2PI + z64 * z64)).sum(axis=2)
        log_qz = (-0.5 * (_LOG_2PI + lv64[:, None, :] + eps.astype(np.float64) ** 2)).sum(axis=2)
        log_w = log_px + log_pz - log_qz
        top = log_w.max(axis=1, keepdims=True)  # log-sum-exp, shifted by the largest weight
        iwae = top[:, 0] + np.log(np.exp(log_w - top).sum(axis=1)) - math.log(k)
    return Scores(elbo=rec - kl, log_px=rec, kl=kl, iwae=iwae)
