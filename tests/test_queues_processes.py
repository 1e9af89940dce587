"""The persistent queues across processes: consumers killed in the middle of an
item, producers killed and restarted, every start method, pools, counts and
join() that hold across processes.

Processes synchronise with pipes and events; a child reports what it did
through a pipe or its exit code.  The functions that children run live at
module level, so that every start method can load them.
"""

import concurrent.futures
import multiprocessing
import os
import queue
import signal
import threading
import time

import pytest

from persistqueue_liteq import PersistentQueue, PersistentSimpleQueue

from .test_queues import assert_blocks

START_METHODS = [m for m in ("fork", "spawn", "forkserver") if m in multiprocessing.get_all_start_methods()]


@pytest.fixture(params=START_METHODS)
def ctx(request):
    """A multiprocessing context of each start method; children that a test
    leaves behind are killed."""
    context = multiprocessing.get_context(request.param)
    yield context
    _kill_children()


@pytest.fixture
def fork_ctx():
    yield multiprocessing.get_context("fork")
    _kill_children()


def _kill_children():
    for child in multiprocessing.active_children():
        os.kill(child.pid, signal.SIGKILL)
        child.join()


@pytest.fixture
def path(tmp_path):
    return tmp_path / "queue.db"


def finished(process, timeout=30):
    """Join ``process``; its exit code (killing it if it hangs)."""
    process.join(timeout)
    if process.exitcode is None:
        os.kill(process.pid, signal.SIGKILL)
        process.join()
        raise AssertionError("child %s did not finish in %ss" % (process.name, timeout))
    return process.exitcode


# -- what the children run ---------------------------------------------------------


def hold_until_killed(q, conn):
    conn.send(q.get())  # "I hold it"
    threading.Event().wait()  # ... and block until killed


def get_and_finish(q, conn):
    item = q.get(timeout=30)
    q.task_done()
    conn.send(item)


_worker_queue = None


def remember_queue(q):
    """A Pool or executor initializer."""
    global _worker_queue
    _worker_queue = q


def take_one(_):
    item = _worker_queue.get(timeout=30)
    _worker_queue.task_done()
    return item


def put_one(q, item):
    q.put(item)
    return os.getpid()


def produce(q, start, count):
    for i in range(start, start + count):
        q.put(i)


def consume_until_negative(q, conn):
    got = []
    while True:
        item = q.get(timeout=30)
        q.task_done()
        if item < 0:
            break
        got.append(item)
    conn.send(got)


def produce_and_report(q, conn):
    i = 0
    while True:
        q.put(i)
        conn.send(i)  # sent only once the put has returned (committed)
        i += 1


def take_two_then_finish(q, holding, finish):
    q.get()
    q.get()
    holding.set()
    finish.wait(30)
    q.task_done()
    q.task_done()


def look_after_fork(q, conn):
    seen = {}
    try:
        q.task_done()
    except ValueError as exc:
        seen["task_done"] = str(exc)
    try:
        q.get_nowait()
    except queue.Empty:
        seen["get"] = "Empty"
    seen["qsize"] = q.qsize()
    seen["unfinished"] = q.unfinished_tasks
    q.close()  # hands back what this process got: nothing
    conn.send(seen)


def take_and_crash(q):
    q.get(timeout=30)
    os._exit(3)  # no cleanup, as a crash


# -- the tests ------------------------------------------------------------------------


def test_sigkill_of_a_consumer_in_the_middle_of_an_item(ctx, path):
    q = PersistentQueue(path, visibility_timeout=0.5)
    q.put("job")
    msg_id = q.engine.peek(q.name).id
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=hold_until_killed, args=(q, sender))
    child.start()
    assert receiver.poll(30), "the child did not get the item"
    assert receiver.recv() == "job"
    # While the child lives, its heartbeat keeps the item, lease after lease.
    with pytest.raises(queue.Empty):
        q.get(timeout=1.0)
    os.kill(child.pid, signal.SIGKILL)
    assert finished(child) == -signal.SIGKILL
    killed = time.monotonic()
    assert q.get(timeout=10) == "job"  # back after the lease ran out
    assert time.monotonic() - killed >= 0.2
    assert q.engine.get(msg_id).attempts == 2  # the killed delivery counted
    q.task_done()
    assert q.unfinished_tasks == 0
    q.close()


def test_a_queue_passes_to_a_process(ctx, path):
    q = PersistentQueue(path)
    q.put("for the child")
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=get_and_finish, args=(q, sender))
    child.start()
    assert receiver.poll(30) and receiver.recv() == "for the child"
    assert finished(child) == 0
    q.join()  # the child's task_done() acknowledged it
    assert q.unfinished_tasks == 0
    q.close()


def test_a_queue_passes_to_pool_initializers(ctx, path):
    q = PersistentQueue(path)
    for i in range(4):
        q.put(i)
    with ctx.Pool(2, initializer=remember_queue, initargs=(q,)) as pool:
        assert sorted(pool.map(take_one, range(4))) == [0, 1, 2, 3]
    assert q.unfinished_tasks == 0
    q.close()


