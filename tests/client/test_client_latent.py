"""VaeClient / AsyncVaeClient methods of Score, Interpolate, Traverse and Edit against a real server:
numpy in and out, requests split under the server's limits, and the attribute-direction helper."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from client_helpers import ServerThread

from client import AsyncVaeClient, VaeClient
from client.errors import InvalidArgumentError

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    from trainer.data import load_images

    return load_images("digits")[:40]


def test_score_splits_by_k_and_is_seeded(server: ServerThread, small_server: ServerThread, digits):
    with VaeClient(server.target) as c:
        whole = c.score(digits[:6], k=4, seed=9)
        assert whole.elbo.shape == whole.iwae.shape == (6,) and whole.k == 4
        assert whole.likelihood == "bernoulli"
        assert c.score(digits[:6], k=4, seed=9).elbo.tolist() == whole.elbo.tolist()
        assert c.score(digits[:3]).iwae is None
    with VaeClient(small_server.target) as c:  # max_batch_per_request=16: 6 images x k=4 -> 2 requests
        split = c.score(digits[:6], k=4, seed=9)
        assert split.elbo.shape == (6,)
        # The first request (4 images) keeps the seed: its scores are the unsplit call's.
        np.testing.assert_array_equal(split.elbo[:4], whole.elbo[:4])
        with pytest.raises(InvalidArgumentError, match="k=17"):
            c.score(digits[:1], k=17)


def test_interpolate_traverse_edit(server: ServerThread, digits):
    with VaeClient(server.target) as c:
        path = c.interpolate(digits[0], digits[1], steps=6, method="linear")
        mu = c.encode(digits[:2]).mu
        assert path.images.shape == (6, 1, 8, 8) and path.z.shape == (6, 4)
        np.testing.assert_array_equal(path.z[[0, -1]], mu)
        zpath = c.interpolate(mu[0], mu[1], steps=6, method="linear")  # 1-D arrays are latents
        np.testing.assert_allclose(zpath.z, path.z, atol=1e-6)
        tr = c.traverse(digits[0], dims=[1, 3], steps=4, low=-1, high=1, uint8=True)
        assert tr.images.shape == (2, 4, 1, 8, 8) and tr.images.dtype == np.uint8 and tr.dims == [1, 3]
        np.testing.assert_allclose(tr.z[1, :, 3], np.linspace(-1, 1, 4), atol=1e-6)
        direction = c.attribute_direction(digits[:10], digits[10:20])
        want = c.encode(digits[:10]).mu.mean(0) - c.encode(digits[10:20]).mu.mean(0)
        np.testing.assert_allclose(direction, want, atol=1e-5)
        ed = c.edit(digits[:3], direction, scales=[0.0, 1.0])
        assert ed.images.shape == (3, 2, 1, 8, 8)
        np.testing.assert_allclose(ed.z[:, 1] - ed.z[:, 0], np.broadcast_to(direction, (3, 4)), atol=1e-5)
        with pytest.raises(ValueError, match="method"):
            c.interpolate(digits[0], digits[1], method="cubic")


def test_async_client_matches_sync(server: ServerThread, small_server: ServerThread, digits):
    with VaeClient(server.target) as c:
        want = c.score(digits[:5], k=3, seed=2)
        want_path = c.interpolate(digits[0], digits[1], steps=4)
        want_edit = c.edit(digits[:2], np.ones(4, np.float32), scales=[1.0, 2.0])

    async def run() -> None:
        async with AsyncVaeClient(server.target) as a:
            got = await a.score(digits[:5], k=3, seed=2)
            assert got.elbo.tolist() == want.elbo.tolist() and got.iwae.tolist() == want.iwae.tolist()
            path = await a.interpolate(digits[0], digits[1], steps=4)
            np.testing.assert_array_equal(path.images, want_path.images)
            tr = await a.traverse(digits[0], steps=3)
            assert tr.z.shape == (4, 3, 4)  # no dims: min(8, D) rows ranked by the reference
            ed = await a.edit(digits[:2], np.ones(4, np.float32), scales=[1.0, 2.0])
            np.testing.assert_array_equal(ed.z, want_edit.z)
        async with AsyncVaeClient(small_server.target) as a:  # 20 images x 2 scales > 16 rows: split
            ed = await a.edit(digits[:20], np.ones(4, np.float32), scales=[0.0, 1.0])
            assert ed.z.shape == (20, 2, 4)

    asyncio.run(run())
