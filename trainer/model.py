"""The VAE: an encoder to (mu, logvar), the reparameterisation trick, a decoder to the likelihood's
parameters (Kingma & Welling 2014). MLP and convolutional bodies are built from the input shape and
`ModelConfig`; the conv decoder mirrors the encoder's exact spatial sizes, so odd sizes (7x7, 8x8, 28x28)
come back exactly C x H x W without cropping (export-friendly: only plain nn layers)."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from trainer.config import ARCHS, ModelConfig
from trainer.likelihoods import Likelihood, build_likelihood

__all__ = ["VAE", "build_model", "ACTIVATIONS", "conv_sizes"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}


def conv_sizes(h: int, w: int, n: int) -> list[tuple[int, int]]:
    """Spatial sizes after each stride-2, kernel-3, padding-1 conv: ceil(s / 2) each time."""
    sizes = [(h, w)]
    for _ in range(n):
        h, w = (h + 1) // 2, (w + 1) // 2
        sizes.append((h, w))
    return sizes


class _ResBlock(nn.Module):
    """x + conv(act(conv(act(x)))): a pre-activation residual block (He et al. 2016) that adds depth to a
    stage without changing its size; the last conv starts at zero so each block starts as the identity."""

    def __init__(self, ch: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.body = nn.Sequential(
            act(), nn.Conv2d(ch, ch, 3, padding=1), act(), nn.Conv2d(ch, ch, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x + self.body(x)
        return out


class VAE(nn.Module):
    """See docs/CONTRACTS.md: encode, reparameterize, decode, decode_mean, forward, likelihood."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        _validate(cfg)
        self.cfg = cfg
        c, h, w = cfg.input_shape
        act = ACTIVATIONS[cfg.activation]
        self.likelihood: Likelihood = build_likelihood(cfg.likelihood, cfg.sigma)
        if cfg.arch == "mlp":
            feat = self._build_mlp(c * h * w, act)
        else:
            feat = self._build_conv(c, h, w, act)
        # Plain Linear heads: an activation here (e.g. ReLU) would pin logvar >= 0, the known bug.
        self.fc_mu = nn.Linear(feat, cfg.latent_dim)
        self.fc_logvar = nn.Linear(feat, cfg.latent_dim)
        self._init_weights()

    # -- bodies ---------------------------------------------------------------------------------
    def _build_mlp(self, d: int, act: type[nn.Module]) -> int:
        enc: list[nn.Module] = [nn.Flatten()]
        prev = d
        for width in self.cfg.hidden:
            enc += [nn.Linear(prev, width), act()]
            prev = width
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = []
        prev_d = self.cfg.latent_dim
        for width in reversed(self.cfg.hidden):
            dec += [nn.Linear(prev_d, width), act()]
            prev_d = width
        dec += [nn.Linear(prev_d, d), nn.Unflatten(1, tuple(self.cfg.input_shape))]
        self.decoder = nn.Sequential(*dec)
        return prev

    def _build_conv(self, c: int, h: int, w: int, act: type[nn.Module]) -> int:
        cfg = self.cfg
        widths = list(cfg.hidden)
        sizes = conv_sizes(h, w, len(widths))
        enc: list[nn.Module] = []
        prev = c
        for width in widths:
            enc += [nn.Conv2d(prev, width, 3, stride=2, padding=1), act()]
            enc += [_ResBlock(width, act) for _ in range(cfg.res_blocks)]
            prev = width
        hl, wl = sizes[-1]
        flat = prev * hl * wl
        enc.append(nn.Flatten())
        feat = flat
        if cfg.dense:
            enc += [nn.Linear(flat, cfg.dense), act()]
            feat = cfg.dense
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = []
        if cfg.dense:
            dec += [nn.Linear(cfg.latent_dim, cfg.dense), act(), nn.Linear(cfg.dense, flat), act()]
        else:
            dec += [nn.Linear(cfg.latent_dim, flat), act()]
        dec.append(nn.Unflatten(1, (prev, hl, wl)))
        for i in range(len(widths) - 1, -1, -1):
            dec += [_ResBlock(widths[i], act) for _ in range(cfg.res_blocks)]
            out_ch = widths[i - 1] if i > 0 else widths[0]
            (th, tw), (sh, sw) = sizes[i], sizes[i + 1]
            # ConvTranspose2d(k=3, s=2, p=1) gives 2s - 1 + output_padding: pick the padding (0 or 1)
            # that lands on the encoder's size at this depth.
            pad = (th - (2 * sh - 1), tw - (2 * sw - 1))
            dec += [nn.ConvTranspose2d(widths[i], out_ch, 3, stride=2, padding=1, output_padding=pad), act()]
        dec.append(nn.Conv2d(widths[0], c, 3, padding=1))
        self.decoder = nn.Sequential(*dec)
        return feat

    def _init_weights(self) -> None:
        leaky = self.cfg.activation == "leaky_relu"
        nonlin: Literal["leaky_relu", "relu"] = "leaky_relu" if leaky else "relu"
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
                if self.cfg.init == "xavier":
                    nn.init.xavier_uniform_(m.weight)
                else:
                    nn.init.kaiming_uniform_(
                        m.weight, a=0.01 if nonlin == "leaky_relu" else 0.0, nonlinearity=nonlin
                    )
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, _ResBlock):
                last = m.body[-1]
                assert isinstance(last, nn.Conv2d)
                nn.init.zeros_(last.weight)
        # Small heads: the posterior starts near N(0, I) instead of far from the prior.
        for head in (self.fc_mu, self.fc_logvar):
            nn.init.xavier_uniform_(head.weight, gain=0.1)

    # -- the contract ---------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.fc_mu(h), self.fc_logvar(h)

    def reparameterize(
        self, mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
        return mu + torch.exp(0.5 * logvar) * eps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.likelihood.params(self.decoder(z))

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        return self.likelihood.mean(self.decode(z))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar, z


def _validate(cfg: ModelConfig) -> None:
    if cfg.arch not in ARCHS:
        raise ValueError(f"unknown arch {cfg.arch!r}; expected one of {', '.join(ARCHS)}")
    if cfg.activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {cfg.activation!r}; expected one of {', '.join(ACTIVATIONS)}")
    if cfg.init not in ("kaiming", "xavier"):
        raise ValueError(f"unknown init {cfg.init!r}; expected kaiming or xavier")
    if len(cfg.input_shape) != 3 or min(cfg.input_shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {cfg.input_shape}")
    if cfg.latent_dim < 1:
        raise ValueError(f"latent_dim must be >= 1, got {cfg.latent_dim}")
    if not cfg.hidden or min(cfg.hidden) < 1:
        raise ValueError(f"hidden must hold at least one positive width, got {cfg.hidden}")
    if cfg.res_blocks < 0 or cfg.dense < 0:
        raise ValueError("res_blocks and dense must be >= 0")
    if not math.isfinite(cfg.sigma) or cfg.sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {cfg.sigma}")


def build_model(cfg: ModelConfig) -> VAE:
    """A fresh VAE for `cfg` (weights initialised from torch's global RNG: seed it first)."""
    return VAE(cfg)
