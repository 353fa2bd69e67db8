"""Training-batch augmentation: flips and shifts are exact pixel moves, draws are a function of
(seed, step), and a run with augmentation is deterministic; a bad --shift is refused with exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer.augment import augment_batch, augmentation_generator
from trainer.checkpoint import load_checkpoint
from trainer.cli import train_main
from trainer.config import ModelConfig, TrainConfig
from trainer.train import train

CPU = torch.device("cpu")


def _batch(n: int = 64, h: int = 8, w: int = 9) -> torch.Tensor:
    x = torch.rand((n, 1, h, w), generator=torch.Generator().manual_seed(1))
    x[:, :, :2] = 0.0  # a black border (as in MNIST-like data) so shifts by <= 2 lose nothing
    x[:, :, -2:] = 0.0
    x[:, :, :, :2] = 0.0
    x[:, :, :, -2:] = 0.0
    return x


def _shifted(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """img [C, H, W] moved down by dy and right by dx, zero fill."""
    out = torch.zeros_like(img)
    _, h, w = img.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[:, yd, xd] = img[:, ys, xs]
    return out


def test_hflip_mirrors_about_half_of_the_images() -> None:
    x = _batch()
    y = augment_batch(x, hflip=True, shift=0, generator=augmentation_generator(0, 0, CPU))
    flipped = [bool(torch.equal(y[i], x[i].flip(-1))) for i in range(len(x))]
    kept = [bool(torch.equal(y[i], x[i])) for i in range(len(x))]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 16 <= sum(flipped) <= 48 and sum(kept) >= 16


def test_shift_moves_each_image_within_range_with_zero_fill() -> None:
    x = _batch()
    y = augment_batch(x, hflip=False, shift=2, generator=augmentation_generator(3, 5, CPU))
    seen = set()
    for i in range(len(x)):
        match = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(y[i], _shifted(x[i], dy, dx))
        ]
        assert match, f"image {i} is not a shift of its input by at most 2 pixels"
        seen.add(match[0])
    assert len(seen) > 5  # the offsets vary over the batch
    torch.testing.assert_close(y.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)))  # nothing lost, nothing added


def test_draws_depend_on_seed_and_step_only() -> None:
    x = _batch()
    a = augment_batch(x, hflip=True, shift=1, generator=augmentation_generator(0, 7, CPU))
    b = augment_batch(x, hflip=True, shift=1, generator=augmentation_generator(0, 7, CPU))
    c = augment_batch(x, hflip=True, shift=1, generator=augmentation_generator(0, 8, CPU))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert augment_batch(x, hflip=False, shift=0, generator=augmentation_generator(0, 0, CPU)) is x
    with pytest.raises(ValueError, match="shift must be >= 0"):
        augment_batch(x, hflip=False, shift=-1, generator=augmentation_generator(0, 0, CPU))


def test_augmented_run_is_deterministic_and_differs_from_plain(tmp_path: Path) -> None:
    m = ModelConfig(latent_dim=3, hidden=(32,))

    def run(name: str, **kw: object) -> dict[str, torch.Tensor]:
        t = TrainConfig(
            out_dir=str(tmp_path / name), epochs=1, batch_size=64, grids=False, tensorboard=False,
            progress=False, **kw,  # type: ignore[arg-type]
        )
        return load_checkpoint(train(m, t) / "last.pt")["model_state"]

    a, b = run("a", hflip=True, shift=1), run("b", hflip=True, shift=1)
    plain = run("plain")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], plain[k]) for k in a)


def test_negative_shift_flag_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert train_main(["--shift", "-1", "--out", str(tmp_path / "r"), "-q"]) == 2
    assert "shift must be >= 0" in capsys.readouterr().err
