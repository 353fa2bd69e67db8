"""KL closed form against Monte Carlo, beta and LR schedules at chosen steps, free bits."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.objective import beta_at, elbo_terms, kl_penalty, kl_per_dim, lr_at


def test_kl_closed_form_matches_monte_carlo() -> None:
    g = torch.Generator().manual_seed(0)
    mu = torch.randn((3, 4), generator=g, dtype=torch.float64)
    logvar = 0.5 * torch.randn((3, 4), generator=g, dtype=torch.float64)
    n = 400_000
    eps = torch.randn((n, 3, 4), generator=g, dtype=torch.float64)
    z = mu + torch.exp(0.5 * logvar) * eps
    log_q = -0.5 * (math.log(2 * math.pi) + logvar + eps**2)
    log_p = -0.5 * (math.log(2 * math.pi) + z**2)
    mc = (log_q - log_p).mean(0)
    torch.testing.assert_close(kl_per_dim(mu, logvar), mc, atol=0.01, rtol=0.01)
    assert float(kl_per_dim(torch.zeros(1, 2), torch.zeros(1, 2)).abs().max()) == 0.0


def _beta(step: int, schedule: str, **kw: float) -> float:
    args = {"beta": 2.0, "warmup_steps": 100, "total_steps": 400, "cycles": 4, "ratio": 0.5} | kw
    return beta_at(step, schedule=schedule, **args)  # type: ignore[arg-type]


def test_beta_schedules_at_chosen_steps() -> None:
    assert [_beta(s, "constant") for s in (0, 50, 1000)] == [2.0, 2.0, 2.0]
    assert [_beta(s, "linear") for s in (0, 25, 50, 100, 1000)] == [0.0, 0.5, 1.0, 2.0, 2.0]
    # Fu et al. 2019 with M=4 cycles of 100 steps, ramp ratio R=0.5: 0 -> beta over 50 steps, then flat
    assert [_beta(s, "cyclical") for s in (0, 25, 50, 99, 100, 125, 399)] == [
        0.0,
        1.0,
        2.0,
        2.0,
        0.0,
        1.0,
        2.0,
    ]
    sig = [_beta(s, "sigmoid") for s in (0, 50, 100, 200)]
    assert sig[0] == pytest.approx(2.0 / (1 + math.exp(6))) and sig[1] == pytest.approx(1.0)
    assert sig[2] == sig[3] == 2.0
    with pytest.raises(ValueError, match="unknown beta schedule"):
        _beta(0, "exp")


def test_lr_warmup_then_cosine() -> None:
    kw = {"lr": 1.0, "warmup_steps": 10, "total_steps": 110, "min_lr": 0.1}
    assert lr_at(0, cosine=True, **kw) == pytest.approx(0.1)
    assert lr_at(9, cosine=True, **kw) == pytest.approx(1.0)
    assert lr_at(10, cosine=True, **kw) == pytest.approx(1.0)
    assert lr_at(60, cosine=True, **kw) == pytest.approx(0.55)
    assert lr_at(110, cosine=True, **kw) == pytest.approx(0.1)
    assert lr_at(500, cosine=True, **kw) == pytest.approx(0.1)
    assert lr_at(60, cosine=False, **kw) == 1.0


def test_free_bits_per_dim_and_total() -> None:
    kd = torch.tensor([[0.0, 0.2, 2.0], [0.0, 0.4, 4.0]])  # batch means: 0, 0.3, 3
    assert float(kl_penalty(kd, 0.0, "per_dim")) == pytest.approx(3.3)
    assert float(kl_penalty(kd, 0.5, "per_dim")) == pytest.approx(0.5 + 0.5 + 3.0)
    assert float(kl_penalty(kd, 5.0, "total")) == pytest.approx(5.0)
    assert float(kl_penalty(kd, 1.0, "total")) == pytest.approx(3.3)
    # below the floor a dimension gets no gradient: nothing pushes its KL further down
    mu = torch.zeros(2, 3, requires_grad=True)
    logvar = torch.tensor([[-0.01, -1.0, -3.0]] * 2, requires_grad=True)
    t = elbo_terms(torch.zeros(2), mu, logvar, beta=1.0, free_bits=0.1, free_bits_mode="per_dim")
    t.loss.backward()
    assert logvar.grad is not None and float(logvar.grad[0, 0]) == 0.0 and float(logvar.grad[0, 2]) != 0.0
    assert float(t.kl.detach()) == pytest.approx(float(kl_per_dim(mu, logvar).detach().sum(1).mean()))


def test_time_budget_plan_and_warmup_end() -> None:
    from trainer.config import TrainConfig
    from trainer.objective import epochs_within_budget, warmup_end

    assert epochs_within_budget(2, 20.0, 100.0, 50) == 10  # 10 s per epoch, 80 s left -> 8 more
    assert epochs_within_budget(2, 20.0, 100.0, 5) == 5  # capped by --epochs
    assert epochs_within_budget(3, 120.0, 100.0, 50) == 3  # over budget: stop here
    assert warmup_end(TrainConfig(beta_schedule="linear", beta_warmup_steps=70), 1000) == 70
    assert warmup_end(TrainConfig(beta_schedule="cyclical", beta_cycles=4, beta_ratio=0.5), 1000) == 125
    assert warmup_end(TrainConfig(), 1000) == 0
