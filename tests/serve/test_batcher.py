"""The dynamic batcher: concurrent requests share a batch, a full queue refuses, deadlines cancel."""
import asyncio
import threading
import time

import pytest

from ramm.serve.batcher import Cancelled, DeadlineExceeded, DynamicBatcher, QueueFull


def run(coro):
    return asyncio.run(coro)


class Recorder:
    """A run_batch that records its batches and their threads, optionally slow, checking between items."""

    def __init__(self, delay=0.0):
        self.batches, self.threads, self.delay, self.finished = [], set(), delay, []

    def __call__(self, key, payloads, check):
        self.batches.append((key, list(payloads)))
        self.threads.add(threading.get_ident())
        for p in payloads:
            time.sleep(self.delay)
            check()
        self.finished.append(list(payloads))
        return [(key, p) for p in payloads]


async def started(rec, **kw):
    b = DynamicBatcher(rec, **kw)
    await b.start()
    return b


def test_concurrent_requests_with_one_key_share_a_batch_off_the_event_loop():
    rec = Recorder()

    async def main():
        b = await started(rec, max_rows=8, max_wait_s=0.05)
        out = await asyncio.gather(*(b.submit("img", i, rows=2) for i in range(6)), b.submit("cap", "x"))
        await b.stop()
        return out
    out = run(main())
    assert out == [("img", i) for i in range(6)] + [("cap", "x")]
    sizes = sorted(len(p) for k, p in rec.batches if k == "img")
    assert sizes == [2, 4]  # 8 rows fill the first batch (4 requests x 2 rows), the rest follow
    assert threading.get_ident() not in rec.threads and len(rec.threads) == 1


def test_max_rows_one_decodes_each_request_alone():
    rec = Recorder()

    async def main():
        b = await started(rec, max_rows=1, max_wait_s=0.0)
        await asyncio.gather(*(b.submit("img", i, rows=4) for i in range(5)))
        await b.stop()
    run(main())
    assert [len(p) for _, p in rec.batches] == [1] * 5


def test_a_full_queue_refuses_and_recovers():
    rec = Recorder(delay=0.05)

    async def main():
        b = await started(rec, max_rows=1, max_wait_s=0.0, max_queue=2)
        first = asyncio.ensure_future(b.submit("k", 0))
        await asyncio.sleep(0.01)  # 0 is running; 1 and 2 fill the queue
        queued = [asyncio.ensure_future(b.submit("k", i)) for i in (1, 2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await b.submit("k", 3)
        done = await asyncio.gather(first, *queued)
        after = await b.submit("k", 4)
        await b.stop()
        return done, after
    done, after = run(main())
    assert done == [("k", 0), ("k", 1), ("k", 2)] and after == ("k", 4)


def test_a_request_past_its_deadline_is_cancelled_not_left_running():
    steps, finished = [], []

    def run_batch(key, payloads, check):
        for _ in range(20):  # a 1 s batch that checks its requests between steps
            time.sleep(0.05)
            steps.append(key)
            check()
        finished.append(key)
        return payloads

    async def main():
        b = await started(run_batch, max_wait_s=0.0)
        running = asyncio.ensure_future(b.submit("slow", 1, timeout_s=0.15))
        await asyncio.sleep(0.01)
        with pytest.raises(DeadlineExceeded):  # still queued behind "slow" when its deadline passes
            await b.submit("queued", 2, timeout_s=0.05)
        with pytest.raises(DeadlineExceeded):
            await running
        await asyncio.sleep(0.2)
        n_steps = len(steps)
        await asyncio.sleep(0.2)
        assert len(steps) == n_steps  # nothing runs for the expired requests
        await b.stop()
    run(main())
    assert finished == [] and "queued" not in steps and steps.count("slow") < 8


def test_a_failing_batch_fails_its_requests_only():
    def run_batch(key, payloads, check):
        if key == "bad":
            raise ValueError("boom")
        return payloads

    async def main():
        b = await started(run_batch, max_wait_s=0.0)
        with pytest.raises(ValueError, match="boom"):
            await b.submit("bad", 1)
        ok = await b.submit("good", 2)
        await b.stop()
        return ok
    assert run(main()) == 2
    assert issubclass(Cancelled, Exception)
