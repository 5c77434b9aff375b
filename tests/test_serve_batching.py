"""The dynamic batcher: coalescing, bounds, refusals, timeouts, draining; and over HTTP, a
full queue is a 503 with Retry-After at once."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import numpy as np
import pytest
from serve_support import call, post_json, thread_server

from zoo.serve.batching import (
    BatcherClosedError,
    DynamicBatcher,
    LoopLag,
    QueueFullError,
    QueueWaitError,
)
from zoo.serve.models import ServeSettings


class Worker:
    """A compute function that records its batches; a job ``"plug"`` blocks it until released."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, payloads: Sequence[Any]) -> list[Any]:
        if "plug" in payloads:
            self.started.set()
            self.release.wait(10)
        self.batches.append(list(payloads))
        return [ValueError(f"bad {p}") if p == "bad" else f"done {p}" for p in payloads]


def run(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return asyncio.run(main())


async def plugged(batcher: DynamicBatcher, worker: Worker) -> asyncio.Task[Any]:
    """Start the batcher and occupy its worker with the plug job."""
    batcher.start()
    plug = asyncio.create_task(batcher.submit("plug", 1))
    await asyncio.to_thread(worker.started.wait, 10)
    return plug


def test_queued_jobs_are_coalesced_up_to_the_max_batch_size_in_order() -> None:
    worker = Worker()

    async def main() -> list[Any]:
        batcher = DynamicBatcher(worker, max_batch_size=4, max_queue_rows=16)
        plug = await plugged(batcher, worker)
        jobs = [asyncio.create_task(batcher.submit(i, 1)) for i in range(9)]
        await asyncio.sleep(0.02)
        assert batcher.queued_rows == 9 and batcher.in_flight_rows == 10
        worker.release.set()
        results = await asyncio.gather(plug, *jobs)
        await batcher.close()
        return results

    assert run(main) == ["done plug", *(f"done {i}" for i in range(9))]
    assert worker.batches == [["plug"], [0, 1, 2, 3], [4, 5, 6, 7], [8]]


def test_jobs_of_several_rows_never_overfill_a_batch() -> None:
    worker = Worker()

    async def main() -> None:
        batcher = DynamicBatcher(worker, max_batch_size=4, max_queue_rows=16)
        plug = await plugged(batcher, worker)
        jobs = [asyncio.create_task(batcher.submit(name, rows))
                for name, rows in (("a", 3), ("b", 2), ("c", 2), ("d", 4))]
        await asyncio.sleep(0.02)
        worker.release.set()
        await asyncio.gather(plug, *jobs)
        with pytest.raises(ValueError, match="accepted: 1 to 4"):
            await batcher.submit("e", 5)
        await batcher.close()

    run(main)
    assert worker.batches[1:] == [["a"], ["b", "c"], ["d"]]


def test_a_full_queue_refuses_at_once() -> None:
    worker = Worker()

    async def main() -> float:
        batcher = DynamicBatcher(worker, max_batch_size=2, max_queue_rows=4)
        plug = await plugged(batcher, worker)
        queued = [asyncio.create_task(batcher.submit(i, 2)) for i in range(2)]
        await asyncio.sleep(0.01)
        start = time.perf_counter()
        with pytest.raises(QueueFullError):
            await batcher.submit("late", 1)
        refused_in = time.perf_counter() - start
        worker.release.set()
        await asyncio.gather(plug, *queued)
        assert await batcher.submit("later", 1) == "done later"  # room again
        await batcher.close()
        return refused_in

    assert run(main) < 0.01


def test_a_job_past_its_timeout_fails_and_is_never_computed() -> None:
    worker = Worker()

    async def main() -> None:
        batcher = DynamicBatcher(worker, max_batch_size=4, timeout_s=0.05)
        plug = await plugged(batcher, worker)  # the plug itself times out too
        with pytest.raises(TimeoutError):
            await batcher.submit("slow", 1)
        worker.release.set()
        with pytest.raises(TimeoutError):
            await plug
        assert await batcher.submit("fine", 1) == "done fine"
        await batcher.close()

    run(main)
    assert ["slow"] not in worker.batches and ["fine"] in worker.batches


def test_a_failing_job_fails_alone_and_a_failing_batch_fails_its_jobs_only() -> None:
    calls = 0

    def compute(payloads: Sequence[Any]) -> list[Any]:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("onnxruntime fell over")
        return [ValueError("bad") if p == "bad" else p for p in payloads]

    async def main() -> None:
        batcher = DynamicBatcher(compute, max_batch_size=4)
        batcher.start()
        results = await asyncio.gather(batcher.submit("bad", 1), batcher.submit("ok", 1),
                                       return_exceptions=True)
        assert isinstance(results[0], ValueError) and results[1] == "ok"
        with pytest.raises(RuntimeError, match="fell over"):
            await batcher.submit("unlucky", 1)
        assert await batcher.submit("again", 1) == "again"
        await batcher.close()

    run(main)


def test_close_drains_the_queue_and_then_refuses() -> None:
    worker = Worker()

    async def main() -> list[Any]:
        batcher = DynamicBatcher(worker, max_batch_size=2, max_queue_rows=8)
        plug = await plugged(batcher, worker)
        jobs = [asyncio.create_task(batcher.submit(i, 1)) for i in range(5)]
        await asyncio.sleep(0.01)
        closing = asyncio.create_task(batcher.close())
        await asyncio.sleep(0.01)
        with pytest.raises(BatcherClosedError):
            await batcher.submit("too late", 1)
        worker.release.set()
        results = await asyncio.gather(plug, *jobs)
        await closing
        return results

    assert run(main) == ["done plug", *(f"done {i}" for i in range(5))]


def test_the_queue_delay_waits_for_more_unless_the_batch_is_full() -> None:
    worker = Worker()

    async def main() -> tuple[float, float]:
        batcher = DynamicBatcher(worker, max_batch_size=4, max_queue_delay_s=0.2)
        batcher.start()
        start = time.perf_counter()
        await batcher.submit("alone", 1)
        alone = time.perf_counter() - start
        start = time.perf_counter()
        await asyncio.gather(*(batcher.submit(i, 1) for i in range(4)))
        full = time.perf_counter() - start
        await batcher.close()
        return alone, full

    alone, full = run(main)
    assert 0.15 < alone < 2 and full < 0.15
    assert worker.batches == [["alone"], [0, 1, 2, 3]]


def test_loop_lag_marks_a_busy_event_loop_overloaded() -> None:
    async def main() -> tuple[bool, bool]:
        lag = LoopLag(max_lag_s=0.02, interval_s=0.002)
        lag.start()
        await asyncio.sleep(0.02)
        calm = lag.overloaded
        for _ in range(6):
            time.sleep(0.03)  # a busy loop: every timer runs late
            await asyncio.sleep(0)
        busy = lag.overloaded
        await lag.stop()
        return calm, busy

    assert run(main) == (False, True)


def test_over_http_a_full_queue_is_503_with_retry_after_and_a_slow_one_504() -> None:
    settings = ServeSettings(max_batch_size=1, max_queue_rows=2, timeout_s=0.4,
                             max_queue_wait_s=0, max_loop_lag_s=0)
    data = {"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32",
                        "data": [0.0] * 3072}], "outputs": [{"name": "logits"}]}
    with thread_server(["Net"], settings) as server:
        batcher = server.models["Net"].batcher
        release = threading.Event()
        compute = batcher.compute

        def slow(payloads: Sequence[Any]) -> Sequence[Any]:
            release.wait(10)
            return compute(payloads)

        batcher.compute = slow
        url = f"{server.url}v2/models/Net/infer"
        replies: list[Any] = []
        threads = [threading.Thread(target=lambda: replies.append(post_json(url, data)))
                   for _ in range(3)]  # one computing, two queued: the queue is full
        for t in threads:
            t.start()
            time.sleep(0.05)
        start = time.perf_counter()
        refused = post_json(url, data)
        elapsed = time.perf_counter() - start
        assert refused.status == 503 and refused.headers["retry-after"] == "1"
        # at once: the computing batch holds its thread for up to 10 s (measured here in
        # a few ms; the bound leaves room for a busy CI host)
        assert "over capacity" in refused.json()["error"] and elapsed < 0.5
        for t in threads:
            t.join()
        assert sorted(r.status for r in replies) == [504, 504, 504]  # none released in time
        release.set()
        batcher.compute = compute
        answer = post_json(url, data)
        assert answer.status == 200 and np.isfinite(answer.json()["outputs"][0]["data"]).all()
        metrics = call(f"{server.url}metrics").body.decode()
        assert 'outcome="overloaded"' in metrics and 'outcome="timeout"' in metrics


