"""Each likelihood's log-prob against a reference formula, and the continuous Bernoulli's safety at 1/2."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, ContinuousBernoulli, Normal

from trainer.config import ModelConfig
from trainer.likelihoods import build_likelihood, cb_log_norm, cb_mean
from trainer.model import build_model


@pytest.fixture()
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand((4, 1, 5, 6), generator=g, dtype=torch.float64)
    raw = 3 * torch.randn((4, 1, 5, 6), generator=g, dtype=torch.float64)
    return x, raw


def test_bernoulli_matches_reference(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, logits = batch
    lik = build_likelihood("bernoulli")
    # grey values: x log p + (1 - x) log (1 - p) summed over pixels
    p = torch.sigmoid(logits)
    ref = (x * torch.log(p) + (1 - x) * torch.log1p(-p)).flatten(1).sum(1)
    torch.testing.assert_close(lik.log_prob(x, lik.params(logits)), ref)
    xb = (x > 0.5).double()
    torch.testing.assert_close(
        lik.log_prob(xb, logits), Bernoulli(logits=logits).log_prob(xb).flatten(1).sum(1)
    )
    torch.testing.assert_close(lik.mean(logits), p)


@pytest.mark.parametrize("name", ["gaussian", "gaussian_learned"])
def test_gaussians_match_normal(batch: tuple[torch.Tensor, torch.Tensor], name: str) -> None:
    x, raw = batch
    lik = build_likelihood(name, sigma=0.3).double()
    mean = lik.params(raw)
    assert bool(((mean > 0) & (mean < 1)).all())
    ref = Normal(mean, 0.3).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(lik.log_prob(x, mean), ref)
    torch.testing.assert_close(lik.mean(mean), mean)


def test_gaussian_fixed_sigma_is_scaled_mse(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, raw = batch
    sigma = 1 / math.sqrt(2)
    lik = build_likelihood("gaussian", sigma=sigma).double()
    mean = lik.params(raw)
    const = x[0].numel() * (math.log(sigma) + 0.5 * math.log(2 * math.pi))
    torch.testing.assert_close(-lik.log_prob(x, mean), ((x - mean) ** 2).flatten(1).sum(1) + const)


def test_learned_sigma_is_a_saved_parameter() -> None:
    m = build_model(ModelConfig(likelihood="gaussian_learned", sigma=0.2))
    assert "likelihood.log_sigma" in dict(m.named_parameters())
    assert abs(float(m.state_dict()["likelihood.log_sigma"]) - math.log(0.2)) < 1e-6
    fixed = build_model(ModelConfig(likelihood="gaussian"))
    assert "likelihood.log_sigma" not in dict(fixed.named_parameters())


def test_continuous_bernoulli_matches_torch(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, logits = batch
    lik = build_likelihood("continuous_bernoulli")
    ref = ContinuousBernoulli(logits=logits).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(lik.log_prob(x, logits), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        lik.mean(logits), ContinuousBernoulli(logits=logits).mean, rtol=1e-6, atol=1e-6
    )


def test_continuous_bernoulli_safe_near_one_half() -> None:
    # logits within 1e-7 .. 2 of lambda = 1/2, on both sides of the series/exact switch points
    l32 = torch.tensor(
        [0.0, 1e-7, -1e-7, 1e-4, 0.3, -0.49, 0.5, 0.51, 0.99, 1.0, -1.01, 2.0], requires_grad=True
    )
    m, n = cb_mean(l32), cb_log_norm(l32)
    assert bool(torch.isfinite(m).all() and torch.isfinite(n).all())
    (m.sum() + n.sum()).backward()
    assert l32.grad is not None and bool(torch.isfinite(l32.grad).all())
    # against float64 closed forms (no cancellation trouble in float64 away from exactly 0)
    l64 = l32.detach().double()
    nz = l64 != 0
    exact_mean = 0.5 + 0.5 / torch.tanh(l64[nz] / 2) - 1 / l64[nz]
    exact_norm = torch.log(l64[nz] / torch.tanh(l64[nz] / 2))
    torch.testing.assert_close(m.detach().double()[nz], exact_mean, atol=2e-7, rtol=0)
    torch.testing.assert_close(n.detach().double()[nz], exact_norm, atol=2e-7, rtol=0)
    assert float(m[0].detach()) == 0.5 and abs(float(n[0].detach()) - math.log(2)) < 1e-7
    # mean is monotone and in [0, 1] over a wide range
    grid = torch.linspace(-40, 40, 4001)
    mg = cb_mean(grid)
    assert bool((mg[1:] >= mg[:-1]).all()) and float(mg.min()) >= 0 and float(mg.max()) <= 1


def test_unknown_likelihood() -> None:
    with pytest.raises(ValueError, match="unknown likelihood"):
        build_likelihood("poisson")