def test_a_queue_passes_to_concurrent_futures_workers(ctx, path):
    q = PersistentQueue(path)
    q.put("a")
    q.put("b")
    with concurrent.futures.ProcessPoolExecutor(
        2, mp_context=ctx, initializer=remember_queue, initargs=(q,)
    ) as executor:
        assert sorted(executor.map(take_one, range(2))) == ["a", "b"]
        assert executor.submit(put_one, q, "from a worker").result(timeout=30) != os.getpid()
    assert q.get_nowait() == "from a worker"
    q.task_done()
    q.close()


def test_many_processes_lose_and_repeat_nothing(fork_ctx, path):
    q = PersistentQueue(path, 50)  # bounded: producers also wait for consumers
    producers = [fork_ctx.Process(target=produce, args=(q, n * 200, 200)) for n in range(3)]
    pipes = [fork_ctx.Pipe(duplex=False) for _ in range(3)]
    consumers = [fork_ctx.Process(target=consume_until_negative, args=(q, sender))
                 for _, sender in pipes]
    for process in producers + consumers:
        process.start()
    assert [finished(p) for p in producers] == [0, 0, 0]
    for _ in consumers:
        q.put(-1)
    got = []
    for receiver, _ in pipes:
        assert receiver.poll(30)
        got.extend(receiver.recv())
    assert [finished(c) for c in consumers] == [0, 0, 0]
    assert sorted(got) == list(range(600))  # nothing lost, nothing twice
    q.join()
    assert q.unfinished_tasks == 0
    q.close()


def test_counts_and_join_hold_across_processes(fork_ctx, path):
    q = PersistentQueue(path, 3)
    for item in (1, 2, 3):
        q.put(item)
    holding, finish = fork_ctx.Event(), fork_ctx.Event()
    child = fork_ctx.Process(target=take_two_then_finish, args=(q, holding, finish))
    child.start()
    assert holding.wait(30)
    assert q.qsize() == 1 and not q.full() and not q.empty()
    assert q.unfinished_tasks == 3
    assert q.get_nowait() == 3
    q.task_done()
    assert q.empty() and q.unfinished_tasks == 2
    # join() waits for the child's items, and returns when it is done.
    assert_blocks(q.join, (), finish.set, ())
    assert finished(child) == 0
    q.close()


def test_a_killed_producer_loses_nothing_it_was_told_was_stored(fork_ctx, path):
    q = PersistentQueue(path)
    receiver, sender = fork_ctx.Pipe(duplex=False)
    producer = fork_ctx.Process(target=produce_and_report, args=(q, sender))
    producer.start()
    sender.close()
    reported = []
    while len(reported) < 20:
        assert receiver.poll(30)
        reported.append(receiver.recv())
    os.kill(producer.pid, signal.SIGKILL)
    assert finished(producer) == -signal.SIGKILL
    try:
        while True:
            reported.append(receiver.recv())
    except EOFError:
        pass
    # A restarted producer goes on where it was.
    stored = q.qsize()
    assert stored in (len(reported), len(reported) + 1)  # + one committed, not yet reported
    restarted = fork_ctx.Process(target=produce, args=(q, stored, 5))
    restarted.start()
    assert finished(restarted) == 0
    assert [q.get_nowait() for _ in range(stored + 5)] == list(range(stored + 5))
    q.close()


# Forking while the heartbeat thread runs is the point of this test: Python
# 3.12+ warns of forking a multi-threaded process in general.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_holds_none_of_the_parents_leases(fork_ctx, path):
    q = PersistentQueue(path, visibility_timeout=0.5)
    q.put("parent's")
    assert q.get() == "parent's"  # held, with a heartbeat thread running
    receiver, sender = fork_ctx.Pipe(duplex=False)
    child = fork_ctx.Process(target=look_after_fork, args=(q, sender))
    child.start()
    assert receiver.poll(30)
    assert receiver.recv() == {
        "task_done": "task_done() called too many times",
        "get": "Empty",
        "qsize": 0,
        "unfinished": 1,
    }
    assert finished(child) == 0
    other = PersistentQueue(path)
    with pytest.raises(queue.Empty):  # still the parent's, its lease renewed
        other.get(timeout=1.0)
    q.task_done()
    assert other.unfinished_tasks == 0
    other.close()
    q.close()


def test_an_item_whose_consumers_keep_dying_is_dead_lettered(fork_ctx, path):
    q = PersistentQueue(path, visibility_timeout=0.3, max_retries=1)
    q.put("poison")
    for _ in range(2):  # the first delivery and its one retry
        child = fork_ctx.Process(target=take_and_crash, args=(q,))
        child.start()
        assert finished(child) == 3
    with pytest.raises(queue.Empty):
        q.get(timeout=1.5)  # the third delivery is refused: dead-lettered
    [dead] = q.dead_letters()
    assert "max_retries=1" in dead.dead_reason
    assert q.unfinished_tasks == 0
    q.join()
    q.close()


def test_a_simple_queue_across_processes(fork_ctx, path):
    q = PersistentSimpleQueue(path)
    receiver, sender = fork_ctx.Pipe(duplex=False)
    child = fork_ctx.Process(target=get_and_finish_simple, args=(q, sender))
    child.start()
    q.put("across")  # wakes the child if it is already waiting in get()
    assert receiver.poll(30) and receiver.recv() == "across"
    assert finished(child) == 0
    assert q.empty()
    q.close()


def get_and_finish_simple(q, conn):
    conn.send(q.get(timeout=30))
