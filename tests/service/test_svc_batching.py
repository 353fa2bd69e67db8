"""The dynamic batcher with a runner the test controls (a graph held busy cannot be produced on demand)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from service.admission import LOAD_SPAN, Admission
from service.batching import INLINE_STREAK, Batcher, DirectRunner, fixed_blocks
from service.errors import DeadlineExpired, QueueFull


class Runner:
    """Records each batch; can be held busy until released, like a long GPU run."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        self.entered.set()
        self.hold.wait(10)
        self.batches.append(x.copy())
        return [x * 2, x.sum(axis=1, keepdims=True)]


async def _until(pred) -> None:
    for _ in range(1000):
        if pred():
            return
        await asyncio.sleep(0.002)
    raise AssertionError("condition never held")


def _rows(start: int, n: int) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.float32).reshape(n, 1).repeat(3, axis=1)


def test_lone_request_runs_alone_and_at_once():
    async def main():
        run = Runner()
        b = Batcher("decoder", run, max_batch=64, max_queue=8, max_delay_s=5.0)
        out = await asyncio.wait_for(b.submit(_rows(0, 1)), 2.0)  # a 5 s window would time out here
        assert len(run.batches) == 1 and out[0].tolist() == (_rows(0, 1) * 2).tolist()
        await b.close()

    asyncio.run(main())


def test_requests_queued_while_busy_merge_and_split_back_exactly():
    async def main():
        run = Runner()
        run.hold.clear()
        b = Batcher("decoder", run, max_batch=10, max_queue=100)
        first = asyncio.ensure_future(b.submit(_rows(1000, 2)))
        await _until(run.entered.is_set)
        sizes = [1, 3, 2, 4, 5, 1]
        starts = np.cumsum([0, *sizes[:-1]])
        tasks = [
            asyncio.ensure_future(b.submit(_rows(int(s), n))) for s, n in zip(starts, sizes, strict=True)
        ]
        await asyncio.sleep(0.01)
        run.hold.set()
        results = await asyncio.gather(first, *tasks)
        assert [len(x) for x in run.batches] == [2, 10, 6]  # 1+3+2+4 = 10 fills a batch; 5+1 next
        for (s, n), (doubled, summed) in zip(zip(starts, sizes, strict=True), results[1:], strict=True):
            np.testing.assert_array_equal(doubled, _rows(int(s), n) * 2)
            np.testing.assert_array_equal(summed, _rows(int(s), n).sum(axis=1, keepdims=True))
        assert b.runs == 3 and b.rows == 18
        await b.close()

    asyncio.run(main())


def test_request_larger_than_max_batch_runs_alone():
    async def main():
        run = Runner()
        b = Batcher("decoder", run, max_batch=4, max_queue=10)
        out = await b.submit(_rows(0, 9))
        assert len(out[0]) == 9 and [len(x) for x in run.batches] == [9]
        await b.close()

    asyncio.run(main())


def test_queue_bound_deadline_and_cancel_drop_before_inference():
    async def main():
        run = Runner()
        run.hold.clear()
        b = Batcher("encoder", run, max_batch=64, max_queue=3)
        busy = asyncio.ensure_future(b.submit(_rows(0, 1)))
        await _until(run.entered.is_set)
        expiring = asyncio.ensure_future(b.submit(_rows(10, 1), deadline=time.monotonic() + 0.01))
        cancelled = asyncio.ensure_future(b.submit(_rows(20, 1)))
        kept = asyncio.ensure_future(b.submit(_rows(30, 1)))
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull, match="3 requests waiting"):
            await b.submit(_rows(40, 1))
        cancelled.cancel()
        run.hold.set()
        await busy
        with pytest.raises(DeadlineExpired):
            await expiring
        assert (await kept)[0][0, 0] == 60.0
        ran = np.concatenate(run.batches)[:, 0].tolist()
        assert ran == [0.0, 30.0] and b.dropped == 2
        await b.close()

    asyncio.run(main())


def test_max_delay_waits_only_for_a_backlog():
    async def main():
        run = Runner()
        run.hold.clear()
        b = Batcher("decoder", run, max_batch=4, max_queue=10, max_delay_s=0.2)
        first = asyncio.ensure_future(b.submit(_rows(0, 1)))
        await _until(run.entered.is_set)
        second = asyncio.ensure_future(b.submit(_rows(1, 1)))  # queued while busy: a backlog of 1 row
        await asyncio.sleep(0.01)
        run.hold.set()
        await first
        third = asyncio.ensure_future(b.submit(_rows(2, 3)))  # arrives within the window: fills the batch
        await asyncio.gather(second, third)
        assert [len(x) for x in run.batches] == [1, 4]
        await b.close()

    asyncio.run(main())


def test_runner_failure_fails_its_requests_only():
    async def main():
        calls = []

        def flaky(x):
            calls.append(len(x))
            if len(calls) == 1:
                raise RuntimeError("device lost")
            return [x]

        b = Batcher("decoder", flaky, max_batch=8, max_queue=8)
        with pytest.raises(RuntimeError, match="device lost"):
            await b.submit(_rows(0, 1))
        assert (await b.submit(_rows(5, 1)))[0][0, 0] == 5.0
        await b.close()

    asyncio.run(main())


