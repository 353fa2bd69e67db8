"""Validation diagnostics: reconstruction, KL and its split over dimensions, active units, a
mutual-information estimate I(x; z), and the posterior-collapse alarm."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from trainer.model import VAE
from trainer.objective import kl_per_dim

__all__ = ["evaluate_batches", "active_units", "mutual_information", "collapse_check", "REMEDIES"]

_LOG_2PI = math.log(2.0 * math.pi)

REMEDIES = (
    "KL warm-up (--beta-schedule linear|cyclical|sigmoid --beta-warmup-steps N), free bits "
    "(--free-bits 0.1..0.5), a smaller --beta, a weaker decoder or a lower --lr"
)


def active_units(mu: torch.Tensor, threshold: float) -> tuple[int, list[float]]:
    """Burda et al. 2016 (sec. 5.2): unit i is active when Cov_x(E_q[z_i | x]) > threshold."""
    var = mu.double().var(dim=0, unbiased=True) if len(mu) > 1 else torch.zeros(mu.shape[1])
    return int((var > threshold).sum()), [float(v) for v in var]


def mutual_information(
    mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator, max_points: int = 1000
) -> float:
    """I(x; z) under the aggregate posterior q(z) = 1/N sum_j q(z|x_j) (He et al. 2019, sec. 4;
    Hoffman & Johnson 2016): E_x E_q[log q(z|x)] - E_q(z)[log q(z)], with one z per x and q(z)
    estimated from the same N points. O(N^2) memory, so N is capped (a deterministic subset)."""
    n, d = mu.shape
    if n > max_points:
        idx = torch.randperm(n, generator=generator)[:max_points]
        mu, logvar = mu[idx], logvar[idx]
        n = max_points
    mu, logvar = mu.double(), logvar.double()
    neg_entropy = (-0.5 * d * _LOG_2PI - 0.5 * (1.0 + logvar).sum(dim=1)).mean()
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype)
    z = mu + torch.exp(0.5 * logvar) * eps  # [N, D]
    inv_var = torch.exp(-logvar)
    # sum_d (z_id - mu_jd)^2 / var_jd for all pairs (i, j), expanded into three matrix products so the
    # cost is O(N^2 D) multiply-adds in BLAS instead of an [N, N, D] tensor.
    sq = (z * z) @ inv_var.T - 2.0 * z @ (mu * inv_var).T + (mu * mu * inv_var).sum(1)[None, :]
    log_dens = -0.5 * sq - 0.5 * (d * _LOG_2PI + logvar.sum(-1))[None, :]
    log_qz = torch.logsumexp(log_dens, dim=1) - math.log(n)
    return float(neg_entropy - log_qz.mean())


@dataclass
class _Acc:
    rec: float = 0.0
    n: int = 0


@torch.no_grad()
def evaluate_batches(
    model: VAE,
    images: torch.Tensor,
    *,
    batch_size: int,
    generator: torch.Generator,
    active_threshold: float,
    mi_points: int = 1000,
) -> dict[str, Any]:
    """One pass over `images` with one posterior sample each: ELBO pieces, per-dim KL, AU, MI."""
    was_training = model.training
    model.eval()
    mus, logvars = [], []
    acc = _Acc()
    kl_dims = torch.zeros(model.cfg.latent_dim, dtype=torch.float64)
    dev = next(model.parameters()).device
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(dev)
        mu, logvar = model.encode(x)
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype).to(dev)
        z = mu + torch.exp(0.5 * logvar) * eps
        params = model.decode(z)
        acc.rec += float(-model.likelihood.log_prob(x, params.float()).double().sum())
        acc.n += len(x)
        kl_dims += kl_per_dim(mu.float(), logvar.float()).double().sum(dim=0).cpu()
        mus.append(mu.float().cpu())
        logvars.append(logvar.float().cpu())
    model.train(was_training)
    mu_all, lv_all = torch.cat(mus), torch.cat(logvars)
    kl_d = (kl_dims / max(1, acc.n)).tolist()
    au, au_var = active_units(mu_all, active_threshold)
    rec = acc.rec / max(1, acc.n)
    kl = float(sum(kl_d))
    return {
        "n": acc.n,
        "rec": rec,
        "kl": kl,
        "neg_elbo": rec + kl,
        "kl_per_dim": kl_d,
        "active_units": au,
        "active_var": au_var,
        "mi": mutual_information(mu_all, lv_all, generator, mi_points),
    }


def collapse_check(
    metrics: dict[str, Any], *, latent_dim: int, fraction: float, kl_threshold: float, after_warmup: bool
) -> str | None:
    """The alarm's reason, or None. Fires when active units < fraction * latent_dim, or (after the beta
    warm-up) when the total KL stays below `kl_threshold` nats: the decoder is ignoring z."""
    reasons = []
    au = int(metrics["active_units"])
    if au < fraction * latent_dim:
        reasons.append(f"only {au}/{latent_dim} active units (< {fraction:.0%})")
    if after_warmup and float(metrics["kl"]) < kl_threshold:
        reasons.append(f"KL {float(metrics['kl']):.4f} nats < {kl_threshold:g} after warm-up")
    if not reasons:
        return None
    return "posterior collapse: " + "; ".join(reasons) + ". Remedies: " + REMEDIES
