"""`train(model_cfg, train_cfg, resume=False) -> run folder`: the training loop with its monitoring.

Exact resume: the shuffling of epoch e is a pure function of (seed, e), the LR and beta are pure functions
of the step, and the checkpoint holds the model, optimiser and torch RNG states plus the position inside
the epoch. Continuing from a checkpoint therefore replays exactly the same steps (on CPU)."""

from __future__ import annotations

import copy
import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.augment import augment_batch, augmentation_generator
from trainer.config import ModelConfig, TrainConfig
from trainer.data import fingerprint, load_images, split_images
from trainer.diagnostics import collapse_check, evaluate_batches
from trainer.errors import ConfigError, DataError, TrainingFailed
from trainer.model import VAE, build_model
from trainer.objective import beta_at, elbo_terms, epochs_within_budget, lr_at, warmup_end
from trainer.optim import build_optimizer, validate_train_config
from trainer.plots import save_curves, save_epoch_grids
from trainer.run_checkpoints import RunCheckpoints
from trainer.runlog import RunLog, epoch_row, truncate_metrics, write_config
from trainer.runtime import Runtime, all_reduce_max, all_reduce_min, setup_runtime, teardown_runtime

__all__ = ["train"]

log = logging.getLogger("trainer")


def train(model_cfg: ModelConfig, train_cfg: TrainConfig, resume: bool = False) -> Path:
    """Train (or continue with `resume=True`) and return the run folder `train_cfg.out_dir`."""
    validate_train_config(train_cfg)
    rt = setup_runtime(train_cfg.device, train_cfg.num_threads)
    try:
        return _Run(model_cfg, train_cfg, rt, resume).run()
    finally:
        teardown_runtime(rt)


