"""The asyncio front ends: durability across processes and crashes, sharing a
file with sync code, waiting without threads or polling, cancellation at
every await point, and the pools under asyncio."""

import asyncio
import concurrent.futures
import os
import re
import signal
import threading
import time
from queue import Empty

import pytest

from persistqueue_liteq import CodecMismatch, LiteQueue, PersistentQueue
from persistqueue_liteq.aio import (
    AsyncLiteQueue,
    AsyncPersistentLifoQueue,
    AsyncPersistentPriorityQueue,
    AsyncPersistentQueue,
    QueueShutDown,
)
from persistqueue_liteq.pool import PersistentThreadPoolExecutor


def run(coro):
    return asyncio.run(coro)


async def flush(q):
    """Wait until the storage calls queued for ``q`` so far have run (its
    calls run in order on one thread)."""
    await q._offload.run(lambda: None)


async def until(predicate, timeout=10.0):
    """Loop steps until ``predicate()``; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


def waiting(q, kind="getters"):
    """How many getters (or putters) wait on ``q``, as its repr says, in
    asyncio.Queue's format: ``_getters[N]``, left out when none."""
    match = re.search(r" _%s\[(\d+)\]" % kind, repr(q))
    return int(match.group(1)) if match else 0


def unfinished(q):
    """Items this process got from ``q`` and has not done: its repr's ``tasks=N``."""
    match = re.search(r" tasks=(\d+)", repr(q))
    return int(match.group(1)) if match else 0


def on_file(path, method, *args, **kwargs):
    """``LiteQueue(path).method(*args)``, the queue closed after."""
    with LiteQueue(path) as lq:
        return getattr(lq, method)(*args, **kwargs)


# -- the queue.Queue shapes ------------------------------------------------------


def test_items_are_shared_with_the_sync_queue_and_survive_reopening(db):
    async def main():
        async with AsyncPersistentQueue(db) as q:
            await q.put({"job": 1})
            q.put_nowait({"job": 2})
        sync = PersistentQueue(db)
        assert sync.get(timeout=5) == {"job": 1}
        sync.task_done()
        sync.put({"job": 3})
        async with AsyncPersistentQueue(db) as q:
            assert [await q.get(), await q.get()] == [{"job": 2}, {"job": 3}]
            q.task_done()
            q.task_done()
            await q.join()
        sync.close()
        assert on_file(db, "qsize") == 0

    run(main())


def test_lifo_and_priority_orders(db, tmp_path):
    async def main():
        async with AsyncPersistentLifoQueue(db) as lifo:
            for i in (1, 3, 2):
                await lifo.put(i)
            assert [await lifo.get() for _ in range(3)] == [2, 3, 1]
        async with AsyncPersistentPriorityQueue(str(tmp_path / "p.db"), key=lambda x: -x) as pq:
            for i in (1, 3, 2):
                await pq.put(i)
            assert [await pq.get() for _ in range(3)] == [3, 2, 1]

    run(main())


def test_shutdown_releases_waiting_getters(db):
    async def main():
        async with AsyncPersistentQueue(db) as q:
            getters = [asyncio.ensure_future(q.get()) for _ in range(3)]
            await until(lambda: waiting(q) == 3)
            q.shutdown()
            for getter in getters:
                with pytest.raises(QueueShutDown):
                    await getter
            with pytest.raises(QueueShutDown):
                await q.put(1)

    run(main())
    if hasattr(asyncio, "QueueShutDown"):
        assert QueueShutDown is asyncio.QueueShutDown


def test_auto_ack_acknowledges_what_is_delivered(db):
    async def main():
        async with AsyncPersistentQueue(db, auto_ack=True) as q:
            await q.put("a")
            assert await q.get() == "a"
            await q.join()  # nothing left: no task_done needed
            q.task_done()  # as PersistentQueue: counted, allowed once
            with pytest.raises(ValueError):
                q.task_done()

    run(main())
    assert on_file(db, "qsize") == 0


def test_bad_payload_goes_to_the_dead_letters(db):
    async def main():
        async with AsyncPersistentQueue(db, hmac_key=b"k" * 32) as q:
            on_file(db, "put", b"forged, unsigned", qname="default")
            await q.put("good")
            assert await q.get() == "good"
            q.task_done()
            dead = await q.dead_letters()
            assert len(dead) == 1 and dead[0].data == b"forged, unsigned"

    run(main())


