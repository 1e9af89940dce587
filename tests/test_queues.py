"""The persistent queue.Queue family: the standard library's contract, run
against the standard library's classes and ours alike, and what persistence
adds (leases, acknowledgements, restarts, dead letters) within one process.

Processes (kills, start methods, pickling across them) are in
test_queues_processes.py, the priority order in test_queues_priority.py.
"""

import gc
import pickle
import queue
import threading
import time
import warnings
import weakref

import pytest

from persistqueue_liteq import (
    PersistentLifoQueue,
    PersistentPriorityQueue,
    PersistentQueue,
    PersistentSimpleQueue,
    ShutDown,
)

HAVE_STDLIB_SHUTDOWN = hasattr(queue.Queue, "shutdown")


# -- the proof that a call blocked (CPython's test_queue BlockingTestMixin) ------


class _TriggerThread(threading.Thread):
    def __init__(self, fn, args):
        super().__init__(daemon=True)
        self.fn = fn
        self.args = args
        self.started = threading.Event()
        self.error = None

    def run(self):
        # The pause gives the blocking call time to block before it is
        # unclogged; the proof does not depend on it (see assert_blocks).
        time.sleep(0.1)
        self.started.set()
        try:
            self.fn(*self.args)
        except BaseException as exc:  # reported by assert_blocks
            self.error = exc


def assert_blocks(block_func, block_args, trigger_func, trigger_args, raises=None):
    """Return ``block_func(*block_args)`` (or check that it raises ``raises``),
    proving that it blocked until ``trigger_func(*trigger_args)`` ran in
    another thread.

    A port of CPython's ``do_blocking_test``.  The proof is an order, not a
    duration: the trigger thread sets ``started`` just before it calls
    ``trigger_func``, so a ``block_func`` that comes back while ``started`` is
    unset did not wait for it.  A slow machine can only make the pause before
    the trigger too short to catch a call that does not block: it can never
    fail a call that does.
    """
    thread = _TriggerThread(trigger_func, trigger_args)
    thread.start()
    try:
        if raises is None:
            result = block_func(*block_args)
        else:
            with pytest.raises(raises):
                block_func(*block_args)
            result = None
        assert thread.started.is_set(), "%r came back without blocking" % (block_func,)
        return result
    finally:
        thread.join(30)
        assert not thread.is_alive(), "the trigger %r did not finish" % (trigger_func,)
        if thread.error is not None:
            raise thread.error


# -- the contract: stdlib classes and ours ----------------------------------------

KINDS = {
    "fifo": (queue.Queue, PersistentQueue),
    "lifo": (queue.LifoQueue, PersistentLifoQueue),
    "priority": (queue.PriorityQueue, PersistentPriorityQueue),
}
ORDER_OF_3_1_2 = {"fifo": [3, 1, 2], "lifo": [2, 1, 3], "priority": [1, 2, 3]}


class Factory:
    """Makes queues of one kind and implementation; closes ours after the test."""

    def __init__(self, kind, impl, directory):
        self.kind, self.impl = kind, impl
        self.cls = KINDS[kind][0 if impl == "stdlib" else 1]
        self.directory = directory
        self.opened = []

    def __call__(self, maxsize=0, cls=None):
        cls = cls or self.cls
        if self.impl == "stdlib":
            return cls(maxsize)
        q = cls(self.directory / ("q%d.db" % len(self.opened)), maxsize)
        self.opened.append(q)
        return q

    def close(self):
        for q in self.opened:
            q.close()


@pytest.fixture(
    params=[(kind, impl) for kind in KINDS for impl in ("stdlib", "persistent")],
    ids=lambda p: "%s-%s" % (p[1], p[0]),
)
def make(request, tmp_path):
    factory = Factory(request.param[0], request.param[1], tmp_path)
    yield factory
    factory.close()


