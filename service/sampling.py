"""Per-request noise: each request owns a numpy Generator(PCG64(seed)), drawn in request order.

Why it is byte-identical whatever the batching, concurrency or stream chunk size: the noise of a
request depends only on its own generator, the generator's stream does not depend on how it is cut
(drawing k then m rows equals drawing k + m rows), and each decoded row depends only on its own latent
(checked at warm-up; otherwise Sample decodes in fixed-size blocks, see batching.fixed_blocks).
"""

from __future__ import annotations

import numpy as np

__all__ = ["noise_generator", "prior_latents", "posterior_sample"]


def noise_generator(seed: int | None) -> np.random.Generator:
    """Seeded PCG64, or fresh OS entropy when the request gives no seed."""
    return np.random.Generator(np.random.PCG64(seed))


def prior_latents(gen: np.random.Generator, n: int, latent_dim: int, temperature: float) -> np.ndarray:
    """z ~ N(0, temperature^2 I): the VAE prior p(z) = N(0, I) (Kingma & Welling 2014, sec. 3) with its
    standard deviation scaled by the temperature, [n, latent_dim] float32."""
    eps = gen.standard_normal((n, latent_dim), dtype=np.float32)
    if temperature != 1.0:
        eps *= np.float32(temperature)
    return eps


def posterior_sample(gen: np.random.Generator, mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """z = mu + exp(logvar / 2) * eps, eps ~ N(0, I): the reparameterisation trick
    (Kingma & Welling 2014, eq. 10), float32."""
    eps = gen.standard_normal(mu.shape, dtype=np.float32)
    return (mu + np.exp(np.float32(0.5) * logvar) * eps).astype(np.float32, copy=False)
