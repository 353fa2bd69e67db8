"""A real grpc.aio VaeService on port 0 that answers by a script: the next calls of a method end with
a chosen status (RESOURCE_EXHAUSTED with a `grpc-retry-pushback-ms` trailer, UNAVAILABLE, ...), a
stream may be cut after some chunks, and every attempt that reaches it is recorded with gRPC's
`grpc-previous-rpc-attempts` header. Real faults produced for real, to test the client's retries.

Its model is a toy: images 1x2x2 uint8, sample i of seed s is filled with (7 s + i) mod 256."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import numpy as np
from servers import LoopThread

from protos.vae.v1 import vae_pb2, vae_pb2_grpc

__all__ = ["Fault", "Attempt", "FaultServer", "toy_images"]

SHAPE = (1, 2, 2)
LATENT_DIM = 2


@dataclass(frozen=True)
class Fault:
    code: grpc.StatusCode
    pushback_ms: str | None = None   # the trailer's text (a negative value means "do not retry")
    after_chunks: int = 0            # SampleStream: chunks sent before the call ends with `code`


@dataclass(frozen=True)
class Attempt:
    method: str
    at: float                        # time.monotonic() when it arrived
    previous: int                    # grpc-previous-rpc-attempts (0 on a first attempt)


def toy_images(seed: int, start: int, count: int) -> np.ndarray:
    values = (7 * seed + np.arange(start, start + count)) % 256
    return np.broadcast_to(values.astype(np.uint8)[:, None, None, None], (count, *SHAPE)).copy()


def _tensor(arr: np.ndarray) -> vae_pb2.Tensor:
    dtype = vae_pb2.DATA_TYPE_UINT8 if arr.dtype == np.uint8 else vae_pb2.DATA_TYPE_FLOAT32
    data = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    return vae_pb2.Tensor(shape=list(arr.shape), dtype=dtype, data=data)


def _formatted(images: np.ndarray, fmt: int) -> np.ndarray:
    return images if fmt == vae_pb2.IMAGE_FORMAT_UINT8 else (images / 255.0).astype(np.float32)


class _Servicer(vae_pb2_grpc.VaeServiceServicer):
    def __init__(self, owner: FaultServer) -> None:
        self.owner = owner

    async def _admit(self, method: str, context: grpc.aio.ServicerContext) -> Fault | None:
        md = dict(context.invocation_metadata() or ())
        previous = int(md.get("grpc-previous-rpc-attempts", 0))
        self.owner.attempts.append(Attempt(method, time.monotonic(), previous))
        queue = self.owner.script.get(method) or []
        fault = queue.pop(0) if queue else None
        if fault is not None and fault.after_chunks == 0:
            await self._end(fault, context)
        return fault

    @staticmethod
    async def _end(fault: Fault, context: grpc.aio.ServicerContext) -> None:
        if fault.pushback_ms is not None:
            context.set_trailing_metadata((("grpc-retry-pushback-ms", fault.pushback_ms),))
        await context.abort(fault.code, f"scripted {fault.code.name}")

    async def GetModelInfo(self, request: vae_pb2.GetModelInfoRequest,
                           context: grpc.aio.ServicerContext) -> vae_pb2.ModelInfo:
        await self._admit("GetModelInfo", context)
        limits = vae_pb2.Limits(max_sample_n=4, max_stream_n=1000, max_batch_per_request=16)
        return vae_pb2.ModelInfo(model_name="toy", input_shape=list(SHAPE), latent_dim=LATENT_DIM,
                                 limits=limits)

    async def Sample(self, request: vae_pb2.SampleRequest,
                     context: grpc.aio.ServicerContext) -> vae_pb2.SampleResponse:
        await self._admit("Sample", context)
        images = _formatted(toy_images(request.seed, 0, request.n), request.format)
        return vae_pb2.SampleResponse(images=_tensor(images))

    async def SampleStream(self, request: vae_pb2.SampleRequest,
                           context: grpc.aio.ServicerContext) -> AsyncIterator[vae_pb2.SampleResponse]:
        fault = await self._admit("SampleStream", context)
        ended = [False]  # by its last message or by a scripted fault

        def count(_: object) -> None:  # the call is over: if not ended above, the client cancelled it
            self.owner.cancelled += not ended[0]

        context.add_done_callback(count)
        chunk = request.chunk_size or 2
        for k, start in enumerate(range(0, request.n, chunk)):
            if fault is not None and k == fault.after_chunks:
                ended[0] = True
                await self._end(fault, context)
            count = min(chunk, request.n - start)
            images = _formatted(toy_images(request.seed, start, count), request.format)
            yield vae_pb2.SampleResponse(images=_tensor(images), offset=start)
        ended[0] = True

    async def Decode(self, request: vae_pb2.DecodeRequest,
                     context: grpc.aio.ServicerContext) -> vae_pb2.DecodeResponse:
        await self._admit("Decode", context)
        n = int(request.z.shape[0])
        images = _formatted(np.zeros((n, *SHAPE), np.uint8), request.format)
        return vae_pb2.DecodeResponse(images=_tensor(images))


class FaultServer(LoopThread):
    """`with FaultServer() as srv: srv.fail("Sample", Fault(RESOURCE_EXHAUSTED, "150")); srv.target`.

    Runs in its own thread and event loop, so blocking and asyncio clients can both call it."""

    def __init__(self) -> None:
        self.script: dict[str, list[Fault]] = {}
        self.attempts: list[Attempt] = []
        self.cancelled = 0               # SampleStreams the client cancelled before their end
        super().__init__("fault-server")
        self.server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def fail(self, method: str, *faults: Fault) -> None:
        """The next len(faults) calls of `method` end with these faults, in order; later calls are OK."""
        self.script.setdefault(method, []).extend(faults)

    def seen(self, method: str) -> list[Attempt]:
        return [a for a in self.attempts if a.method == method]

    async def _start(self) -> None:
        self.server = grpc.aio.server()
        vae_pb2_grpc.add_VaeServiceServicer_to_server(_Servicer(self), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()

    def __enter__(self) -> FaultServer:
        self._open(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.server is not None:
                self.call(self.server.stop(0), timeout=30)
        finally:
            self._close()