class TestQueueContract:
    """What queue.Queue, LifoQueue and PriorityQueue promise, checked on the
    standard library's classes (so that the test itself is right) and ours."""

    def test_order(self, make):
        q = make()
        for item in (3, 1, 2):
            q.put(item)
        assert [q.get() for _ in range(3)] == ORDER_OF_3_1_2[make.kind]

    def test_empty_and_full_are_the_stdlib_exceptions(self, make):
        q = make(1)
        with pytest.raises(queue.Empty) as empty:
            q.get_nowait()
        assert type(empty.value) is queue.Empty
        q.put_nowait(1)
        with pytest.raises(queue.Full) as full:
            q.put_nowait(2)
        assert type(full.value) is queue.Full
        with pytest.raises(queue.Full):
            q.put(2, block=False)

    def test_timeouts_wait_then_raise(self, make):
        q = make(1)
        start = time.monotonic()
        with pytest.raises(queue.Empty):
            q.get(timeout=0.1)
        assert time.monotonic() - start >= 0.1
        q.put(1)
        start = time.monotonic()
        with pytest.raises(queue.Full):
            q.put(2, timeout=0.1)
        assert time.monotonic() - start >= 0.1

    def test_negative_timeout(self, make):
        q = make(2)
        q.put(1)
        message = "'timeout' must be a non-negative number"
        with pytest.raises(ValueError) as exc:
            q.get(True, -1)  # even though an item is there
        assert str(exc.value) == message
        with pytest.raises(ValueError) as exc:
            q.put(2, timeout=-1)  # even though there is room
        assert str(exc.value) == message
        assert q.qsize() == 1
        # Not blocking: the timeout is ignored, as by the standard library.
        q.put(2, False, -1)
        assert q.get(False, -1) in (1, 2)

    def test_task_done_too_many_times(self, make):
        q = make()
        with pytest.raises(ValueError) as exc:
            q.task_done()
        assert str(exc.value) == "task_done() called too many times"
        q.put(1)
        q.get()
        q.task_done()
        with pytest.raises(ValueError):
            q.task_done()

    def test_blocking_get_is_woken_by_put(self, make):
        q = make()
        assert assert_blocks(q.get, (), q.put, ("item",)) == "item"
        assert assert_blocks(q.get, (True, 10), q.put, ("again",)) == "again"

    def test_blocking_put_is_woken_by_get(self, make):
        q = make(1)
        q.put(1)
        assert_blocks(q.put, (2,), q.get, ())
        assert_blocks(q.put, (3, True, 10), q.get, ())
        assert q.get_nowait() == 3

    def test_join_waits_for_task_done(self, make):
        q = make()
        q.join()  # nothing put: returns at once
        q.put(1)
        q.put(2)
        q.get()
        q.get()
        q.task_done()
        assert_blocks(q.join, (), q.task_done, ())
        q.join()

    def test_qsize_empty_full_and_maxsize(self, make):
        q = make(2)
        assert (q.qsize(), q.empty(), q.full()) == (0, True, False)
        q.put(1)
        assert (q.qsize(), q.empty(), q.full()) == (1, False, False)
        q.put(2)
        assert (q.qsize(), q.empty(), q.full()) == (2, False, True)
        q.maxsize = 3  # maxsize is assignable, and counts at once
        assert not q.full()
        q.put_nowait(3)
        q.maxsize = 2
        assert q.full()
        with pytest.raises(queue.Full):
            q.put_nowait(4)
        q.maxsize = 0
        q.put_nowait(4)
        assert q.qsize() == 4 and not q.full()

    def test_the_stdlib_shape(self, make):
        q = make()
        assert hasattr(q.mutex, "acquire") and hasattr(q.mutex, "release")
        for name in ("not_empty", "not_full", "all_tasks_done"):
            condition = getattr(q, name)
            assert isinstance(condition, threading.Condition)
            with condition:  # each shares the mutex
                assert not q.mutex.acquire(blocking=False)
        assert make.cls[int] is not None  # a generic class, as the stdlib's

    def test_a_subclass_overriding_put_and_get(self, make):
        base = make.cls

        class Shifted(base):
            def _init(self, maxsize):
                super()._init(maxsize)
                self.initialised_with = maxsize

            def _put(self, item):
                super()._put(item * 10)

            def _get(self):
                return super()._get() + 1

            def _qsize(self):
                return super()._qsize()

        q = make(3, cls=Shifted)
        assert q.initialised_with == 3
        q.put(1)
        q.put(2)
        assert q.qsize() == 2
        assert sorted([q.get(), q.get()]) == [11, 21]
        assert q.empty()

    def test_threads_lose_and_repeat_nothing(self, make):
        q = make(10)
        got = []
        lock = threading.Lock()

        def consume():
            while True:
                item = q.get()
                if item < 0:
                    q.task_done()
                    return
                with lock:
                    got.append(item)
                q.task_done()

        def produce(start):
            for i in range(start, start + 100):
                q.put(i)

        consumers = [threading.Thread(target=consume) for _ in range(3)]
        producers = [threading.Thread(target=produce, args=(n * 100,)) for n in range(3)]
        for thread in consumers + producers:
            thread.start()
        for thread in producers:
            thread.join()
        q.join()
        for _ in consumers:
            q.put(-1)  # orderable, for the priority queues
        for thread in consumers:
            thread.join()
        assert sorted(got) == list(range(300))


