"""Request builders and reply readers of Score, Interpolate, Traverse and Edit, shared by `VaeClient`
and `AsyncVaeClient` (numpy in, numpy out, shapes checked on the way back)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from client.errors import ProtocolError
from client.messages import as_wire_array, read_images
from client.planning import Plan, chunk_bounds, image_format
from client.tensors import from_tensor, to_tensor
from protos.vae.v1 import vae_pb2

__all__ = [
    "ScoreResult",
    "LatentPath",
    "TraverseResult",
    "EditResult",
    "METHODS",
    "score_chunks",
    "score_request",
    "read_score",
    "join_scores",
    "endpoint",
    "interpolate_request",
    "read_path",
    "traverse_request",
    "read_traverse",
    "edit_chunks",
    "edit_request",
    "read_edit",
    "attribute_direction",
]

METHODS = {"linear": vae_pb2.INTERPOLATION_METHOD_LINEAR, "spherical": vae_pb2.INTERPOLATION_METHOD_SPHERICAL,
           "slerp": vae_pb2.INTERPOLATION_METHOD_SPHERICAL}


@dataclass(frozen=True)
class ScoreResult:
    """Per image, nats: elbo = log_px - kl; iwae (the k-sample bound on log p(x)) when k > 1."""

    elbo: np.ndarray
    log_px: np.ndarray
    kl: np.ndarray
    iwae: np.ndarray | None
    k: int
    likelihood: str


@dataclass(frozen=True)
class LatentPath:
    """Interpolate: images [steps, C, H, W] and their latents z [steps, D]."""

    images: np.ndarray
    z: np.ndarray


@dataclass(frozen=True)
class TraverseResult:
    """images [rows, steps, C, H, W], z [rows, steps, D]; row r moves dimension dims[r]."""

    images: np.ndarray
    z: np.ndarray
    dims: list[int]


@dataclass(frozen=True)
class EditResult:
    """images [N, S, C, H, W] and z [N, S, D]: image i edited with scale j at [i, j]."""

    images: np.ndarray
    z: np.ndarray


def score_chunks(plan: Plan, images: np.ndarray, k: int) -> list[tuple[int, int]]:
    """Image ranges per Score request: images x k within max_batch_per_request, bytes within limits."""
    size = plan.encode_chunk(images.dtype.itemsize, False)
    if plan.max_batch:
        size = min(size, max(1, plan.max_batch // max(1, k)))
    return chunk_bounds(len(images), size)


def score_request(images: np.ndarray, k: int, seed: int | None) -> vae_pb2.ScoreRequest:
    req = vae_pb2.ScoreRequest(images=to_tensor(images), k=k)
    if seed is not None:
        req.seed = seed
    return req


def _floats(values: Sequence[float], n: int, what: str) -> np.ndarray:
    if len(values) != n:
        raise ProtocolError(f"server sent {len(values)} {what} values, expected {n}")
    return np.asarray(values, dtype=np.float64)


def read_score(resp: vae_pb2.ScoreResponse, n: int, k: int) -> ScoreResult:
    iwae = _floats(resp.iwae, n, "iwae") if k > 1 else None
    return ScoreResult(_floats(resp.elbo, n, "elbo"), _floats(resp.log_px, n, "log_px"),
                       _floats(resp.kl, n, "kl"), iwae, int(resp.k), resp.likelihood)


def join_scores(parts: list[ScoreResult], k: int, likelihood: str = "") -> ScoreResult:
    if len(parts) == 1:
        return parts[0]
    if not parts:
        e = np.zeros(0)
        return ScoreResult(e, e.copy(), e.copy(), e.copy() if k > 1 else None, k, likelihood)
    iwae = np.concatenate([p.iwae for p in parts if p.iwae is not None]) if k > 1 else None
    return ScoreResult(np.concatenate([p.elbo for p in parts]), np.concatenate([p.log_px for p in parts]),
                       np.concatenate([p.kl for p in parts]), iwae, k, parts[0].likelihood)


def endpoint(value: np.ndarray, what: str, latent_dim: int | None = None) -> vae_pb2.Endpoint:
    """A 1-D array is a latent [D]; anything else one image ([C, H, W], [1, C, H, W], [H, W])."""
    arr = as_wire_array(np.asarray(value), what)
    if arr.ndim == 1:
        if latent_dim is not None and arr.shape[0] != latent_dim:
            raise ValueError(f"{what}: a latent of {arr.shape[0]} values, the model's latent_dim is "
                             f"{latent_dim}")
        return vae_pb2.Endpoint(z=to_tensor(arr.astype(np.float32)))
    return vae_pb2.Endpoint(image=to_tensor(arr))


def _method(method: str) -> vae_pb2.InterpolationMethod:
    if method not in METHODS:
        raise ValueError(f"method must be linear or spherical, got {method!r}")
    return METHODS[method]


def interpolate_request(a: np.ndarray, b: np.ndarray, steps: int, method: str, uint8: bool,
                        latent_dim: int | None = None) -> vae_pb2.InterpolateRequest:
    if steps < 2:
        raise ValueError(f"steps must be >= 2 (endpoints included), got {steps}")
    return vae_pb2.InterpolateRequest(a=endpoint(a, "a", latent_dim), b=endpoint(b, "b", latent_dim),
                                      steps=steps,
                                      method=_method(method), format=image_format(uint8))


def _latents(t: vae_pb2.Tensor, n: int, d: int) -> np.ndarray:
    z = from_tensor(t, "z")
    if z.shape != (n, d):
        raise ProtocolError(f"server sent z of shape {list(z.shape)}, expected [{n}, {d}]")
    return z.astype(np.float32, copy=False)


def read_path(resp: vae_pb2.InterpolateResponse, steps: int, plan: Plan, uint8: bool) -> LatentPath:
    return LatentPath(read_images(resp.images, steps, plan.input_shape, uint8),
                      _latents(resp.z, steps, plan.latent_dim))


def traverse_request(base: np.ndarray, dims: Sequence[int] | None, n_dims: int, low: float | None,
                     high: float | None, steps: int, uint8: bool,
                     latent_dim: int | None = None) -> vae_pb2.TraverseRequest:
    req = vae_pb2.TraverseRequest(base=endpoint(base, "base", latent_dim), dims=list(dims or []),
                                  n_dims=n_dims, steps=steps, format=image_format(uint8))
    if low is not None:
        req.low = low
    if high is not None:
        req.high = high
    return req


def read_traverse(resp: vae_pb2.TraverseResponse, steps: int, plan: Plan, uint8: bool) -> TraverseResult:
    rows = len(resp.dims)
    images = read_images(resp.images, rows * steps, plan.input_shape, uint8)
    z = _latents(resp.z, rows * steps, plan.latent_dim)
    return TraverseResult(images.reshape(rows, steps, *plan.input_shape), z.reshape(rows, steps, -1),
                          [int(d) for d in resp.dims])


def edit_chunks(plan: Plan, images: np.ndarray, n_scales: int, uint8: bool) -> list[tuple[int, int]]:
    size = plan.reconstruct_chunk(images.dtype.itemsize, uint8) // max(1, n_scales) or 1
    if plan.max_batch:
        size = min(size, max(1, plan.max_batch // max(1, n_scales)))
    return chunk_bounds(len(images), size)


def edit_request(images: np.ndarray, direction: np.ndarray, scales: Sequence[float],
                 uint8: bool) -> vae_pb2.EditRequest:
    return vae_pb2.EditRequest(images=to_tensor(images),
                               direction=to_tensor(np.asarray(direction, dtype=np.float32).reshape(-1)),
                               scales=list(scales), format=image_format(uint8))


def read_edit(resp: vae_pb2.EditResponse, n: int, n_scales: int, plan: Plan, uint8: bool) -> EditResult:
    images = read_images(resp.images, n * n_scales, plan.input_shape, uint8)
    z = _latents(resp.z, n * n_scales, plan.latent_dim)
    return EditResult(images.reshape(n, n_scales, *plan.input_shape), z.reshape(n, n_scales, -1))


def attribute_direction(mu_with: np.ndarray, mu_without: np.ndarray) -> np.ndarray:
    """An attribute vector: the mean posterior mean of images that have the attribute minus that of
    images that do not (the latent arithmetic of White 2016), [D] float32."""
    if len(mu_with) == 0 or len(mu_without) == 0:
        raise ValueError("attribute_direction needs at least one image in each set")
    diff = mu_with.astype(np.float64).mean(axis=0) - mu_without.astype(np.float64).mean(axis=0)
    return np.asarray(diff, dtype=np.float32)
