"""The flows of Score, Interpolate, Traverse and Edit, mixed into `ClientCore` (written once for both
drivers; request building and reply checks in client/latent_messages.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from client.flow import Flow
from client.latent_messages import (
    EditResult,
    LatentPath,
    ScoreResult,
    TraverseResult,
    attribute_direction,
    edit_chunks,
    edit_request,
    interpolate_request,
    join_scores,
    read_edit,
    read_path,
    read_score,
    read_traverse,
    score_chunks,
    score_request,
    traverse_request,
)
from client.messages import as_wire_array, chunk_seed

__all__ = ["LatentFlows"]


class LatentFlows:
    """Needs from ClientCore: plan(), call() and encode() (all flows)."""

    plan: Any
    call: Any
    encode: Any

    def score(self, images: np.ndarray, *, k: int = 1, seed: int | None = None,
              timeout: float | None = None) -> Flow[ScoreResult]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        plan = yield from self.plan()
        arr = plan.check_images(as_wire_array(images, "images"))
        parts = []
        for i, (a, b) in enumerate(score_chunks(plan, arr, k)):
            resp = yield from self.call("Score", score_request(arr[a:b], k, chunk_seed(seed, i)), timeout)
            parts.append(read_score(resp, b - a, k))
        return join_scores(parts, k)

    def interpolate(self, a: np.ndarray, b: np.ndarray, *, steps: int = 8, method: str = "spherical",
                    uint8: bool = False, timeout: float | None = None) -> Flow[LatentPath]:
        plan = yield from self.plan()
        req = interpolate_request(a, b, steps, method, uint8, plan.latent_dim)
        resp = yield from self.call("Interpolate", req, timeout)
        return read_path(resp, steps, plan, uint8)

    def traverse(self, base: np.ndarray, *, dims: Sequence[int] | None = None, n_dims: int = 0,
                 low: float | None = None, high: float | None = None, steps: int = 7, uint8: bool = False,
                 timeout: float | None = None) -> Flow[TraverseResult]:
        plan = yield from self.plan()
        req = traverse_request(base, dims, n_dims, low, high, steps, uint8, plan.latent_dim)
        resp = yield from self.call("Traverse", req, timeout)
        return read_traverse(resp, steps, plan, uint8)

    def edit(self, images: np.ndarray, direction: np.ndarray, *, scales: Sequence[float] = (1.0,),
             uint8: bool = False, timeout: float | None = None) -> Flow[EditResult]:
        plan = yield from self.plan()
        arr = plan.check_images(as_wire_array(images, "images"))
        parts = []
        for a, b in edit_chunks(plan, arr, len(scales), uint8):
            resp = yield from self.call("Edit", edit_request(arr[a:b], direction, scales, uint8), timeout)
            parts.append(read_edit(resp, b - a, len(scales), plan, uint8))
        return EditResult(np.concatenate([p.images for p in parts]), np.concatenate([p.z for p in parts]))

    def attribute_direction(self, with_attribute: np.ndarray, without_attribute: np.ndarray, *,
                            timeout: float | None = None) -> Flow[np.ndarray]:
        on = yield from self.encode(with_attribute, timeout=timeout)
        off = yield from self.encode(without_attribute, timeout=timeout)
        return attribute_direction(on.mu, off.mu)
