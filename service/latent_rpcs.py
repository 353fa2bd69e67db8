"""The handlers of Score, Interpolate, Traverse and Edit, mixed into VaeServicer.

Thin like the others: proto <-> numpy, checks in rpc_checks.py, math in scoring.py and latent_ops.py,
inference through the batchers, and every call through the servicer's `_call` (admission, metrics and
the error -> status mapping).
"""

from __future__ import annotations

import time
from typing import Any

import grpc
import numpy as np

from protos.vae.v1 import vae_pb2
from service import codec, latent_ops, sampling, scoring
from service.errors import FailedPrecondition
from service.likelihoods import LogLikelihood
from service.rpc_checks import Endpoint, RpcChecks

__all__ = ["LatentRpcs"]


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class LatentRpcs:
    """Needs from the servicer: _call, validator, encoder, decoder, metrics, info, and the attributes
    set by `init_latent_rpcs`."""

    # Provided by VaeServicer.
    _call: Any
    validator: Any
    encoder: Any
    decoder: Any
    metrics: Any
    info: vae_pb2.ModelInfo

    def init_latent_rpcs(self, *, params: Any | None, likelihood: LogLikelihood | None,
                         likelihood_problem: str, kl_per_dim: list[float] | None) -> None:
        self.params = params  # submitter of the decoder_params graph, or None
        self.likelihood = likelihood
        self.likelihood_problem = likelihood_problem  # why Score cannot run, when it cannot
        self.kl_per_dim = kl_per_dim
        self.checks = RpcChecks(self.validator, self.info.model_name, self.info.model_version)

    def _served(self, reply: Any) -> Any:
        reply.model, reply.version = self.info.model_name, self.info.model_version
        return reply

    async def _latent(self, ep: Endpoint, deadline: float | None) -> np.ndarray:
        """[1, D]: a latent as given, or an image's posterior mean."""
        if ep.kind == "z":
            return ep.value
        mu, logvar = await self.encoder.submit(ep.value, deadline)
        self.metrics.encoded(mu, logvar)
        return np.asarray(mu)

    def _endpoint(self, ep: vae_pb2.Endpoint, what: str) -> Endpoint:
        kind = ep.WhichOneof("value")
        arr = codec.to_array(getattr(ep, kind), f"{what}.{kind}") if kind else None
        return self.checks.endpoint(kind, arr, what)

    async def _decoded(self, z: np.ndarray, image_format: int, what: str,
                       deadline: float | None) -> vae_pb2.Tensor:
        from service.servicer import _uint8  # the one ImageFormat check

        self.validator.reply_fits(len(z), _uint8(image_format), True, what)
        (images,) = await self.decoder.submit(z, deadline)
        self.metrics.latents(what, z)
        return codec.images_message(images, image_format)

    async def Score(self, request: vae_pb2.ScoreRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._call("Score", context, self._score(request, context))

    async def _score(self, request: vae_pb2.ScoreRequest,
                     context: grpc.aio.ServicerContext) -> vae_pb2.ScoreResponse:
        self.checks.target(request.model, request.version)
        x = self.validator.images(codec.to_array(request.images, "images"))
        k = self.checks.score_k(len(x), request.k)
        if self.params is None or self.likelihood is None:
            raise FailedPrecondition(f"Score is not available for model {self.info.model_name!r} version "
                                     f"{self.info.model_version!r}: {self.likelihood_problem}")
        deadline = _deadline(context)
        mu, logvar = await self.encoder.submit(x, deadline)
        self.metrics.encoded(mu, logvar)
        gen = sampling.noise_generator(request.seed if request.HasField("seed") else None)
        z, eps = scoring.posterior_latents(gen, mu, logvar, k)
        (params,) = await self.params.submit(z, deadline)
        s = scoring.score(self.likelihood, x, mu, logvar, z, eps, params, k)
        self.metrics.scored(s.elbo)
        reply = vae_pb2.ScoreResponse(elbo=s.elbo.tolist(), log_px=s.log_px.tolist(), kl=s.kl.tolist(),
                                      k=k, likelihood=self.likelihood.name)
        if s.iwae is not None:
            reply.iwae.extend(s.iwae.tolist())
        return self._served(reply)

    async def Interpolate(self, request: vae_pb2.InterpolateRequest,
                          context: grpc.aio.ServicerContext) -> Any:
        return await self._call("Interpolate", context, self._interpolate(request, context))

    async def _interpolate(self, request: vae_pb2.InterpolateRequest,
                           context: grpc.aio.ServicerContext) -> vae_pb2.InterpolateResponse:
        self.checks.target(request.model, request.version)
        a, b = self._endpoint(request.a, "a"), self._endpoint(request.b, "b")
        steps = self.checks.steps(request.steps, "Interpolate")
        method = self.checks.method(request.method)
        deadline = _deadline(context)
        if a.kind == b.kind == "image":  # one encoder run for both
            mu, logvar = await self.encoder.submit(np.concatenate([a.value, b.value]), deadline)
            self.metrics.encoded(mu, logvar)
            za, zb = mu[0], mu[1]
        else:
            za, zb = (await self._latent(a, deadline))[0], (await self._latent(b, deadline))[0]
        z = latent_ops.interpolate(za, zb, steps, method)
        images = await self._decoded(z, request.format, "Interpolate", deadline)
        return self._served(vae_pb2.InterpolateResponse(images=images, z=codec.from_array(z)))

    async def Traverse(self, request: vae_pb2.TraverseRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._call("Traverse", context, self._traverse(request, context))

    async def _traverse(self, request: vae_pb2.TraverseRequest,
                        context: grpc.aio.ServicerContext) -> vae_pb2.TraverseResponse:
        self.checks.target(request.model, request.version)
        base = self._endpoint(request.base, "base")
        dims = self.checks.traverse_dims(list(request.dims), request.n_dims)
        if isinstance(dims, int):
            n = dims or min(latent_ops.DEFAULT_TRAVERSE_DIMS, self.validator.latent_dim)
            if self.kl_per_dim is None:
                raise FailedPrecondition("Traverse without dims ranks dimensions by the training reference's "
                                         "kl_per_dim, which this model's manifest lacks; name the dims")
            dims = latent_ops.rank_dims(self.kl_per_dim, n)
        steps = self.checks.steps(request.steps, "Traverse")
        self.checks.rows(len(dims) * steps, f"Traverse: {len(dims)} dims x {steps} steps")
        low, high = self.checks.value_range(request.low if request.HasField("low") else None,
                                            request.high if request.HasField("high") else None)
        deadline = _deadline(context)
        z0 = (await self._latent(base, deadline))[0]
        z = latent_ops.traverse(z0, dims, np.linspace(low, high, steps, dtype=np.float32))
        images = await self._decoded(z, request.format, "Traverse", deadline)
        return self._served(vae_pb2.TraverseResponse(images=images, z=codec.from_array(z), dims=dims))

    async def Edit(self, request: vae_pb2.EditRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._call("Edit", context, self._edit(request, context))

    async def _edit(self, request: vae_pb2.EditRequest,
                    context: grpc.aio.ServicerContext) -> vae_pb2.EditResponse:
        self.checks.target(request.model, request.version)
        x = self.validator.images(codec.to_array(request.images, "images"))
        direction = self.checks.direction(codec.to_array(request.direction, "direction"))
        scales = self.checks.scales(list(request.scales), len(x))
        deadline = _deadline(context)
        mu, logvar = await self.encoder.submit(x, deadline)
        self.metrics.encoded(mu, logvar)
        z = self.checks.edited(latent_ops.edit(np.asarray(mu), direction, scales))
        images = await self._decoded(z, request.format, "Edit", deadline)
        return self._served(vae_pb2.EditResponse(images=images, z=codec.from_array(z)))
