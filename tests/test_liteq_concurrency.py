"""Threads and processes sharing one file; wake-ups; SIGKILL in the middle of work.

Synchronisation is by events, pipes and exit codes.  The only waits on the
clock are leases that must run out, which is the behaviour under test.
"""

import collections
import os
import pathlib
import shutil
import signal
import sqlite3
import tempfile
import threading

import pytest

from persistqueue_liteq import LiteQueue
from persistqueue_liteq.sqlite import wakeup

from .conftest import run_child

STOP = b"STOP"


# -- no duplicate, nothing lost -------------------------------------------------

def _consume_until_stop(db, out_path):
    q = LiteQueue(db)
    got = []
    while True:
        msg = q.pop(wait_seconds=30)
        if msg is None:
            os._exit(3)
        q.delete(msg.id)
        if msg.data == STOP:
            break
        got.append(msg.data)
    with open(out_path, "wb") as f:
        f.write(b"\n".join(got))
    os._exit(0)


def _produce(db, prefix, n):
    q = LiteQueue(db)
    for i in range(0, n, 50):  # singles and batches mixed
        q.put(b"%s-%d" % (prefix, i))
        q.put_batch([b"%s-%d" % (prefix, j) for j in range(i + 1, min(i + 50, n))])
    os._exit(0)


def test_processes_hammering_one_file_deliver_each_message_once(db, tmp_path, fork):
    producers, consumers, per_producer = 3, 3, 600
    LiteQueue(db).close()
    outs = [str(tmp_path / ("out%d" % i)) for i in range(consumers)]
    consumer_procs = [fork.Process(target=_consume_until_stop, args=(db, out)) for out in outs]
    producer_procs = [
        fork.Process(target=_produce, args=(db, b"p%d" % i, per_producer)) for i in range(producers)
    ]
    for proc in consumer_procs + producer_procs:
        proc.start()
    for proc in producer_procs:
        proc.join(60)
        assert proc.exitcode == 0
    LiteQueue(db).put_batch([STOP] * consumers)
    for proc in consumer_procs:
        proc.join(60)
        assert proc.exitcode == 0
    delivered = []
    for out in outs:
        with open(out, "rb") as f:
            delivered.extend(line for line in f.read().split(b"\n") if line)
    expected = {b"p%d-%d" % (p, i) for p in range(producers) for i in range(per_producer)}
    duplicates = [m for m, n in collections.Counter(delivered).items() if n > 1]
    assert duplicates == []
    assert set(delivered) == expected
    q = LiteQueue(db)
    assert q.qsize() == 0
    assert q.integrity_check() == ["ok"]


def _round_trips(db, n, start):
    q = LiteQueue(db)
    start.wait()
    for _ in range(n):
        q.put(b"x" * 100)
        msg = q.pop()
        if msg is not None:  # the other process may have taken it
            q.ack(msg)
    os._exit(0)


def test_the_wal_stays_bounded_while_processes_write_without_pause(q, db, fork):
    # SQLite's automatic checkpoint never restarted the WAL while two
    # processes kept writing: it grew past 200 MB in these 10,000 round trips
    # (and every commit ran a checkpoint).  The WAL only grows between
    # restarts, so sampling its size sees the peak closely enough.
    wal = db + "-wal"
    q.put(b"open")  # this connection keeps the WAL from being removed
    start = fork.Event()
    procs = [fork.Process(target=_round_trips, args=(db, 5000, start)) for _ in range(2)]
    for proc in procs:
        proc.start()
    peak = [0]
    done = threading.Event()

    def watch():
        while not done.wait(0.002):
            try:
                peak[0] = max(peak[0], os.path.getsize(wal))
            except FileNotFoundError:
                pass

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        start.set()
        for proc in procs:
            proc.join(120)
            assert proc.exitcode == 0
    finally:
        done.set()
        watcher.join()
    assert 0 < peak[0] < 80 << 20, "WAL peaked at %.1f MB" % (peak[0] / 2**20)
    assert q.integrity_check() == ["ok"]


def test_threads_hammering_one_queue_deliver_each_message_once(q):
    n_producers, n_consumers, per_producer = 3, 4, 400
    delivered = []
    lock = threading.Lock()
    start = threading.Barrier(n_producers + n_consumers)

    def producer(p):
        start.wait()
        for i in range(per_producer):
            q.put(b"%d-%d" % (p, i))

    def consumer():
        start.wait()
        while True:
            with q.consume(wait_seconds=30) as msg:
                assert msg is not None
                if msg.data == STOP:
                    return
                with lock:
                    delivered.append(msg.data)

    producers = [threading.Thread(target=producer, args=(p,)) for p in range(n_producers)]
    consumers = [threading.Thread(target=consumer) for _ in range(n_consumers)]
    for t in producers + consumers:
        t.start()
    for t in producers:
        t.join()
    q.put_batch([STOP] * n_consumers)
    for t in consumers:
        t.join()
    assert len(delivered) == len(set(delivered)) == n_producers * per_producer
    assert q.qsize() == 0


