"""Optimisers and the checks on TrainConfig values that would otherwise fail deep inside a run."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from trainer.config import TrainConfig
from trainer.errors import ConfigError
from trainer.objective import BETA_SCHEDULES

__all__ = ["OPTIMIZERS", "build_optimizer", "validate_train_config"]

OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd")


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam, AdamW (decoupled weight decay, Loshchilov & Hutter 2019), RMSprop or SGD with momentum.
    The LR set here is overwritten every step by the warm-up/cosine schedule."""
    p = list(params)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(p, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(p, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(p, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(p, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    raise ConfigError(f"unknown optimizer {cfg.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")


def validate_train_config(cfg: TrainConfig) -> None:
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    need(
        cfg.optimizer in OPTIMIZERS, f"unknown optimizer {cfg.optimizer!r}; expected {', '.join(OPTIMIZERS)}"
    )
    need(
        cfg.beta_schedule in BETA_SCHEDULES,
        f"unknown beta schedule {cfg.beta_schedule!r}; expected {', '.join(BETA_SCHEDULES)}",
    )
    need(
        cfg.free_bits_mode in ("per_dim", "total"),
        f"free_bits_mode must be per_dim or total, got {cfg.free_bits_mode!r}",
    )
    need(cfg.split in ("random", "tail"), f"split must be random or tail, got {cfg.split!r}")
    need(cfg.epochs >= 1, f"epochs must be >= 1, got {cfg.epochs}")
    need(cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}")
    need(math.isfinite(cfg.lr) and cfg.lr > 0, f"lr must be > 0, got {cfg.lr}")
    need(
        cfg.min_lr >= 0 and cfg.weight_decay >= 0 and cfg.momentum >= 0,
        "min_lr, weight_decay and momentum must be >= 0",
    )
    need(cfg.warmup_steps >= 0 and cfg.beta_warmup_steps >= 0, "warm-up steps must be >= 0")
    need(cfg.beta >= 0 and math.isfinite(cfg.beta), f"beta must be >= 0, got {cfg.beta}")
    need(
        cfg.beta_cycles >= 1 and 0 < cfg.beta_ratio <= 1, "beta_cycles must be >= 1 and beta_ratio in (0, 1]"
    )
    need(cfg.free_bits >= 0, f"free_bits must be >= 0, got {cfg.free_bits}")
    need(cfg.shift >= 0, f"shift must be >= 0, got {cfg.shift}")
    need(cfg.grad_clip >= 0, f"grad_clip must be >= 0, got {cfg.grad_clip}")
    need(cfg.max_skips >= 1, f"max_skips must be >= 1, got {cfg.max_skips}")
    need(0 <= cfg.val_fraction < 1, f"val_fraction must be in [0, 1), got {cfg.val_fraction}")
    need(
        cfg.ckpt_every >= 0 and cfg.ckpt_every_s >= 0 and cfg.max_minutes >= 0,
        "ckpt_every, ckpt_every_s and max_minutes must be >= 0",
    )
    need(0 <= cfg.collapse_fraction <= 1, "collapse_fraction must be in [0, 1]")
    need(cfg.mi_points >= 2, f"mi_points must be >= 2, got {cfg.mi_points}")
    need(cfg.num_threads >= 0, f"num_threads must be >= 0, got {cfg.num_threads}")
