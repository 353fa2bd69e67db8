"""Named recipes: `vae train --preset NAME`. Flags given on the command line override a preset."""

from __future__ import annotations

from typing import Any

__all__ = ["PRESETS"]

# name -> (help, ModelConfig overrides, TrainConfig overrides)
PRESETS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "grey28": (
        "28x28 greyscale (MNIST / Fashion-MNIST): residual conv VAE, Bernoulli likelihood, AdamW with "
        "warm-up + cosine, KL warm-up and free bits, 5-minute budget; trains on the first 90 % of the "
        "images and validates on the last 10 %",
        {
            "arch": "conv",
            "hidden": (32, 64, 128),
            "res_blocks": 1,
            "dense": 512,
            "latent_dim": 32,
            "activation": "silu",
            "likelihood": "bernoulli",
        },
        {
            "split": "tail",
            "val_fraction": 0.1,
            "optimizer": "adamw",
            "lr": 2e-3,
            "weight_decay": 1e-4,
            "warmup_steps": 100,
            "cosine": True,
            "min_lr": 1e-5,
            "batch_size": 64,
            "epochs": 60,
            "beta_schedule": "linear",
            "beta_warmup_steps": 1000,
            "free_bits": 0.05,
            "grad_clip": 100.0,
            "max_minutes": 4.5,
            "num_threads": 1,
        },
    ),
    "textbook": (
        "the textbook MLP VAE (784-400-20, Bernoulli/BCE + KL, Adam 1e-3, batch 128); a baseline",
        {"arch": "mlp", "hidden": (400,), "latent_dim": 20, "activation": "relu", "likelihood": "bernoulli"},
        {"optimizer": "adam", "lr": 1e-3, "batch_size": 128, "epochs": 10},
    ),
}
