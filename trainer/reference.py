"""Latent reference statistics of a model on its training images, and the checkpoint's `reference` block.

The statistics are the baseline the service compares live traffic with (posterior-collapse and drift
metrics). The trainer computes them on the exact train split each time it writes a checkpoint, so that
`vae export` needs the checkpoint alone; the exporter calls the same `model_statistics` when it is asked
to recompute them on other data (`vae export --reference-data`) or when an older checkpoint has none.

All statistics are of the Gaussian posterior q(z|x) = N(mu(x), diag(sigma^2(x))) the encoder outputs,
accumulated in float64 over the whole split.

This module stays numpy-only in its statistics (`reference_statistics`); only the model-facing helpers
use torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

__all__ = [
    "QUANTILES",
    "PARITY_SAMPLE",
    "BLOCK_VERSION",
    "kl_to_standard_normal",
    "reference_statistics",
    "model_statistics",
    "encode_sample",
    "decode_sample",
    "reference_block",
]

QUANTILES = (0.5, 0.9, 0.99)
# Training images kept in the checkpoint as the exporter's "real" parity inputs: its largest parity
# batch is 256, and the exporter (like before) takes the first 256 images of the split.
PARITY_SAMPLE = 256
BLOCK_VERSION = 1


def kl_to_standard_normal(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """KL(N(mu, sigma^2) || N(0, 1)) per sample and dimension, in nats:
    0.5 * (mu^2 + sigma^2 - log sigma^2 - 1) (Kingma & Welling 2014, Appendix B)."""
    mu = mu.astype(np.float64)
    logvar = logvar.astype(np.float64)
    kl: np.ndarray = 0.5 * (mu * mu + np.exp(logvar) - logvar - 1.0)
    return kl


def reference_statistics(encode: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                         images: np.ndarray, *, active_threshold: float = 0.01,
                         batch_size: int = 512) -> dict[str, Any]:
    """Statistics of the encoder's posterior over `images` ([N,C,H,W] float32 in [0,1]).

    - `mu_mean`, `mu_var`: per-dimension mean and (population) variance of mu over the data;
    - `posterior_var_mean`: per-dimension mean of sigma^2 = exp(logvar);
    - `kl_per_dim`: per-dimension mean KL to the prior N(0, 1);
    - `active_units`: dimensions with Var_x(E_q[z_u]) = mu_var > `active_threshold` (the "active
      units" of Burda, Grosse & Salakhutdinov 2016, section 5.2, who use 0.01);
    - `kl_per_sample`: mean and p50/p90/p99 of the per-image KL summed over dimensions.
    """
    n = int(images.shape[0])
    if n == 0:
        raise ValueError("no images to compute reference statistics on")
    mus: list[np.ndarray] = []
    logvars: list[np.ndarray] = []
    for start in range(0, n, batch_size):
        mu, logvar = encode(images[start:start + batch_size])
        mus.append(np.asarray(mu, dtype=np.float64))
        logvars.append(np.asarray(logvar, dtype=np.float64))
    mu_all = np.concatenate(mus)
    logvar_all = np.concatenate(logvars)
    if not (np.isfinite(mu_all).all() and np.isfinite(logvar_all).all()):
        raise ValueError("the encoder produced non-finite mu or logvar on the training images")
    kl = kl_to_standard_normal(mu_all, logvar_all)
    kl_sample = kl.sum(axis=1)
    mu_var = mu_all.var(axis=0)
    q = np.quantile(kl_sample, QUANTILES)
    return {
        "n_images": n,
        "mu_mean": mu_all.mean(axis=0).tolist(),
        "mu_var": mu_var.tolist(),
        "posterior_var_mean": np.exp(logvar_all).mean(axis=0).tolist(),
        "kl_per_dim": kl.mean(axis=0).tolist(),
        "active_units": int((mu_var > active_threshold).sum()),
        "active_threshold": float(active_threshold),
        "kl_per_sample": {
            "mean": float(kl_sample.mean()),
            "p50": float(q[0]),
            "p90": float(q[1]),
            "p99": float(q[2]),
        },
    }


def _encoder_of(model: torch.nn.Module) -> Callable[[Any], tuple[np.ndarray, np.ndarray]]:
    """numpy or torch images -> (mu, logvar) as float32 numpy, on the model's own device."""
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")

    @torch.no_grad()
    def encode(x: Any) -> tuple[np.ndarray, np.ndarray]:
        t = x if torch.is_tensor(x) else torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        mu, logvar = model.encode(t.to(device=device, dtype=torch.float32))  # type: ignore[operator]
        return mu.float().cpu().numpy(), logvar.float().cpu().numpy()

    return encode


def model_statistics(model: torch.nn.Module, images: Any, *, active_threshold: float,
                     batch_size: int = 512) -> dict[str, Any]:
    """The manifest's `reference` object for `model` on `images` (numpy or torch [N,C,H,W] in [0,1]).

    The one place where reference statistics are defined: the trainer (at each checkpoint write) and the
    exporter (with --reference-data, or for a checkpoint without stored statistics) both call it, so a new
    statistic added here reaches every checkpoint and every manifest. Runs the model in eval mode and
    leaves its mode and the torch RNG streams as they were, so training is not perturbed.
    """
    was_training = model.training
    devices = [d for d in {p.device for p in model.parameters()} if d.type == "cuda"]
    model.eval()
    try:
        with torch.random.fork_rng(devices=devices):
            stats = reference_statistics(_encoder_of(model), images, active_threshold=active_threshold,
                                         batch_size=batch_size)
            # The training split's ELBO quantiles: the baseline of the served score metrics (Score).
            from trainer.scoring import elbo_reference  # scoring imports the model module

            x = images.detach().float().cpu().numpy() if torch.is_tensor(images) else np.asarray(images)
            stats["elbo_per_sample"] = elbo_reference(model, x)  # type: ignore[arg-type]
            return stats
    finally:
        model.train(was_training)


def encode_sample(images: np.ndarray) -> tuple[torch.Tensor, str]:
    """The smallest lossless storage of float32 images in [0,1]: uint8 when every value is k/255 as the
    data loader makes it (`u / 255.0` in float32), float16 when every value is a float16 (e.g. the digits'
    k/16), float32 otherwise. Returns the tensor and its encoding name for `decode_sample`."""
    x = np.ascontiguousarray(images, dtype=np.float32)
    u8 = np.rint(x * 255.0).clip(0, 255).astype(np.uint8)
    if np.array_equal(u8.astype(np.float32) / 255.0, x):
        return torch.from_numpy(u8), "uint8/255"
    f16 = x.astype(np.float16)
    if np.array_equal(f16.astype(np.float32), x):
        return torch.from_numpy(f16), "float16"
    return torch.from_numpy(x.copy()), "float32"


def decode_sample(sample: torch.Tensor, encoding: str) -> np.ndarray:
    """float32 [k,C,H,W] images, exactly the ones `encode_sample` was given."""
    a = sample.cpu().numpy()
    if encoding == "uint8/255":
        if a.dtype != np.uint8:
            raise ValueError(f"sample encoded {encoding!r} holds {a.dtype}")
        return np.ascontiguousarray(a.astype(np.float32) / 255.0)
    if encoding in ("float16", "float32"):
        if a.dtype != np.dtype(encoding):
            raise ValueError(f"sample encoded {encoding!r} holds {a.dtype}")
        return np.ascontiguousarray(a.astype(np.float32))
    raise ValueError(f"unknown sample encoding {encoding!r}")


def reference_block(model: torch.nn.Module, train_images: Any, *, active_threshold: float,
                    data_info: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's `reference` block: what the exporter used to take from the training data.

    - `statistics`: `model_statistics` on the whole train split (the manifest's `reference`);
    - `data`: fingerprint, n_images and source of that split (the manifest's `training_data`);
    - `sample`, `sample_encoding`: its first PARITY_SAMPLE images, stored losslessly (see
      `encode_sample`), the exporter's "real" parity inputs.
    """
    stats = model_statistics(model, train_images, active_threshold=active_threshold)
    head = train_images[:PARITY_SAMPLE]
    head_np = head.detach().float().cpu().numpy() if torch.is_tensor(head) else np.asarray(head)
    sample, encoding = encode_sample(head_np)
    return {
        "version": BLOCK_VERSION,
        "statistics": stats,
        "data": {"fingerprint": str(data_info["fingerprint"]), "n_images": int(stats["n_images"]),
                 "source": str(data_info["source"])},
        "sample": sample,
        "sample_encoding": encoding,
    }
