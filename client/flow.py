"""The I/O-free machinery under both clients: a call is a *flow*, a generator that yields the I/O it
needs (`Unary`, `OpenStream`, `NextMessage`, `Sleep`) and the parts it hands to the caller (`Emit`),
and `Program` steps one flow for a driver.

So request building, validation, chunking and stream resume are written once (`client.core`); the
sync driver (`client.client`) performs each step by blocking, the async one (`client.aio`) by awaiting.
A driver is only: bind the stubs, perform five kinds of step, and loop `Program` until it is done."""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2_grpc

from protos.vae.v1 import vae_pb2_grpc

__all__ = ["Unary", "OpenStream", "NextMessage", "Sleep", "Emit", "IoStep", "Step", "Flow", "Program",
           "Stubs"]

T = TypeVar("T")


@dataclass(frozen=True)
class Unary:
    """Call `method` once; gRPC's service-config retry policy retries it inside `timeout`."""

    method: str
    request: Message
    timeout: float


@dataclass(frozen=True)
class OpenStream:
    """Start a server-streaming call; the driver hands back the call object."""

    method: str
    request: Message
    timeout: float


@dataclass(frozen=True)
class NextMessage:
    """The next message of an open stream, or None at its end."""

    stream: Any


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Emit:
    """A part for the caller of a streaming method (the driver yields it)."""

    value: Any


IoStep = Unary | OpenStream | NextMessage | Sleep
Step = IoStep | Emit
Flow = Generator[Step, Any, T]


class Stubs:
    """The generated stubs on one channel, sync or aio (both take the same constructor). A method
    is named as the proto names it ("Encode", "SampleStream"); the health service's as "Health/Check".
    Methods added to vae.v1 are reachable here with no change."""

    def __init__(self, channel: grpc.Channel | grpc.aio.Channel) -> None:
        # grpc_tools writes the *_pb2_grpc modules without annotations (and without a .pyi).
        self._vae = vae_pb2_grpc.VaeServiceStub(channel)  # type: ignore[no-untyped-call]
        self._health = health_pb2_grpc.HealthStub(channel)

    def __getitem__(self, method: str) -> Any:
        service, _, name = method.rpartition("/")
        return getattr(self._health if service == "Health" else self._vae, name)

    @staticmethod
    def full_name(method: str) -> str:
        """"Encode" -> "vae.v1.VaeService/Encode"; "Health/Check" -> "grpc.health.v1.Health/Check"."""
        service, _, name = method.rpartition("/")
        return f"grpc.health.v1.Health/{name}" if service == "Health" else f"vae.v1.VaeService/{name}"


class Program(Generic[T]):
    """Steps one flow. The driver reads `step`, performs it and calls `settle` (sync) or `asettle`
    (async) with its performer; `Emit` steps are taken with `take()`. When `done`, `result` holds
    what the flow returned; an exception the flow raises passes through to the driver's caller."""

    def __init__(self, flow: Flow[T]) -> None:
        self._flow = flow
        self._streams: list[Any] = []
        self.done = False
        self.result: T | None = None
        self.step: Step | None = self._advance(flow.send, None)

    def _advance(self, move: Callable[[Any], Step], arg: Any) -> Step | None:
        try:
            return move(arg)
        except StopIteration as stop:
            self.done, self.result = True, stop.value
            return None

    @property
    def emitting(self) -> bool:
        return isinstance(self.step, Emit)

    def resume(self, value: Any) -> None:
        if isinstance(self.step, OpenStream):
            self._streams.append(value)  # cancelled by close() if the caller stops reading
        self.step = self._advance(self._flow.send, value)

    def fail(self, exc: BaseException) -> None:
        self.step = self._advance(self._flow.throw, exc)

    def take(self) -> Any:
        """The value of an `Emit` step; the flow moves on."""
        assert isinstance(self.step, Emit)
        value = self.step.value
        self.resume(None)
        return value

    def settle(self, perform: Callable[[IoStep], Any]) -> None:
        try:
            value = perform(self._current())
        except grpc.RpcError as exc:
            self.fail(exc)
            return
        self.resume(value)

    async def asettle(self, perform: Callable[[IoStep], Any]) -> None:
        try:
            value = await perform(self._current())
        except grpc.RpcError as exc:
            self.fail(exc)
            return
        self.resume(value)

    def _current(self) -> IoStep:
        assert self.step is not None and not isinstance(self.step, Emit), "no I/O step to perform"
        return self.step

    def close(self) -> None:
        """Cancel the streams the flow opened (a caller that stopped reading) and close the flow."""
        for stream in self._streams:
            stream.cancel()
        self._flow.close()