def test_a_job_queued_past_the_wait_limit_is_refused_not_computed() -> None:
    worker = Worker()

    async def main() -> None:
        batcher = DynamicBatcher(worker, max_batch_size=4, max_queue_wait_s=0.05)
        plug = await plugged(batcher, worker)
        stale = asyncio.create_task(batcher.submit("stale", 1))
        await asyncio.sleep(0.1)
        worker.release.set()
        with pytest.raises(QueueWaitError):
            await stale
        assert await plug == "done plug" and await batcher.submit("fresh", 1) == "done fresh"
        await batcher.close()

    run(main)
    assert worker.batches == [["plug"], ["fresh"]]


def test_flush_stops_waiting_for_a_batch_to_fill() -> None:
    worker = Worker()

    async def main() -> float:
        batcher = DynamicBatcher(worker, max_batch_size=4, max_queue_delay_s=5.0)
        batcher.start()
        job = asyncio.create_task(batcher.submit("waiting", 1))
        await asyncio.sleep(0.05)
        start = time.perf_counter()
        batcher.flush()  # what SIGTERM does: the drain begins
        assert await job == "done waiting"
        flushed_in = time.perf_counter() - start
        await batcher.close()
        return flushed_in

    assert run(main) < 1.0


@pytest.mark.parametrize(("options", "valid"), [
    ({"max_batch_size": 4, "max_queue_rows": 4}, True),  # a queue of exactly one batch
    ({"max_batch_size": 4, "max_queue_rows": 3}, False),
    ({"max_batch_size": 0, "max_queue_rows": 4}, False),
    ({"max_queue_delay_s": 0.0}, True),
    ({"max_queue_delay_s": -0.001}, False),
    ({"timeout_s": 0.0}, False),
    ({"timeout_s": 0.001}, True),
])
def test_the_batchers_bounds_are_checked(options: dict[str, Any], valid: bool) -> None:
    if valid:
        batcher = DynamicBatcher(Worker(), **options)
        assert all(getattr(batcher, k) == v for k, v in options.items())
    else:
        with pytest.raises(ValueError, match=r"need 1 <= max_batch_size|the queue delay must "
                                             r"be >= 0 and the timeout > 0"):
            DynamicBatcher(Worker(), **options)


