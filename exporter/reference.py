"""Latent reference statistics of a model on its training images: the baseline the service compares
live traffic with for its posterior-collapse and drift metrics.

All statistics are of the Gaussian posterior q(z|x) = N(mu(x), diag(sigma^2(x))) the encoder outputs,
accumulated in float64 over the whole training split.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["QUANTILES", "reference_statistics", "kl_to_standard_normal"]

QUANTILES = (0.5, 0.9, 0.99)


def kl_to_standard_normal(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """KL(N(mu, sigma^2) || N(0, 1)) per sample and dimension, in nats:
    0.5 * (mu^2 + sigma^2 - log sigma^2 - 1) (Kingma & Welling 2014, Appendix B)."""
    mu = mu.astype(np.float64)
    logvar = logvar.astype(np.float64)
    return 0.5 * (mu * mu + np.exp(logvar) - logvar - 1.0)


def reference_statistics(encode: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                         images: np.ndarray, *, active_threshold: float = 0.01,
                         batch_size: int = 512) -> dict[str, Any]:
    """Statistics of the encoder's posterior over `images` ([N,C,H,W] float32 in [0,1]).

    - `mu_mean`, `mu_var`: per-dimension mean and (population) variance of mu over the data;
    - `posterior_var_mean`: per-dimension mean of sigma^2 = exp(logvar);
    - `kl_per_dim`: per-dimension mean KL to the prior N(0, 1);
    - `active_units`: dimensions with Var_x(E_q[z_u]) = mu_var > `active_threshold` (the "active
      units" of Burda, Grosse & Salakhutdinov 2016, section 5.2, who use 0.01);
    - `kl_per_sample`: mean and p50/p90/p99 of the per-image KL summed over dimensions.
    """
    n = int(images.shape[0])
    if n == 0:
        raise ValueError("no images to compute reference statistics on")
    mus: list[np.ndarray] = []
    logvars: list[np.ndarray] = []
    for start in range(0, n, batch_size):
        mu, logvar = encode(images[start:start + batch_size])
        mus.append(np.asarray(mu, dtype=np.float64))
        logvars.append(np.asarray(logvar, dtype=np.float64))
    mu_all = np.concatenate(mus)
    logvar_all = np.concatenate(logvars)
    if not (np.isfinite(mu_all).all() and np.isfinite(logvar_all).all()):
        raise ValueError("the encoder produced non-finite mu or logvar on the training images")
    kl = kl_to_standard_normal(mu_all, logvar_all)
    kl_sample = kl.sum(axis=1)
    mu_var = mu_all.var(axis=0)
    q = np.quantile(kl_sample, QUANTILES)
    return {
        "n_images": n,
        "mu_mean": mu_all.mean(axis=0).tolist(),
        "mu_var": mu_var.tolist(),
        "posterior_var_mean": np.exp(logvar_all).mean(axis=0).tolist(),
        "kl_per_dim": kl.mean(axis=0).tolist(),
        "active_units": int((mu_var > active_threshold).sum()),
        "active_threshold": float(active_threshold),
        "kl_per_sample": {
            "mean": float(kl_sample.mean()),
            "p50": float(q[0]),
            "p90": float(q[1]),
            "p99": float(q[2]),
        },
    }
