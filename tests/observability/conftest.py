"""Fixtures of the observability tests: the real exported tiny model run by onnxruntime, and its
training images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


class Encoder:
    """The exported encoder graph, run by onnxruntime exactly as the service runs it."""

    def __init__(self, model_dir: Path) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_dir / "encoder.onnx"), opts,
                                            providers=["CPUExecutionProvider"])
        self.manifest = json.loads((model_dir / "manifest.json").read_text())

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, logvar = self.session.run(["mu", "logvar"], {"x": x.astype(np.float32)})
        return mu, logvar


@pytest.fixture(scope="session")
def encoder(tiny_model_dir: Path) -> Encoder:
    return Encoder(tiny_model_dir)


@pytest.fixture(scope="session")
def digits() -> np.ndarray:
    """The images the tiny model was trained on (scikit-learn's bundled digits), [N, 1, 8, 8] in [0, 1]."""
    from trainer.data import load_images

    return load_images("digits")