# -- waking ----------------------------------------------------------------------


def _put_later(path, items, ready_fd):
    os.read(ready_fd, 1)  # the parent is waiting
    q = PersistentQueue(path)
    for item in items:
        q.put(item)
    q.close()


def test_a_put_of_another_process_wakes_an_awaiting_get(location, fork, monkeypatch):
    """On every backend (a socket's datagram on SQLite, LISTEN/NOTIFY on
    PostgreSQL), delivered into the loop: with the safety relook an hour
    away, only the wake-up can end the wait."""
    from persistqueue_liteq import _aio_channels

    monkeypatch.setattr(_aio_channels, "SAFETY_INTERVAL", 3600.0)
    ready_r, ready_w = os.pipe()
    child = fork.Process(target=_put_later, args=(location, ["from child"], ready_r))
    child.start()

    async def main():
        async with AsyncPersistentQueue(location) as q:
            getter = asyncio.ensure_future(q.get())
            await until(lambda: waiting(q) == 1)
            os.write(ready_w, b"x")
            assert await asyncio.wait_for(getter, 30) == "from child"
            q.task_done()

    run(main())
    child.join(10)
    assert child.exitcode == 0


def test_waiting_falls_back_to_a_timer_without_sockets(db, monkeypatch):
    from persistqueue_liteq.sqlite import wakeup

    monkeypatch.setattr(wakeup.Notifier, "waiter",
                        lambda self, kind, queue: wakeup._PollingWaiter(0.01))

    def put_soon(path):
        time.sleep(0.05)
        with PersistentQueue(path) as q:
            q.put("late")

    async def main():
        async with AsyncPersistentQueue(db) as q:
            thread = threading.Thread(target=put_soon, args=(db,))
            thread.start()
            assert await asyncio.wait_for(q.get(), 10) == "late"
            q.task_done()
            thread.join()

    run(main())


def _put_from_thread(path, item):
    def put():
        with PersistentQueue(path) as q:
            q.put(item)

    thread = threading.Thread(target=put)
    thread.start()
    return thread


def test_a_loop_that_watches_no_descriptors_wakes_getters_by_timer(db, monkeypatch):
    """asyncio's proactor loop (Windows) has no add_reader: the channel
    looks again every few ms instead of failing the get."""
    from persistqueue_liteq import _aio_channels

    monkeypatch.setattr(_aio_channels, "SAFETY_INTERVAL", 3600.0)

    def no_readers(*args):
        raise NotImplementedError

    async def main():
        monkeypatch.setattr(asyncio.get_running_loop(), "add_reader", no_readers)
        async with AsyncPersistentQueue(db) as q:
            getter = asyncio.ensure_future(q.get())
            await until(lambda: waiting(q) == 1)
            thread = _put_from_thread(db, "polled")
            assert await asyncio.wait_for(getter, 30) == "polled"
            q.task_done()
            thread.join(10)

    run(main())


def test_a_channel_whose_reader_cannot_be_added_keeps_no_waiter(db, monkeypatch):
    def refused(*args):
        raise OSError("refused by the test")

    async def main():
        async with AsyncPersistentQueue(db) as q:
            loop = asyncio.get_running_loop()
            added = loop.add_reader
            monkeypatch.setattr(loop, "add_reader", refused)
            with pytest.raises(OSError, match="refused by the test"):
                await asyncio.wait_for(q.get(), 30)
            # The engine's waiter was left again: its socket is gone.
            directory = q._sync.engine._notifier._directory("put", q._sync.name)
            assert not os.path.isdir(directory) or os.listdir(directory) == []
            monkeypatch.setattr(loop, "add_reader", added)
            thread = _put_from_thread(db, "after")
            assert await asyncio.wait_for(q.get(), 30) == "after"
            q.task_done()
            thread.join(10)

    run(main())


def test_a_delayed_item_is_got_when_due_without_a_put(db):
    async def main():
        async with AsyncLiteQueue(db) as lq:
            await lq.put(b"x", visible_after_seconds=0.3)
            started = time.monotonic()
            msg = await lq.pop(wait_seconds=20)
            assert msg is not None and msg.data == b"x"
            # Woken by the timer at its due time, not by the 1 s safety relook.
            assert 0.25 <= time.monotonic() - started < 0.9
            await lq.ack(msg)

    run(main())


