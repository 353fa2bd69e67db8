"""The VaeService handlers: route to a model version, decode the request, validate, submit to that
version's batcher, encode the reply (stamped with the model and version that produced it).

Thin on purpose: shapes and limits live in validation.py, tensors in codec.py, noise in sampling.py,
batching in batching.py, the status of every error in errors.py, and admission, routing, request
metrics and the error -> status mapping of every handler in calls.py (the `@rpc` wrapper). Lifecycle
state (ready, in flight, drain) is the server's Admission; models and versions are the registry's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

import grpc
import numpy as np

from protos.vae.v1 import vae_pb2, vae_pb2_grpc
from service import codec, sampling
from service.calls import CallGuard, rpc
from service.errors import InvalidArgument, ServiceError
from service.registry import ModelRegistry, VersionStatus
from service.served import ServedVersion

__all__ = ["VaeServicer", "Submitter"]


class Submitter(Protocol):
    async def submit(self, x: np.ndarray, deadline: float | None = None) -> list[np.ndarray]: ...


_IMAGE_FORMATS = frozenset(vae_pb2.ImageFormat.values())


def _uint8(image_format: int) -> bool:
    """Whether images go back as UINT8; an ImageFormat value this server does not know is refused
    (proto3 enums are open: an unknown number must not silently mean FLOAT32)."""
    if image_format not in _IMAGE_FORMATS:
        raise InvalidArgument(f"format: unknown ImageFormat value {image_format}; use "
                              "IMAGE_FORMAT_FLOAT32 or IMAGE_FORMAT_UINT8")
    return image_format == vae_pb2.IMAGE_FORMAT_UINT8


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _status(s: VersionStatus) -> vae_pb2.ModelVersionStatus:
    return vae_pb2.ModelVersionStatus(model=s.model, version=s.version, state=s.state, reason=s.reason,
                                      manifest_version=s.manifest_version, latest=s.latest)


class VaeServicer(vae_pb2_grpc.VaeServiceServicer):
    def __init__(self, *, models: ModelRegistry, calls: CallGuard) -> None:
        self.models = models
        self.calls = calls

    def route(self, request: Any) -> ServedVersion:
        """The ready version this request goes to (NotFound lists what is served)."""
        return self.models.resolve(request.model, request.version)

    # Answered while warming up and draining too (not admitted): clients may ask what is served.
    @rpc("GetModelInfo", admit=False)
    async def GetModelInfo(self, request: vae_pb2.GetModelInfoRequest,
                           context: grpc.aio.ServicerContext) -> vae_pb2.ModelInfo:
        return self.models.describe(request.model, request.version).info

    @rpc("ListModels", admit=False)
    async def ListModels(self, request: vae_pb2.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> vae_pb2.ListModelsResponse:
        try:
            default = self.models.resolve().name
        except ServiceError:
            default = self.models.default_model
        return vae_pb2.ListModelsResponse(default_model=default,
                                          versions=[_status(s) for s in self.models.statuses()])

    @rpc("LoadModel", admit=False)
    async def LoadModel(self, request: vae_pb2.LoadModelRequest,
                        context: grpc.aio.ServicerContext) -> vae_pb2.LoadModelResponse:
        if not request.model:
            raise InvalidArgument("LoadModel: model is required")
        found = await self.models.load(request.model, request.version)
        return vae_pb2.LoadModelResponse(versions=[_status(s) for s in found])

    @rpc("UnloadModel", admit=False)
    async def UnloadModel(self, request: vae_pb2.UnloadModelRequest,
                          context: grpc.aio.ServicerContext) -> vae_pb2.UnloadModelResponse:
        if not request.model:
            raise InvalidArgument("UnloadModel: model is required")
        found = await self.models.unload(request.model, request.version)
        return vae_pb2.UnloadModelResponse(versions=[_status(s) for s in found])

    @rpc("Encode", routed=True)
    async def Encode(self, v: ServedVersion, request: vae_pb2.EncodeRequest,
                     context: grpc.aio.ServicerContext) -> vae_pb2.EncodeResponse:
        x = v.validator.images(codec.to_array(request.images, "images"))
        mu, logvar = await v.encoder.submit(x, _deadline(context))
        v.metrics.encoded(mu, logvar)
        reply = vae_pb2.EncodeResponse(mu=codec.from_array(mu), logvar=codec.from_array(logvar))
        if request.sample:
            gen = sampling.noise_generator(request.seed if request.HasField("seed") else None)
            reply.z.CopyFrom(codec.from_array(sampling.posterior_sample(gen, mu, logvar)))
        return reply

    @rpc("Decode", routed=True)
    async def Decode(self, v: ServedVersion, request: vae_pb2.DecodeRequest,
                     context: grpc.aio.ServicerContext) -> vae_pb2.DecodeResponse:
        z = v.validator.latents(codec.to_array(request.z, "z"))
        v.validator.reply_fits(len(z), _uint8(request.format), False, "Decode")
        (images,) = await v.decoder.submit(z, _deadline(context))
        v.metrics.latents("Decode", z)
        return vae_pb2.DecodeResponse(images=codec.images_message(images, request.format))

    @rpc("Reconstruct", routed=True)
    async def Reconstruct(self, v: ServedVersion, request: vae_pb2.ReconstructRequest,
                          context: grpc.aio.ServicerContext) -> vae_pb2.ReconstructResponse:
        x = v.validator.images(codec.to_array(request.images, "images"))
        v.validator.reply_fits(len(x), _uint8(request.format), False, "Reconstruct")
        deadline = _deadline(context)
        mu, logvar = await v.encoder.submit(x, deadline)
        v.metrics.encoded(mu, logvar)
        # The posterior mean is decoded: a reconstruction, not a random draw.
        (images,) = await v.decoder.submit(mu, deadline)
        return vae_pb2.ReconstructResponse(images=codec.images_message(images, request.format))

    def _sample_args(self, v: ServedVersion, request: vae_pb2.SampleRequest,
                     stream: bool) -> tuple[float, int, np.random.Generator]:
        temperature = request.temperature if request.HasField("temperature") else None
        t, chunk = v.validator.sample(request.n, temperature, request.chunk_size, stream=stream)
        rows = min(chunk, request.n) if stream else request.n
        v.validator.reply_fits(rows, _uint8(request.format), request.return_latents,
                               "SampleStream chunk" if stream else "Sample")
        return t, chunk, sampling.noise_generator(request.seed if request.HasField("seed") else None)

    async def _sample_chunk(self, v: ServedVersion, z: np.ndarray, request: vae_pb2.SampleRequest,
                            offset: int, deadline: float | None) -> vae_pb2.SampleResponse:
        (images,) = await v.sampler.submit(z, deadline)
        v.metrics.latents("Sample", z)
        reply = vae_pb2.SampleResponse(images=codec.images_message(images, request.format), offset=offset)
        if request.return_latents:
            reply.z.CopyFrom(codec.from_array(z))
        return reply

    @rpc("Sample", routed=True)
    async def Sample(self, v: ServedVersion, request: vae_pb2.SampleRequest,
                     context: grpc.aio.ServicerContext) -> vae_pb2.SampleResponse:
        temperature, _, gen = self._sample_args(v, request, stream=False)
        z = sampling.prior_latents(gen, request.n, v.validator.latent_dim, temperature)
        return await self._sample_chunk(v, z, request, 0, _deadline(context))

    @rpc("SampleStream", routed=True)
    async def SampleStream(self, v: ServedVersion, request: vae_pb2.SampleRequest,
                           context: grpc.aio.ServicerContext) -> AsyncIterator[vae_pb2.SampleResponse]:
        temperature, chunk, gen = self._sample_args(v, request, stream=True)
        deadline = _deadline(context)
        # Noise is drawn chunk after chunk from one generator: sample i is the same whatever the chunk
        # size. The next chunk is computed while the previous message is being sent. The whole stream
        # stays on the version it was routed to.
        offset = 0
        tasks: list[asyncio.Future[vae_pb2.SampleResponse]] = []  # at most two: sending, computing
        try:
            while offset < request.n or tasks:
                if offset < request.n:
                    k = min(chunk, request.n - offset)
                    # Drawn here, in order, before the task exists: the stream's noise order never
                    # depends on task scheduling.
                    z = sampling.prior_latents(gen, k, v.validator.latent_dim, temperature)
                    tasks.append(asyncio.ensure_future(self._sample_chunk(v, z, request, offset, deadline)))
                    offset += k
                if len(tasks) == 2 or offset >= request.n:
                    yield await tasks.pop(0)
        finally:
            for task in tasks:
                task.cancel()
