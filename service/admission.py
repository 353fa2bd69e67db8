"""Admission: which calls the server takes on, owned by the server and shared by every gRPC service.

One small object holds the lifecycle state the handlers need: `ready` (warm and not draining), the
number of calls admitted and not finished, and the bound on that number. The server opens it after
warm-up and drains it on shutdown; handlers only `admit()` and `release()` (through service.calls).

Why the project bounds in-flight calls itself: grpc core keeps calls the application has not yet
picked up in a pending list of its own, and past its limits it cancels or refuses them before any
handler runs, so the caller sees CANCELLED and no metric counts it. The server raises those core
limits far above `max_in_flight` (service.server.grpc_options), so every call reaches a handler and
the refusal is this object's: RESOURCE_EXHAUSTED with a retry hint, counted in vae_errors_total.

No grpc import: the KServe servicer and any later service reuse it as is. Single event loop: the
count is only touched from the loop's thread, so no lock.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from service.errors import Overloaded, Unavailable

__all__ = ["Admission", "NOT_READY_MESSAGE"]

NOT_READY_MESSAGE = "the service is not ready (warming up or shutting down); retry"
# After the admitted work is done, grpc is stopped while calls that arrive are parked in their handler
# (not answered yet), then refused UNAVAILABLE. Why: grpc's stop cancels (CANCELLED, which clients do
# not retry) every call that has reached grpc core but no handler yet, and a call can reach core at any
# instant while clients send. A parked call holds its client: a client that retries after a refusal
# sends nothing while its call is parked. So parking starts PARK_BEFORE_S before grpc's stop, longer
# than any client's retry pause worth serving (the reliability test's clients retry every 50 ms): by the
# stop, every such client waits in a handler and none is sending, so nothing is in core to cancel.
# Parking lasts PARK_AFTER_S after the stop, while grpc tells the clients to go (GOAWAY) and closes
# the port; the parked calls are then refused and grpc's stop completes. Parked calls cost the loop
# nothing, so it keeps taking calls from core meanwhile.
PARK_BEFORE_S = 0.3
# The in-flight average (`load`) spans about this many admitted calls; below LONE_LOAD a call that is
# the only one in flight counts as lone.
LOAD_SPAN = 32
LONE_LOAD = 1.5
PARK_AFTER_S = 0.1


@dataclass
class Admission:
    """Ready flag, in-flight count and bound, and the drain that waits for in-flight to reach 0."""

    max_in_flight: int
    retry_after_ms: int = 100
    ready: bool = False
    in_flight: int = 0
    draining: bool = False
    # Most calls in flight at once since start (reported in the drain's log line).
    peak_in_flight: int = 0
    # When the last admitted call finished, and when the last call of any kind arrived (monotonic).
    last_release: float = 0.0
    last_arrival: float = 0.0
    # Calls in flight as seen by the admitted calls, averaged (exponentially, over ~LOAD_SPAN arrivals).
    load: float = 0.0
    _idle: asyncio.Event | None = field(default=None, repr=False)
    _parked: asyncio.Event | None = field(default=None, repr=False)

    def open(self) -> None:
        """Warm: admit calls from now on."""
        self.ready = True
        self.draining = False

    def admit(self) -> None:
        """Take one call on, or raise Unavailable (not ready / draining) or Overloaded (at the bound).
        Never awaits: a drain that clears `ready` after this returned sees the call in `in_flight`."""
        if not self.ready:
            raise Unavailable(NOT_READY_MESSAGE)
        if self.in_flight >= self.max_in_flight:
            raise Overloaded(self.max_in_flight, self.retry_after_ms)
        self.in_flight += 1
        self.load += (self.in_flight - self.load) / LOAD_SPAN
        if self.in_flight > self.peak_in_flight:
            self.peak_in_flight = self.in_flight

    def lone(self) -> bool:
        """Whether the call being served is alone: the only one in flight, and recent calls were too.
        The average matters: calls waiting in grpc core are not counted until a handler takes them, so
        the instant count alone can read 1 under load (service/batching.py runs lone calls inline)."""
        return self.in_flight <= 1 and self.load < LONE_LOAD

    def release(self) -> None:
        """One admitted call has finished (OK or not)."""
        self.in_flight -= 1
        self.last_release = time.monotonic()
        if self.in_flight <= 0 and self._idle is not None:
            self._idle.set()

    async def drain(self, timeout: float) -> bool:
        """Refuse new calls from now on and wait until the admitted ones have finished, at most
        `timeout` seconds; True when in-flight reached 0. Waits on the work, not on the callers:
        refused calls do not delay it."""
        self.ready = False
        self.draining = True
        if self.in_flight > 0:
            self._idle = asyncio.Event()
            try:
                await asyncio.wait_for(self._idle.wait(), max(0.0, timeout))
            except TimeoutError:
                return False
            finally:
                self._idle = None
        return True

    def arrived(self) -> None:
        """Note that a call reached a handler, admitted or not."""
        self.last_arrival = time.monotonic()

    def park(self) -> None:
        """From now on refusals wait in `parked()` until `unpark()` (see PARK_BEFORE_S)."""
        if self._parked is None:
            self._parked = asyncio.Event()

    def unpark(self) -> None:
        if self._parked is not None:
            self._parked.set()
            self._parked = None

    async def parked(self) -> None:
        """Wait while refusals are parked (returns at once otherwise)."""
        if self._parked is not None:
            await self._parked.wait()