def test_a_thousand_awaiting_getters_need_no_threads_and_no_cpu(db, fork):
    n = 1000
    ready_r, ready_w = os.pipe()
    child = fork.Process(target=_put_later, args=(db, list(range(n)), ready_r))

    async def main():
        async with AsyncPersistentQueue(db) as q:
            await q.put("warm up")  # the storage thread and the heartbeat exist
            assert await q.get() == "warm up"
            q.task_done()
            await q.join()
            threads = threading.active_count()
            getters = [asyncio.ensure_future(q.get()) for _ in range(n)]
            await until(lambda: waiting(q) == n, timeout=30)
            assert threading.active_count() <= threads + 1  # none per waiter
            cpu = time.process_time()
            await asyncio.sleep(1.0)
            idle_cpu = time.process_time() - cpu
            assert idle_cpu < 0.2, "%.3f s of CPU over an idle second" % idle_cpu
            assert not any(getter.done() for getter in getters)
            child.start()
            os.write(ready_w, b"x")
            got = await asyncio.wait_for(asyncio.gather(*getters), 50)
            assert sorted(got) == list(range(n))
            for _ in got:
                q.task_done()
            await q.join()

    run(main())
    child.join(10)
    assert child.exitcode == 0


# -- across processes and crashes --------------------------------------------------


def _async_consumer_that_hangs(path, got_fd):
    async def main():
        q = AsyncPersistentQueue(path, visibility_timeout=0.6)
        item = await q.get()
        os.write(got_fd, repr(item).encode())
        await asyncio.Event().wait()  # mid-item until killed

    asyncio.run(main())


def test_an_item_of_a_killed_asyncio_consumer_comes_back(db, fork):
    sync = PersistentQueue(db, visibility_timeout=0.6)
    sync.put("precious")
    got_r, got_w = os.pipe()
    child = fork.Process(target=_async_consumer_that_hangs, args=(db, got_w))
    child.start()
    assert os.read(got_r, 100) == b"'precious'"
    # The child's heartbeat keeps its lease while it lives.
    with pytest.raises(Empty):
        sync.get(timeout=2.0)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert sync.get(timeout=10) == "precious"
    sync.task_done()
    sync.close()
    assert on_file(db, "qsize") == 0


def _sync_consumer(path, out_path, stop, turn):
    """Consume until ``stop``; ``turn`` (two events): start once the other
    side got an item, and say when this one got its first."""
    q = PersistentQueue(path)
    turn[0].wait(30)
    with open(out_path, "w") as out:
        while not stop.is_set():
            try:
                item = q.get(timeout=0.1)  # then look at the stop flag
            except Empty:
                continue
            out.write("%r\n" % (item,))
            out.flush()
            q.task_done()
            turn[1].set()
    q.close()


def _async_producer(path, items):
    async def main():
        async with AsyncPersistentQueue(path) as q:
            for item in items:
                await q.put(item)

    asyncio.run(main())


def test_sync_and_async_processes_share_one_file(db, fork, tmp_path):
    """An asyncio producer process and a sync producer (this one), a sync
    consumer process and asyncio consumers (here): every item once."""
    out = str(tmp_path / "child-got.txt")
    stop = fork.Event()
    # Both sides take part, whatever the scheduling: the child starts once an
    # asyncio consumer here got an item, and those go on once the child got one.
    async_got_one, child_got_one = fork.Event(), fork.Event()
    PersistentQueue(db).close()  # the file exists before the children open it
    consumer = fork.Process(target=_sync_consumer,
                            args=(db, out, stop, (async_got_one, child_got_one)))
    consumer.start()
    producer = fork.Process(target=_async_producer, args=(db, list(range(100, 200))))
    producer.start()
    sync = PersistentQueue(db)
    for i in range(100):
        sync.put(i)

    async def main():
        async with AsyncPersistentQueue(db) as q:
            got = []
            loop = asyncio.get_running_loop()
            child_started = loop.run_in_executor(None, child_got_one.wait, 30)

            async def consume():
                while True:
                    got.append(await q.get())
                    q.task_done()
                    async_got_one.set()
                    assert await child_started, "the sync consumer got nothing in 30 s"

            consumers = [asyncio.ensure_future(consume()) for _ in range(5)]
            await loop.run_in_executor(None, producer.join, 30)
            await asyncio.wait_for(q.join(), 30)  # every item done, by either side
            for task in consumers:
                task.cancel()
            await asyncio.gather(*consumers, return_exceptions=True)
            return got

    got = run(main())
    stop.set()
    consumer.join(30)
    assert (producer.exitcode, consumer.exitcode) == (0, 0)
    with open(out) as f:
        child_got = [int(line) for line in f]
    assert sorted(got + child_got) == list(range(200))
    assert got and child_got  # both sides took part
    sync.close()


