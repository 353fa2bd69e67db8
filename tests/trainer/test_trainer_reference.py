"""The reference block the trainer stores in each checkpoint: right statistics on the exact train split,
a lossless parity sample, computed only at checkpoint writes, and without perturbing training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import trainer.run_checkpoints as run_ckpt_mod
from trainer.checkpoint import load_checkpoint, model_from_checkpoint
from trainer.config import ModelConfig, TrainConfig
from trainer.data import fingerprint, load_images, training_images
from trainer.model import build_model
from trainer.reference import (
    PARITY_SAMPLE,
    decode_sample,
    encode_sample,
    model_statistics,
    reference_statistics,
)
from trainer.train import train


def _cfgs(tmp: Path, **kw: Any) -> tuple[ModelConfig, TrainConfig]:
    m = ModelConfig(input_shape=(1, 8, 8), latent_dim=3, hidden=(16,))
    base: dict[str, Any] = {"epochs": 2, "batch_size": 128, "lr": 3e-3, "seed": 0, "grids": False,
                            "tensorboard": False, "progress": False}
    t = TrainConfig(out_dir=str(tmp), **{**base, **kw})
    return m, t


def test_block_holds_the_statistics_of_its_own_weights(tiny_run_dir: Path) -> None:
    for name in ("best.pt", "last.pt"):
        ck = load_checkpoint(tiny_run_dir / name)
        block = ck["reference"]
        images = training_images(TrainConfig.from_dict(ck["train_config"]))
        assert block["data"] == {"fingerprint": fingerprint(images), "n_images": len(images),
                                 "source": "digits"}
        assert block["data"]["fingerprint"] == ck["data"]["fingerprint"]
        model = model_from_checkpoint(ck)

        @torch.no_grad()
        def encode(x: np.ndarray, model: torch.nn.Module = model) -> tuple[np.ndarray, np.ndarray]:
            mu, logvar = model.encode(torch.from_numpy(x))
            return mu.numpy(), logvar.numpy()

        want = reference_statistics(encode, images, active_threshold=0.01)
        got = block["statistics"]
        assert got.keys() == want.keys() and got["n_images"] == len(images) == 1617
        for k in ("mu_mean", "mu_var", "posterior_var_mean", "kl_per_dim"):
            np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-9, err_msg=k)
        assert got["active_units"] == want["active_units"]
        # The digits (k/16) are stored losslessly as float16: the first images of the split, exactly.
        assert block["sample_encoding"] == "float16" and block["sample"].dtype == torch.float16
        sample = decode_sample(block["sample"], block["sample_encoding"])
        assert np.array_equal(sample, images[:PARITY_SAMPLE])


@pytest.mark.parametrize(("kind", "encoding", "nbytes"), [
    ("uint8", "uint8/255", 1), ("sixteenths", "float16", 2), ("float", "float32", 4)])
def test_sample_storage_is_lossless_and_small(kind: str, encoding: str, nbytes: int) -> None:
    rng = np.random.default_rng(0)
    if kind == "uint8":
        x = rng.integers(0, 256, (10, 3, 5, 7), dtype=np.uint8).astype(np.float32) / 255.0
    elif kind == "sixteenths":
        x = load_images("digits")[:10]
    else:
        x = rng.random((10, 3, 5, 7), dtype=np.float32)
    t, enc = encode_sample(x)
    assert enc == encoding and t.element_size() == nbytes
    back = decode_sample(t, enc)
    assert back.dtype == np.float32 and np.array_equal(back, x)
    with pytest.raises(ValueError, match="unknown sample encoding"):
        decode_sample(t, "png")


def test_statistics_pass_leaves_mode_and_rng_alone() -> None:
    torch.manual_seed(3)
    model = build_model(ModelConfig(input_shape=(1, 8, 8), latent_dim=3, hidden=(16,)))
    model.train()
    before = torch.get_rng_state()
    stats = model_statistics(model, load_images("digits")[:300], active_threshold=0.01)
    assert stats["n_images"] == 300 and len(stats["mu_mean"]) == 3
    assert model.training and torch.equal(torch.get_rng_state(), before)


def test_cost_is_paid_at_checkpoint_writes_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One statistics pass per checkpoint written, none per step or per improving epoch: with writes
    throttled (ckpt_every_s), the best states kept in memory in between get no pass until written."""
    calls = {"reference_block": 0, "save_checkpoint": 0}
    real_block, real_save = run_ckpt_mod.reference_block, run_ckpt_mod.save_checkpoint

    def counting_block(*a: Any, **kw: Any) -> dict[str, Any]:
        calls["reference_block"] += 1
        return real_block(*a, **kw)

    def counting_save(*a: Any, **kw: Any) -> None:
        calls["save_checkpoint"] += 1
        real_save(*a, **kw)

    monkeypatch.setattr(run_ckpt_mod, "reference_block", counting_block)
    monkeypatch.setattr(run_ckpt_mod, "save_checkpoint", counting_save)
    m, t = _cfgs(tmp_path / "run", epochs=5, ckpt_every_s=1e9)
    run = train(m, t)
    steps = load_checkpoint(run / "last.pt")["step"]
    # The final last.pt, plus best.pt when the best epoch was not the last one.
    assert 1 <= calls["save_checkpoint"] <= 2 and calls["reference_block"] == calls["save_checkpoint"]
    assert steps == 5 * 13  # 1617 images in batches of 128: 65 steps, 5 epochs, at most 2 passes
    images = training_images(t)
    for name in ("best.pt", "last.pt"):  # each block is that of its own file's weights
        ck = load_checkpoint(run / name)
        want = model_statistics(model_from_checkpoint(ck), images, active_threshold=0.01)
        np.testing.assert_allclose(ck["reference"]["statistics"]["mu_var"], want["mu_var"], rtol=1e-6)
        np.testing.assert_allclose(ck["reference"]["statistics"]["kl_per_dim"], want["kl_per_dim"], rtol=1e-6)