def test_a_lease_is_exclusive_among_many_concurrent_consumers(q):
    """Thirty threads race for ten messages: each message goes to one."""
    q.put_batch([b"%d" % i for i in range(10)])
    start = threading.Barrier(30)
    won = []

    def racer():
        start.wait()
        msg = q.pop(invisible_seconds=60)
        if msg is not None:
            won.append(msg.id)

    threads = [threading.Thread(target=racer) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won) == sorted(set(won)) and len(won) == 10


# -- wake-ups -----------------------------------------------------------------------

@pytest.fixture
def announced_waits(monkeypatch):
    """Make waits announce themselves, and the safety poll too slow to matter.

    A waiter that announced itself has already looked at the queue for the
    last time, so only a wake-up can make it return in time.
    """
    monkeypatch.setattr(wakeup, "SAFETY_INTERVAL", 3600.0)
    entered = threading.Event()
    original = wakeup._SocketWaiter.wait

    def wait(self, timeout):
        entered.set()
        return original(self, timeout)

    monkeypatch.setattr(wakeup._SocketWaiter, "wait", wait)
    return entered


def test_a_put_in_another_thread_wakes_a_blocked_pop(q, announced_waits):
    result = []
    waiter = threading.Thread(target=lambda: result.append(q.pop(wait_seconds=600)))
    waiter.start()
    assert announced_waits.wait(30)
    q.put(b"wake up")
    waiter.join(30)
    assert not waiter.is_alive()
    assert result[0].data == b"wake up"


def _put_when_told(db, go):
    go.wait(30)
    LiteQueue(db).put(b"from another process")
    os._exit(0)


def test_a_put_in_another_process_wakes_a_blocked_pop(q, db, fork, announced_waits):
    go = fork.Event()
    producer = fork.Process(target=_put_when_told, args=(db, go))
    producer.start()
    relay = threading.Thread(target=lambda: announced_waits.wait(30) and go.set())
    relay.start()
    msg = q.pop(wait_seconds=600)
    relay.join()
    producer.join(30)
    assert producer.exitcode == 0
    assert msg.data == b"from another process"


def _pop_with_announced_wait(db, entered):
    wakeup.SAFETY_INTERVAL = 3600.0
    original = wakeup._SocketWaiter.wait

    def wait(self, timeout):
        entered.set()
        return original(self, timeout)

    wakeup._SocketWaiter.wait = wait
    msg = LiteQueue(db).pop(wait_seconds=600)
    os._exit(0 if msg is not None and msg.data == b"hello child" else 1)


def test_a_blocked_pop_in_another_process_is_woken(q, db, fork):
    entered = fork.Event()
    consumer = fork.Process(target=_pop_with_announced_wait, args=(db, entered))
    consumer.start()
    assert entered.wait(30)
    q.put(b"hello child")
    consumer.join(30)
    assert consumer.exitcode == 0


def test_a_put_to_another_queue_does_not_satisfy_a_waiter(q, announced_waits):
    result = []
    waiter = threading.Thread(target=lambda: result.append(q.pop("mine", wait_seconds=600)))
    waiter.start()
    assert announced_waits.wait(30)
    q.put(b"not for you", qname="theirs")
    q.put(b"for you", qname="mine")
    waiter.join(30)
    assert result[0].data == b"for you"
    assert q.qsize("theirs") == 1


def test_a_transaction_wakes_waiters_after_commit(q, announced_waits):
    result = []
    waiter = threading.Thread(target=lambda: result.append(q.pop(wait_seconds=600)))
    waiter.start()
    assert announced_waits.wait(30)
    with q.transaction() as tx:
        tx.put(b"committed together")
    waiter.join(30)
    assert result[0].data == b"committed together"


def test_join_is_woken_by_an_ack_in_another_thread(q, announced_waits):
    q.put(b"work")
    msg = q.pop()
    joined = []
    joiner = threading.Thread(target=lambda: joined.append(q.join(timeout=600)))
    joiner.start()
    assert announced_waits.wait(30)
    q.ack(msg)
    joiner.join(30)
    assert joined == [True]


def test_a_waiter_leaves_no_socket_behind(q):
    q.pop(wait_seconds=0.05)
    directory = q.engine._notifier._directory("put", "default")
    assert os.listdir(directory) == []