# -- cancellation at every await point --------------------------------------------


class _Gate:
    """Holds a queue's storage thread inside a call until opened."""

    def __init__(self, q, method):
        self.entered = threading.Event()
        self.go = threading.Event()
        original = getattr(q.sync, method)

        def gated(*args):
            self.entered.set()
            assert self.go.wait(10)
            return original(*args)

        setattr(q.sync, method, gated)

    async def wait_entered(self):
        await asyncio.get_running_loop().run_in_executor(None, self.entered.wait, 10)


def test_get_cancelled_while_waiting_takes_nothing(db):
    async def main():
        async with AsyncPersistentQueue(db) as q:
            getter = asyncio.ensure_future(q.get())
            await until(lambda: waiting(q) == 1)
            getter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await getter
            assert waiting(q) == 0
            await q.put("kept")
            assert q.qsize() == 1
            assert q.get_nowait() == "kept"

    run(main())


def test_get_cancelled_while_its_lease_is_taken_hands_the_item_back_at_once(db):
    async def main():
        async with AsyncPersistentQueue(db, visibility_timeout=60) as q:
            await q.put("item")
            gate = _Gate(q, "_look")
            getter = asyncio.ensure_future(q.get())
            await gate.wait_entered()
            getter.cancel()
            await asyncio.sleep(0)
            gate.go.set()
            with pytest.raises(asyncio.CancelledError):
                await getter
            await flush(q)  # the hand-back runs after the look, on the same thread
            assert unfinished(q) == 0
            # Ready at once (not after the 60 s lease), the delivery not counted.
            assert q.qsize() == 1
            msg = on_file(db, "peek")
            assert msg.attempts == 0

    run(main())


def test_get_cancelled_before_its_look_runs_takes_nothing(db):
    async def main():
        async with AsyncPersistentQueue(db) as q:
            await q.put("item")
            blocker = threading.Event()
            q._offload.submit(blocker.wait, 10)  # the storage thread is busy
            getter = asyncio.ensure_future(q.get())
            await asyncio.sleep(0.01)
            getter.cancel()
            await asyncio.wait([getter])  # over before its look could run
            blocker.set()
            with pytest.raises(asyncio.CancelledError):
                await getter
            await flush(q)
            assert q.qsize() == 1 and unfinished(q) == 0

    run(main())


def test_put_cancelled_while_waiting_on_a_full_queue_stores_nothing(db):
    async def main():
        async with AsyncPersistentQueue(db, maxsize=1) as q:
            await q.put("first")
            putter = asyncio.ensure_future(q.put("second"))
            await until(lambda: waiting(q, "putters") == 1)
            putter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await putter
            assert waiting(q, "putters") == 0
            assert q.get_nowait() == "first"
            assert q.qsize() == 0

    run(main())


def test_put_cancelled_before_its_commit_runs_stores_nothing(db):
    async def main():
        async with AsyncPersistentQueue(db) as q:
            blocker = threading.Event()
            q._offload.submit(blocker.wait, 10)
            putter = asyncio.ensure_future(q.put("never"))
            await asyncio.sleep(0.01)
            putter.cancel()
            await asyncio.wait([putter])  # over before its commit could run
            blocker.set()
            with pytest.raises(asyncio.CancelledError):
                await putter
            await flush(q)
            assert q.qsize() == 0

    run(main())


