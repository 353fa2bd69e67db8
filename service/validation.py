"""Request validation against the manifest and the limits; every failure names what is wrong.

Inputs arrive as numpy views of the wire bytes (codec.to_array); the checks are vectorised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from service.errors import InvalidArgument, LimitExceeded

__all__ = ["Limits", "Validator", "NonFinite", "MAX_ABS_LATENT", "MAX_TEMPERATURE"]

# The prior is N(0, I): a latent beyond 1e4 standard deviations is no code the decoder was trained on,
# and finite but enormous values (~1e38) overflow the decoder's arithmetic into NaN images. Refuse them
# up front instead of answering OK with NaN. The temperature bound keeps Sample's z inside that range.
MAX_ABS_LATENT = 1e4
MAX_TEMPERATURE = 1e3


class NonFinite(InvalidArgument):
    """NaN or Inf in an input; carries the count for the non-finite metric."""

    def __init__(self, message: str, count: int) -> None:
        super().__init__(message)
        self.count = count


@dataclass(frozen=True)
class Limits:
    max_batch_per_request: int
    max_sample_n: int
    max_stream_n: int
    default_chunk_size: int
    max_send_message_bytes: int = 1 << 62


class Validator:
    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int, limits: Limits) -> None:
        self.image_shape = image_shape
        self.latent_dim = latent_dim
        self.limits = limits

    def _count(self, n: int, what: str) -> None:
        if n < 1:
            raise InvalidArgument(f"{what}: batch axis is 0; send at least one row")
        if n > self.limits.max_batch_per_request:
            raise LimitExceeded(f"{what}: {n} rows exceed max_batch_per_request="
                                f"{self.limits.max_batch_per_request} (VAE_MAX_BATCH_PER_REQUEST); "
                                "split the batch")

    @staticmethod
    def _finite(x: np.ndarray, what: str) -> None:
        if x.dtype.kind == "f":
            finite = np.isfinite(x)
            if not finite.all():
                bad = int(x.size - np.count_nonzero(finite))
                raise NonFinite(f"{what}: {bad} NaN/Inf value(s)", bad)

    def images(self, x: np.ndarray, what: str = "images") -> np.ndarray:
        """[N, C, H, W] (or [N, H, W] when C is 1) float32 in [0, 1], float16, or uint8 -> float32 [0, 1]."""
        c, h, w = self.image_shape
        expected = [c, h, w]
        if x.ndim == 3 and c == 1:
            x = x.reshape(x.shape[0], 1, h, w) if list(x.shape[1:]) == [h, w] else x
        if x.ndim != 4:
            raise InvalidArgument(f"{what}: rank {x.ndim} (shape {list(x.shape)}), expected rank 4 "
                                  f"[N, {c}, {h}, {w}]" + (f" or rank 3 [N, {h}, {w}]" if c == 1 else ""))
        if list(x.shape[1:]) != expected:
            raise InvalidArgument(f"{what}: shape {list(x.shape)} does not match the model's "
                                  f"[N, {c}, {h}, {w}]")
        self._count(x.shape[0], what)
        if x.dtype == np.uint8:
            return x.astype(np.float32) * np.float32(1.0 / 255.0)
        lo, hi = float(x.min()), float(x.max())
        # One pass each for min and max: NaN propagates into both and Inf lies outside [0, 1], so the
        # common all-valid case needs no separate finiteness pass; only a failure counts what is wrong.
        if 0.0 <= lo and hi <= 1.0:
            return x if x.dtype == np.float32 else x.astype(np.float32)
        self._finite(x, what)
        if lo < 0.0 or hi > 1.0:
            raise InvalidArgument(f"{what}: float pixels must lie in [0, 1], found [{lo:.4g}, {hi:.4g}] "
                                  "(send uint8 for 0-255 images)")
        return x if x.dtype == np.float32 else x.astype(np.float32)

    def latents(self, z: np.ndarray, what: str = "z") -> np.ndarray:
        """[N, D] float32 or float16 latents -> float32."""
        if z.dtype == np.uint8:
            raise InvalidArgument(f"{what}: dtype UINT8 is not a latent type; use FLOAT32 or FLOAT16")
        if z.ndim != 2:
            raise InvalidArgument(f"{what}: rank {z.ndim} (shape {list(z.shape)}), expected rank 2 "
                                  f"[N, {self.latent_dim}]")
        if z.shape[1] != self.latent_dim:
            raise InvalidArgument(f"{what}: latent dimension {z.shape[1]}, the model's is {self.latent_dim}")
        self._count(z.shape[0], what)
        peak = float(np.abs(z).max())
        if peak <= MAX_ABS_LATENT:  # False for NaN too: one pass in the common case (see images)
            return z if z.dtype == np.float32 else z.astype(np.float32)
        self._finite(z, what)
        if peak > MAX_ABS_LATENT:
            raise InvalidArgument(f"{what}: |z| reaches {peak:.4g}, over the bound {MAX_ABS_LATENT:g} "
                                  "(the prior is N(0, I); such latents overflow the decoder)")
        return z if z.dtype == np.float32 else z.astype(np.float32)

    def reply_fits(self, rows: int, uint8: bool, latents: bool, what: str) -> None:
        """A reply of `rows` images (plus latents) must fit the send limit; say so before computing it."""
        c, h, w = self.image_shape
        size = rows * (c * h * w * (1 if uint8 else 4) + (4 * self.latent_dim if latents else 0))
        if size > self.limits.max_send_message_bytes:
            raise LimitExceeded(f"{what}: the reply would be {size} bytes, over max_send_message_bytes="
                                f"{self.limits.max_send_message_bytes}; ask for fewer rows, UINT8 images, "
                                "or use SampleStream")

    def sample(self, n: int, temperature: float | None, chunk_size: int, *,
               stream: bool) -> tuple[float, int]:
        """(temperature, chunk size) of a Sample / SampleStream request."""
        if n <= 0:
            raise InvalidArgument("n must be >= 1")
        if stream:
            if n > self.limits.max_stream_n:
                raise LimitExceeded(f"n={n} exceeds max_stream_n={self.limits.max_stream_n} "
                                    "(VAE_MAX_STREAM_N)")
        elif n > self.limits.max_sample_n:
            raise LimitExceeded(f"n={n} exceeds max_sample_n={self.limits.max_sample_n} for a unary Sample; "
                                "use SampleStream for more")
        if temperature is None:
            temperature = 1.0
        elif not math.isfinite(temperature) or temperature <= 0:
            raise InvalidArgument(f"temperature must be finite and > 0, got {temperature}")
        elif temperature > MAX_TEMPERATURE:
            raise InvalidArgument(f"temperature {temperature:g} is over the bound {MAX_TEMPERATURE:g} "
                                  "(it scales the prior's standard deviation)")
        # chunk_size is ignored by unary Sample (one message); it only cuts SampleStream, so only a
        # stream checks it (a default_chunk_size above max_sample_n must not fail every unary Sample).
        chunk = chunk_size or self.limits.default_chunk_size
        if stream and chunk > self.limits.max_sample_n:
            raise LimitExceeded(f"chunk_size={chunk} exceeds max_sample_n={self.limits.max_sample_n}")
        return temperature, chunk
