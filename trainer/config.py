"""Typed configuration stored in every checkpoint: the exporter rebuilds the model from it alone."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["ModelConfig", "TrainConfig", "LIKELIHOODS", "ARCHS"]

LIKELIHOODS = ("bernoulli", "gaussian", "gaussian_learned", "continuous_bernoulli")
ARCHS = ("mlp", "conv")


@dataclass
class ModelConfig:
    """Architecture of the VAE. `input_shape` is (C, H, W)."""

    input_shape: tuple[int, int, int] = (1, 8, 8)
    latent_dim: int = 16
    arch: str = "mlp"  # mlp | conv
    # mlp: hidden widths of the encoder (the decoder mirrors them);
    # conv: channels of each stride-2 conv block (the decoder mirrors them with transposed convs).
    hidden: tuple[int, ...] = (400,)
    activation: str = "relu"  # relu | leaky_relu | elu | gelu | silu | tanh
    init: str = "kaiming"  # kaiming (He) | xavier (Glorot)
    likelihood: str = "bernoulli"
    # Fixed standard deviation of the "gaussian" likelihood (sigma = 1/sqrt(2) gives MSE up to a constant).
    sigma: float = 0.1
    # conv only: residual blocks per stage (encoder and decoder), and an optional fully connected layer of
    # this width between the conv features and the latent heads (0 = none).
    res_blocks: int = 0
    dense: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        kw = dict(d)
        if "input_shape" in kw:
            kw["input_shape"] = tuple(int(v) for v in kw["input_shape"])
        if "hidden" in kw:
            kw["hidden"] = tuple(int(v) for v in kw["hidden"])
        return cls(**kw)


@dataclass
class TrainConfig:
    """Everything about a run but the architecture. Stored beside ModelConfig in the checkpoint."""

    data: str = "digits"  # file, folder, or "digits" (scikit-learn's bundled digits)
    out_dir: str = "runs/default"
    val_fraction: float = 0.1
    split: str = "random"  # random (seeded permutation) | tail (the last val_fraction is validation)
    seed: int = 0
    epochs: int = 10
    batch_size: int = 128
    # optimisation
    optimizer: str = "adam"  # adam | adamw | rmsprop | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    warmup_steps: int = 0
    cosine: bool = False
    min_lr: float = 0.0
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    max_skips: int = 10  # non-finite loss/grad steps in a row before the run stops
    # objective
    beta: float = 1.0
    beta_schedule: str = "constant"  # constant | linear | cyclical | sigmoid
    beta_warmup_steps: int = 0
    beta_cycles: int = 4
    beta_ratio: float = 0.5
    free_bits: float = 0.0  # nats; 0 = off
    free_bits_mode: str = "per_dim"  # per_dim | total
    # augmentation of training batches (trainer/augment.py); validation and evaluation never augment
    hflip: bool = False  # mirror each training image left-right with probability 1/2
    shift: int = 0  # move each training image by up to this many pixels (zero fill); 0 = off
    # monitoring
    active_threshold: float = 0.01
    collapse_fraction: float = 0.1
    collapse_kl: float = 0.1
    mi_points: int = 1000  # validation images used by the MI estimate (O(N^2) cost)
    grids: bool = True
    tensorboard: bool = True
    progress: bool = True  # tqdm bar with live reconstruction and KL
    curves_every_s: float = 60.0  # redraw curves.png at most this often (and at the end)
    # checkpoints and time budget
    ckpt_every: int = 0  # also write last.pt every N steps, inside epochs (0 = off)
    ckpt_every_s: float = 30.0  # at an epoch end, write last.pt if this long since the last save (0 = always)
    max_minutes: float = 0.0  # training time budget; 0 = none (see docs/trainer.md)
    # hardware
    device: str = "cpu"
    bf16: bool = False
    num_threads: int = 0  # 0 = torch default
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