def _epoch_perm(seed: int, epoch: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


class _Run(RunCheckpoints):
    def __init__(self, model_cfg: ModelConfig, cfg: TrainConfig, rt: Runtime, resume: bool) -> None:
        self.mcfg, self.cfg, self.rt = model_cfg, cfg, rt
        self.out = Path(cfg.out_dir)
        images = load_images(cfg.data)
        if tuple(images.shape[1:]) != tuple(model_cfg.input_shape):
            raise ConfigError(
                f"data {cfg.data} holds images of shape {tuple(images.shape[1:])} but the model "
                f"expects input_shape {tuple(model_cfg.input_shape)}"
            )
        train_np, val_np = split_images(images, cfg.val_fraction, cfg.seed, cfg.split)
        if len(val_np) == 0:
            raise DataError(cfg.data, "validation split is empty; use val_fraction > 0 (monitoring needs it)")
        self.data_info = {
            "fingerprint": fingerprint(train_np),
            "n_train": len(train_np),
            "n_val": len(val_np),
            "source": cfg.data,
            "split": cfg.split,
            "val_fraction": cfg.val_fraction,
        }
        dev = rt.device
        self.x_train = torch.from_numpy(train_np).to(dev)
        self.x_val = torch.from_numpy(val_np).to(dev)
        global_bs = cfg.batch_size
        if rt.distributed and global_bs < rt.world_size:
            raise ConfigError(f"batch_size {global_bs} is smaller than the {rt.world_size} processes")
        # In DDP every rank needs a non-empty slice of every batch: drop a last batch that is too short.
        n = len(self.x_train)
        self.steps_per_epoch = max(1, n // global_bs if rt.distributed else math.ceil(n / global_bs))
        torch.manual_seed(cfg.seed)
        try:
            self.model: VAE = build_model(model_cfg).to(dev)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.opt = build_optimizer(self.model.parameters(), cfg)
        self.step = self.epoch = self.batch_in_epoch = self.skipped_total = self.consecutive_skips = 0
        self.best = math.inf
        self.train_seconds = 0.0
        self.planned_epochs = cfg.epochs
        self.last_metrics: dict[str, Any] = {}
        if resume:
            self._restore()
        elif (self.out / "last.pt").exists():
            raise ConfigError(
                f"{self.out} already holds a run (last.pt); continue it with --resume "
                f"{self.out} or choose another --out"
            )
        self.ddp: nn.Module = self.model
        if rt.distributed:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[dev.index] if dev.type == "cuda" else None
            )
        if rt.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "grids").mkdir(exist_ok=True)
            write_config(
                self.out / "config.json",
                model_cfg.to_dict(),
                cfg.to_dict(),
                {"data": self.data_info, "world_size": rt.world_size, "num_threads": torch.get_num_threads()},
            )
            if resume:
                truncate_metrics(self.out / "metrics.jsonl", self.step)
        self.runlog = RunLog(self.out, rt.is_main, cfg.tensorboard)
        self._last_curves = self._last_save = time.monotonic()
        self._saved_step = -1
        self._pending_best: dict[str, Any] | None = None  # best state not yet on disk (see _end_epoch)

    @property
    def total_steps(self) -> int:
        return self.planned_epochs * self.steps_per_epoch

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> Path:
        try:
            while self.epoch < self.planned_epochs:
                t0 = time.monotonic()
                stopped = self._train_epoch()
                if stopped:
                    break
                self.train_seconds += time.monotonic() - t0
                t1 = time.monotonic()
                self._end_epoch()
                self.train_seconds += time.monotonic() - t1  # validation counts against the budget too
                self._plan_budget()
        finally:
            self.runlog.close()
        if self.rt.is_main:
            if self._saved_step != self.step:  # e.g. stopped by the time budget inside an epoch
                self._save(best=False)
            if self._pending_best is not None:
                self._save_pending_best()
                self._pending_best = None
            if not (self.out / "best.pt").exists():
                self._save(best=True)
            save_curves(self.out / "metrics.jsonl", self.out / "curves.png")
            log.info(
                "done: %d epochs, %d steps, %.1f s of training; run folder %s",
                self.epoch,
                self.step,
                self.train_seconds,
                self.out,
            )
        return self.out

    def _beta(self, step: int) -> float:
        c = self.cfg
        return beta_at(
            step,
            beta=c.beta,
            schedule=c.beta_schedule,
            warmup_steps=c.beta_warmup_steps,
            total_steps=self.total_steps,
            cycles=c.beta_cycles,
            ratio=c.beta_ratio,
        )

    def _train_epoch(self) -> bool:
        """One epoch from `batch_in_epoch`; True when the time budget stopped it early."""
        cfg, rt = self.cfg, self.rt
        perm = _epoch_perm(cfg.seed, self.epoch, len(self.x_train)).to(self.rt.device)
        bar = None
        if cfg.progress and rt.is_main:
            from tqdm import tqdm

            bar = tqdm(
                total=self.steps_per_epoch,
                initial=self.batch_in_epoch,
                leave=False,
                mininterval=0.5,
                desc=f"epoch {self.epoch + 1}/{self.planned_epochs}",
                dynamic_ncols=True,
            )
        params = [p for p in self.model.parameters() if p.requires_grad]
        autocast = (
            torch.autocast(device_type=rt.device.type, dtype=torch.bfloat16) if cfg.bf16 else nullcontext()
        )
        t_start = time.monotonic()
        self.model.train()
        while self.batch_in_epoch < self.steps_per_epoch:
            b = self.batch_in_epoch
            idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            if rt.distributed:
                idx = idx[rt.rank :: rt.world_size]
            x = self.x_train[idx]
            if cfg.hflip or cfg.shift:
                g = augmentation_generator(cfg.seed, self.step, rt.device)
                x = augment_batch(x, hflip=cfg.hflip, shift=cfg.shift, generator=g)
            lr = lr_at(
                self.step,
                lr=cfg.lr,
                warmup_steps=cfg.warmup_steps,
                cosine=cfg.cosine,
                total_steps=self.total_steps,
                min_lr=cfg.min_lr,
            )
            for group in self.opt.param_groups:
                group["lr"] = lr
            beta = self._beta(self.step)
            with autocast:
                params_x, mu, logvar, _ = self.ddp(x)
            terms = elbo_terms(
                self.model.likelihood.log_prob(x, params_x.float()),
                mu.float(),
                logvar.float(),
                beta=beta,
                free_bits=cfg.free_bits,
                free_bits_mode=cfg.free_bits_mode,
            )
            self.opt.zero_grad(set_to_none=True)
            # Always backward, even on a non-finite loss: in DDP every rank must join the all-reduce.
            terms.loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
            gnorm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            loss_v, gnorm_v = float(terms.loss.detach()), float(gnorm)
            skip = not (math.isfinite(loss_v) and math.isfinite(gnorm_v))
            skip = bool(all_reduce_max(rt, float(skip))) if rt.distributed else skip
            if skip:
                self.skipped_total += 1
                self.consecutive_skips += 1
                log.warning(
                    "step %d: non-finite loss or gradient (loss=%s, grad norm=%s); step skipped",
                    self.step,
                    loss_v,
                    gnorm_v,
                )
                if self.consecutive_skips >= cfg.max_skips:
                    raise TrainingFailed(
                        f"{self.consecutive_skips} non-finite steps in a row (last at step "
                        f"{self.step}); stopping. Lower --lr, set --grad-clip, or check the "
                        "data and likelihood"
                    )
            else:
                self.consecutive_skips = 0
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grads_with_norm_(params, cfg.grad_clip, gnorm)
                self.opt.step()
            rec_v, kl_v = float(terms.rec.detach()), float(terms.kl.detach())
            self.runlog.write(
                {
                    "type": "step",
                    "step": self.step,
                    "epoch": self.epoch,
                    "rec": rec_v,
                    "kl": kl_v,
                    "beta": beta,
                    "neg_elbo": rec_v + kl_v,
                    "loss": loss_v,
                    "grad_norm": gnorm_v,
                    "lr": lr,
                    "skipped": skip,
                }
            )
            self.step += 1
            self.batch_in_epoch += 1
            if bar is not None:
                bar.update(1)
                if bar.n % 10 == 0 or self.batch_in_epoch == self.steps_per_epoch:
                    bar.set_postfix(rec=f"{rec_v:.1f}", kl=f"{kl_v:.2f}", beta=f"{beta:.2f}", refresh=False)
            if (
                cfg.ckpt_every
                and self.step % cfg.ckpt_every == 0
                and self.batch_in_epoch < self.steps_per_epoch
            ):
                self._save(best=False)
            if (
                cfg.max_minutes > 0
                and not rt.distributed
                and self.train_seconds + time.monotonic() - t_start > cfg.max_minutes * 60
            ):
                log.warning(
                    "time budget of %g min reached inside epoch %d; stopping", cfg.max_minutes, self.epoch + 1
                )
                self.train_seconds += time.monotonic() - t_start
                if bar is not None:
                    bar.close()
                return True
        if bar is not None:
            bar.close()
        return False

    def _end_epoch(self) -> None:
        cfg, rt = self.cfg, self.rt
        self.epoch += 1
        self.batch_in_epoch = 0
        if not rt.is_main:
            return
        g = torch.Generator().manual_seed(cfg.seed + 7919 * self.epoch)
        m = evaluate_batches(
            self.model,
            self.x_val,
            batch_size=max(256, cfg.batch_size),
            generator=g,
            active_threshold=cfg.active_threshold,
            mi_points=cfg.mi_points,
        )
        after_warmup = self.step >= warmup_end(cfg, self.total_steps)
        reason = collapse_check(
            m,
            latent_dim=self.mcfg.latent_dim,
            fraction=cfg.collapse_fraction,
            kl_threshold=cfg.collapse_kl,
            after_warmup=after_warmup,
        )
        if reason:
            log.warning("epoch %d: %s", self.epoch, reason)
        row = epoch_row(
            m,
            epoch=self.epoch,
            step=self.step,
            latent_dim=self.mcfg.latent_dim,
            skipped_steps=self.skipped_total,
            collapse_reason=reason,
            beta=self._beta(self.step),
            train_seconds=self.train_seconds,
        )
        self.runlog.write(row)
        log.info(
            "epoch %d/%d  val rec %.2f  KL %.2f  -ELBO %.2f  AU %d/%d  MI %.2f  skipped %d",
            self.epoch,
            self.planned_epochs,
            m["rec"],
            m["kl"],
            m["neg_elbo"],
            m["active_units"],
            self.mcfg.latent_dim,
            m["mi"],
            self.skipped_total,
        )
        self.last_metrics = {k: v for k, v in row.items() if k != "type"}
        is_best = m["neg_elbo"] < self.best
        if is_best:
            self.best = m["neg_elbo"]
        # With fast epochs, serialising and fsyncing the checkpoint each epoch would dominate the run:
        # last.pt is written at most every ckpt_every_s seconds (and at the end); a better model found in
        # between is kept in memory and written as best.pt with the next save.
        final = self.epoch >= self.planned_epochs
        if final or time.monotonic() - self._last_save >= cfg.ckpt_every_s:
            self._save(best=is_best)
            if not is_best:
                self._save_pending_best()
            self._pending_best = None
        elif is_best:
            self._pending_best = copy.deepcopy(self._state(reference=False))
        if cfg.grids:
            save_epoch_grids(self.model, self.x_val, self.cfg.seed, self.epoch, self.out / "grids")
        now = time.monotonic()
        if now - self._last_curves >= cfg.curves_every_s:
            save_curves(self.out / "metrics.jsonl", self.out / "curves.png")
            self._last_curves = time.monotonic()

    def _plan_budget(self) -> None:
        """With --max-minutes: after each epoch, set the planned epoch count (at most `epochs`) so that the
        projected training time fits the budget; the cosine schedule follows the plan and ends at min_lr.
        The plan may grow again when epochs get faster (e.g. a shared CPU frees up)."""
        cfg = self.cfg
        if cfg.max_minutes <= 0 or self.epoch == 0:
            return
        per_epoch = self.train_seconds / self.epoch
        fit = epochs_within_budget(self.epoch, self.train_seconds, cfg.max_minutes * 60, cfg.epochs)
        plan = int(all_reduce_min(self.rt, float(fit)))
        if plan != self.planned_epochs:
            log.info(
                "time budget %g min: %.1f s per epoch, planning %d epochs instead of %d",
                cfg.max_minutes,
                per_epoch,
                plan,
                self.planned_epochs,
            )
            self.planned_epochs = plan
