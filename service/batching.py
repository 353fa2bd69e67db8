"""Dynamic batching: merge concurrent requests to one graph into one inference run, split back exactly.

Policy (why: at batch 1 the model costs tens of microseconds, so any window that holds a lone request
costs more than it could save):
- a request that finds the graph idle runs at once;
- requests that arrive while a run is busy queue; when the run ends they are merged, oldest first, up
  to `max_batch` rows and run together (a full batch is never held);
- `max_delay` (default 0) only lets such a partial backlog wait a little for more rows;
- the queue is bounded (QueueFull), and an expired or cancelled request is dropped before inference.
Inference runs off the event loop (onnxruntime releases the GIL) in `workers` threads per graph: with 2,
a second request to a busy graph starts at once on the other thread, and merging happens only once
every worker is busy.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from service.errors import DeadlineExpired, QueueFull, ServiceError

__all__ = ["Batcher", "DirectRunner", "RunFn", "fixed_blocks"]

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
    __slots__ = ("x", "n", "fut", "enqueued", "deadline")

    def __init__(self, x: np.ndarray, fut: asyncio.Future[list[np.ndarray]], deadline: float | None) -> None:
        self.x = x
        self.n = len(x)
        self.fut = fut
        self.enqueued = time.perf_counter()
        self.deadline = deadline


class Batcher:
    """Merges requests to one graph. `submit` from the event loop; up to `workers` runs in flight."""

    def __init__(self, graph: str, run: RunFn, *, max_batch: int, max_queue: int, max_delay_s: float = 0.0,
                 workers: int = 1, on_wait: WaitHook | None = None, on_run: RunHook | None = None) -> None:
        self.graph = graph
        self._run = run
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.max_delay_s = max_delay_s
        self._on_wait = on_wait
        self._on_run = on_run
        self._queue: deque[_Item] = deque()
        self.workers = workers
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"vae-{graph}")
        self._idle: deque[asyncio.Future[None]] = deque()  # one waiter per idle worker
        self._tasks: list[asyncio.Task[None]] = []
        # Counters for tests and logs: runs, rows run, requests dropped before inference.
        self.runs = 0
        self.rows = 0
        self.dropped = 0

    async def submit(self, x: np.ndarray, deadline: float | None = None) -> list[np.ndarray]:
        """Outputs of the graph for `x` (rows in order); `deadline` is a time.monotonic() instant."""
        if len(self._queue) >= self.max_queue:
            raise QueueFull(self.graph, self.max_queue)
        loop = asyncio.get_running_loop()
        if not self._tasks:
            self._tasks = [loop.create_task(self._work(), name=f"batcher-{self.graph}-{i}")
                           for i in range(self.workers)]
        fut: asyncio.Future[list[np.ndarray]] = loop.create_future()
        self._queue.append(_Item(x, fut, deadline))
        self._wake_one()
        return await fut

    def _wake_one(self) -> None:
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _wait(self, loop: asyncio.AbstractEventLoop, timeout: float | None = None) -> None:
        waiter = loop.create_future()
        self._idle.append(waiter)
        try:
            if timeout is None:
                await waiter
            else:
                await asyncio.wait_for(waiter, timeout)
        finally:
            if not waiter.done():
                waiter.cancel()

    def _take(self) -> list[_Item]:
        """Oldest-first up to max_batch rows; drops cancelled and expired requests on the way."""
        items: list[_Item] = []
        rows = 0
        now = time.monotonic()
        while self._queue:
            item = self._queue[0]
            if item.fut.done():  # cancelled by the client or the RPC's deadline
                self._queue.popleft()
                self.dropped += 1
                continue
            if item.deadline is not None and now >= item.deadline:
                self._queue.popleft()
                self.dropped += 1
                item.fut.set_exception(DeadlineExpired(self.graph))
                continue
            if items and rows + item.n > self.max_batch:
                break
            self._queue.popleft()
            items.append(item)
            rows += item.n
        return items

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        backlog = False  # whether the queue filled while this worker's previous run was busy
        while True:
            if not self._queue:
                await self._wait(loop)
                backlog = False
            if backlog and self.max_delay_s > 0:
                await self._fill(loop)
            items = self._take()
            if not items:
                continue
            if self._queue:  # more than one batch waits: an idle worker may take the rest now
                self._wake_one()
            start = time.perf_counter()
            if self._on_wait is not None:
                for item in items:
                    self._on_wait(start - item.enqueued)
            x = items[0].x if len(items) == 1 else np.concatenate([i.x for i in items])
            try:
                outs = await loop.run_in_executor(self._executor, self._run, x)
            except ServiceError as exc:
                for item in items:
                    if not item.fut.done():
                        item.fut.set_exception(exc)
                backlog = bool(self._queue)
                continue
            except Exception as exc:  # noqa: BLE001 - a failed run must fail its requests, not the worker
                for item in items:
                    if not item.fut.done():
                        item.fut.set_exception(exc)
                backlog = bool(self._queue)
                continue
            if self._on_run is not None:
                self._on_run(time.perf_counter() - start, len(x))
            self.runs += 1
            self.rows += len(x)
            offset = 0
            for item in items:
                if not item.fut.done():
                    item.fut.set_result([o[offset:offset + item.n] for o in outs])
                offset += item.n
            backlog = bool(self._queue)

    async def _fill(self, loop: asyncio.AbstractEventLoop) -> None:
        """Let a partial backlog wait up to max_delay (from its oldest request) for a full batch."""
        while self._queue:
            rows = sum(i.n for i in self._queue)
            left = self._queue[0].enqueued + self.max_delay_s - time.perf_counter()
            if rows >= self.max_batch or left <= 0:
                return
            try:
                await self._wait(loop, left)
            except TimeoutError:
                return

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        while self._queue:
            item = self._queue.popleft()
            if not item.fut.done():
                item.fut.cancel()
        self._executor.shutdown(wait=True)


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