def test_statistics_passes_do_not_change_training(tmp_path: Path) -> None:
    """A checkpoint (and its statistics pass) after every step, mid-epoch in train mode, leaves the
    weights exactly those of a run that checkpoints only at the end."""
    runs = []
    for name, every in (("every-step", 1), ("at-end", 0)):
        m, t = _cfgs(tmp_path / name, ckpt_every=every, num_threads=1)
        runs.append(load_checkpoint(train(m, t) / "last.pt"))
    a, b = runs
    assert a["step"] == b["step"] == 26
    for k, v in a["model_state"].items():
        assert torch.equal(v, b["model_state"][k]), k
    assert torch.equal(a["rng_state"]["torch"], b["rng_state"]["torch"])
    assert a["reference"]["statistics"] == b["reference"]["statistics"]


def test_best_state_kept_in_memory_gets_the_block_of_its_own_weights(tmp_path: Path) -> None:
    """The path of a best model found between throttled saves: its state is kept without a block, the
    weights move on, and when it is written its block is computed from the kept weights (on a rebuilt
    model; the training RNG is left as it was)."""
    import copy

    from trainer.runtime import setup_runtime, teardown_runtime
    from trainer.train import _Run

    m, t = _cfgs(tmp_path / "run", num_threads=1)
    rt = setup_runtime(t.device, t.num_threads)
    try:
        run = _Run(m, t, rt, resume=False)
        run._train_epoch()
        kept = copy.deepcopy(run._state(reference=False))
        assert "reference" not in kept
        run.batch_in_epoch = 0
        run._train_epoch()  # the live weights move on
        run._pending_best = kept
        rng = torch.get_rng_state()
        run._save_pending_best()
        assert torch.equal(torch.get_rng_state(), rng)
        now = run._state()["reference"]["statistics"]
    finally:
        teardown_runtime(rt)
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    want = model_statistics(model_from_checkpoint(best), training_images(t), active_threshold=0.01)
    got = best["reference"]["statistics"]
    np.testing.assert_allclose(got["mu_var"], want["mu_var"], rtol=1e-6)
    np.testing.assert_allclose(got["kl_per_dim"], want["kl_per_dim"], rtol=1e-6)
    assert not np.allclose(got["mu_mean"], now["mu_mean"], rtol=1e-4, atol=0)  # not the live weights'
