"""Per-image scores of a model on images, torch side: the ELBO, its two parts and the IWAE estimate,
on the posterior noise the service uses, so `vae evaluate --per-image` and the served Score agree.

Noise: eps ~ N(0, I) of shape [N, k, D] from numpy `Generator(PCG64(seed))`, drawn image after image
(float32), then z = mu + exp(logvar / 2) * eps (Kingma & Welling 2014, eq. 10). Per image:
- log_px = (1/k) sum_i log p(x|z_i), the reconstruction term under the model's likelihood;
- kl = KL(q(z|x) || N(0, I)) in closed form (Kingma & Welling 2014, appendix B);
- elbo = log_px - kl (the estimator of Kingma & Welling 2014, eq. 7, averaged over k samples);
- iwae = log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x) (Burda et al. 2016, eq. 8), a tighter lower bound of
  log p(x) that tends to it as k grows.
All in nats per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from trainer.model import VAE
from trainer.objective import kl_per_dim

__all__ = ["ImageScores", "posterior_noise", "score_images", "elbo_reference", "ELBO_QUANTILES"]

_LOG_2PI = math.log(2.0 * math.pi)
# The reference quantiles stored in the manifest (reference.elbo_per_sample): p01 is the anomaly cut.
ELBO_QUANTILES = {"p01": 0.01, "p05": 0.05, "p50": 0.5, "p95": 0.95, "p99": 0.99}


@dataclass(frozen=True)
class ImageScores:
    elbo: np.ndarray  # [N] float64
    log_px: np.ndarray
    kl: np.ndarray
    iwae: np.ndarray  # [N] float64; equals the one-sample bound when k == 1


def posterior_noise(gen: np.random.Generator, n: int, k: int, d: int) -> np.ndarray:
    """eps [n, k, d] float32, drawn exactly as the service draws it."""
    return gen.standard_normal((n, k, d), dtype=np.float32)


@torch.no_grad()
def score_images(model: VAE, images: np.ndarray, *, k: int = 1, seed: int = 0,
                 batch_size: int = 64) -> ImageScores:
    """Scores of `images` ([N,C,H,W] float32 in [0,1]); deterministic for a given seed."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    model.eval()
    dev = next(model.parameters()).device
    gen = np.random.Generator(np.random.PCG64(seed))
    d = int(model.cfg.latent_dim)
    parts: list[tuple[np.ndarray, ...]] = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size], dtype=np.float32)).to(dev)
        b = len(x)
        mu, logvar = model.encode(x)
        eps = torch.from_numpy(posterior_noise(gen, b, k, d)).to(dev)
        z = mu[:, None] + torch.exp(0.5 * logvar)[:, None] * eps  # [B, k, D]
        params = model.decode(z.reshape(b * k, d))
        xr = x[:, None].expand(b, k, *x.shape[1:]).reshape(b * k, *x.shape[1:])
        log_px = model.likelihood.log_prob(xr, params.float()).double().reshape(b, k)
        kl = kl_per_dim(mu, logvar).double().sum(dim=1)
        log_pz = (-0.5 * (_LOG_2PI + z.double() ** 2)).sum(-1)
        log_qz = (-0.5 * (_LOG_2PI + logvar.double()[:, None] + eps.double() ** 2)).sum(-1)
        iwae = torch.logsumexp(log_px + log_pz - log_qz, dim=1) - math.log(k)
        rec = log_px.mean(dim=1)
        parts.append((rec.cpu().numpy(), kl.cpu().numpy(), iwae.cpu().numpy()))
    rec_all, kl_all, iwae_all = (np.concatenate([p[i] for p in parts]) for i in range(3))
    return ImageScores(elbo=rec_all - kl_all, log_px=rec_all, kl=kl_all, iwae=iwae_all)


def elbo_reference(model: VAE, images: np.ndarray, *, seed: int = 0) -> dict[str, float]:
    """The manifest block `reference.elbo_per_sample`: mean and quantiles of the one-sample ELBO of
    the training split (nats), the baseline served scores are compared with."""
    if len(images) == 0:
        raise ValueError("no images to compute the ELBO reference on")
    elbo = score_images(model, images, k=1, seed=seed).elbo
    if not np.isfinite(elbo).all():
        raise ValueError("the model gives non-finite ELBO values on the training images")
    out = {"mean": float(elbo.mean())}
    for key, q in ELBO_QUANTILES.items():
        out[key] = float(np.quantile(elbo, q))
    return out
