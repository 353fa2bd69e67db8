"""`train(model_cfg, train_cfg, resume=False) -> run folder`: the training loop with its monitoring.

Exact resume: the shuffling of epoch e is a pure function of (seed, e), the LR and beta are pure functions
of the step, and the checkpoint holds the model, optimiser and torch RNG states plus the position inside
the epoch. Continuing from a checkpoint therefore replays exactly the same steps (on CPU)."""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer.checkpoint import link_checkpoint, load_checkpoint, save_checkpoint
from trainer.config import ModelConfig, TrainConfig
from trainer.data import fingerprint, load_images, split_images
from trainer.diagnostics import collapse_check, evaluate_batches
from trainer.errors import CheckpointError, ConfigError, DataError, TrainingFailed
from trainer.model import VAE, build_model
from trainer.objective import beta_at, elbo_terms, lr_at
from trainer.optim import build_optimizer, validate_train_config
from trainer.plots import save_curves, save_grid
from trainer.runlog import RunLog, truncate_metrics, write_config
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


class _Run:
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
        self._last_curves = time.monotonic()

    # -- checkpoints ----------------------------------------------------------------------------
    def _restore(self) -> None:
        path = self.out / "last.pt"
        if not path.exists():
            raise CheckpointError(str(path), "nothing to resume: no last.pt in the run folder")
        ck = load_checkpoint(path)
        if ck["model_config"] != self.mcfg.to_dict():
            raise CheckpointError(str(path), "model config differs from the run being resumed")
        if ck["data"]["fingerprint"] != self.data_info["fingerprint"]:
            raise CheckpointError(
                str(path), "the training data changed since this checkpoint (fingerprint mismatch)"
            )
        self.model.load_state_dict(ck["model_state"])
        self.opt.load_state_dict(ck["optimizer_state"])
        torch.set_rng_state(ck["rng_state"]["torch"])
        if "cuda" in ck["rng_state"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ck["rng_state"]["cuda"])
        self.step, self.epoch = int(ck["step"]), int(ck["epoch"])
        sched = ck["scheduler_state"]
        self.batch_in_epoch = int(sched["batch_in_epoch"])
        # --epochs may extend a finished run; a time budget keeps the stored plan and re-plans below.
        stored_plan = int(sched["planned_epochs"])
        self.planned_epochs = (
            self.cfg.epochs if self.cfg.max_minutes <= 0 else min(self.cfg.epochs, stored_plan)
        )
        self.train_seconds = float(sched["train_seconds"])
        self.skipped_total = int(sched["skipped_total"])
        if self.cfg.num_threads == 0 and self.rt.device.type == "cpu" and not self.rt.distributed:
            # Same thread count as before the interruption: CPU reductions may split work by thread.
            torch.set_num_threads(int(sched.get("num_threads", torch.get_num_threads())))
        self.best = float(ck["best_metric"]) if ck["best_metric"] is not None else math.inf
        self.last_metrics = dict(ck.get("metrics") or {})
        if self.cfg.max_minutes > 0 and self.epoch >= self.planned_epochs:
            self._plan_budget()
        log.info("resumed %s at epoch %d, step %d", path, self.epoch, self.step)

    def _state(self) -> dict[str, Any]:
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if self.rt.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "model_config": self.mcfg.to_dict(),
            "train_config": self.cfg.to_dict(),
            "likelihood": self.mcfg.likelihood,
            "model_state": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer_state": self.opt.state_dict(),
            "scheduler_state": {
                "kind": "warmup_cosine" if self.cfg.cosine else "warmup_constant",
                "total_steps": self.total_steps,
                "planned_epochs": self.planned_epochs,
                "batch_in_epoch": self.batch_in_epoch,
                "train_seconds": self.train_seconds,
                "skipped_total": self.skipped_total,
                "num_threads": torch.get_num_threads(),
            },
            "rng_state": rng,
            "step": self.step,
            "epoch": self.epoch,
            "data": dict(self.data_info),
            "metrics": self.last_metrics,
            "best_metric": None if math.isinf(self.best) else self.best,
        }

    def _save(self, best: bool) -> None:
        if not self.rt.is_main:
            return
        for name, p in self.model.named_parameters():
            if not bool(torch.isfinite(p).all()):
                raise TrainingFailed(
                    f"parameter {name} is not finite at step {self.step}; nothing saved "
                    "(lower --lr or use --grad-clip)"
                )
        self.runlog.flush()
        state = self._state()
        save_checkpoint(self.out / "last.pt", state)
        if best:
            # last.pt is replaced by rename on the next save, so a hard link keeps this version as best.
            link_checkpoint(self.out / "last.pt", self.out / "best.pt")

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
            if self.batch_in_epoch:  # stopped by the time budget inside an epoch
                self._save(best=False)
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
            terms.loss.backward()
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
        after_warmup = self.step >= self._warmup_end()
        reason = collapse_check(
            m,
            latent_dim=self.mcfg.latent_dim,
            fraction=cfg.collapse_fraction,
            kl_threshold=cfg.collapse_kl,
            after_warmup=after_warmup,
        )
        if reason:
            log.warning("epoch %d: %s", self.epoch, reason)
        row = {
            "type": "epoch",
            "epoch": self.epoch,
            "step": self.step,
            "val_rec": m["rec"],
            "val_kl": m["kl"],
            "val_neg_elbo": m["neg_elbo"],
            "kl_per_dim": m["kl_per_dim"],
            "active_units": m["active_units"],
            "latent_dim": self.mcfg.latent_dim,
            "mi": m["mi"],
            "skipped_steps": self.skipped_total,
            "collapse": reason is not None,
            "collapse_reason": reason,
            "beta": self._beta(self.step),
            "train_seconds": round(self.train_seconds, 3),
        }
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
        self._save(best=is_best)
        if cfg.grids:
            self._grids()
        now = time.monotonic()
        if now - self._last_curves >= cfg.curves_every_s:
            save_curves(self.out / "metrics.jsonl", self.out / "curves.png")
            self._last_curves = time.monotonic()

    def _warmup_end(self) -> int:
        c = self.cfg
        if c.beta_schedule in ("linear", "sigmoid"):
            return c.beta_warmup_steps
        if c.beta_schedule == "cyclical":
            return int(self.total_steps / max(1, c.beta_cycles) * c.beta_ratio)
        return 0

    @torch.no_grad()
    def _grids(self) -> None:
        self.model.eval()
        g = torch.Generator().manual_seed(self.cfg.seed + 1)
        x = self.x_val[:8]
        mu, _ = self.model.encode(x)
        rec = self.model.decode_mean(mu)
        pair = torch.cat([x, rec]).float().cpu().numpy()
        z = torch.randn((16, self.mcfg.latent_dim), generator=g).to(self.rt.device)
        samples = self.model.decode_mean(z).float().cpu().numpy()
        self.model.train()
        save_grid(pair, self.out / "grids" / f"epoch{self.epoch:04d}-reconstructions.png", nrow=len(x))
        save_grid(samples, self.out / "grids" / f"epoch{self.epoch:04d}-samples.png", nrow=8)

    def _plan_budget(self) -> None:
        """With --max-minutes: after each epoch, set the planned epoch count (at most `epochs`) so that the
        projected training time fits the budget; the cosine schedule follows the plan and ends at min_lr.
        The plan may grow again when epochs get faster (e.g. a shared CPU frees up)."""
        cfg = self.cfg
        if cfg.max_minutes <= 0 or self.epoch == 0:
            return
        per_epoch = self.train_seconds / self.epoch
        left = cfg.max_minutes * 60 - self.train_seconds
        fit = self.epoch + int(np.floor(max(0.0, left) / max(per_epoch, 1e-9)))
        plan = int(all_reduce_min(self.rt, float(min(cfg.epochs, fit))))
        if plan != self.planned_epochs:
            log.info(
                "time budget %g min: %.1f s per epoch, planning %d epochs instead of %d",
                cfg.max_minutes,
                per_epoch,
                plan,
                self.planned_epochs,
            )
            self.planned_epochs = plan
