"""Architectures: exact output shapes for odd sizes, plain Linear heads (logvar and mu go negative),
initialisation choices, determinism."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainer.config import ModelConfig
from trainer.model import build_model


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 7, 9), (1, 1, 5), (2, 13, 4)])
@pytest.mark.parametrize("arch,hidden", [("mlp", (16, 8)), ("conv", (4, 8, 8))])
def test_shapes_roundtrip(shape: tuple[int, int, int], arch: str, hidden: tuple[int, ...]) -> None:
    m = build_model(
        ModelConfig(
            input_shape=shape,
            latent_dim=3,
            arch=arch,
            hidden=hidden,
            res_blocks=1,
            dense=0 if arch == "mlp" else 12,
        )
    )
    x = torch.rand(5, *shape)
    params, mu, logvar, z = m(x)
    assert params.shape == x.shape and mu.shape == logvar.shape == z.shape == (5, 3)
    mean = m.decode_mean(z).detach()
    assert mean.shape == x.shape and float(mean.min()) >= 0 and float(mean.max()) <= 1


def test_heads_are_plain_linear() -> None:
    for arch in ("mlp", "conv"):
        m = build_model(ModelConfig(arch=arch, hidden=(8, 8)))
        assert type(m.fc_mu) is nn.Linear and type(m.fc_logvar) is nn.Linear


def test_mu_and_logvar_go_negative_after_training() -> None:
    from trainer.data import load_images

    torch.manual_seed(0)
    x = torch.from_numpy(load_images("digits"))
    m = build_model(ModelConfig(latent_dim=4, hidden=(64,)))
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        xb = x[torch.randint(0, len(x), (64,), generator=g)]
        params, mu, logvar, _ = m(xb)
        kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1).mean()
        loss = -m.likelihood.log_prob(xb, params).mean() + kl
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        mu, logvar = m.encode(x[:500])
    assert float(logvar.min()) < -0.5, "logvar pinned at >= 0: is there an activation on the head?"
    assert float(mu.min()) < -0.5 and float(mu.max()) > 0.5


def test_init_choices_differ_and_seed_determines_weights() -> None:
    def weights(init: str, seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return build_model(ModelConfig(init=init, hidden=(32,))).encoder[1].weight.detach().clone()

    k, x = weights("kaiming", 0), weights("xavier", 0)
    assert torch.equal(k, weights("kaiming", 0)) and not torch.equal(k, weights("kaiming", 1))
    # He: var = 2 / fan_in (uniform bound sqrt(6 / fan_in)); Glorot: bound sqrt(6 / (fan_in + fan_out))
    assert float(k.abs().max()) <= (6 / 64) ** 0.5 + 1e-6 and float(k.abs().max()) > (6 / 96) ** 0.5
    assert float(x.abs().max()) <= (6 / 96) ** 0.5 + 1e-6


@pytest.mark.parametrize(
    "bad", [{"arch": "rnn"}, {"activation": "swish2"}, {"init": "zeros"}, {"latent_dim": 0}, {"hidden": ()}]
)
def test_bad_config(bad: dict) -> None:
    with pytest.raises(ValueError):
        build_model(ModelConfig(**bad))
