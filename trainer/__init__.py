"""The VAE trainer: data loading, models, the training loop with its diagnostics, checkpoints and
evaluation. Imports no sibling package (see docs/CONTRACTS.md)."""

__all__: list[str] = []