def test_jobs_that_time_out_in_the_queue_give_their_rows_back() -> None:
    worker = Worker()

    async def main() -> None:
        batcher = DynamicBatcher(worker, max_batch_size=4, max_queue_rows=8, timeout_s=0.5)
        plug = await plugged(batcher, worker)
        jobs = [asyncio.create_task(batcher.submit(name, rows))
                for name, rows in (("a", 2), ("b", 3), ("c", 1))]
        await asyncio.sleep(0.02)
        assert batcher.queued_rows == 6
        for job in jobs:
            with pytest.raises(TimeoutError):
                await job
        assert batcher.queued_rows == 0  # each discarded job's own rows, not the last one's
        worker.release.set()
        with pytest.raises(TimeoutError):
            await plug
        assert await batcher.submit("fine", 4) == "done fine"
        await batcher.close()

    run(main)


def test_each_batch_is_reported_once_with_its_rows_jobs_and_seconds() -> None:
    worker = Worker()
    reports: list[tuple[int, int, float]] = []

    async def main() -> float:
        batcher = DynamicBatcher(worker, name="Net", max_batch_size=4, max_queue_wait_s=0.2,
                                 on_batch=lambda *report: reports.append(report))
        assert (batcher.queued_rows, batcher.in_flight_rows) == (0, 0)
        with pytest.raises(BatcherClosedError, match="model 'Net' is shutting down"):
            await batcher.submit("before start", 1)  # not started: refused, not lost
        start = time.perf_counter()
        plug = await plugged(batcher, worker)
        assert batcher.in_flight_rows == 1
        stale = asyncio.create_task(batcher.submit("stale", 2))  # refused: no batch
        await asyncio.sleep(0.3)
        jobs = [asyncio.create_task(batcher.submit(n, r)) for n, r in (("a", 1), ("b", 2))]
        await asyncio.sleep(0.01)
        worker.release.set()
        with pytest.raises(QueueWaitError, match="model 'Net' queued the request"):
            await stale
        assert await asyncio.gather(plug, *jobs) == ["done plug", "done a", "done b"]
        elapsed = time.perf_counter() - start
        assert (batcher.queued_rows, batcher.in_flight_rows) == (0, 0)
        await batcher.close()
        return elapsed

    elapsed = run(main)
    assert [(rows, jobs) for rows, jobs, _ in reports] == [(1, 1), (3, 2)]
    assert all(0 <= seconds <= elapsed for _, _, seconds in reports)
    assert reports[0][2] >= 0.29  # the plug computed while the stale job waited


