"""Dynamic batching: concurrent requests coalesced into one onnxruntime call.

Each served model has one :class:`DynamicBatcher`. A request's job (one or more
rows: images or tensors) waits in a bounded queue; one worker takes the oldest jobs
up to ``max_batch_size`` rows, waiting at most ``max_queue_delay_s`` after the
oldest job arrived for more to come (no wait once the batch is full), and runs the
``compute`` function on them in its own thread: onnxruntime releases the GIL, so the
event loop goes on accepting requests meanwhile, and those form the next batch.
``compute`` returns one result (or one exception) per job, so a job that fails
(an image that does not decode) fails alone.

Past ``max_queue_rows`` rows waiting, :meth:`DynamicBatcher.submit` refuses at once
(:class:`QueueFullError`, answered 503 with ``Retry-After``); a job that waited more
than ``max_queue_wait_s`` is refused instead of computed late (:class:`QueueWaitError`,
Triton's queue policy with ``timeout_action: REJECT``), and one still unanswered after
``timeout_s`` fails with :class:`TimeoutError` (504): latency stays bounded under
overload. :meth:`DynamicBatcher.flush` stops waiting for batches to fill and
:meth:`DynamicBatcher.close` finishes the queued jobs (the drain on SIGTERM).
:class:`LoopLag` watches the event loop itself, whose backlog no queue sees.

The defaults (``zoo serve``'s) were measured with ``bench/bench_serve.py`` on a 2-core
machine with Net, client and server sharing the cores. A 64-row batch of Net takes
about 1.6 ms of onnxruntime time and a 1-row batch 0.04-0.06 ms, so under load
requests queue while the previous batch runs and batches form with no delay (on average
32 rows at concurrency 64, 6 at concurrency 8, from ``zoo_serve_batch_size``); a queue
delay only adds its length to lone requests (2 ms: a p50
of 2.6 ms instead of 0.4 ms at concurrency 1), hence a default of 0. At concurrency 64
the whole latency stays low (p99 14 ms for tensors, 31 ms for JPEGs), well under
the 50 ms wait limit; 256 rows are four full batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_MAX_QUEUE_DELAY_S = 0.0
DEFAULT_MAX_QUEUE_ROWS = 256
DEFAULT_TIMEOUT_S = 10.0

#: ``compute(payloads) -> [result or exception per payload]``, run in the worker thread.
Compute = Callable[[Sequence[Any]], Sequence[Any]]
#: ``on_batch(rows, jobs, seconds)``: called on the event loop after each batch (metrics).
OnBatch = Callable[[int, int, float], None]


class QueueFullError(Exception):
    """The queue holds ``max_queue_rows`` rows: the server is over capacity, retry later."""


class QueueWaitError(QueueFullError):
    """A job waited in the queue past ``max_queue_wait_s``: it is refused, not computed late."""


class BatcherClosedError(Exception):
    """The batcher is draining for shutdown and takes no new jobs."""


@dataclass(eq=False)
class _Job:
    payload: Any
    rows: int
    future: asyncio.Future[Any]
    enqueued: float


class DynamicBatcher:
    """A bounded queue and a worker thread coalescing jobs into batches of ``max_batch_size``.

    ``compute`` takes the payloads of one batch and returns one result per payload
    (or an exception that fails that job alone); it runs in the batcher's own thread.
    Call :meth:`start` in the running event loop before :meth:`submit`, and
    :meth:`close` to drain.
    """

    def __init__(self, compute: Compute, *, name: str = "model",
                 max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                 max_queue_delay_s: float = DEFAULT_MAX_QUEUE_DELAY_S,
                 max_queue_rows: int = DEFAULT_MAX_QUEUE_ROWS,
                 timeout_s: float = DEFAULT_TIMEOUT_S, max_queue_wait_s: float = 0.0,
                 on_batch: OnBatch | None = None) -> None:
        if max_batch_size < 1 or max_queue_rows < max_batch_size:
            raise ValueError(f"need 1 <= max_batch_size ({max_batch_size}) <= max_queue_rows "
                             f"({max_queue_rows})")
        if max_queue_delay_s < 0 or timeout_s <= 0:
            raise ValueError("the queue delay must be >= 0 and the timeout > 0")
        self.name = name
        self.compute = compute
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.max_queue_rows = max_queue_rows
        self.timeout_s = timeout_s
        self.max_queue_wait_s = max_queue_wait_s
        self.on_batch = on_batch
        self._queue: deque[_Job] = deque()
        self._rows = 0  # rows queued, not yet taken by the worker
        self._running_rows = 0
        self._closed = False
        self._flushing = False  # draining: no more waiting for batches to fill
        self._waiting = False  # the worker waits on the condition for jobs
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- state -------------------------------------------------------------------------

    @property
    def queued_rows(self) -> int:
        """Rows waiting in the queue (the queue depth)."""
        return self._rows

    @property
    def in_flight_rows(self) -> int:
        """Rows waiting or being computed."""
        return self._rows + self._running_rows

    @property
    def closed(self) -> bool:
        return self._closed

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread; results come back to the running event loop."""
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._thread = threading.Thread(target=self._work, name=f"zoo-batch-{self.name}",
                                            daemon=True)
            self._thread.start()

    def flush(self) -> None:
        """From now on run queued jobs at once, without the queue delay (the drain begins)."""
        with self._cond:
            self._flushing = True
            self._cond.notify()

    async def close(self) -> None:
        """Take no new jobs; finish the queued ones, then stop the worker thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
            await asyncio.sleep(0)  # let the last deliveries run

    # -- submitting --------------------------------------------------------------------

    async def submit(self, payload: Any, rows: int) -> Any:
        """Queue one job of ``rows`` rows and wait for its result.

        Raises :class:`QueueFullError` at once when the queue is full,
        :class:`BatcherClosedError` while draining, :class:`TimeoutError` after
        ``timeout_s``, or the job's own exception from ``compute``.
        """
        loop = self._loop
        if self._closed or loop is None:
            raise BatcherClosedError(f"model {self.name!r} is shutting down")
        if not 1 <= rows <= self.max_batch_size:
            raise ValueError(f"a job of {rows} rows; accepted: 1 to {self.max_batch_size}")
        future: asyncio.Future[Any] = loop.create_future()
        job = _Job(payload, rows, future, time.monotonic())
        with self._cond:
            if self._rows + rows > self.max_queue_rows:
                raise QueueFullError(f"model {self.name!r} has {self._rows} rows queued (at "
                                     f"most {self.max_queue_rows})")
            self._queue.append(job)
            self._rows += rows
            if self._waiting:
                self._cond.notify()
        timer = loop.call_later(self.timeout_s, _expire, future, self.timeout_s)
        try:
            return await future
        except (TimeoutError, asyncio.CancelledError):
            self._discard(job)  # timed out or abandoned: its rows free the queue at once
            raise
        finally:
            timer.cancel()

    def _discard(self, job: _Job) -> None:
        with self._cond:
            try:
                self._queue.remove(job)
            except ValueError:  # taken by the worker already
                return
            self._rows -= job.rows

    # -- the worker thread -------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                taken = self._next_batch()
                if taken is None:
                    return
                jobs, stale = taken
                rows = sum(job.rows for job in jobs)
                self._running_rows = rows
            if stale:
                self._send(stale, [QueueWaitError(
                    f"model {self.name!r} queued the request longer than "
                    f"{self.max_queue_wait_s * 1e3:g} ms")] * len(stale), 0, 0.0)
            if not jobs:
                continue
            start = time.perf_counter()
            try:
                results: Sequence[Any] = self.compute([job.payload for job in jobs])
                if len(results) != len(jobs):
                    raise RuntimeError(f"compute returned {len(results)} results for "
                                       f"{len(jobs)} jobs")
            except Exception as exc:  # the whole batch failed: each job gets the error
                results = [exc] * len(jobs)
            seconds = time.perf_counter() - start
            with self._cond:
                self._running_rows = 0
            self._send(jobs, results, rows, seconds)

    def _send(self, jobs: list[_Job], results: Sequence[Any], rows: int,
              seconds: float) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for these
            self._loop.call_soon_threadsafe(self._deliver, jobs, results, rows, seconds)

    def _next_batch(self) -> tuple[list[_Job], list[_Job]] | None:
        """Wait for jobs (and up to the queue delay for more); the batch, and the jobs that
        waited too long; None once closed and empty."""
        while not self._queue:
            if self._closed:
                return None
            self._waiting = True
            self._cond.wait()
            self._waiting = False
        if self.max_queue_delay_s > 0:
            deadline = self._queue[0].enqueued + self.max_queue_delay_s
            while self._rows < self.max_batch_size and not (self._closed or self._flushing):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._waiting = True
                self._cond.wait(remaining)
                self._waiting = False
        jobs: list[_Job] = []
        stale: list[_Job] = []
        rows = 0
        oldest = time.monotonic() - self.max_queue_wait_s
        while self._queue:
            job = self._queue[0]
            if job.future.done():  # timed out or abandoned while queued
                self._queue.popleft()
                self._rows -= job.rows
                continue
            if self.max_queue_wait_s > 0 and job.enqueued < oldest and not self._flushing:
                self._queue.popleft()
                self._rows -= job.rows
                stale.append(job)
                continue
            if rows + job.rows > self.max_batch_size:
                break
            self._queue.popleft()
            self._rows -= job.rows
            rows += job.rows
            jobs.append(job)
        return jobs, stale

    def _deliver(self, jobs: list[_Job], results: Sequence[Any], rows: int,
                 seconds: float) -> None:
        for job, result in zip(jobs, results, strict=True):
            if job.future.done():
                continue
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)
        if self.on_batch is not None and rows:
            self.on_batch(rows, len(jobs), seconds)


class LoopLag:
    """How late the event loop runs a timer: the backlog of work it has not reached yet.

    A server whose event loop is the bottleneck (parsing HTTP) queues requests in its
    sockets, where no bounded queue sees them; while the lag exceeds ``max_lag_s``
    the server refuses new inference requests at once (503, ``Retry-After``), which
    costs far less than answering them, so the backlog and every wait stay bounded.
    """

    def __init__(self, max_lag_s: float, interval_s: float = 0.005) -> None:
        self.max_lag_s = max_lag_s
        self.interval_s = interval_s
        self.lag_s = 0.0
        self._previous_s = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def overloaded(self) -> bool:
        """Whether the last two measurements were both over the limit (one late timer can
        be a hiccup: a collection, a descheduled process)."""
        return self.max_lag_s > 0 and min(self.lag_s, self._previous_s) > self.max_lag_s

    def start(self) -> None:
        if self._task is None and self.max_lag_s > 0:
            self._task = asyncio.get_running_loop().create_task(self._watch(), name="loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self.interval_s)
            self._previous_s = self.lag_s
            self.lag_s = max(0.0, loop.time() - start - self.interval_s)


def _expire(future: asyncio.Future[Any], seconds: float) -> None:
    if not future.done():
        future.set_exception(TimeoutError(f"no answer within {seconds:g} s"))


__all__ = ["DEFAULT_MAX_BATCH_SIZE", "DEFAULT_MAX_QUEUE_DELAY_S", "DEFAULT_MAX_QUEUE_ROWS",
           "DEFAULT_TIMEOUT_S", "BatcherClosedError", "DynamicBatcher", "LoopLag", "QueueFullError",
           "QueueWaitError"]
