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
# After the admitted work is done: stop grpc in the first gap this long between arriving calls, and
# at the latest after SETTLE_MAX_S. Why: grpc's stop cancels (CANCELLED, not retried by clients) the
# calls that reached grpc core but not yet a handler; closed-loop clients send their next call right
# after their last reply, and retrying ones come back in waves, so a stop at the very moment the work
# ends would catch some. A short gap is found within one retry period; refused calls never extend
# the wait beyond SETTLE_MAX_S (the drain waits on the work, not on the callers).
SETTLE_GAP_S = 0.02
SETTLE_MAX_S = 1.0


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
    _idle: asyncio.Event | None = field(default=None, repr=False)

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
        if self.in_flight > self.peak_in_flight:
            self.peak_in_flight = self.in_flight

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
        """Note that a call reached a handler, admitted or not (see SETTLE_GAP_S)."""
        self.last_arrival = time.monotonic()

    async def settle(self, timeout: float) -> None:
        """After the drain: wait for a gap of SETTLE_GAP_S without arriving calls, at most
        min(SETTLE_MAX_S, timeout) seconds."""
        end = time.monotonic() + max(0.0, min(SETTLE_MAX_S, timeout))
        while time.monotonic() < end and time.monotonic() - self.last_arrival < SETTLE_GAP_S:
            await asyncio.sleep(SETTLE_GAP_S / 4)
