"""Request builders and reply readers used by `client.core` (so by both `VaeClient` and `AsyncVaeClient`):
numpy in, numpy out, with the shapes checked on the way back."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from client.errors import ProtocolError
from client.planning import image_format
from client.tensors import from_tensor, to_tensor
from protos.vae.v1 import vae_pb2

__all__ = [
    "EncodeResult",
    "SampleResult",
    "as_wire_array",
    "chunk_seed",
    "encode_request",
    "read_encode",
    "decode_request",
    "read_images",
    "sample_request",
    "read_sample",
    "concat_samples",
    "check_temperature",
    "reconstruct_request",
    "as_latents",
    "join_encode",
    "join_images",
]


@dataclass(frozen=True)
class EncodeResult:
    """Posterior parameters: mu and logvar [N, D] float32; z [N, D] when a sample was asked."""

    mu: np.ndarray
    logvar: np.ndarray
    z: np.ndarray | None = None


@dataclass(frozen=True)
class SampleResult:
    """Prior samples: images [n, C, H, W] (uint8 or float32); z [n, D] when latents were asked.
    `offset` is the index of the first sample within the request (streaming)."""

    images: np.ndarray
    z: np.ndarray | None = None
    offset: int = 0


def as_wire_array(arr: np.ndarray, what: str) -> np.ndarray:
    """float64 becomes float32; float32, float16 and uint8 pass; anything else is refused here,
    before a round trip to the server."""
    a = np.asarray(arr)
    if a.dtype == np.float64:
        a = a.astype(np.float32)
    if a.dtype not in (np.float32, np.float16, np.uint8):
        raise ValueError(f"{what} must be float32, float16 or uint8, got {a.dtype}")
    return a


def chunk_seed(seed: int | None, index: int) -> int | None:
    """The first chunk keeps the caller's seed (so a request that fits in one call matches the
    server exactly); later chunks get independent seeds derived with numpy's SeedSequence."""
    if seed is None or index == 0:
        return seed
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0])


def check_temperature(temperature: float) -> float:
    t = float(temperature)
    if not math.isfinite(t) or t <= 0:
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    return t


def encode_request(images: np.ndarray, sample: bool, seed: int | None) -> vae_pb2.EncodeRequest:
    req = vae_pb2.EncodeRequest(images=to_tensor(images), sample=sample)
    if seed is not None:
        req.seed = seed
    return req


def _rows(arr: np.ndarray, n: int, width: int, what: str) -> np.ndarray:
    if arr.shape != (n, width):
        raise ProtocolError(f"server sent {what} of shape {list(arr.shape)}, expected [{n}, {width}]")
    return arr.astype(np.float32, copy=False)


def read_encode(resp: vae_pb2.EncodeResponse, n: int, latent_dim: int, sample: bool) -> EncodeResult:
    mu = _rows(from_tensor(resp.mu, "mu"), n, latent_dim, "mu")
    logvar = _rows(from_tensor(resp.logvar, "logvar"), n, latent_dim, "logvar")
    z = None
    if sample:
        if not resp.HasField("z"):
            raise ProtocolError("server sent no z although a sample was asked")
        z = _rows(from_tensor(resp.z, "z"), n, latent_dim, "z")
    return EncodeResult(mu, logvar, z)


def decode_request(z: np.ndarray, uint8: bool) -> vae_pb2.DecodeRequest:
    return vae_pb2.DecodeRequest(z=to_tensor(z), format=image_format(uint8))


def reconstruct_request(images: np.ndarray, uint8: bool) -> vae_pb2.ReconstructRequest:
    return vae_pb2.ReconstructRequest(images=to_tensor(images), format=image_format(uint8))


def read_images(tensor: vae_pb2.Tensor, n: int, shape: tuple[int, ...], uint8: bool) -> np.ndarray:
    images = from_tensor(tensor, "images")
    if images.shape[:1] != (n,) or images.size != n * int(np.prod(shape)):
        raise ProtocolError(f"server sent images of shape {list(images.shape)}, expected [{n}, "
                            f"{', '.join(map(str, shape))}]")
    want = np.uint8 if uint8 else np.float32
    if images.dtype != want:
        raise ProtocolError(f"server sent {images.dtype} images, expected {np.dtype(want).name}")
    return images.reshape((n, *shape))


def sample_request(n: int, seed: int | None, temperature: float, uint8: bool, latents: bool,
                   chunk_size: int = 0) -> vae_pb2.SampleRequest:
    req = vae_pb2.SampleRequest(n=n, temperature=temperature, format=image_format(uint8),
                                return_latents=latents, chunk_size=chunk_size)
    if seed is not None:
        req.seed = seed
    return req


def read_sample(resp: vae_pb2.SampleResponse, shape: tuple[int, ...], latent_dim: int, uint8: bool,
                latents: bool, expect_offset: int | None = None, n: int | None = None) -> SampleResult:
    count = int(resp.images.shape[0]) if resp.images.shape else 0
    if n is not None and count != n:
        raise ProtocolError(f"server sent {count} samples, expected {n}")
    if expect_offset is not None and resp.offset != expect_offset:
        raise ProtocolError(f"stream chunk starts at sample {resp.offset}, expected {expect_offset}")
    images = read_images(resp.images, count, shape, uint8)
    z = _rows(from_tensor(resp.z, "z"), count, latent_dim, "z") if latents else None
    return SampleResult(images, z, int(resp.offset))


def concat_samples(parts: list[SampleResult], latents: bool) -> SampleResult:
    if len(parts) == 1:
        return SampleResult(parts[0].images, parts[0].z, 0)
    images = np.concatenate([p.images for p in parts])
    z = np.concatenate([p.z for p in parts if p.z is not None]) if latents else None
    return SampleResult(images, z, 0)


def as_latents(z: np.ndarray, d: int) -> np.ndarray:
    """[D] or [N, D] latents as [N, D]; refused before a round trip when D is not the model's."""
    if z.ndim == 1:
        z = z[None]
    if z.ndim != 2 or z.shape[1] != d:
        raise ValueError(f"z must have shape [N, {d}], got {list(z.shape)}")
    return z


def join_encode(parts: list[EncodeResult], sample: bool, d: int) -> EncodeResult:
    if len(parts) == 1:
        return parts[0]
    if not parts:
        empty = np.zeros((0, d), np.float32)
        return EncodeResult(empty, empty.copy(), empty.copy() if sample else None)
    z = np.concatenate([p.z for p in parts if p.z is not None]) if sample else None
    return EncodeResult(np.concatenate([p.mu for p in parts]), np.concatenate([p.logvar for p in parts]), z)


def join_images(parts: list[np.ndarray], shape: tuple[int, ...], uint8: bool) -> np.ndarray:
    if not parts:
        return np.zeros((0, *shape), np.uint8 if uint8 else np.float32)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
