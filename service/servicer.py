"""The VaeService handlers: decode the request, validate, submit to a batcher, encode the reply.

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
from service.validation import NonFinite, Validator

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


class VaeServicer(vae_pb2_grpc.VaeServiceServicer):
    def __init__(self, *, info: vae_pb2.ModelInfo, validator: Validator, encoder: Submitter,
                 decoder: Submitter, sampler: Submitter, metrics: ServiceMetrics) -> None:
        self.info = info
        self.validator = validator
        self.encoder = encoder
        self.decoder = decoder
        self.sampler = sampler  # the decoder, or its fixed-block variant (see batching.fixed_blocks)
        self.metrics = metrics
        self.latent_dim = validator.latent_dim
        # Set by the server once both graphs are warm; until then (and while draining) new calls are
        # refused, matching health NOT_SERVING.
        self.ready = False
        # Calls admitted (ready was True) and not finished: the server's drain waits for 0.
        self.in_flight = 0
        # When the latest call reached a handler (monotonic): the drain also waits for a quiet moment,
        # so that calls already received are answered (UNAVAILABLE) rather than cancelled by grpc's stop.
        self.last_call = 0.0

    async def _fail(self, exc: Exception, context: grpc.aio.ServicerContext) -> str:
        status = grpc_status(exc)
        self.metrics.error(metric_reason(exc))
        if isinstance(exc, NonFinite):
            self.metrics.nonfinite("input", exc.count)
        await context.abort(status, str(exc))
        return str(status.name)  # not reached: abort raises

    async def _call(self, method: str, context: grpc.aio.ServicerContext, work: Any) -> Any:
        """Run one unary handler body with request metrics and the error -> status mapping."""
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
            await self._fail(exc, context)
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception:
            code = "INTERNAL"
            raise
        finally:
            self.in_flight -= admitted
            self.metrics.request_finished(method, code, time.perf_counter() - started)

    async def GetModelInfo(self, request: vae_pb2.GetModelInfoRequest,
                           context: grpc.aio.ServicerContext) -> vae_pb2.ModelInfo:
        # Answered while warming up and draining too (no `ready` check): clients may ask what is served.
        started = time.perf_counter()
        self.metrics.request_started("GetModelInfo")
        self.metrics.request_finished("GetModelInfo", "OK", time.perf_counter() - started)
        return self.info

    async def Encode(self, request: vae_pb2.EncodeRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._call("Encode", context, self._encode(request, context))

    async def _encode(self, request: vae_pb2.EncodeRequest,
                      context: grpc.aio.ServicerContext) -> vae_pb2.EncodeResponse:
        x = self.validator.images(codec.to_array(request.images, "images"))
        mu, logvar = await self.encoder.submit(x, _deadline(context))
        self.metrics.encoded(mu, logvar)
        reply = vae_pb2.EncodeResponse(mu=codec.from_array(mu), logvar=codec.from_array(logvar))
        if request.sample:
            gen = sampling.noise_generator(request.seed if request.HasField("seed") else None)
            reply.z.CopyFrom(codec.from_array(sampling.posterior_sample(gen, mu, logvar)))
        return reply

    async def Decode(self, request: vae_pb2.DecodeRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._call("Decode", context, self._decode(request, context))

    async def _decode(self, request: vae_pb2.DecodeRequest,
                      context: grpc.aio.ServicerContext) -> vae_pb2.DecodeResponse:
        z = self.validator.latents(codec.to_array(request.z, "z"))
        self.validator.reply_fits(len(z), _uint8(request.format), False, "Decode")
        (images,) = await self.decoder.submit(z, _deadline(context))
        self.metrics.latents("Decode", z)
        return vae_pb2.DecodeResponse(images=codec.images_message(images, request.format))

    async def Reconstruct(self, request: vae_pb2.ReconstructRequest,
                          context: grpc.aio.ServicerContext) -> Any:
        return await self._call("Reconstruct", context, self._reconstruct(request, context))

    async def _reconstruct(self, request: vae_pb2.ReconstructRequest,
                           context: grpc.aio.ServicerContext) -> vae_pb2.ReconstructResponse:
        x = self.validator.images(codec.to_array(request.images, "images"))
        self.validator.reply_fits(len(x), _uint8(request.format), False, "Reconstruct")
        deadline = _deadline(context)
        mu, logvar = await self.encoder.submit(x, deadline)
        self.metrics.encoded(mu, logvar)
        # The posterior mean is decoded: a reconstruction, not a random draw.
        (images,) = await self.decoder.submit(mu, deadline)
        return vae_pb2.ReconstructResponse(images=codec.images_message(images, request.format))

    async def Sample(self, request: vae_pb2.SampleRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._call("Sample", context, self._sample(request, context))

    def _sample_args(self, request: vae_pb2.SampleRequest,
                     stream: bool) -> tuple[float, int, np.random.Generator]:
        temperature = request.temperature if request.HasField("temperature") else None
        t, chunk = self.validator.sample(request.n, temperature, request.chunk_size, stream=stream)
        rows = min(chunk, request.n) if stream else request.n
        self.validator.reply_fits(rows, _uint8(request.format), request.return_latents,
                                  "SampleStream chunk" if stream else "Sample")
        return t, chunk, sampling.noise_generator(request.seed if request.HasField("seed") else None)

    async def _sample_chunk(self, z: np.ndarray, request: vae_pb2.SampleRequest, offset: int,
                            deadline: float | None) -> vae_pb2.SampleResponse:
        (images,) = await self.sampler.submit(z, deadline)
        self.metrics.latents("Sample", z)
        reply = vae_pb2.SampleResponse(images=codec.images_message(images, request.format), offset=offset)
        if request.return_latents:
            reply.z.CopyFrom(codec.from_array(z))
        return reply

    async def _sample(self, request: vae_pb2.SampleRequest,
                      context: grpc.aio.ServicerContext) -> vae_pb2.SampleResponse:
        temperature, _, gen = self._sample_args(request, stream=False)
        z = sampling.prior_latents(gen, request.n, self.latent_dim, temperature)
        return await self._sample_chunk(z, request, 0, _deadline(context))

    async def SampleStream(self, request: vae_pb2.SampleRequest,
                           context: grpc.aio.ServicerContext) -> AsyncIterator[vae_pb2.SampleResponse]:
        started = time.perf_counter()
        self.metrics.request_started("SampleStream")
        code = "OK"
        admitted = False
        self.last_call = time.monotonic()
        try:
            if not self.ready:
                raise Unavailable("the service is not ready (warming up or shutting down); retry")
            admitted = True
            self.in_flight += 1
            temperature, chunk, gen = self._sample_args(request, stream=True)
            deadline = _deadline(context)
            # Noise is drawn chunk after chunk from one generator: sample i is the same whatever the
            # chunk size. The next chunk is computed while the previous message is being sent.
            offset = 0
            tasks: list[asyncio.Future[vae_pb2.SampleResponse]] = []  # at most two: sending, computing
            try:
                while offset < request.n or tasks:
                    if offset < request.n:
                        k = min(chunk, request.n - offset)
                        # Drawn here, in order, before the task exists: the stream's noise order
                        # never depends on task scheduling.
                        z = sampling.prior_latents(gen, k, self.latent_dim, temperature)
                        tasks.append(asyncio.ensure_future(self._sample_chunk(z, request, offset, deadline)))
                        offset += k
                    if len(tasks) == 2 or offset >= request.n:
                        yield await tasks.pop(0)
            finally:
                for task in tasks:
                    task.cancel()
        except ServiceError as exc:
            code = grpc_status(exc).name
            await self._fail(exc, context)
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception:
            code = "INTERNAL"
            raise
        finally:
            self.in_flight -= admitted
            self.metrics.request_finished("SampleStream", code, time.perf_counter() - started)
