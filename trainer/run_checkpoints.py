"""Checkpointing of a training run: the state written to last.pt / best.pt and its exact restoration.
A mixin of the run object in trainer/train.py (it reads and sets the run's counters).

Every checkpoint written also holds the `reference` block (trainer/reference.py): the latent reference
statistics of its own weights on the exact train split, so the checkpoint exports without the data. Its
cost, one encoder pass over the split, is paid only when a checkpoint is written: a best state kept in
memory between writes gets its block when it is written."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from trainer.checkpoint import link_checkpoint, load_checkpoint, save_checkpoint
from trainer.config import ModelConfig, TrainConfig
from trainer.errors import CheckpointError, TrainingFailed
from trainer.model import VAE, build_model
from trainer.reference import reference_block
from trainer.runlog import RunLog
from trainer.runtime import Runtime

__all__ = ["RunCheckpoints"]

log = logging.getLogger("trainer")


class RunCheckpoints:
    # Set by the run (trainer/train.py).
    mcfg: ModelConfig
    cfg: TrainConfig
    rt: Runtime
    out: Path
    model: VAE
    opt: torch.optim.Optimizer
    runlog: RunLog
    data_info: dict[str, Any]
    x_train: torch.Tensor
    step: int
    epoch: int
    batch_in_epoch: int
    planned_epochs: int
    skipped_total: int
    train_seconds: float
    best: float
    last_metrics: dict[str, Any]
    _last_save: float
    _saved_step: int
    _pending_best: dict[str, Any] | None

    def _plan_budget(self) -> None:  # pragma: no cover - provided by the run
        raise NotImplementedError

    @property
    def total_steps(self) -> int:  # pragma: no cover - provided by the run (a property derived there)
        raise NotImplementedError

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

    def _reference(self, model_state: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
        """The reference block of the current weights, or of `model_state` (a state kept for later)."""
        model = self.model
        if model_state is not None:
            # A fresh module rather than a deep copy (under DDP the live parameters carry its hooks);
            # its initialisation draws from the CPU RNG, which the fork puts back.
            with torch.random.fork_rng(devices=[]):
                model = build_model(self.mcfg)
            model.load_state_dict(model_state)
            model.to(self.rt.device)
        return reference_block(model, self.x_train, active_threshold=float(self.cfg.active_threshold),
                               data_info=self.data_info)

    def _state(self, reference: bool = True) -> dict[str, Any]:
        """The checkpoint of this moment; `reference=False` leaves out the reference block (added by
        `_save_pending_best` for a state that is written later)."""
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if self.rt.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        state: dict[str, Any] = {
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
        if reference:
            state["reference"] = self._reference()
        return state

    def _save_pending_best(self) -> None:
        """Write the best state kept in memory since the last save as best.pt, with its reference block."""
        state = self._pending_best
        if state is None:
            return
        if "reference" not in state:
            state["reference"] = self._reference(state["model_state"])
        save_checkpoint(self.out / "best.pt", state)

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
        self._last_save, self._saved_step = time.monotonic(), self.step
        state = self._state()
        save_checkpoint(self.out / "last.pt", state)
        if best:
            # last.pt is replaced by rename on the next save, so a hard link keeps this version as best.
            link_checkpoint(self.out / "last.pt", self.out / "best.pt")
