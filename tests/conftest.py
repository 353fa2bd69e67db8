"""Session-wide artifacts built for real: a tiny VAE trained on scikit-learn's bundled digits, then
exported by the real exporter. Built once per test session under pytest's tmp folder."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The repo root (for the packages) and this folder (for `from servers import ...`, the one set of test
# servers) come first on the path, in every test folder.
for _path in (str(ROOT), str(ROOT / "tests")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

# Two cores are shared by the test process and the servers it starts: keep torch from spinning both.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _train(tmp: Path, arch: str, hidden: tuple[int, ...]) -> Path:
    from trainer.config import ModelConfig, TrainConfig
    from trainer.train import train

    model_cfg = ModelConfig(input_shape=(1, 8, 8), latent_dim=4, arch=arch, hidden=hidden,
                            likelihood="bernoulli")
    train_cfg = TrainConfig(data="digits", out_dir=str(tmp / f"run-{arch}"), epochs=3, batch_size=64,
                            lr=3e-3, seed=0, grids=False, tensorboard=False)
    return train(model_cfg, train_cfg)


def _export(run_dir: Path, out: Path) -> Path:
    from exporter.export import export_model

    export_model(run_dir, out)
    return out


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(tmp_path_factory.mktemp("tiny-mlp"), "mlp", (32,))


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(tiny_run_dir, tmp_path_factory.mktemp("model-mlp") / "model")


@pytest.fixture(scope="session")
def tiny_conv_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(tmp_path_factory.mktemp("tiny-conv"), "conv", (8, 16))


@pytest.fixture(scope="session")
def tiny_conv_model_dir(tiny_conv_run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(tiny_conv_run_dir, tmp_path_factory.mktemp("model-conv") / "model")
