"""persistqueue_compat: persist-queue's SQLite queues with one import changed.

The first tests are persist-queue's README examples, translated only in their
import (``import persistqueue`` -> ``from persistqueue_liteq import
persistqueue_compat as persistqueue``); the rest follow persist-queue's own
test suite (tests/test_sqlqueue.py, tests/test_sqlackqueue.py of
persist-queue 1.1.0) where the behaviour is the same, and pin down where it
is documented to differ.
"""

import os
import pickle
import signal
import sqlite3
import threading

import pytest

from persistqueue_liteq import CodecMismatch
from persistqueue_liteq import persistqueue_compat as persistqueue
from persistqueue_liteq.persistqueue_compat import (
    Empty, FILOSQLiteAckQueue, FILOSQLiteQueue, FIFOSQLiteQueue, SQLiteAckQueue, SQLiteQueue,
    UniqueAckQ, UniqueQ)

from .conftest import run_child


@pytest.fixture
def path(tmp_path):
    """A directory that does not exist yet, as persist-queue's examples use."""
    return str(tmp_path / "mypath")


@pytest.fixture
def opened():
    queues = []
    yield lambda q: queues.append(q) or q
    for q in queues:
        q.close()


# -- persist-queue's README, translated ---------------------------------------------------

def test_readme_sqlite3_based_queue(path, opened):
    q = opened(persistqueue.SQLiteQueue(path, auto_commit=True))
    q.put('str1')
    q.put('str2')
    q.put('str3')
    assert q.get() == 'str1'
    del q


def test_readme_sqlite_queue_quick_start(tmp_path, opened):
    os.chdir(tmp_path)
    q = opened(persistqueue.SQLiteQueue('my_queue.db', auto_commit=True))
    q.put('data1')
    q.put('data2')
    item = q.get()
    assert item == "data1"


def test_readme_unique_queue(path, opened):
    q = opened(persistqueue.UniqueQ(path))
    q.put('str1')
    q.put('str1')  # Duplicate ignored
    assert q.size == 1
    q.put('str2')
    assert q.size == 2


def test_readme_acknowledgment_queue(path, opened):
    ackq = opened(persistqueue.SQLiteAckQueue(path))
    ackq.put('str1')
    item = ackq.get()
    # Process the item
    assert ackq.ack(item) == 1  # Mark as completed
    ackq.put('str2')
    item = ackq.get()
    assert ackq.nack(item) == 2  # Mark for retry
    item = ackq.get()
    assert ackq.ack_failed(item) == 2  # Mark as failed
    assert ackq.qsize() == 0 and ackq.ack_failed_count() == 1


def test_readme_multi_threading_usage(tmp_path, opened):
    q = opened(FIFOSQLiteQueue(path=str(tmp_path / "test"), multithreading=True))
    done = []
    lock = threading.Lock()

    def do_work(item):
        with lock:
            done.append(item)

    def worker():
        while True:
            item = q.get()
            if item is None:
                return
            do_work(item)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for item in range(200):
        q.put(item)
    for _ in threads:
        q.put(None)
    for t in threads:
        t.join(30)
    assert sorted(done) == list(range(200))  # each once


# -- persist-queue's own tests, where we behave the same -------------------------------------

@pytest.mark.parametrize("cls", [SQLiteQueue, SQLiteAckQueue, UniqueQ, UniqueAckQ])
def test_raise_empty_and_negative_timeout(path, opened, cls):
    q = opened(cls(path))
    q.put('first')
    assert q.get() == 'first'
    with pytest.raises(Empty):
        q.get(block=False)
    with pytest.raises(Empty):
        q.get(block=True, timeout=0.2)
    with pytest.raises(ValueError):
        q.get(block=True, timeout=-1.0)


@pytest.mark.parametrize("cls", [SQLiteQueue, SQLiteAckQueue])
def test_empty_full_and_put_0(path, opened, cls):
    q = opened(cls(path))
    assert q.empty() and not q.full()
    q.put(0)
    assert not q.empty() and not q.full()
    assert q.get(block=False) == 0
    assert q.empty()