@pytest.mark.parametrize("immediate", [False, True])
class TestShutdownContract:
    """Python 3.13's shutdown(), on every Python for ours."""

    def test_puts_raise_and_gets_drain_then_raise(self, make, immediate):
        if make.impl == "stdlib" and not HAVE_STDLIB_SHUTDOWN:
            pytest.skip("queue.Queue.shutdown() is new in Python 3.13")
        q = make()
        q.put(1)
        assert not q.is_shutdown
        q.shutdown(immediate=immediate)
        assert q.is_shutdown
        with pytest.raises(ShutDown):
            q.put(2)
        if not immediate:
            assert q.get() == 1
            q.task_done()
        with pytest.raises(ShutDown):
            q.get()
        with pytest.raises(ShutDown):
            q.get_nowait()
        q.join()

    def test_a_blocked_get_is_released(self, make, immediate):
        if make.impl == "stdlib" and not HAVE_STDLIB_SHUTDOWN:
            pytest.skip("queue.Queue.shutdown() is new in Python 3.13")
        q = make()
        assert_blocks(q.get, (), q.shutdown, (immediate,), raises=ShutDown)

    def test_a_blocked_put_is_released(self, make, immediate):
        if make.impl == "stdlib" and not HAVE_STDLIB_SHUTDOWN:
            pytest.skip("queue.Queue.shutdown() is new in Python 3.13")
        q = make(1)
        q.put(1)
        assert_blocks(q.put, (2,), q.shutdown, (immediate,), raises=ShutDown)


def test_the_package_exports_the_queues():
    import persistqueue_liteq

    for name in ("PersistentQueue", "PersistentLifoQueue", "PersistentPriorityQueue",
                 "PersistentSimpleQueue", "ShutDown"):
        assert name in persistqueue_liteq.__all__
    assert persistqueue_liteq.PersistentQueue is PersistentQueue
    assert persistqueue_liteq.ShutDown is ShutDown


def test_shutdown_is_the_stdlib_exception_where_there_is_one():
    if HAVE_STDLIB_SHUTDOWN:
        assert ShutDown is queue.ShutDown
    else:
        assert issubclass(ShutDown, Exception) and ShutDown.__module__.startswith("persistqueue_liteq")


@pytest.fixture(params=["stdlib", "persistent"])
def make_simple(request, tmp_path):
    opened = []

    def make():
        if request.param == "stdlib":
            return queue.SimpleQueue()
        q = PersistentSimpleQueue(tmp_path / "simple.db")
        opened.append(q)
        return q

    yield make
    for q in opened:
        q.close()


class TestSimpleQueueContract:
    def test_put_get_qsize_empty(self, make_simple):
        q = make_simple()
        assert (q.qsize(), q.empty()) == (0, True)
        q.put(1)
        q.put(2, block=False, timeout=-5)  # ignored, as put never blocks
        q.put_nowait(3)
        assert (q.qsize(), q.empty()) == (3, False)
        assert [q.get(), q.get_nowait(), q.get(timeout=1)] == [1, 2, 3]
        assert (q.qsize(), q.empty()) == (0, True)
        with pytest.raises(queue.Empty) as exc:
            q.get(timeout=0.05)
        assert type(exc.value) is queue.Empty
        with pytest.raises(queue.Empty):
            q.get(False, -1)  # a timeout is only checked when blocking
        with pytest.raises(ValueError, match="'timeout' must be a non-negative number"):
            q.get(True, -1)

    def test_blocking_get_is_woken_by_put(self, make_simple):
        q = make_simple()
        assert assert_blocks(q.get, (), q.put, ("item",)) == "item"


