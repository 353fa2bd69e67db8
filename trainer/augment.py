"""Training-time data augmentation, applied per batch on tensors: random horizontal flips and random
translations by a few pixels with zero fill.

On a few thousand images a VAE's decoder memorises the training set (the train -ELBO keeps falling while
the validation -ELBO rises); showing it slightly moved copies of the images is the classic remedy for
image models (Simard et al. 2003 for small shifts). Both transforms keep pixel values unchanged, so the
Bernoulli / Gaussian likelihoods stay valid; zero fill matches the black background of MNIST-like data.

The random draws come from a generator seeded by (seed, step), not from the global RNG: the augmentation
of a step is a pure function of the step, so an interrupted run resumes exactly (see train.py).
"""

from __future__ import annotations

import torch

__all__ = ["augment_batch", "augmentation_generator"]


def augmentation_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """The generator of step `step`'s augmentation (independent of the global torch RNG)."""
    g = torch.Generator(device=device)
    g.manual_seed((int(seed) * 1_000_033 + 17) * 1_000_003 + int(step))
    return g


def augment_batch(
    x: torch.Tensor, *, hflip: bool, shift: int, generator: torch.Generator
) -> torch.Tensor:
    """A randomly transformed copy of the batch `x` [N, C, H, W]: each image is mirrored left-right with
    probability 1/2 (when `hflip`) and moved by dy, dx drawn uniformly from -shift..shift (zero fill).
    Returns `x` itself when both are off."""
    if x.dim() != 4:
        raise ValueError(f"expected a batch [N, C, H, W], got shape {tuple(x.shape)}")
    if shift < 0:
        raise ValueError(f"shift must be >= 0, got {shift}")
    n, _, h, w = x.shape
    if hflip:
        flip = torch.rand(n, generator=generator, device=x.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if shift > 0:
        s = shift
        padded = torch.nn.functional.pad(x, (s, s, s, s))
        # Offsets 0..2s into the padded image = shifts -s..s; gather each image's H x W window.
        oy = torch.randint(0, 2 * s + 1, (n,), generator=generator, device=x.device)
        ox = torch.randint(0, 2 * s + 1, (n,), generator=generator, device=x.device)
        rows = oy[:, None] + torch.arange(h, device=x.device)  # [N, H]
        cols = ox[:, None] + torch.arange(w, device=x.device)  # [N, W]
        idx = torch.arange(n, device=x.device)[:, None, None]
        # Advanced indexing on dims 0, 2, 3 puts the channel dim last: [N, H, W, C] -> [N, C, H, W].
        x = padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return x.contiguous()