def test_direct_runner_deadline_and_queue():
    from concurrent.futures import ThreadPoolExecutor

    async def main():
        with ThreadPoolExecutor(2) as pool:
            d = DirectRunner("decoder", Runner(), pool, max_queue=4)
            assert (await d.submit(_rows(3, 2)))[0][1, 0] == 8.0
            with pytest.raises(DeadlineExpired):
                await d.submit(_rows(0, 1), deadline=time.monotonic() - 1)
            assert d.runs == 1 and d.dropped == 1

    asyncio.run(main())


def test_fixed_blocks_runs_only_full_blocks():
    run = Runner()
    out = fixed_blocks(run, 4)(_rows(0, 10))
    assert [len(x) for x in run.batches] == [4, 4, 4]
    np.testing.assert_array_equal(out[0], _rows(0, 10) * 2)
    assert out[1].shape == (10, 1)


def test_two_workers_run_a_second_request_at_once_and_merge_only_when_both_are_busy():
    async def main():
        run = Runner()
        run.hold.clear()
        b = Batcher("decoder", run, max_batch=64, max_queue=100, workers=2)
        first = asyncio.ensure_future(b.submit(_rows(0, 1)))
        await _until(run.entered.is_set)
        run.entered.clear()
        second = asyncio.ensure_future(b.submit(_rows(1, 1)))
        await _until(run.entered.is_set)  # the second runs while the first is still held
        rest = [asyncio.ensure_future(b.submit(_rows(2 + i, 1))) for i in range(5)]
        await asyncio.sleep(0.01)
        run.hold.set()
        await asyncio.gather(first, second, *rest)
        sizes = sorted(len(x) for x in run.batches)
        assert sizes[:2] == [1, 1] and sum(sizes) == 7 and max(sizes) >= 2
        await b.close()

    asyncio.run(main())


def test_a_second_worker_starts_only_on_a_backlog_of_parallel_rows():
    async def main():
        run = Runner()
        run.hold.clear()
        b = Batcher("decoder", run, max_batch=64, max_queue=100, workers=2, parallel_rows=4)
        first = asyncio.ensure_future(b.submit(_rows(0, 1)))
        await _until(run.entered.is_set)
        run.entered.clear()
        small = [asyncio.ensure_future(b.submit(_rows(1 + i, 1))) for i in range(3)]
        await asyncio.sleep(0.05)
        assert not run.entered.is_set(), "3 rows < parallel_rows started the second worker"
        fourth = asyncio.ensure_future(b.submit(_rows(4, 1)))
        await _until(run.entered.is_set)  # 4 rows queued: the second worker takes them, merged
        run.hold.set()
        outs = await asyncio.gather(first, *small, fourth)
        assert [len(x) for x in run.batches] == [4, 1] or [len(x) for x in run.batches] == [1, 4]
        assert [o[0][0, 0] for o in outs] == [0.0, 2.0, 4.0, 6.0, 8.0]  # each row back to its caller
        await b.close()

    asyncio.run(main())


class ThreadRunner(Runner):
    """Also records the thread each batch ran on."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        self.threads.append(threading.get_ident())
        return super().__call__(x)


def test_a_small_lone_request_runs_on_the_event_loop_and_a_streak_is_broken():
    async def main():
        loop_thread = threading.get_ident()
        lone = [True]
        run = ThreadRunner()
        b = Batcher("decoder", run, max_batch=64, max_queue=100, workers=1, inline_rows=2,
                    lone=lambda: lone[0])
        for i in range(INLINE_STREAK + 1):
            out = await b.submit(_rows(i, 1))
            assert out[0].tolist() == (_rows(i, 1) * 2).tolist()
        # INLINE_STREAK runs on the loop, then one through the thread path (the streak breaker)
        assert run.threads[:INLINE_STREAK] == [loop_thread] * INLINE_STREAK
        assert run.threads[INLINE_STREAK] != loop_thread and b.inline_runs == INLINE_STREAK
        await b.submit(_rows(0, 2))
        assert run.threads[-1] == loop_thread  # the streak starts again
        await b.submit(_rows(0, 3))  # more rows than inline_rows: an inference thread
        lone[0] = False
        await b.submit(_rows(0, 1))  # not lone: an inference thread
        assert loop_thread not in run.threads[-2:]
        with pytest.raises(DeadlineExpired):  # an inline request past its deadline is dropped too
            lone[0] = True
            await b.submit(_rows(0, 1), deadline=time.monotonic() - 1)
        assert b.runs == len(run.batches)
        await b.close()

    asyncio.run(main())


def test_admission_lone_needs_a_low_recent_load_not_only_one_call_in_flight():
    a = Admission(max_in_flight=100)
    a.open()
    a.admit()
    assert a.lone()  # one call, and the calls before it were alone too
    a.release()
    for _ in range(LOAD_SPAN):  # a burst: many calls at once
        a.admit()
    for _ in range(LOAD_SPAN):
        a.release()
    a.admit()
    assert a.in_flight == 1 and not a.lone()  # alone right now, but the recent load was high
    a.release()
    for _ in range(4 * LOAD_SPAN):  # calls one at a time again: the average comes back down
        a.admit()
        a.release()
    a.admit()
    assert a.lone()

