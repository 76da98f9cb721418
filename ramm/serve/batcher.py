"""Dynamic batching for one model: concurrent requests that can share a decode are run as one batch.

Requests wait in a bounded FIFO queue. The batcher takes the oldest live request, waits up to
`max_wait_s` (or until `max_rows` rows are queued) for others with the same key, and runs them with
one `run_batch(key, payloads, check)` call on a single worker thread, so model work never blocks the
event loop and the model is never entered twice at once. While a batch runs, new requests pile up:
under load batches grow by themselves. A full queue refuses (`QueueFull`, the API's 503); a request
past its deadline is dropped from the queue, and a running batch whose requests have all expired is
stopped at its next `check()` (`Cancelled`).
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

from ramm.utils import Locked

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue holds `max_queue` requests; try again later."""


class DeadlineExceeded(Exception):
    """The request's deadline passed before its result was ready."""


class Cancelled(Exception):
    """Raised by `check()` inside a batch every request of which has expired."""


@dataclass
class _Job:
    key: Hashable
    payload: Any
    rows: int
    deadline: float
    future: asyncio.Future
    queued_at: float = field(default_factory=time.monotonic)

    @property
    def live(self) -> bool:
        return not self.future.done() and time.monotonic() < self.deadline


RunBatch = Callable[[Hashable, list, Callable[[], None]], Sequence[Any]]


class DynamicBatcher:
    """`await submit(key, payload, rows, timeout_s)` -> the payload's result; batches share a key."""

    def __init__(self, run_batch: RunBatch, *, max_rows: int = 64, max_wait_s: float = 0.005,
                 max_queue: int = 256, on_batch: Callable[[int, int], None] | None = None):
        if max_rows < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError(f"bad batcher limits: max_rows={max_rows} max_queue={max_queue} max_wait_s={max_wait_s}")
        self.run_batch, self.max_rows, self.max_wait_s, self.max_queue = run_batch, max_rows, max_wait_s, max_queue
        self.on_batch = on_batch  # (requests, rows) of each batch run, for metrics
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ramm-model")
        self._queue: list[_Job] = []
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        return len(self._queue)

    async def start(self) -> None:
        self._arrived = asyncio.Event()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for job in self._queue:
            if not job.future.done():
                job.future.set_exception(Cancelled("server shutting down"))
        self._queue.clear()
        self.executor.shutdown(wait=True, cancel_futures=True)

    async def submit(self, key: Hashable, payload: Any, rows: int = 1, timeout_s: float = 60.0) -> Any:
        if self._task is None:
            raise RuntimeError("the batcher is not started")
        self._queue = [j for j in self._queue if not j.future.done()]
        if len(self._queue) >= self.max_queue:
            raise QueueFull(f"{len(self._queue)} requests queued (limit {self.max_queue})")
        job = _Job(key, payload, rows, time.monotonic() + timeout_s, asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self._arrived.set()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout_s)
        except asyncio.TimeoutError:
            raise DeadlineExceeded(f"no result within {timeout_s:g} s") from None
        finally:
            if not job.future.done():
                job.future.cancel()  # the worker skips it, and stops a batch left with none live

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._queue = [j for j in self._queue if j.live or self._expire(j)]
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            first = self._queue[0]
            # collect: until the key's queued rows fill a batch or the oldest request waited max_wait_s
            while sum(j.rows for j in self._queue if j.key == first.key) < self.max_rows:
                left = first.queued_at + self.max_wait_s - time.monotonic()
                if left <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except asyncio.TimeoutError:
                    break
            batch, rows = [], 0
            for j in self._queue:
                if j.key == first.key and j.live and (not batch or rows + j.rows <= self.max_rows):
                    batch.append(j)
                    rows += j.rows
            if not batch:
                continue
            taken = set(map(id, batch))
            self._queue = [j for j in self._queue if id(j) not in taken]
            if self.on_batch:
                self.on_batch(len(batch), rows)

            def check(batch=batch) -> None:
                if not any(j.live for j in batch):
                    raise Cancelled("every request of the batch passed its deadline")

            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, first.key,
                                                     [j.payload for j in batch], check)
                if len(results) != len(batch):
                    raise RuntimeError(f"run_batch gave {len(results)} results for {len(batch)} requests")
            except Exception as e:  # the whole batch failed: every request gets the error
                if isinstance(e, (ValueError, Locked)):  # the request's fault (a 400) or another writer's (a 503)
                    log.info("batch of %d %r requests refused: %s", len(batch), first.key, e)
                elif not isinstance(e, Cancelled):
                    log.exception("batch of %d %r requests failed", len(batch), first.key)
                results = [e] * len(batch)
            for job, res in zip(batch, results):
                if job.future.done():
                    continue
                if isinstance(res, BaseException):
                    job.future.set_exception(res)
                else:
                    job.future.set_result(res)

    @staticmethod
    def _expire(job: _Job) -> bool:
        """Drop a job from the queue (returns False); an expired one gets its error."""
        if not job.future.done():
            job.future.set_exception(DeadlineExceeded("deadline passed while queued"))
        return False
