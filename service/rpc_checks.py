"""Request checks of Score, Interpolate, Traverse and Edit; every failure names the field and the rule.

Built on the Validator (shapes, dtypes, ranges and the per-request row limit), so the new RPCs obey the
same limits as the others: the rows a request makes the graphs run (images x k for Score, steps, rows x
steps, images x scales) count against max_batch_per_request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from service.errors import InvalidArgument, LimitExceeded
from service.validation import MAX_ABS_LATENT, Validator

__all__ = ["Endpoint", "RpcChecks", "METHODS", "DEFAULT_LOW", "DEFAULT_HIGH"]

# InterpolationMethod numbers (vae.proto) -> method; UNSPECIFIED means spherical.
METHODS = {0: "spherical", 1: "linear", 2: "spherical"}
# A traversal's default range, in prior standard deviations.
DEFAULT_LOW, DEFAULT_HIGH = -3.0, 3.0


@dataclass(frozen=True)
class Endpoint:
    """One image [1, C, H, W] float32 to encode, or one latent [1, D] float32."""

    kind: str  # image | z
    value: np.ndarray


class RpcChecks:
    def __init__(self, validator: Validator) -> None:
        self.v = validator

    @property
    def max_rows(self) -> int:
        return self.v.limits.max_batch_per_request

    def rows(self, rows: int, what: str) -> None:
        if rows > self.max_rows:
            raise LimitExceeded(f"{what} = {rows} rows exceed max_batch_per_request={self.max_rows} "
                                "(VAE_MAX_BATCH_PER_REQUEST); send fewer")

    def score_k(self, n: int, k: int) -> int:
        k = k or 1
        self.rows(n * k, f"Score: {n} images x k={k}")
        return k

    def steps(self, steps: int, what: str) -> int:
        if steps < 2:
            raise InvalidArgument(f"{what}: steps must be >= 2 (endpoints included), got {steps}")
        self.rows(steps, f"{what}: steps")
        return steps

    def method(self, value: int) -> str:
        if value not in METHODS:
            raise InvalidArgument(f"method: unknown InterpolationMethod value {value}; use "
                                  "INTERPOLATION_METHOD_LINEAR or INTERPOLATION_METHOD_SPHERICAL")
        return METHODS[value]

    def endpoint(self, kind: str | None, arr: np.ndarray | None, what: str) -> Endpoint:
        """An Endpoint oneof: `kind` is WhichOneof('value'), `arr` the decoded tensor."""
        if kind is None or arr is None:
            raise InvalidArgument(f"{what}: set image or z")
        if kind == "image":
            shape = tuple(self.v.image_shape)
            if arr.ndim == 3 and tuple(arr.shape) == shape:
                arr = arr.reshape(1, *shape)
            elif arr.ndim == 2 and shape[0] == 1 and tuple(arr.shape) == shape[1:]:
                arr = arr.reshape(1, *shape)
            if arr.ndim == 4 and arr.shape[0] != 1:
                raise InvalidArgument(f"{what}.image: {arr.shape[0]} images, expected one")
            return Endpoint("image", self.v.images(arr, f"{what}.image"))
        if arr.ndim == 1:
            arr = arr.reshape(1, -1)
        if arr.ndim == 2 and arr.shape[0] != 1:
            raise InvalidArgument(f"{what}.z: {arr.shape[0]} latents, expected one")
        return Endpoint("z", self.v.latents(arr, f"{what}.z"))

    def traverse_dims(self, dims: list[int], n_dims: int) -> list[int] | int:
        """The named dimensions (checked), or how many to rank when none are named."""
        d = self.v.latent_dim
        if dims:
            bad = [x for x in dims if x >= d]
            if bad:
                raise InvalidArgument(f"dims: {bad} out of range for latent_dim {d} (0 .. {d - 1})")
            return list(dims)
        if n_dims > d:
            raise InvalidArgument(f"n_dims: {n_dims} exceeds latent_dim {d}")
        return n_dims

    def value_range(self, low: float | None, high: float | None) -> tuple[float, float]:
        lo = DEFAULT_LOW if low is None else float(low)
        hi = DEFAULT_HIGH if high is None else float(high)
        for name, val in (("low", lo), ("high", hi)):
            if not math.isfinite(val) or abs(val) > MAX_ABS_LATENT:
                raise InvalidArgument(f"{name}: {val} must be finite with |{name}| <= {MAX_ABS_LATENT:g}")
        if lo == hi:
            raise InvalidArgument(f"low and high are both {lo}; give a range")
        return lo, hi

    def direction(self, arr: np.ndarray) -> np.ndarray:
        """[D] or [1, D] -> [D] float32, finite and bounded."""
        if arr.ndim == 2 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 1:
            raise InvalidArgument(f"direction: shape {list(arr.shape)}, expected [{self.v.latent_dim}]")
        return np.asarray(self.v.latents(arr.reshape(1, -1), "direction")[0])

    def scales(self, scales: list[float], n_images: int) -> np.ndarray:
        s = np.asarray(scales if scales else [1.0], dtype=np.float32)
        if not np.isfinite(s).all():
            raise InvalidArgument("scales: NaN/Inf value(s)")
        self.rows(n_images * len(s), f"Edit: {n_images} images x {len(s)} scales")
        return s

    def edited(self, z: np.ndarray) -> np.ndarray:
        peak = float(np.abs(z).max())
        if not math.isfinite(peak) or peak > MAX_ABS_LATENT:
            raise InvalidArgument(f"edited latents reach |z| = {peak:.4g}, over the bound "
                                  f"{MAX_ABS_LATENT:g}; use smaller scales or a shorter direction")
        return z
