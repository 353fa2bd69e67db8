"""The training objective: ELBO terms in nats per image, beta and LR schedules, free bits, time budget."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from trainer.config import TrainConfig

__all__ = [
    "warmup_end",
    "epochs_within_budget",
    "BETA_SCHEDULES",
    "beta_at",
    "kl_per_dim",
    "kl_penalty",
    "lr_at",
    "Losses",
    "elbo_terms",
]

BETA_SCHEDULES = ("constant", "linear", "cyclical", "sigmoid")


def beta_at(
    step: int,
    *,
    beta: float,
    schedule: str,
    warmup_steps: int,
    total_steps: int,
    cycles: int = 4,
    ratio: float = 0.5,
) -> float:
    """KL weight at a 0-based optimisation step.

    constant: beta. linear: 0 -> beta over `warmup_steps` (KL annealing, Bowman et al. 2016).
    cyclical: `cycles` cycles over `total_steps`; each ramps 0 -> beta over the first `ratio` of the cycle
    and holds beta for the rest (Fu et al. 2019, eq. 5). sigmoid: beta * sigmoid(12 (t/warmup - 1/2)),
    i.e. ~0 at the start, beta/2 halfway, ~beta at `warmup_steps`, then beta.
    """
    if schedule == "constant":
        return beta
    if schedule == "linear":
        if warmup_steps <= 0:
            return beta
        return beta * min(1.0, step / warmup_steps)
    if schedule == "cyclical":
        period = max(1.0, total_steps / max(1, cycles))
        tau = (step % math.ceil(period)) / period
        return beta * min(1.0, tau / ratio) if ratio > 0 else beta
    if schedule == "sigmoid":
        if warmup_steps <= 0 or step >= warmup_steps:
            return beta
        return beta / (1.0 + math.exp(-12.0 * (step / warmup_steps - 0.5)))
    raise ValueError(f"unknown beta schedule {schedule!r}; expected one of {', '.join(BETA_SCHEDULES)}")


def lr_at(
    step: int, *, lr: float, warmup_steps: int, cosine: bool, total_steps: int, min_lr: float = 0.0
) -> float:
    """Linear warm-up from lr/warmup to lr, then constant or a cosine decay to `min_lr` at `total_steps`
    (Loshchilov & Hutter 2017, without restarts)."""
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if not cosine:
        return lr
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * t))


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) per sample and dimension, closed form (Kingma & Welling 2014, app. B)."""
    return 0.5 * (mu * mu + torch.exp(logvar) - 1.0 - logvar)


def kl_penalty(kl_dims: torch.Tensor, free_bits: float, mode: str) -> torch.Tensor:
    """The KL term the optimiser sees. Free bits (Kingma et al. 2016, eq. 15): the batch-averaged KL of
    each dimension is clamped from below at `free_bits` nats (mode per_dim), or the total KL is (total),
    so the encoder is not pushed to spend less than that on the code."""
    per_dim = kl_dims.mean(dim=0)
    if free_bits <= 0:
        return per_dim.sum()
    if mode == "per_dim":
        return torch.clamp(per_dim, min=free_bits).sum()
    if mode == "total":
        return torch.clamp(per_dim.sum(), min=free_bits)
    raise ValueError(f"unknown free_bits_mode {mode!r}; expected per_dim or total")


@dataclass
class Losses:
    loss: torch.Tensor  # what is minimised: rec + beta * clamped KL
    rec: torch.Tensor  # -log p(x|z), nats per image (batch mean)
    kl: torch.Tensor  # KL(q||p), nats per image (batch mean), unclamped
    kl_dims: torch.Tensor  # [D] batch-mean KL per dimension


def elbo_terms(
    log_px: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    *,
    beta: float,
    free_bits: float = 0.0,
    free_bits_mode: str = "per_dim",
) -> Losses:
    """Negative ELBO pieces for one batch; `log_px` is [N] nats per image."""
    kd = kl_per_dim(mu, logvar)
    rec = -log_px.mean()
    penalty = kl_penalty(kd, free_bits, free_bits_mode)
    return Losses(loss=rec + beta * penalty, rec=rec, kl=kd.sum(dim=1).mean(), kl_dims=kd.mean(dim=0))


def warmup_end(cfg: TrainConfig, total_steps: int) -> int:
    """The step at which the KL warm-up is over (the collapse alarm's KL test waits for it)."""
    if cfg.beta_schedule in ("linear", "sigmoid"):
        return cfg.beta_warmup_steps
    if cfg.beta_schedule == "cyclical":  # the end of the first ramp
        return int(total_steps / max(1, cfg.beta_cycles) * cfg.beta_ratio)
    return 0


def epochs_within_budget(done: int, seconds: float, budget_s: float, max_epochs: int) -> int:
    """How many epochs fit in `budget_s` when `done` epochs took `seconds` (at most `max_epochs`, at least
    `done`): the plan a time budget gives the LR schedule."""
    per_epoch = seconds / max(1, done)
    left = max(0.0, budget_s - seconds)
    return min(max_epochs, done + int(math.floor(left / max(per_epoch, 1e-9))))
