"""The handlers of Score, Interpolate, Traverse and Edit, mixed into VaeServicer.

Thin like the others: proto <-> numpy, checks in rpc_checks.py, math in scoring.py and latent_ops.py,
inference through the routed version's batchers, and every call through the one `@rpc` wrapper
(admission, routing, per-version metrics, the error -> status mapping and the reply's model/version).
"""

from __future__ import annotations

import time

import grpc
import numpy as np

from protos.vae.v1 import vae_pb2
from service import codec, latent_ops, sampling, scoring
from service.calls import rpc
from service.errors import FailedPrecondition
from service.rpc_checks import Endpoint
from service.served import ServedVersion

__all__ = ["LatentRpcs"]


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class LatentRpcs:
    """Mixed into VaeServicer, which provides `calls` and `route` for the `@rpc` wrapper; each handler
    gets the ServedVersion its request was routed to."""

    @staticmethod
    async def _latent(v: ServedVersion, ep: Endpoint, deadline: float | None) -> np.ndarray:
        """[1, D]: a latent as given, or an image's posterior mean."""
        if ep.kind == "z":
            return ep.value
        mu, logvar = await v.encoder.submit(ep.value, deadline)
        v.metrics.encoded(mu, logvar)
        return np.asarray(mu)

    @staticmethod
    def _endpoint(v: ServedVersion, ep: vae_pb2.Endpoint, what: str) -> Endpoint:
        kind = ep.WhichOneof("value")
        arr = codec.to_array(getattr(ep, kind), f"{what}.{kind}") if kind else None
        return v.checks.endpoint(kind, arr, what)

    @staticmethod
    async def _decoded(v: ServedVersion, z: np.ndarray, image_format: int, what: str,
                       deadline: float | None) -> vae_pb2.Tensor:
        from service.servicer import _uint8  # the one ImageFormat check

        v.validator.reply_fits(len(z), _uint8(image_format), True, what)
        (images,) = await v.decoder.submit(z, deadline)
        v.metrics.latents(what, z)
        return codec.images_message(images, image_format)

    @rpc("Score", routed=True)
    async def Score(self, v: ServedVersion, request: vae_pb2.ScoreRequest,
                    context: grpc.aio.ServicerContext) -> vae_pb2.ScoreResponse:
        x = v.validator.images(codec.to_array(request.images, "images"))
        k = v.checks.score_k(len(x), request.k)
        if v.params is None or v.likelihood is None:
            raise FailedPrecondition(f"Score is not available for model {v.name!r} version {v.version!r}: "
                                     f"{v.likelihood_problem}")
        deadline = _deadline(context)
        mu, logvar = await v.encoder.submit(x, deadline)
        v.metrics.encoded(mu, logvar)
        gen = sampling.noise_generator(request.seed if request.HasField("seed") else None)
        z, eps = scoring.posterior_latents(gen, mu, logvar, k)
        (params,) = await v.params.submit(z, deadline)
        s = scoring.score(v.likelihood, x, mu, logvar, z, eps, params, k)
        v.metrics.scored(s.elbo)
        reply = vae_pb2.ScoreResponse(elbo=s.elbo.tolist(), log_px=s.log_px.tolist(), kl=s.kl.tolist(),
                                      k=k, likelihood=v.likelihood.name)
        if s.iwae is not None:
            reply.iwae.extend(s.iwae.tolist())
        return reply

    @rpc("Interpolate", routed=True)
    async def Interpolate(self, v: ServedVersion, request: vae_pb2.InterpolateRequest,
                          context: grpc.aio.ServicerContext) -> vae_pb2.InterpolateResponse:
        a, b = self._endpoint(v, request.a, "a"), self._endpoint(v, request.b, "b")
        steps = v.checks.steps(request.steps, "Interpolate")
        method = v.checks.method(request.method)
        deadline = _deadline(context)
        if a.kind == b.kind == "image":  # one encoder run for both
            mu, logvar = await v.encoder.submit(np.concatenate([a.value, b.value]), deadline)
            v.metrics.encoded(mu, logvar)
            za, zb = mu[0], mu[1]
        else:
            za, zb = (await self._latent(v, a, deadline))[0], (await self._latent(v, b, deadline))[0]
        z = latent_ops.interpolate(za, zb, steps, method)
        images = await self._decoded(v, z, request.format, "Interpolate", deadline)
        return vae_pb2.InterpolateResponse(images=images, z=codec.from_array(z))

    @rpc("Traverse", routed=True)
    async def Traverse(self, v: ServedVersion, request: vae_pb2.TraverseRequest,
                       context: grpc.aio.ServicerContext) -> vae_pb2.TraverseResponse:
        base = self._endpoint(v, request.base, "base")
        dims = v.checks.traverse_dims(list(request.dims), request.n_dims)
        if isinstance(dims, int):
            n = dims or min(latent_ops.DEFAULT_TRAVERSE_DIMS, v.validator.latent_dim)
            if v.kl_per_dim is None:
                raise FailedPrecondition("Traverse without dims ranks dimensions by the training reference's "
                                         "kl_per_dim, which this model's manifest lacks; name the dims")
            dims = latent_ops.rank_dims(v.kl_per_dim, n)
        steps = v.checks.steps(request.steps, "Traverse")
        v.checks.rows(len(dims) * steps, f"Traverse: {len(dims)} dims x {steps} steps")
        low, high = v.checks.value_range(request.low if request.HasField("low") else None,
                                         request.high if request.HasField("high") else None)
        deadline = _deadline(context)
        z0 = (await self._latent(v, base, deadline))[0]
        z = latent_ops.traverse(z0, dims, np.linspace(low, high, steps, dtype=np.float32))
        images = await self._decoded(v, z, request.format, "Traverse", deadline)
        return vae_pb2.TraverseResponse(images=images, z=codec.from_array(z), dims=dims)

    @rpc("Edit", routed=True)
    async def Edit(self, v: ServedVersion, request: vae_pb2.EditRequest,
                   context: grpc.aio.ServicerContext) -> vae_pb2.EditResponse:
        x = v.validator.images(codec.to_array(request.images, "images"))
        direction = v.checks.direction(codec.to_array(request.direction, "direction"))
        scales = v.checks.scales(list(request.scales), len(x))
        deadline = _deadline(context)
        mu, logvar = await v.encoder.submit(x, deadline)
        v.metrics.encoded(mu, logvar)
        z = v.checks.edited(latent_ops.edit(np.asarray(mu), direction, scales))
        images = await self._decoded(v, z, request.format, "Edit", deadline)
        return vae_pb2.EditResponse(images=images, z=codec.from_array(z))
