"""Dynamic batching: merge concurrent requests to one graph into one inference run, split back exactly.

Policy (why: at batch 1 the model costs tens to hundreds of microseconds, so any window that holds a
lone request costs more than it could save):
- a small request that is the only call in flight on the server (`lone()`, rows <= `inline_rows`) runs
  on the event loop itself: there is nothing to merge it with and nothing else for the loop to do, and
  the two thread hand-offs (to the inference thread and back) were most of its latency beyond grpc's;
- otherwise a request that finds the graph idle starts at once on an inference thread;
- requests that arrive while a run is busy queue; when the run ends they are merged, oldest first, up
  to `max_batch` rows and run together (a full batch is never held);
- a second (third, ...) worker starts a run only when the backlog holds at least `parallel_rows` rows:
  on a small CPU, two small runs in parallel starve the event loop that assembles the batches (measured:
  decode b1 c64 1,154 images/s with two workers always on, 1,657 with one), while two large batches in
  parallel use both cores (batch 256 scales with the workers);
- `max_delay` (default 0) only lets such a partial backlog wait a little for more rows;
- the queue is bounded (QueueFull), and an expired or cancelled request is dropped before inference.
Inference runs off the event loop (onnxruntime releases the GIL) in up to `workers` threads per graph.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from service.errors import DeadlineExpired, QueueFull, Unavailable

__all__ = ["Batcher", "DirectRunner", "RunFn", "fixed_blocks", "INLINE_STREAK"]

# Inline runs in a row before a lone call is sent through the thread path anyway (see submit).
INLINE_STREAK = 8

RunFn = Callable[[np.ndarray], list[np.ndarray]]
# (graph, seconds waited in the queue) and (graph, seconds of inference, rows in the batch)
WaitHook = Callable[[float], None]
RunHook = Callable[[float, int], None]


def fixed_blocks(run: RunFn, block: int) -> RunFn:
    """Run in blocks of exactly `block` rows (the last one zero-padded), so that each row is computed
    by the same kernels whatever else shares its batch: for providers whose results depend on the
    batch size (cuDNN picks algorithms per shape), this keeps Sample byte-identical under batching."""

    def run_blocks(x: np.ndarray) -> list[np.ndarray]:
        n = len(x)
        parts: list[list[np.ndarray]] = []
        for start in range(0, n, block):
            chunk = x[start:start + block]
            if len(chunk) < block:
                pad = np.zeros((block - len(chunk), *x.shape[1:]), dtype=x.dtype)
                chunk = np.concatenate([chunk, pad])
            parts.append(run(chunk))
        return [np.concatenate([p[i] for p in parts])[:n] for i in range(len(parts[0]))]

    return run_blocks


class _Item:
    __slots__ = ("x", "n", "fut", "enqueued", "deadline", "backlog")

    def __init__(self, x: np.ndarray, fut: asyncio.Future[list[np.ndarray]], deadline: float | None,
                 backlog: bool) -> None:
        self.x = x
        self.n = len(x)
        self.fut = fut
        self.enqueued = time.perf_counter()
        self.deadline = deadline
        self.backlog = backlog  # arrived while every worker was busy


class Batcher:
    """Merges requests to one graph. `submit` from the event loop; up to `workers` runs in flight.

    Callback-driven, no worker task: a request to an idle graph is handed to the inference thread in the
    same event-loop step as it arrives, and each finished run starts the next batch from its callback.
    """

    def __init__(self, graph: str, run: RunFn, *, max_batch: int, max_queue: int, max_delay_s: float = 0.0,
                 workers: int = 1, on_wait: WaitHook | None = None, on_run: RunHook | None = None,
                 parallel_rows: int = 1, inline_rows: int = 0,
                 lone: Callable[[], bool] | None = None) -> None:
        self.graph = graph
        self._run = run
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.max_delay_s = max_delay_s
        self.workers = workers
        # Rows a backlog needs before a worker beyond the first starts on it (1: any backlog).
        self.parallel_rows = max(1, parallel_rows)
        # Requests of at most this many rows run on the event loop while `lone()` (0: never).
        self.inline_rows = inline_rows if lone is not None else 0
        self._lone = lone
        self._queued_rows = 0
        self._on_wait = on_wait
        self._on_run = on_run
        self._queue: deque[_Item] = deque()
        # Inference threads, started as runs need them, fed through a C queue: no Future, lock or
        # condition per run (concurrent.futures has several).
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = 0
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        # Counters for tests and logs: runs, rows run, requests dropped before inference.
        self.runs = 0
        self.rows = 0
        self.dropped = 0
        self.inline_runs = 0
        self._streak = 0  # inline runs in a row

    async def submit(self, x: np.ndarray, deadline: float | None = None) -> list[np.ndarray]:
        """Outputs of the graph for `x` (rows in order); `deadline` is a time.monotonic() instant."""
        if len(self._queue) >= self.max_queue:
            raise QueueFull(self.graph, self.max_queue)
        if self._closed:
            raise Unavailable(f"the {self.graph} is shutting down")
        if len(x) <= self.inline_rows and self._idle_and_lone():
            # Calls that queue in grpc core while the loop runs inline are invisible to the in-flight
            # count: each would in turn look lone and the runs would serialise, never merging. So after
            # INLINE_STREAK inline runs in a row one lone call takes the thread path: while it is away,
            # the loop takes the waiting calls, the count shows them, and batching resumes.
            if self._streak < INLINE_STREAK:
                self._streak += 1
                return self._run_inline(x, deadline)
        self._streak = 0
        loop = self._loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[np.ndarray]] = loop.create_future()
        self._queue.append(_Item(x, fut, deadline, backlog=self._running >= self.workers))
        self._queued_rows += len(x)
        self._dispatch()
        return await fut

    def _idle_and_lone(self) -> bool:
        return not self._running and not self._queue and self._lone is not None and self._lone()

    def _run_inline(self, x: np.ndarray, deadline: float | None) -> list[np.ndarray]:
        """Run on the event loop's thread (see the policy above); errors reach the caller as raised."""
        if deadline is not None and time.monotonic() >= deadline:
            self.dropped += 1
            raise DeadlineExpired(self.graph)
        if self._on_wait is not None:
            self._on_wait(0.0)
        start = time.perf_counter()
        outs = self._run(x)
        seconds = time.perf_counter() - start
        if self._on_run is not None:
            self._on_run(seconds, len(x))
        self.runs += 1
        self.rows += len(x)
        self.inline_runs += 1
        return outs

    def _take(self) -> list[_Item]:
        """Oldest-first up to max_batch rows; drops cancelled and expired requests on the way."""
        items: list[_Item] = []
        rows = 0
        now = time.monotonic()
        while self._queue:
            item = self._queue[0]
            if item.fut.done():  # cancelled by the client or the RPC's deadline
                self._queue.popleft()
                self._queued_rows -= item.n
                self.dropped += 1
                continue
            if item.deadline is not None and now >= item.deadline:
                self._queue.popleft()
                self._queued_rows -= item.n
                self.dropped += 1
                item.fut.set_exception(DeadlineExpired(self.graph))
                continue
            if items and rows + item.n > self.max_batch:
                break
            self._queue.popleft()
            self._queued_rows -= item.n
            items.append(item)
            rows += item.n
        return items

    def _hold(self) -> bool:
        """Whether a partial backlog should wait (max_delay) for more rows; arms a timer if so."""
        if self.max_delay_s <= 0 or not self._queue[0].backlog:
            return False
        if self._queued_rows >= self.max_batch:
            return False
        left = self._queue[0].enqueued + self.max_delay_s - time.perf_counter()
        if left <= 0:
            return False
        if self._timer is None and self._loop is not None:
            self._timer = self._loop.call_later(left, self._on_timer)
        return True

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch(force=True)

    def _dispatch(self, force: bool = False) -> None:
        """Start runs while a worker is free and requests wait."""
        while self._running < self.workers and self._queue and not self._closed:
            if self._running and self._queued_rows < self.parallel_rows:
                return  # a worker is busy: the backlog waits for it and merges (see the policy)
            if not force and self._hold():
                return
            items = self._take()
            if items:
                self._start(items)

    def _start(self, items: list[_Item]) -> None:
        loop = self._loop
        assert loop is not None
        self._running += 1
        start = time.perf_counter()
        if self._on_wait is not None:
            for item in items:
                self._on_wait(start - item.enqueued)
        x = items[0].x if len(items) == 1 else np.concatenate([i.x for i in items])
        run, finish = self._run, self._finish

        # The run reports straight back to the loop from the inference thread: no concurrent Future
        # done-callback in between (a lock, a condition and a callback list per request).
        def work() -> None:  # in the inference thread
            outs: list[np.ndarray] | None = None
            error: BaseException | None = None
            t0 = time.perf_counter()
            try:
                outs = run(x)
            except BaseException as exc:  # handed to the requests in _finish, never lost
                error = exc
            seconds = time.perf_counter() - t0  # the run alone, not its hand-offs
            try:
                loop.call_soon_threadsafe(finish, items, outs, error, seconds, len(x))
            except RuntimeError:  # the loop closed under a late run: nobody waits for it
                pass

        if len(self._threads) < min(self._running, self.workers):
            t = threading.Thread(target=self._serve_jobs, name=f"vae-{self.graph}-{len(self._threads)}",
                                 daemon=True)
            t.start()
            self._threads.append(t)
        self._jobs.put(work)

    def _serve_jobs(self) -> None:  # an inference thread
        while True:
            job = self._jobs.get()
            if job is None:
                return
            job()

    def _finish(self, items: list[_Item], outs: list[np.ndarray] | None, exc: BaseException | None,
                seconds: float, rows: int) -> None:
        self._running -= 1
        if exc is not None or outs is None:  # a failed run fails its own requests, never the batcher
            exc = exc if exc is not None else RuntimeError(f"{self.graph} run returned nothing")
            for item in items:
                if not item.fut.done():
                    item.fut.set_exception(exc)
        else:
            if self._on_run is not None:
                self._on_run(seconds, rows)
            self.runs += 1
            self.rows += rows
            offset = 0
            for item in items:
                if not item.fut.done():
                    item.fut.set_result([o[offset:offset + item.n] for o in outs])
                offset += item.n
        self._dispatch()

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        while self._queue:
            item = self._queue.popleft()
            if not item.fut.done():
                item.fut.cancel()
        self._queued_rows = 0
        for _ in self._threads:
            self._jobs.put(None)  # after the runs already queued: they finish first

        def join() -> None:
            for t in self._threads:
                t.join()

        await asyncio.get_running_loop().run_in_executor(None, join)