@pytest.mark.parametrize("cls", [SQLiteQueue, SQLiteAckQueue])
def test_get_id_get_raw_queue_and_update(path, opened, cls):
    q = opened(cls(path))
    q.put("val1")
    val2_id = q.put("val2")
    q.put("val3")
    assert val2_id == 2
    rows = q.queue()
    assert [r["data"] for r in rows] == ["val1", "val2", "val3"]
    assert [r["id"] for r in rows] == [1, 2, 3]
    q.update(id=val2_id, item="val2b")
    assert q.get(id=val2_id) == "val2b"
    raw = q.get(raw=True)
    assert raw["pqid"] == 1 and raw["data"] == "val1" and raw["timestamp"] > 1e9
    q.update({"pqid": 3, "data": "val3b"})
    assert q.get(id={"pqid": 3}) == "val3b"


def test_the_ack_queue_counts_as_persist_queue(path, opened):
    q = opened(SQLiteAckQueue(path))
    q.put("val1")
    q.put("val2")
    q.put("val3")
    val1, val2, val3 = q.get(), q.get(), q.get()
    assert q.qsize() == 0 and q.unack_count() == 3 and q.active_size() == 3
    q.nack(val1)
    assert q.qsize() == 1 and q.ready_count() == 1
    q.ack_failed(val3)
    assert q.ack_failed_count() == 1
    q.ack(val2)
    assert q.qsize() == 1 and q.unack_count() == 0
    ready = q.get()
    assert ready == val1
    q.ack(ready)
    assert q.qsize() == 0 and q.ready_count() == 0
    assert [r["status"] for r in q.queue()] == [int(persistqueue.AckStatus.ack_failed)]


def test_ack_of_an_unknown_item_changes_nothing(path, opened):
    q = opened(SQLiteAckQueue(path))
    q.put("val1")
    val1 = q.get()
    assert q.ack("val2") is None and q.nack("val3") is None and q.ack_failed("val4") is None
    assert q.qsize() == 0 and q.unack_count() == 1
    q.ack(val1)
    assert q.unack_count() == 0
    with pytest.raises(ValueError):
        q.ack()
    with pytest.raises(ValueError):
        q.ack("x", id=1)


def test_get_next_in_order_rolls_over(path, opened):
    q = opened(SQLiteAckQueue(path))
    val1_id = q.put("val1")
    q.put("val2")
    q.put("val3")
    item = q.get(id=val1_id, next_in_order=True)
    assert item == "val2"
    q.nack(item)
    item = q.get(id=3, next_in_order=True, raw=True)
    q.nack(item)
    assert item["pqid"] == 1
    with pytest.raises(ValueError):
        q.get(next_in_order=True)


@pytest.mark.parametrize("cls, expected", [(FILOSQLiteQueue, [3, 2, 1]),
                                           (FILOSQLiteAckQueue, [3, 2, 1])])
def test_filo_queues(path, opened, cls, expected):
    q = opened(cls(path))
    for i in (1, 2, 3):
        q.put(i)
    assert [q.get() for _ in range(3)] == expected


def test_unique_queue_sorts_dict_keys_and_survives_a_reopen(path, opened):
    q = UniqueQ(path)
    q.put({"foo": 1, "bar": 2})
    q.put({"bar": 2, "foo": 1})
    assert q.total == 1
    q.put(1111)
    q.put(1111)
    assert q.size == 2
    q.close()
    q = opened(UniqueQ(path))
    assert q.size == 2 and q.put(1111) is None
    assert q.get() == {"foo": 1, "bar": 2}
    assert q.put({"bar": 2, "foo": 1}) is not None  # gone from the queue: may come again


def test_unique_ack_queue_refuses_an_unacked_duplicate(path, opened):
    q = opened(UniqueAckQ(path))
    assert q.put("a") == 1
    item = q.get()
    assert q.put("a") is None  # unacked: still in the queue
    q.ack(item)
    assert q.put("a") is not None


def test_auto_commit_false_deletes_at_task_done(path, opened):
    q = SQLiteQueue(path, auto_commit=False)
    for i in range(1, 11):
        q.put(i)
    assert [q.get(), q.get()] == [1, 2]
    assert q.qsize() == 8
    q.task_done()
    assert q.qsize() == 8
    assert q.get() == 3
    q.close()  # without task_done: 3 comes back
    q = opened(SQLiteQueue(path, auto_commit=False))
    # All 8 are there; 3, handed back at close, queues again as if put then
    # (persist-queue would give it first).
    assert q.qsize() == 8
    assert [q.get() for _ in range(8)] == [4, 5, 6, 7, 8, 9, 10, 3]


def test_json_serializer_and_a_mismatch(path, opened):
    import json

    q = opened(SQLiteQueue(path, serializer=json))
    x = dict(a=1, b=2, c=dict(d=list(range(5)), e=[1]))
    q.put(x)
    assert q.get() == x
    q.put(x)
    other = opened(SQLiteQueue(path))  # pickle: refused, not misread
    with pytest.raises(CodecMismatch):
        other.get(block=False)