def test_join_cancelled_changes_nothing(db):
    async def main():
        async with AsyncPersistentQueue(db) as q:
            await q.put(1)
            joiner = asyncio.ensure_future(q.join())
            await asyncio.sleep(0.05)
            joiner.cancel()
            with pytest.raises(asyncio.CancelledError):
                await joiner
            assert await q.get() == 1
            q.task_done()
            await asyncio.wait_for(q.join(), 10)

    run(main())


def test_a_task_cancelled_between_get_and_task_done_leaves_its_item_to_come_back(db):
    async def main():
        async with AsyncPersistentQueue(db, visibility_timeout=0.6) as q:
            await q.put("work")
            got = asyncio.Event()

            async def worker():
                await q.get()
                got.set()
                await asyncio.Event().wait()  # cancelled mid-item

            task = asyncio.ensure_future(worker())
            await got.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # Not kept alive by the heartbeat any more: back after its lease.
            other = PersistentQueue(db)
            item = await asyncio.get_running_loop().run_in_executor(
                None, lambda: other.get(timeout=10))
            assert item == "work"
            other.task_done()
            other.close()

    run(main())


def test_a_task_that_returned_keeps_its_item_leased_for_another_to_finish(db):
    async def main():
        async with AsyncPersistentQueue(db, visibility_timeout=0.6) as q:
            await q.put("handed off")
            item = await asyncio.ensure_future(q.get())  # its task ends here
            with PersistentQueue(db) as other, pytest.raises(Empty):
                other.get(timeout=1.5)  # renewed meanwhile
            assert item == "handed off"
            q.task_done()
            await q.join()

    run(main())


# -- AsyncLiteQueue ----------------------------------------------------------------


def test_liteq_operations_awaited(db):
    async def main():
        async with AsyncLiteQueue(db, max_retries=1) as q:
            assert await q.put(b"a") == 1
            assert await q.put_batch(iter([b"b", b"c"])) == [2, 3]
            batch = await q.pop_batch(max_messages=2, wait_seconds=0)
            assert [m.data for m in batch] == [b"a", b"b"]
            assert await q.ack(batch[0])
            assert await q.release(batch[1])
            assert await q.pop(qname="empty", wait_seconds=0) is None
            msg = await q.pop()
            assert await q.process_failed(msg, "boom")
            assert await q.qsize() == 2

            async with q.consume(wait_seconds=0) as msg:
                assert msg.data == b"b"  # the one released above
            with pytest.raises(ZeroDivisionError):
                async with q.consume(wait_seconds=0) as msg:
                    1 / 0
            failed = await q.get(msg.id)
            assert "ZeroDivisionError" in failed.last_error and failed.attempts == 2
            for _ in range(2):  # its second failure dead-letters it
                with pytest.raises(ValueError):
                    async with q.consume(wait_seconds=0):
                        raise ValueError("again")
            assert [m.dead_reason.startswith("failed 2 times") for m in await q.dead_letters()]
            async with q.consume(wait_seconds=0) as msg:
                assert msg is None
            assert await q.join(timeout=1)

    run(main())


def test_liteq_pop_waits_in_the_loop_and_async_iteration(db, fork):
    ready_r, ready_w = os.pipe()
    child = fork.Process(target=_lite_put_later, args=(db, ready_r))
    child.start()

    async def main():
        async with AsyncLiteQueue(db) as q:
            popper = asyncio.ensure_future(q.pop(wait_seconds=30))
            await asyncio.sleep(0.05)
            assert not popper.done()
            os.write(ready_w, b"x")
            msg = await asyncio.wait_for(popper, 20)
            assert msg.data == b"0"
            await q.ack(msg)
            seen = []
            async for msg in q:
                seen.append(msg.data)
                await q.ack(msg)
                if len(seen) == 4:
                    break
            assert seen == [b"1", b"2", b"3", b"4"]
            assert await q.pop(wait_seconds=0.05) is None

    run(main())
    child.join(10)
    assert child.exitcode == 0


def _lite_put_later(path, ready_fd):
    os.read(ready_fd, 1)
    with LiteQueue(path) as q:
        q.put(b"0")
        q.put_batch([b"1", b"2", b"3", b"4"])