class DirectRunner:
    """Batching off: each request is its own run, in a shared thread pool; same interface as Batcher."""

    def __init__(self, graph: str, run: RunFn, executor: ThreadPoolExecutor, *, max_queue: int,
                 on_wait: WaitHook | None = None, on_run: RunHook | None = None) -> None:
        self.graph = graph
        self._run = run
        self._executor = executor
        self.max_queue = max_queue
        self._on_wait = on_wait
        self._on_run = on_run
        self._pending = 0
        self.runs = 0
        self.rows = 0
        self.dropped = 0

    def _timed(self, x: np.ndarray, enqueued: float, deadline: float | None) -> list[np.ndarray] | None:
        start = time.perf_counter()
        if deadline is not None and time.monotonic() >= deadline:
            return None
        if self._on_wait is not None:
            self._on_wait(start - enqueued)
        outs = self._run(x)
        if self._on_run is not None:
            self._on_run(time.perf_counter() - start, len(x))
        return outs

    async def submit(self, x: np.ndarray, deadline: float | None = None) -> list[np.ndarray]:
        if self._pending >= self.max_queue:
            raise QueueFull(self.graph, self.max_queue)
        self._pending += 1
        try:
            outs = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._timed, x, time.perf_counter(), deadline)
        finally:
            self._pending -= 1
        if outs is None:
            self.dropped += 1
            raise DeadlineExpired(self.graph)
        self.runs += 1
        self.rows += len(x)
        return outs

    async def close(self) -> None:
        return None