def test_shrink_disk_usage_and_clear_acked_data(path, opened):
    q = opened(SQLiteAckQueue(path))
    for i in range(100):
        q.put("val%s" % i)
    items = [q.get() for _ in range(100)]
    for item in items[:90]:
        q.ack(item)
    for item in items[90:]:
        q.ack_failed(item)
    assert q.acked_count() == 0  # acked items are deleted at once
    assert q.ack_failed_count() == 10
    q.clear_acked_data(keep_latest=10)
    assert q.ack_failed_count() == 10
    q.clear_acked_data(clear_ack_failed=True)
    assert q.ack_failed_count() == 0
    q.shrink_disk_usage()


# -- paths ------------------------------------------------------------------------------------

def test_a_directory_is_made_and_holds_data_db(path, opened):
    q = opened(SQLiteQueue(path, db_file_name="jobs.db"))
    q.put(1)
    assert os.path.isfile(os.path.join(path, "jobs.db"))
    other = opened(SQLiteQueue(path))
    assert other.qsize() == 0  # another file: data.db
    assert os.path.isfile(os.path.join(path, "data.db"))


def test_an_existing_directory_works_and_an_existing_file_is_the_database(tmp_path, opened):
    from persistqueue_liteq import PersistentQueue

    q = opened(SQLiteQueue(str(tmp_path)))
    q.put("in the directory")
    assert os.path.isfile(str(tmp_path / "data.db"))
    own = str(tmp_path / "own.db")
    p = PersistentQueue(own)
    p.put("ours")
    p.close()
    assert opened(SQLiteQueue(own)).get() == "ours"


def test_memory_is_a_private_file_removed_at_close():
    q = SQLiteAckQueue(":memory:")
    other = SQLiteAckQueue(":memory:")
    try:
        q.put("mine")
        assert other.qsize() == 0
        where = os.path.dirname(q.path)
        assert os.path.isdir(where) and q.get() == "mine"
    finally:
        q.close()
        other.close()
    assert not os.path.exists(where)


# -- what changing the import buys -----------------------------------------------------

def _consume_one_and_die(path, got):
    q = SQLiteAckQueue(path, visibility_timeout=1.0)
    item = q.get(timeout=10)
    os.write(got, repr(item).encode() + b"\n")
    os.kill(os.getpid(), signal.SIGKILL)  # before ack


def test_an_item_whose_consumer_was_killed_comes_back_once(path, opened, fork):
    q = opened(SQLiteAckQueue(path, visibility_timeout=1.0))
    q.put("job")
    r, w = os.pipe()
    child = fork.Process(target=_consume_one_and_die, args=(path, w))
    child.start()
    child.join(30)
    os.close(w)
    assert child.exitcode == -signal.SIGKILL
    assert os.read(r, 100) == b"'job'\n"
    os.close(r)
    assert q.get(timeout=30) == "job"  # its lease ran out: delivered again
    with pytest.raises(Empty):
        q.get(block=False)


def test_protocol_is_persist_queues(path, opened):
    q = opened(SQLiteAckQueue(path))
    q.put("job")
    conn = sqlite3.connect(os.path.join(path, "data.db"))  # persist-queue's file name
    try:
        [(data,)] = conn.execute("SELECT data FROM liteq_messages").fetchall()
    finally:
        conn.close()
    assert data[:2] == b"\x80\x04" and pickle.loads(data) == "job"  # PROTO 4


@pytest.mark.parametrize("cls", [SQLiteQueue, SQLiteAckQueue])
def test_a_queue_pickled_to_another_process_opens_the_same_file(tmp_path, fork, cls):
    """The copy is a whole queue (it was one without persist-queue's parts:
    its get and close raised AttributeError)."""
    q = cls(str(tmp_path / "q"), auto_commit=True)
    try:
        q.put("job")
        assert run_child(fork, _get_and_settle, pickle.dumps(q)) == 0
        assert q.qsize() == 0  # taken and settled by the copy
    finally:
        q.close()


def _get_and_settle(data):
    copy = pickle.loads(data)
    try:
        item = copy.get(block=False)
        assert item == "job"  # else the child exits 1
        if isinstance(copy, SQLiteAckQueue):
            copy.ack(item)
        else:
            copy.task_done()
    finally:
        copy.close()