def test_liteq_pop_cancelled_while_leasing_hands_back_uncounted(db):
    async def main():
        async with AsyncLiteQueue(db) as q:
            await q.put(b"x")
            gate = _Gate(q, "pop_batch")
            popper = asyncio.ensure_future(q.pop(wait_seconds=10))
            await gate.wait_entered()
            popper.cancel()
            await asyncio.sleep(0)
            gate.go.set()
            with pytest.raises(asyncio.CancelledError):
                await popper
            await flush(q)
            msg = q.sync.peek()
            assert msg is not None and msg.attempts == 0

    run(main())


def test_liteq_consume_cancelled_in_its_block_hands_back(db):
    async def main():
        async with AsyncLiteQueue(db) as q:
            await q.put(b"x")
            inside = asyncio.Event()

            async def worker():
                async with q.consume(invisible_on_receive=60, wait_seconds=0):
                    inside.set()
                    await asyncio.Event().wait()

            task = asyncio.ensure_future(worker())
            await inside.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            msg = await q.pop(wait_seconds=0)  # at once, not after 60 s
            assert msg is not None and msg.data == b"x"

    run(main())


def test_liteq_wait_seconds_checked(db):
    async def main():
        async with AsyncLiteQueue(db) as q:
            with pytest.raises(ValueError):
                await q.pop(wait_seconds=-1)
            with pytest.raises(TypeError):
                await q.pop_batch(wait_seconds="1")

    run(main())


# -- the pools under asyncio ----------------------------------------------------


def _double(x):
    return 2 * x


def test_pool_futures_wrap_and_the_pool_runs_in_executor(db):
    async def main():
        with PersistentThreadPoolExecutor(db, max_workers=2) as pool:
            future = pool.submit(_double, 21)
            assert isinstance(future, concurrent.futures.Future)
            assert await asyncio.wrap_future(future) == 42
            loop = asyncio.get_running_loop()
            results = await asyncio.gather(
                *[loop.run_in_executor(pool, _double, i) for i in range(10)])
            assert results == [2 * i for i in range(10)]

    run(main())


def test_puts_committed_together_fail_alone(db):
    """Puts awaited at once are committed in one transaction: an item that
    does not serialize fails its own put only."""

    async def main():
        async with AsyncPersistentQueue(db, maxsize=3) as q:
            blocker = threading.Event()
            q._offload.submit(blocker.wait, 10)  # the puts queue up meanwhile
            puts = [asyncio.ensure_future(q.put(item))
                    for item in ("a", lambda: None, "b", "c", "d")]
            await asyncio.sleep(0.01)
            blocker.set()
            done, _ = await asyncio.wait(puts[:4])
            assert puts[1].exception() is not None  # a lambda does not pickle
            assert [p.exception() for p in (puts[0], puts[2], puts[3])] == [None] * 3
            assert not puts[4].done()  # full: it waits for a slot
            assert [q.get_nowait() for _ in range(3)] == ["a", "b", "c"]
            await asyncio.wait_for(puts[4], 10)
            assert q.get_nowait() == "d"

    run(main())


def test_close_hands_back_unfinished_items_and_the_loop_is_checked(db):
    q = AsyncPersistentQueue(db, visibility_timeout=60)

    async def first():
        await q.put("x")
        assert await q.get() == "x"

    run(first())
    with pytest.raises(RuntimeError, match="different event loop"):
        run(q.get())
    q.close()
    # Back at once, not after the 60 s lease.
    sync = PersistentQueue(db)
    assert sync.get_nowait() == "x"
    sync.task_done()
    sync.close()


def test_signed_items_are_bound_like_the_sync_queue_s(db):
    # An awaited put signs as PersistentQueue.put does (the id and the
    # queue bound in), so sync and async code read each other's items, and
    # a queue of another codec refuses the put, storing nothing.
    async def main():
        async with AsyncPersistentQueue(db, hmac_key=b"k" * 32) as q:
            await q.put("from async")
        async with AsyncPersistentQueue(db, hmac_key=b"other" * 8) as wrong:
            with pytest.raises(CodecMismatch):
                await wrong.put("refused")

    run(main())
    sync = PersistentQueue(db, hmac_key=b"k" * 32)
    try:
        assert sync.get(timeout=5) == "from async"
        sync.task_done()
        assert sync.qsize() == 0 and sync.dead_letters() == []
    finally:
        sync.close()
