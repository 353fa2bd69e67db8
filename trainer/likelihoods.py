"""Decoder likelihoods p(x|z). Each turns the decoder's raw output into its parameters, scores images in
nats per image (sum over pixels), and gives the mean image in [0, 1] that the exported decoder outputs.

They are `nn.Module`s so that the learned sigma of `gaussian_learned` is a model parameter and lands in
`model_state` with the other weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Likelihood",
    "BernoulliLikelihood",
    "GaussianLikelihood",
    "GaussianLearnedLikelihood",
    "ContinuousBernoulliLikelihood",
    "build_likelihood",
    "cb_log_norm",
    "cb_mean",
]

_LOG_2PI = math.log(2.0 * math.pi)


def _sum_pixels(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).sum(dim=1)


class Likelihood(nn.Module):
    """Interface: `params(raw)`, `log_prob(x, params) -> [N]`, `mean(params) -> [N,C,H,W]` in [0, 1]."""

    name = "base"

    def params(self, raw: torch.Tensor) -> torch.Tensor:
        return raw

    def log_prob(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def mean(self, params: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class BernoulliLikelihood(Likelihood):
    """Bernoulli on logits; with grey values in [0,1] this is the usual BCE "likelihood" of the VAE
    literature (Kingma & Welling 2014), which keeps our NLL figures comparable with published ones."""

    name = "bernoulli"

    def log_prob(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return -_sum_pixels(F.binary_cross_entropy_with_logits(params, x, reduction="none"))

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params)


class GaussianLikelihood(Likelihood):
    """Gaussian with a fixed sigma: -log p = ||x - mu||^2 / (2 sigma^2) + const, i.e. a scaled MSE.
    The decoder's mean goes through a sigmoid so the mean image stays in [0, 1]."""

    name = "gaussian"
    # A buffer here, a learned nn.Parameter (a Tensor too) in GaussianLearnedLikelihood.
    log_sigma: torch.Tensor

    def __init__(self, sigma: float) -> None:
        super().__init__()
        if not sigma > 0:
            raise ValueError(f"gaussian sigma must be > 0, got {sigma}")
        self.register_buffer("log_sigma", torch.tensor(math.log(sigma), dtype=torch.float32))

    def params(self, raw: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(raw)

    def _log_sigma(self) -> torch.Tensor:
        return self.log_sigma

    def log_prob(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        log_sigma = self._log_sigma()
        z = (x - params) * torch.exp(-log_sigma)
        return _sum_pixels(-0.5 * z * z - log_sigma - 0.5 * _LOG_2PI)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return params


class GaussianLearnedLikelihood(GaussianLikelihood):
    """Gaussian with one learned sigma shared by all pixels (the "sigma-VAE", Rybkin et al. 2021): the
    reconstruction/KL balance is learned instead of hand-tuned, which gives less blurry means.
    log sigma is clamped below at log(1e-3) so a perfect fit cannot drive the loss to -inf."""

    name = "gaussian_learned"

    def __init__(self, sigma: float) -> None:
        super().__init__(sigma)
        init = self.log_sigma.clone()
        del self.log_sigma
        self.log_sigma = nn.Parameter(init)

    def _log_sigma(self) -> torch.Tensor:
        return torch.clamp(self.log_sigma, min=math.log(1e-3))


# Continuous Bernoulli (Loaiza-Ganem & Cunningham 2019). With lambda = sigmoid(l):
#   normaliser C(lambda) = 2 atanh(1 - 2 lambda) / (1 - 2 lambda) = l / tanh(l / 2)
#   mean E[x] = lambda / (2 lambda - 1) + 1 / (2 atanh(1 - 2 lambda)) = 1/2 + (coth(l/2) - 2/l) / 2
# Both are 0/0 at l = 0 (lambda = 1/2): below a threshold we use Taylor series in t = l/2, selected by
# torch.where with a "safe" argument in the other branch so neither gradients nor ONNX graphs see NaN.
_CB_NORM_CUT = 0.5
_CB_MEAN_CUT = 1.0


def cb_log_norm(logits: torch.Tensor) -> torch.Tensor:
    """log C(lambda) of the continuous Bernoulli, from logits, safe at lambda = 1/2."""
    small = logits.abs() < _CB_NORM_CUT
    safe = torch.where(small, torch.ones_like(logits), logits)
    exact = torch.log(safe.abs()) - torch.log(torch.tanh(safe.abs() / 2))
    t2 = (logits / 2) ** 2
    # log(t / tanh t) = t^2/3 - 7 t^4/90 + 62 t^6/2835 - ...
    series = math.log(2.0) + t2 * (1.0 / 3 + t2 * (-7.0 / 90 + t2 * (62.0 / 2835)))
    return torch.where(small, series, exact)


def cb_mean(logits: torch.Tensor) -> torch.Tensor:
    """Mean of the continuous Bernoulli, from logits, safe at lambda = 1/2; clamped to [0, 1]."""
    small = logits.abs() < _CB_MEAN_CUT
    safe = torch.where(small, torch.ones_like(logits), logits)
    exact = 0.5 + 0.5 / torch.tanh(safe / 2) - 1.0 / safe
    t = logits / 2
    t2 = t * t
    # coth t - 1/t = t/3 - t^3/45 + 2 t^5/945 - t^7/4725 + ...
    series = 0.5 + 0.5 * t * (1.0 / 3 + t2 * (-1.0 / 45 + t2 * (2.0 / 945 - t2 / 4725)))
    return torch.clamp(torch.where(small, series, exact), 0.0, 1.0)


class ContinuousBernoulliLikelihood(Likelihood):
    """The properly normalised likelihood for grey values in [0, 1] (Loaiza-Ganem & Cunningham 2019):
    log p(x|lambda) = x log lambda + (1-x) log(1-lambda) + log C(lambda)."""

    name = "continuous_bernoulli"

    def log_prob(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(params, x, reduction="none")
        return _sum_pixels(cb_log_norm(params) - bce)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return cb_mean(params)


def build_likelihood(name: str, sigma: float = 0.1) -> Likelihood:
    """The likelihood named in ModelConfig.likelihood."""
    if name == "bernoulli":
        return BernoulliLikelihood()
    if name == "gaussian":
        return GaussianLikelihood(sigma)
    if name == "gaussian_learned":
        return GaussianLearnedLikelihood(sigma)
    if name == "continuous_bernoulli":
        return ContinuousBernoulliLikelihood()
    raise ValueError(
        f"unknown likelihood {name!r}; expected bernoulli, gaussian, gaussian_learned or continuous_bernoulli"
    )
