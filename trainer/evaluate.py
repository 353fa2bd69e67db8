"""Evaluation of a checkpoint on images: negative ELBO, IWAE NLL with k importance samples (Burda et al.
2016, eq. 8), active units, per-dimension KL and the MI estimate."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from trainer.diagnostics import evaluate_batches
from trainer.model import VAE

__all__ = ["iwae_nll", "evaluate_model"]

_LOG_2PI = math.log(2.0 * math.pi)


def _normal_log_prob(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return (-0.5 * (_LOG_2PI + logvar + (z - mu) ** 2 * torch.exp(-logvar))).sum(-1)


@torch.no_grad()
def iwae_nll(
    model: VAE,
    images: torch.Tensor,
    *,
    k: int = 500,
    batch_size: int = 64,
    max_decode: int = 2048,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """-log p(x) per image, estimated by log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x), z_i ~ q(z|x).
    Images go through in batches and the k samples in chunks so at most `max_decode` images are decoded
    at once (memory stays bounded for any k)."""
    model.eval()
    dev = next(model.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(dev)
        b = len(x)
        mu, logvar = model.encode(x)
        chunk = max(1, min(k, max_decode // b))
        log_w = []
        for j in range(0, k, chunk):
            c = min(chunk, k - j)
            eps = torch.randn((b, c, mu.shape[1]), generator=generator, dtype=mu.dtype).to(dev)
            z = mu[:, None] + torch.exp(0.5 * logvar)[:, None] * eps  # [B, c, D]
            params = model.decode(z.reshape(b * c, -1))
            xr = x[:, None].expand(b, c, *x.shape[1:]).reshape(b * c, *x.shape[1:])
            log_px = model.likelihood.log_prob(xr, params.float()).reshape(b, c)
            log_pz = (-0.5 * (_LOG_2PI + z * z)).sum(-1)
            log_qz = _normal_log_prob(z, mu[:, None], logvar[:, None])
            log_w.append((log_px + log_pz - log_qz).double())
        lw = torch.cat(log_w, dim=1)
        out.append(-(torch.logsumexp(lw, dim=1) - math.log(k)).cpu())
    return torch.cat(out)


def evaluate_model(
    model: VAE,
    images: np.ndarray,
    *,
    k: int = 500,
    batch_size: int = 64,
    seed: int = 0,
    active_threshold: float = 0.01,
) -> dict[str, Any]:
    """The numbers `vae evaluate` prints (all in nats per image)."""
    t0 = time.monotonic()
    dev = next(model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(dev)
    g = torch.Generator().manual_seed(seed)
    m = evaluate_batches(
        model, x, batch_size=max(batch_size, 256), generator=g, active_threshold=active_threshold
    )
    nll = iwae_nll(model, x, k=k, batch_size=batch_size, generator=g)
    return {
        "n_images": int(len(x)),
        "neg_elbo": m["neg_elbo"],
        "rec": m["rec"],
        "kl": m["kl"],
        "iwae_nll": float(nll.mean()),
        "iwae_nll_stderr": float(nll.std() / math.sqrt(len(nll))) if len(nll) > 1 else 0.0,
        "k": k,
        "active_units": m["active_units"],
        "latent_dim": int(model.cfg.latent_dim),
        "active_threshold": active_threshold,
        "kl_per_dim": m["kl_per_dim"],
        "mi": m["mi"],
        "likelihood": model.cfg.likelihood,
        "seconds": round(time.monotonic() - t0, 2),
    }