def test_a_crowded_directory_is_swept_of_empty_ones(q, monkeypatch):
    base = pathlib.Path(tempfile.mkdtemp(prefix="pq"))  # short: socket paths are
    monkeypatch.setattr(wakeup, "_swept", False)       # limited to 108 bytes
    for i in range(wakeup._CROWDED + 1):
        (base / ("file%d" % i) / "put-abc").mkdir(parents=True)
    (base / "bare").mkdir()
    monkeypatch.setattr(wakeup, "_base_dir", lambda: str(base))
    busy = wakeup.Notifier(q.filename, "busy_")  # a waiter's directory stays
    with busy.waiter("put", "default"):
        monkeypatch.setattr(wakeup, "_swept", False)
        wakeup.Notifier(q.filename, "other_")
        assert os.listdir(base) == [os.path.basename(busy._root)]
    shutil.rmtree(base)


def test_a_waiter_whose_directory_was_swept_makes_it_again(q):
    directory = q.engine._notifier._directory("put", "default")
    with q.engine.waiter("put", "default"):
        pass
    wakeup._remove_if_empty(directory)
    assert not os.path.exists(directory)
    with q.engine.waiter("put", "default") as waiter:
        q.put(b"x")
        assert waiter.wait(30)


@pytest.mark.parametrize("swept", ["after makedirs", "inside makedirs"])
def test_a_waiter_racing_a_sweep_makes_its_directory_again(q, monkeypatch, swept):
    """A sweep (of another process) removes the directory between the
    waiter's makedirs and its bind, or between makedirs' own two looks,
    which then says "exists" for a directory that is gone."""
    directory = q.engine._notifier._directory("put", "default")
    real_makedirs, calls = os.makedirs, []

    def makedirs(path, mode=0o777, exist_ok=False):
        real_makedirs(path, mode, exist_ok)  # (which calls us for the parent)
        if path != directory:
            return
        calls.append(path)
        if len(calls) == 1:
            wakeup._remove_if_empty(path)
            if swept == "inside makedirs":
                raise FileExistsError(17, "File exists", path)

    monkeypatch.setattr(wakeup.os, "makedirs", makedirs)
    with q.engine.waiter("put", "default") as waiter:
        assert calls == [directory, directory]
        q.put(b"x")
        assert waiter.wait(30)


def test_a_socket_left_by_a_killed_waiter_is_cleaned_up(q, db, fork):
    entered = fork.Event()
    consumer = fork.Process(target=_pop_with_announced_wait, args=(db, entered))
    consumer.start()
    assert entered.wait(30)
    os.kill(consumer.pid, signal.SIGKILL)
    consumer.join()
    directory = q.engine._notifier._directory("put", "default")
    assert len(os.listdir(directory)) == 1
    q.put(b"nobody listens")
    assert not os.path.exists(directory)


# -- crashes ------------------------------------------------------------------------

def _lease_and_hang(db, leased):
    q = LiteQueue(db)
    msg = q.pop(invisible_seconds=0.5)
    leased.send(msg.id)
    threading.Event().wait()  # hold the lease until killed


def test_sigkilled_consumer_message_comes_back_after_its_lease(q, db, fork):
    msg_id = q.put(b"important")
    parent_end, child_end = fork.Pipe()
    consumer = fork.Process(target=_lease_and_hang, args=(db, child_end))
    consumer.start()
    assert parent_end.recv() == msg_id
    assert q.pop() is None  # the dead consumer's lease still holds
    os.kill(consumer.pid, signal.SIGKILL)
    consumer.join()
    assert consumer.exitcode == -signal.SIGKILL
    msg = q.pop(wait_seconds=30)
    assert (msg.id, msg.data, msg.attempts) == (msg_id, b"important", 2)
    assert q.integrity_check() == ["ok"]


def _batch_then_hang(db, mid_batch):
    q = LiteQueue(db)

    def payloads():
        for i in range(2000):
            if i == 1000:
                mid_batch.set()  # half the batch is written inside the transaction
                threading.Event().wait()
            yield b"batch-%d" % i

    q.put_batch(payloads())
    os._exit(1)  # never reached


def test_sigkilled_producer_inside_put_batch_leaves_nothing_half_done(q, db, fork):
    q.put(b"before")
    mid_batch = fork.Event()
    producer = fork.Process(target=_batch_then_hang, args=(db, mid_batch))
    producer.start()
    assert mid_batch.wait(30)
    os.kill(producer.pid, signal.SIGKILL)
    producer.join()
    assert q.qsize() == 1
    assert [m.data for m in q.pop_batch(max_messages=10)] == [b"before"]
    assert q.integrity_check() == ["ok"]
    q.put(b"after")  # the dead producer's write lock went with it
    raw = sqlite3.connect(db)
    assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def _use_inherited_queue(q, out):
    q.put(b"from child")
    msg = q.pop()
    out.send((msg.data, msg.id))
    os._exit(0)


def test_a_queue_opened_before_fork_works_in_the_child(q, fork):
    q.put(b"from parent")
    parent_end, child_end = fork.Pipe()
    assert run_child(fork, _use_inherited_queue, q, child_end) == 0
    assert parent_end.recv()[0] == b"from parent"
    assert q.pop().data == b"from child"
    assert q.integrity_check() == ["ok"]
