"""Anomaly detection that works: the served ELBO of the tiny digits model ranks held-out digits above
images of another kind. ROC AUC is printed for each kind and asserted >= 0.95 for the obvious ones."""

from __future__ import annotations

import numpy as np
from e2e_helpers import tensor

from protos.vae.v1 import vae_pb2


def roc_auc(inliers: np.ndarray, outliers: np.ndarray) -> float:
    """P(score of a random inlier > score of a random outlier), ties counting half (the Mann-Whitney
    form of the area under the ROC curve)."""
    diff = inliers[:, None] - outliers[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def test_roc_auc_of_the_auc_helper():
    assert roc_auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert roc_auc(np.array([1.0]), np.array([1.0])) == 0.5
    assert roc_auc(np.array([1.0, 4.0]), np.array([2.0, 3.0])) == 0.5


def _held_out(run_dir) -> np.ndarray:
    from trainer.checkpoint import load_checkpoint
    from trainer.config import TrainConfig
    from trainer.data import load_images, split_indices

    tcfg = TrainConfig.from_dict(load_checkpoint(run_dir / "best.pt")["train_config"])
    images = load_images(tcfg.data)
    _, val = split_indices(len(images), tcfg.val_fraction, tcfg.seed, tcfg.split)
    return images[val][:200]


def _scores(stub, x: np.ndarray) -> np.ndarray:
    return np.concatenate([np.array(stub.Score(vae_pb2.ScoreRequest(images=tensor(x[i:i + 64]), seed=0),
                                               timeout=30).elbo) for i in range(0, len(x), 64)])


def test_served_elbo_separates_digits_from_other_images(stub, tiny_run_dir):
    digits = _held_out(tiny_run_dir)
    rng = np.random.default_rng(0)
    n = 100
    kinds = {
        "uniform noise": rng.random((n, 1, 8, 8), dtype=np.float32),
        "inverted digits": 1.0 - digits[:n],
        "shuffled pixels": np.stack([rng.permutation(d.ravel()).reshape(1, 8, 8) for d in digits[:n]]),
        "blank (all 0)": np.zeros((n, 1, 8, 8), np.float32),
    }
    inliers = _scores(stub, digits)
    aucs = {kind: roc_auc(inliers, _scores(stub, x)) for kind, x in kinds.items()}
    print("\nROC AUC, served ELBO, held-out digits vs:")
    for kind, auc in aucs.items():
        print(f"  {kind:16s} {auc:.4f}")
    for kind in ("uniform noise", "inverted digits", "shuffled pixels"):
        assert aucs[kind] >= 0.95, (kind, aucs[kind])
