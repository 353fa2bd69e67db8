"""The VaeService handlers: route to a model version, decode the request, validate, submit to that
version's batcher, encode the reply (stamped with the model and version that produced it).

Thin on purpose: shapes and limits live in validation.py, tensors in codec.py, noise in sampling.py,
batching in batching.py, and the status of every error in errors.py.
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
from service.errors import InvalidArgument, ServiceError, Unavailable, grpc_status, metric_reason
from service.metrics import ServiceMetrics
from service.registry import ModelRegistry, VersionStatus
from service.served import ServedVersion
from service.validation import NonFinite

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
    def __init__(self, *, models: ModelRegistry, metrics: ServiceMetrics) -> None:
        self.models = models
        self.metrics = metrics  # calls that reach no model version (refused before routing)
        # Set by the server once the models are warm; until then (and while draining) new calls are
        # refused, matching health NOT_SERVING.
        self.ready = False
        # Calls admitted (ready was True) and not finished: the server's drain waits for 0.
        self.in_flight = 0
        # When the latest call reached a handler (monotonic): the drain also waits for a quiet moment,
        # so that calls already received are answered (UNAVAILABLE) rather than cancelled by grpc's stop.
        self.last_call = 0.0

    async def _fail(self, exc: Exception, context: grpc.aio.ServicerContext, metrics: ServiceMetrics) -> str:
        status = grpc_status(exc)
        metrics.error(metric_reason(exc))
        if isinstance(exc, NonFinite):
            metrics.nonfinite("input", exc.count)
        await context.abort(status, str(exc))
        return status.name  # not reached: abort raises

    def _route(self, request: Any) -> ServedVersion:
        """The ready version this request goes to (raises Unavailable / NotFound)."""
        if not self.ready:
            raise Unavailable("the service is not ready (warming up or shutting down); retry")
        return self.models.resolve(request.model, request.version)

    async def _call(self, method: str, context: grpc.aio.ServicerContext, request: Any, body: Any) -> Any:
        """Route one unary call to a model version and run `body(version, request, context)` with request
        metrics (on that version's labels), in-flight accounting and the error -> status mapping."""
        started = time.perf_counter()
        self.last_call = time.monotonic()
        served: ServedVersion | None = None
        try:
            served = self._route(request)
        except ServiceError as exc:
            self.metrics.request_started(method)
            self.metrics.request_finished(method, grpc_status(exc).name, time.perf_counter() - started)
            await self._fail(exc, context, self.metrics)
        assert served is not None
        metrics = served.metrics
        metrics.request_started(method)
        # No await since the routing: a drain of this version (or of the server) sees this call.
        served.enter()
        self.in_flight += 1
        code = "OK"
        try:
            reply = await body(served, request, context)
            reply.model, reply.version = served.name, served.version
            return reply
        except ServiceError as exc:
            code = grpc_status(exc).name
            await self._fail(exc, context, metrics)
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception:
            code = "INTERNAL"
            raise
        finally:
            self.in_flight -= 1
            served.leave()
            metrics.request_finished(method, code, time.perf_counter() - started)

    async def admit(self, method: str, context: grpc.aio.ServicerContext, work: Any) -> Any:
        """Admission for a front-end that routes by itself (the Open Inference Protocol servicer):
        the ready check, the server's in-flight count for its drain, request metrics and the error ->
        status mapping; the version's own drain count is taken by its submitters."""
        started = time.perf_counter()
        self.metrics.request_started(method)
        code = "OK"
        admitted = False
        self.last_call = time.monotonic()
        try:
            if not self.ready:
                work.close()
                raise Unavailable("the service is not ready (warming up or shutting down); retry")
            admitted = True  # no await since the check: a drain that clears `ready` sees this call
            self.in_flight += 1
            return await work
        except ServiceError as exc:
            code = grpc_status(exc).name
            await self._fail(exc, context, self.metrics)
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception:
            code = "INTERNAL"
            raise
        finally:
            self.in_flight -= admitted
            self.metrics.request_finished(method, code, time.perf_counter() - started)

    async def _admin(self, method: str, context: grpc.aio.ServicerContext, work: Any) -> Any:
        """ListModels / LoadModel / UnloadModel: answered in any state, errors mapped like the rest."""
        started = time.perf_counter()
        self.metrics.request_started(method)
        code = "OK"
        try:
            return await work
        except ServiceError as exc:
            code = grpc_status(exc).name
            await self._fail(exc, context, self.metrics)
        except Exception:
            code = "INTERNAL"
            raise
        finally:
            self.metrics.request_finished(method, code, time.perf_counter() - started)

    async def GetModelInfo(self, request: vae_pb2.GetModelInfoRequest,
                           context: grpc.aio.ServicerContext) -> vae_pb2.ModelInfo:
        # Answered while warming up and draining too (no `ready` check): clients may ask what is served.
        async def info() -> vae_pb2.ModelInfo:
            return self.models.describe(request.model, request.version).info
        return await self._admin("GetModelInfo", context, info())

    async def ListModels(self, request: vae_pb2.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> vae_pb2.ListModelsResponse:
        async def listing() -> vae_pb2.ListModelsResponse:
            try:
                default = self.models.resolve().name
            except ServiceError:
                default = self.models.default_model
            return vae_pb2.ListModelsResponse(default_model=default,
                                              versions=[_status(s) for s in self.models.statuses()])
        return await self._admin("ListModels", context, listing())

    async def LoadModel(self, request: vae_pb2.LoadModelRequest,
                        context: grpc.aio.ServicerContext) -> vae_pb2.LoadModelResponse:
        async def load() -> vae_pb2.LoadModelResponse:
            if not request.model:
                raise InvalidArgument("LoadModel: model is required")
            found = await self.models.load(request.model, request.version)
            return vae_pb2.LoadModelResponse(versions=[_status(s) for s in found])
        return await self._admin("LoadModel", context, load())

    async def UnloadModel(self, request: vae_pb2.UnloadModelRequest,
                          context: grpc.aio.ServicerContext) -> vae_pb2.UnloadModelResponse:
        async def unload() -> vae_pb2.UnloadModelResponse:
            if not request.model:
                raise InvalidArgument("UnloadModel: model is required")
            found = await self.models.unload(request.model, request.version)
            return vae_pb2.UnloadModelResponse(versions=[_status(s) for s in found])
        return await self._admin("UnloadModel", context, unload())

    async def Encode(self, request: vae_pb2.EncodeRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._call("Encode", context, request, self._encode)

    async def _encode(self, v: ServedVersion, request: vae_pb2.EncodeRequest,
                      context: grpc.aio.ServicerContext) -> vae_pb2.EncodeResponse:
        x = v.validator.images(codec.to_array(request.images, "images"))
        mu, logvar = await v.encoder.submit(x, _deadline(context))
        v.metrics.encoded(mu, logvar)
        reply = vae_pb2.EncodeResponse(mu=codec.from_array(mu), logvar=codec.from_array(logvar))
        if request.sample:
            gen = sampling.noise_generator(request.seed if request.HasField("seed") else None)
            reply.z.CopyFrom(codec.from_array(sampling.posterior_sample(gen, mu, logvar)))
        return reply

    async def Decode(self, request: vae_pb2.DecodeRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._call("Decode", context, request, self._decode)

    async def _decode(self, v: ServedVersion, request: vae_pb2.DecodeRequest,
                      context: grpc.aio.ServicerContext) -> vae_pb2.DecodeResponse:
        z = v.validator.latents(codec.to_array(request.z, "z"))
        v.validator.reply_fits(len(z), _uint8(request.format), False, "Decode")
        (images,) = await v.decoder.submit(z, _deadline(context))
        v.metrics.latents("Decode", z)
        return vae_pb2.DecodeResponse(images=codec.images_message(images, request.format))

    async def Reconstruct(self, request: vae_pb2.ReconstructRequest,
                          context: grpc.aio.ServicerContext) -> Any:
        return await self._call("Reconstruct", context, request, self._reconstruct)

    async def _reconstruct(self, v: ServedVersion, request: vae_pb2.ReconstructRequest,
                           context: grpc.aio.ServicerContext) -> vae_pb2.ReconstructResponse:
        x = v.validator.images(codec.to_array(request.images, "images"))
        v.validator.reply_fits(len(x), _uint8(request.format), False, "Reconstruct")
        deadline = _deadline(context)
        mu, logvar = await v.encoder.submit(x, deadline)
        v.metrics.encoded(mu, logvar)
        # The posterior mean is decoded: a reconstruction, not a random draw.
        (images,) = await v.decoder.submit(mu, deadline)
        return vae_pb2.ReconstructResponse(images=codec.images_message(images, request.format))

    async def Sample(self, request: vae_pb2.SampleRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._call("Sample", context, request, self._sample)

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
        reply = vae_pb2.SampleResponse(images=codec.images_message(images, request.format), offset=offset,
                                       model=v.name, version=v.version)
        if request.return_latents:
            reply.z.CopyFrom(codec.from_array(z))
        return reply

    async def _sample(self, v: ServedVersion, request: vae_pb2.SampleRequest,
                      context: grpc.aio.ServicerContext) -> vae_pb2.SampleResponse:
        temperature, _, gen = self._sample_args(v, request, stream=False)
        z = sampling.prior_latents(gen, request.n, v.validator.latent_dim, temperature)
        return await self._sample_chunk(v, z, request, 0, _deadline(context))

    async def SampleStream(self, request: vae_pb2.SampleRequest,
                           context: grpc.aio.ServicerContext) -> AsyncIterator[vae_pb2.SampleResponse]:
        started = time.perf_counter()
        self.last_call = time.monotonic()
        served: ServedVersion | None = None
        try:
            served = self._route(request)
        except ServiceError as exc:
            self.metrics.request_started("SampleStream")
            self.metrics.request_finished("SampleStream", grpc_status(exc).name,
                                          time.perf_counter() - started)
            await self._fail(exc, context, self.metrics)
        assert served is not None
        v, metrics = served, served.metrics
        metrics.request_started("SampleStream")
        v.enter()  # no await since the routing: a drain of this version sees the stream
        self.in_flight += 1
        code = "OK"
        try:
            temperature, chunk, gen = self._sample_args(v, request, stream=True)
            deadline = _deadline(context)
            # Noise is drawn chunk after chunk from one generator: sample i is the same whatever the
            # chunk size. The next chunk is computed while the previous message is being sent. The
            # whole stream stays on the version it was routed to.
            offset = 0
            tasks: list[asyncio.Future[vae_pb2.SampleResponse]] = []  # at most two: sending, computing
            try:
                while offset < request.n or tasks:
                    if offset < request.n:
                        k = min(chunk, request.n - offset)
                        # Drawn here, in order, before the task exists: the stream's noise order
                        # never depends on task scheduling.
                        z = sampling.prior_latents(gen, k, v.validator.latent_dim, temperature)
                        tasks.append(asyncio.ensure_future(self._sample_chunk(v, z, request, offset,
                                                                              deadline)))
                        offset += k
                    if len(tasks) == 2 or offset >= request.n:
                        yield await tasks.pop(0)
            finally:
                for task in tasks:
                    task.cancel()
        except ServiceError as exc:
            code = grpc_status(exc).name
            await self._fail(exc, context, metrics)
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception:
            code = "INTERNAL"
            raise
        finally:
            self.in_flight -= 1
            v.leave()
            metrics.request_finished("SampleStream", code, time.perf_counter() - started)
