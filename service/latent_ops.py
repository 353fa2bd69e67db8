"""Latent-space paths the service decodes: interpolation, traversal, attribute edits (numpy only).

All return float32 latents [rows, D]; the servicer decodes them in one batch.
"""

from __future__ import annotations

import numpy as np

__all__ = ["interpolate", "lerp", "slerp", "traverse", "rank_dims", "edit", "DEFAULT_TRAVERSE_DIMS"]

# Rows of a traversal when the request names no dimensions.
DEFAULT_TRAVERSE_DIMS = 8


def lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(1 - t) a + t b for each t: a straight line, endpoints exact at t = 0 and 1."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (1.0 - t)[:, None] * a64 + t[:, None] * b64


def slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical interpolation (Shoemake 1985), as suggested for the Gaussian prior by White 2016
    ("Sampling generative networks"): the angle moves linearly and the norm linearly from |a| to |b|, so
    no point falls into the low-density centre the straight line crosses. Near-parallel or zero
    endpoints fall back to the line (the arc is then the line)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    na, nb = float(np.linalg.norm(a64)), float(np.linalg.norm(b64))
    if na < 1e-12 or nb < 1e-12:
        return lerp(a, b, t)
    ua, ub = a64 / na, b64 / nb
    omega = float(np.arccos(np.clip(ua @ ub, -1.0, 1.0)))
    if omega < 1e-6 or np.pi - omega < 1e-6:
        # Parallel: the line. Antiparallel: the arc is not unique; the line is as good a choice.
        return lerp(a, b, t)
    so = np.sin(omega)
    direction = (np.sin((1.0 - t) * omega)[:, None] * ua + np.sin(t * omega)[:, None] * ub) / so
    norm = (1.0 - t) * na + t * nb
    return np.asarray(direction * norm[:, None])


def interpolate(a: np.ndarray, b: np.ndarray, steps: int, method: str) -> np.ndarray:
    """`steps` latents from a to b [D], endpoints included (bitwise a and b), [steps, D] float32."""
    t = np.linspace(0.0, 1.0, steps)
    path = (slerp if method == "spherical" else lerp)(a, b, t).astype(np.float32)
    path[0], path[-1] = a, b
    return path


def rank_dims(kl_per_dim: list[float] | np.ndarray, n: int) -> list[int]:
    """The n most informative dimensions: largest mean KL to the prior on the training data first (a
    dimension with KL ~ 0 is inactive and decodes to no change; Burda et al. 2016, sec. 5.2)."""
    kl = np.asarray(kl_per_dim, dtype=np.float64)
    order = np.argsort(-kl, kind="stable")
    return [int(i) for i in order[:n]]


def traverse(base: np.ndarray, dims: list[int], values: np.ndarray) -> np.ndarray:
    """Row r sets dimension dims[r] of `base` [D] to each value in turn, all else fixed:
    [len(dims) * len(values), D] float32, row-major."""
    d = base.shape[0]
    out = np.repeat(base[None, :].astype(np.float32), len(dims) * len(values), axis=0).reshape(
        len(dims), len(values), d)
    for r, dim in enumerate(dims):
        out[r, :, dim] = values
    return out.reshape(-1, d)


def edit(mu: np.ndarray, direction: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """mu_i + s_j * direction for every image i and scale j, image-major: [N * S, D] float32."""
    step = direction.astype(np.float32)[None, None, :]
    z = mu[:, None, :] + scales.astype(np.float32)[None, :, None] * step
    return np.asarray(z.reshape(-1, mu.shape[1]).astype(np.float32, copy=False))