def test_the_worker_thread_is_named_for_the_model_and_never_keeps_a_process_alive() -> None:
    code = ("import asyncio, threading\n"
            "from zoo.serve.batching import DynamicBatcher\n"
            "async def main():\n"
            "    b = DynamicBatcher(lambda p: list(p), name='Net')\n"
            "    b.start()\n"
            "    assert await b.submit('x', 1) == 'x'\n"
            "    print(sorted(t.name for t in threading.enumerate() if t.name[:4] == 'zoo-'))\n"
            "asyncio.run(main())\n")  # exits without close(): the worker must not hold it
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['zoo-batch-Net']"


def test_a_batcher_never_started_closes_and_a_closed_one_stops_quickly() -> None:
    async def main() -> float:
        idle = DynamicBatcher(Worker())
        await idle.close()
        assert idle.closed
        with pytest.raises(BatcherClosedError):
            await idle.submit("late", 1)
        batcher = DynamicBatcher(Worker())
        batcher.start()
        assert await batcher.submit("x", 1) == "done x"
        start = time.perf_counter()
        await batcher.close()
        return time.perf_counter() - start

    assert run(main) < 0.5


def test_default_batchers_never_refuse_a_job_for_its_wait_in_the_queue() -> None:
    worker = Worker()

    async def main() -> Any:
        batcher = DynamicBatcher(worker, max_batch_size=1)
        plug = await plugged(batcher, worker)
        waiting = asyncio.create_task(batcher.submit("patient", 1))
        await asyncio.sleep(1.1)
        worker.release.set()
        results = await asyncio.gather(plug, waiting)
        await batcher.close()
        return results

    assert run(main) == ["done plug", "done patient"]


def test_a_batch_that_fills_during_the_queue_delay_goes_at_once() -> None:
    worker = Worker()

    async def main() -> float:
        batcher = DynamicBatcher(worker, max_batch_size=4, max_queue_delay_s=3.0)
        batcher.start()
        first = asyncio.create_task(batcher.submit("first", 1))
        await asyncio.sleep(0.05)  # the worker now waits up to the delay for more
        start = time.perf_counter()
        rest = [asyncio.create_task(batcher.submit(i, 1)) for i in range(3)]
        await asyncio.gather(first, *rest)
        filled_in = time.perf_counter() - start
        await batcher.close()
        return filled_in

    assert run(main) < 1.0
    assert worker.batches == [["first", 0, 1, 2]]


def test_abandoned_jobs_are_skipped_and_the_rest_of_their_batch_is_answered() -> None:
    worker = Worker()

    async def main() -> None:
        batcher = DynamicBatcher(worker, max_batch_size=2, max_queue_delay_s=0.2,
                                 timeout_s=5)
        batcher.start()
        plug = asyncio.create_task(batcher.submit("plug", 1))
        kept = asyncio.create_task(batcher.submit("kept", 1))  # one batch: [plug, kept]
        await asyncio.to_thread(worker.started.wait, 10)
        queued = [asyncio.create_task(batcher.submit(n, r)) for n, r in (("gone", 2),
                                                                        ("next", 1))]
        await asyncio.sleep(0.01)
        plug.cancel()  # abandoned while computed: its batch mate is still answered
        queued[0].cancel()  # abandoned while queued: never computed
        worker.release.set()
        time.sleep(0.3)  # the event loop busy: the worker meets the abandoned job first
        assert await kept == "done kept" and await queued[1] == "done next"
        assert batcher.queued_rows == 0
        await batcher.close()

    run(main)
    assert worker.batches == [["plug", "kept"], ["next"]]


def test_loop_lag_measures_the_delay_only_and_restarts() -> None:
    async def main() -> tuple[bool, float, bool, bool]:
        lag = LoopLag(max_lag_s=0.02, interval_s=0.015)
        assert lag.overloaded is False  # before any measurement
        await lag.stop()  # never started: nothing to stop
        lag.start()
        await asyncio.sleep(0.2)
        calm, measured = lag.overloaded, lag.lag_s
        await lag.stop()
        lag.start()  # started again after a stop: measuring again
        for _ in range(15):  # a measurement spans a few turns of the loop
            time.sleep(0.03)
            await asyncio.sleep(0)
        busy = lag.overloaded
        await lag.stop()
        off = LoopLag(max_lag_s=0)
        off.start()
        for _ in range(4):
            time.sleep(0.05)
            await asyncio.sleep(0)
        disabled = off.overloaded
        await off.stop()
        return calm, measured, busy, disabled

    calm, measured, busy, disabled = run(main)
    assert calm is False and 0 <= measured < 0.025  # the lag itself, not lag + interval
    assert busy is True and disabled is False