# -- what persistence adds ------------------------------------------------------------


@pytest.mark.parametrize("cls", [PersistentQueue, PersistentLifoQueue, PersistentPriorityQueue,
                                 PersistentSimpleQueue])
def test_items_survive_a_restart(path, cls):
    q = cls(path)
    for item in (3, 1, 2):
        q.put(item)
    q.close()
    q = cls(path)
    expected = {PersistentLifoQueue: [2, 1, 3], PersistentPriorityQueue: [1, 2, 3]}.get(cls, [3, 1, 2])
    assert [q.get_nowait() for _ in range(3)] == expected
    q.close()


def test_an_item_got_and_not_done_is_delivered_again(path, opened):
    q = PersistentQueue(path)
    q.put("job")
    msg_id = q.engine.peek(q.name).id
    assert q.get() == "job"
    q.close()  # as a restart: the item is handed back
    q = opened(PersistentQueue(path))
    assert q.get_nowait() == "job"
    assert q.engine.get(msg_id).attempts == 2  # each delivery counted
    q.task_done()
    assert q.engine.get(msg_id) is None
    assert q.unfinished_tasks == 0


def test_task_done_acknowledges_what_the_calling_thread_got(path, opened):
    q = opened(PersistentQueue(path))
    for item in "abcd":
        q.put(item)
    got = []
    worker = threading.Thread(target=lambda: got.extend([q.get(), q.get()]))
    worker.start()
    worker.join()
    assert got == ["a", "b"]
    assert q.get() == "c"
    q.task_done()  # the main thread's own: c
    assert q.unfinished_tasks == 3
    q.task_done()  # the main thread holds none now: the process's oldest, a
    q.close()  # hands back b
    q = opened(PersistentQueue(path))
    assert sorted([q.get_nowait(), q.get_nowait()]) == ["b", "d"]


def test_task_done_of_one_thread_leaves_another_threads_item(path, opened):
    q = opened(PersistentQueue(path))
    q.put("first")
    q.put("second")
    got_first = threading.Event()
    finish = threading.Event()

    def slow_worker():
        assert q.get() == "first"
        got_first.set()
        finish.wait(10)
        q.task_done()

    worker = threading.Thread(target=slow_worker)
    worker.start()
    assert got_first.wait(10)
    assert q.get() == "second"
    q.task_done()  # "second", not the older "first" of the other thread
    remaining = q.engine.peek(q.name)
    assert remaining is None and q.unfinished_tasks == 1
    finish.set()
    worker.join()
    assert q.unfinished_tasks == 0


