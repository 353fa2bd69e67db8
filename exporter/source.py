"""What the exporter reads from training: the checkpoint (rebuilt into the torch model) and, only when
the checkpoint holds no reference block or `--reference-data` asks for other images, the images to
compute the latent reference statistics on (exporter/reference.py decides which)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exporter.errors import DataMismatchError, SourceError, UnsupportedModelError
from exporter.manifest import sha256_file
from trainer.checkpoint import load_checkpoint, model_from_checkpoint, resolve_checkpoint
from trainer.config import ARCHS, LIKELIHOODS, ModelConfig, TrainConfig
from trainer.data import fingerprint, training_images
from trainer.errors import TrainerError
from trainer.model import VAE

__all__ = ["Source", "TrainingData", "load_source", "load_training_data"]


@dataclass
class Source:
    """A loaded checkpoint and the model rebuilt from it (eval mode, float32, CPU)."""

    path: Path
    sha256: str
    ckpt: dict[str, Any]
    model: VAE
    model_cfg: ModelConfig
    train_cfg: TrainConfig


@dataclass
class TrainingData:
    images: np.ndarray
    fingerprint: str
    source: str
    checkpoint_fingerprint: str | None
    overridden: bool


def load_source(source: Path) -> Source:
    """Load a checkpoint file or a run folder's best checkpoint; raise precise exporter errors."""
    try:
        path = resolve_checkpoint(source)
        ckpt = load_checkpoint(path)
    except TrainerError as exc:
        raise SourceError(str(source), getattr(exc, "problem", str(exc))) from None
    try:
        model_cfg = ModelConfig.from_dict(ckpt["model_config"])
    except (ValueError, TypeError, AttributeError) as exc:
        raise UnsupportedModelError(str(path), f"model_config: {exc}") from None
    if model_cfg.arch not in ARCHS:
        raise UnsupportedModelError(str(path), f"architecture {model_cfg.arch!r} (known: {', '.join(ARCHS)})")
    if model_cfg.likelihood not in LIKELIHOODS:
        raise UnsupportedModelError(str(path), f"likelihood {model_cfg.likelihood!r} "
                                               f"(known: {', '.join(LIKELIHOODS)})")
    try:
        train_cfg = TrainConfig.from_dict(dict(ckpt["train_config"]))
    except (TypeError, ValueError) as exc:
        raise SourceError(str(path), f"unreadable train_config: {exc}") from None
    try:
        model = model_from_checkpoint(ckpt)
    except TrainerError as exc:
        raise UnsupportedModelError(str(path), getattr(exc, "problem", str(exc))) from None
    for method in ("encode", "decode_mean"):
        if not callable(getattr(model, method, None)):
            raise UnsupportedModelError(str(path), f"the model has no {method}()")
    model = model.float().cpu().eval()
    return Source(path=path, sha256=sha256_file(path), ckpt=ckpt, model=model, model_cfg=model_cfg,
                  train_cfg=train_cfg)


def load_training_data(src: Source, data: str | None = None) -> TrainingData:
    """The train split the checkpoint used, checked against the checkpoint's data fingerprint (the path
    of a checkpoint without a stored reference block).

    With `data` the images come from that spec instead (same split rule, fraction and seed, applied by
    the trainer's own `training_images`), and a fingerprint mismatch is accepted and recorded: the user
    said which data is the reference.
    """
    recorded = (src.ckpt.get("data") or {}).get("fingerprint")
    spec = data if data is not None else src.train_cfg.data
    if data is None and spec != "digits" and not Path(spec).exists():
        raise DataMismatchError(f"checkpoint has no stored reference statistics and its training data "
                                f"{spec} is missing; pass --reference-data PATH")
    cfg = dataclasses.replace(src.train_cfg, data=spec)
    try:
        images = training_images(cfg)
    except TrainerError as exc:
        hint = "" if data is not None else "; pass --reference-data PATH to point at the training images"
        raise DataMismatchError(f"training data {spec!r}: {exc}{hint}") from None
    want = tuple(src.model_cfg.input_shape)
    if tuple(images.shape[1:]) != want:
        raise DataMismatchError(f"training data {spec!r} holds images of shape {list(images.shape[1:])}, "
                                f"the model takes {list(want)}")
    fp = fingerprint(images)
    matches = recorded is None or fp == recorded  # the trainer fingerprints its train split
    if not matches and data is None:
        raise DataMismatchError(
            f"training data {spec!r} has fingerprint {fp[:12]}..., the checkpoint was trained on "
            f"{str(recorded)[:12]}...; the data changed since training. Pass --reference-data PATH to "
            "compute the reference statistics on other images anyway (recorded in the manifest)")
    return TrainingData(images=images, fingerprint=fp, source=spec, checkpoint_fingerprint=recorded,
                        overridden=data is not None and not matches)
