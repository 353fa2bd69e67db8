"""Fixtures of the exporter tests: real checkpoints from the session's tiny runs, exported for real."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


def _train_tiny(out: Path, *, arch: str = "mlp", likelihood: str = "bernoulli", epochs: int = 1,
               data: str = "digits", input_shape: tuple[int, int, int] = (1, 8, 8), **model_kw: Any) -> Path:
    """A few optimiser steps (on the bundled digits by default): enough for real, non-trivial weights."""
    from trainer.config import ModelConfig, TrainConfig
    from trainer.train import train

    hidden = (16,) if arch == "mlp" else (4, 8)
    model_cfg = ModelConfig(input_shape=input_shape, latent_dim=3, arch=arch, hidden=hidden,
                            likelihood=likelihood, **model_kw)
    train_cfg = TrainConfig(data=data, out_dir=str(out), epochs=epochs, batch_size=256, lr=3e-3,
                            seed=0, grids=False, tensorboard=False)
    return train(model_cfg, train_cfg)


@pytest.fixture(scope="session")
def train_tiny() -> Callable[..., Path]:
    """train_tiny(out, arch=..., likelihood=..., data=..., input_shape=..., **model_kw) -> run folder."""
    return _train_tiny


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_run_dir: Path) -> Path:
    from trainer.checkpoint import resolve_checkpoint

    return resolve_checkpoint(tiny_run_dir)


@pytest.fixture(scope="session")
def fp16_triton_export(tiny_run_dir: Path, tmp_path_factory: pytest.TempPathFactory
                       ) -> tuple[Path, Path, dict[str, Any]]:
    """The tiny MLP run exported once more, with fp16 graphs and a Triton repository."""
    from exporter.export import export_model

    root = tmp_path_factory.mktemp("fp16-triton")
    manifest = export_model(tiny_run_dir, root / "model", fp16=True, triton_dir=root / "triton")
    return root / "model", root / "triton", manifest