def test_the_heartbeat_keeps_a_lease_for_slow_work(path, opened):
    worker = opened(PersistentQueue(path, visibility_timeout=0.6))
    other = opened(PersistentQueue(path))
    worker.put("slow job")
    assert worker.get() == "slow job"
    # Three lease lengths later the item is still the worker's.
    with pytest.raises(queue.Empty):
        other.get(timeout=1.8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "lease had run out" warning
        worker.task_done()
    assert worker.unfinished_tasks == 0


def test_a_dropped_queue_object_stops_renewing_its_leases(path, opened):
    q = PersistentQueue(path, visibility_timeout=0.3)
    q.put("job")
    msg_id = q.engine.peek(q.name).id
    leased = time.monotonic()  # the lease ends 0.3 s after this, or later
    assert q.get() == "job"
    ref = weakref.ref(q)
    del q  # without close(): as if its process had died
    gc.collect()
    assert ref() is None  # the heartbeat thread does not keep it alive
    other = opened(PersistentQueue(path))
    assert other.get(timeout=10) == "job"
    # Not before the lease ran out.  (Counted from before the get: counted
    # from after gc.collect(), which can take longer than the lease in a big
    # test session, the bound failed on a loaded machine.)
    assert time.monotonic() - leased >= 0.29
    assert other.engine.get(msg_id).attempts == 2


def test_auto_ack_acknowledges_at_get(path, opened):
    q = opened(PersistentQueue(path, auto_ack=True))
    q.put(1)
    q.put(2)
    assert q.get() == 1
    assert q.unfinished_tasks == 1  # only 2 is left
    assert q.engine.peek(q.name).attempts == 0
    q.task_done()  # still counts, as the stdlib's
    with pytest.raises(ValueError, match="task_done"):
        q.task_done()
    q.close()
    q = opened(PersistentQueue(path))
    assert q.get_nowait() == 2


def test_simple_queue_acknowledges_at_get_unless_told(path, opened):
    q = opened(PersistentSimpleQueue(path))
    q.put(1)
    assert q.get() == 1 and q.engine.count(q.name, "live") == 0
    leasing = opened(PersistentSimpleQueue(path, auto_ack=False))
    leasing.put(2)
    assert leasing.get() == 2 and leasing.engine.count(q.name, "live") == 1
    leasing.task_done()
    assert leasing.engine.count(q.name, "live") == 0


def test_counts_and_join_read_the_file(path, opened):
    producer = opened(PersistentQueue(path, 2))
    consumer = opened(PersistentQueue(path, 2))
    producer.put(1)
    producer.put(2)
    assert consumer.qsize() == 2 and consumer.full()
    assert consumer.get() == 1
    assert producer.qsize() == 1 and not producer.full()
    assert producer.unfinished_tasks == 2
    assert consumer.get() == 2
    assert producer.empty() and producer.unfinished_tasks == 2
    consumer.task_done()
    # join() of another object returns when the last item is acknowledged.
    assert_blocks(producer.join, (), consumer.task_done, ())
    assert producer.unfinished_tasks == 0


def test_a_full_queue_blocks_a_put_until_another_object_gets(path, opened):
    producer = opened(PersistentQueue(path, 1))
    consumer = opened(PersistentQueue(path, 1))
    producer.put(1)
    assert_blocks(producer.put, (2,), consumer.get, ())
    assert producer.qsize() == 1


def test_opening_never_disturbs_items_that_others_hold(path, opened):
    first = opened(PersistentQueue(path))
    first.put("held")
    assert first.get() == "held"
    second = opened(PersistentQueue(path))
    with pytest.raises(queue.Empty):
        second.get_nowait()
    assert second.qsize() == 0 and second.unfinished_tasks == 1
    first.task_done()
    assert second.unfinished_tasks == 0


def test_shutdown_immediate_keeps_the_stored_items(path, opened):
    q = opened(PersistentQueue(path))
    for item in (1, 2, 3):
        q.put(item)
    assert q.get() == 1
    q.shutdown(immediate=True)
    with pytest.raises(ShutDown):
        q.get()
    with pytest.raises(ShutDown):
        q.put(4)
    assert q.qsize() == 2  # kept
    # join() now waits only for what this process got.
    assert_blocks(q.join, (), q.task_done, ())
    q.close()
    q = opened(PersistentQueue(path))  # shutting down is not stored
    assert not q.is_shutdown
    assert [q.get_nowait(), q.get_nowait()] == [2, 3]


def test_clear_discards_the_items(path, opened):
    q = opened(PersistentQueue(path))
    for item in range(3):
        q.put(item)
    assert q.get() == 0
    assert q.clear() == 3  # the one in flight too
    assert q.empty() and q.unfinished_tasks == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q.task_done()  # its item is gone: nothing to warn about
    q.join()


def test_dead_letters_after_max_retries_and_redrive(path, opened):
    for _ in range(2):  # first delivery and one retry, each handed back
        q = PersistentQueue(path, max_retries=1)
        if not q.unfinished_tasks:
            q.put("poison")
        assert q.get_nowait() == "poison"
        q.close()
    q = opened(PersistentQueue(path, max_retries=1))
    with pytest.raises(queue.Empty):
        q.get_nowait()
    [dead] = q.dead_letters()
    assert "max_retries=1" in dead.dead_reason
    assert q.unfinished_tasks == 0
    q.join()  # a dead letter is not waited for
    assert q.redrive() == 1
    assert q.get_nowait() == "poison"
    q.task_done()
    assert q.dead_letters() == []


def test_close_hands_back_and_is_idempotent(path):
    q = PersistentQueue(path)
    with pytest.raises(ValueError, match="after close"):
        q.join_thread()
    q.put(1)
    q.get()
    q.cancel_join_thread()  # nothing buffered: nothing to cancel
    q.close()
    q.close()
    q.join_thread()
    with pytest.raises(ValueError, match="closed"):
        q.get_nowait()
    with PersistentQueue(path) as again:
        assert again.get_nowait() == 1
        again.task_done()


def test_pickling_carries_the_path_and_options(path, opened):
    q = opened(PersistentQueue(path, 7, name="jobs", visibility_timeout=9, max_retries=2,
                               serializer="json", hmac_key=b"k", timeout_seconds=3))
    q.put(["held"])
    assert q.get() == ["held"]
    copy = opened(pickle.loads(pickle.dumps(q)))
    assert type(copy) is PersistentQueue
    assert (copy.path, copy.name, copy.maxsize, copy.visibility_timeout, copy.max_retries,
            copy.timeout_seconds, copy.auto_ack) == (q.path, "jobs", 7, 9, 2, 3, False)
    # The copy holds none of the original's leases.
    with pytest.raises(ValueError, match="too many times"):
        copy.task_done()
    copy.put(["new"])
    assert q.get() == ["new"]  # same file, queue, serializer and key
    q.task_done()
    q.task_done()
    assert copy.unfinished_tasks == 0


def module_level_key(item):
    return item["rank"]


def test_pickling_carries_the_priority_key_and_module_serializers(path, opened):
    import json

    q = opened(PersistentPriorityQueue(path, key=module_level_key, serializer=json))
    copy = opened(pickle.loads(pickle.dumps(q)))
    assert copy.key is module_level_key
    copy.put({"rank": 2})
    copy.put({"rank": 1})
    assert q.get()["rank"] == 1
    simple = opened(PersistentSimpleQueue(path, name="s"))
    assert type(pickle.loads(pickle.dumps(simple))) is PersistentSimpleQueue


def test_arguments_are_checked_up_front(path):
    bad = [
        (dict(maxsize="3"), TypeError, "maxsize"),
        (dict(name=""), ValueError, "name"),
        (dict(name=3), TypeError, "name"),
        (dict(visibility_timeout=0), ValueError, "visibility_timeout"),
        (dict(max_retries=-1), ValueError, "max_retries"),
        (dict(serializer=object()), TypeError, "dumps"),
        (dict(serializer="yaml"), ValueError, "serializer"),
        (dict(hmac_key="text"), TypeError, "encode"),
        (dict(hmac_key=b""), ValueError, "empty"),
        (dict(timeout_seconds=-1), ValueError, "timeout_seconds"),
        (dict(synchronous="OFF"), ValueError, "synchronous"),
        (dict(table_prefix="x; DROP"), ValueError, "table_prefix"),
    ]
    for options, error, words in bad:
        maxsize = options.pop("maxsize", 0)
        with pytest.raises(error, match=words):
            PersistentQueue(path, maxsize, **options)
    with pytest.raises(TypeError, match="key"):
        PersistentPriorityQueue(path, key="rank")
    with pytest.raises(TypeError):
        PersistentSimpleQueue(path, 5)  # no maxsize
    with pytest.raises(FileNotFoundError):
        PersistentQueue(path.parent / "missing" / "q.db")


def test_a_put_reentered_from_inside_a_put_keeps_the_order_of_the_calls(path, opened):
    # CPython's test_reentrancy puts from a __del__ that the garbage
    # collector may run anywhere inside a put(); here the serializer of the
    # outer item runs the inner put, every time, at the worst moment: before
    # the outer item is stored.
    class Reentering:
        def __init__(self):
            self.inner = []

        def dumps(self, item):
            if self.inner:
                q.put(self.inner.pop())
            return pickle.dumps(item)

        def loads(self, data):
            return pickle.loads(data)

    serializer = Reentering()
    q = opened(PersistentSimpleQueue(str(path), serializer=serializer))
    for n in range(0, 10, 2):
        serializer.inner.append(n + 1)
        q.put(n)
    assert [q.get(timeout=5) for _ in range(10)] == list(range(10))
