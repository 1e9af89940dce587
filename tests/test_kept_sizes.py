"""Kept sizes: qsize(), full() and a bounded put read one row of
``{p}sizes``, which triggers keep in the transaction of every change to the
messages table.  These tests compare it, after every kind of change, with a
count of the messages themselves (the statements used before it)."""

import os
import signal
import sqlite3

import pytest

from persistqueue_liteq import LiteQueue, PersistentQueue
from persistqueue_liteq.sqlite import sql
from persistqueue_liteq.sqlite.engine import SQLiteEngine


S = sql.render("liteq_")


def counted(path, queue="default"):
    """(live, waiting) counted over the messages, as before kept sizes."""
    engine = SQLiteEngine(path, readonly=True)
    try:
        now = engine.now()
    finally:
        engine.close()
    with sqlite3.connect(path) as conn:
        live = conn.execute(S.COUNT_LIVE, {"queue": queue, "now": now}).fetchone()[0]
        waiting = conn.execute(S.COUNT_WAITING, {"queue": queue, "now": now}).fetchone()[0]
    return live, waiting


def kept(path, queue="default"):
    engine = SQLiteEngine(path)
    try:
        assert engine._sizes_kept
        return engine.count(queue, "live"), engine.count(queue, "waiting")
    finally:
        engine.close()


def test_qsize_reads_one_row_and_the_range_in_flight_not_the_queue():
    conn = sqlite3.connect(":memory:")
    for statement in S.CREATE_TABLES:
        conn.execute(statement)
    steps = [row[3] for row in conn.execute(
        "EXPLAIN QUERY PLAN " + S.KEPT_WAITING, {"queue": "q", "now": 1.0})]
    assert any("liteq_sizes USING PRIMARY KEY" in s for s in steps), steps
    assert any("liteq_messages_ready (queue=? AND visible_at>?)" in s for s in steps), steps
    assert not any(s.startswith("SCAN liteq_") for s in steps), steps


def test_every_kind_of_change_keeps_the_sizes_exact(db):
    q = LiteQueue(db, max_retries=1)
    try:
        ids = q.put_batch([b"%d" % i for i in range(10)])
        q.put(b"delayed", visible_after_seconds=3600)
        q.put(b"expires", ttl_seconds=0.000001)
        assert kept(db) == counted(db)
        m = q.pop()
        assert kept(db) == counted(db) == (11, 10)  # one in flight; the expired one counted nowhere
        q.ack(m)
        m = q.pop()
        q.engine.dead_letter(m.id, m.lease, "test")  # dead: not live
        assert kept(db) == counted(db) == (9, 9)
        assert q.engine.redrive("default") == 1
        assert kept(db) == counted(db) == (10, 10)
        q.delete(ids[-1])
        assert kept(db) == counted(db) == (9, 9)
        # The expired one is dropped when its turn comes: drain all ready.
        while q.pop_batch(max_messages=100):
            pass
        live, waiting = kept(db)
        assert (live, waiting) == counted(db) == (9, 1)  # 8 in flight, the delayed one
        assert q.engine.purge("default") == 9
        assert kept(db) == counted(db) == (0, 0)
        q.put(b"again")
        assert q.engine.delete_queue("default") == 1
        assert kept(db) == counted(db) == (0, 0)
    finally:
        q.close()


def test_a_message_past_its_retries_is_dead_and_no_longer_counted(db):
    engine = SQLiteEngine(db)
    try:
        engine.put("default", b"x")
        engine.put("default", b"y")
        assert len(engine.lease("default", 1, 0.0, max_attempts=1)) == 1  # back at once
        assert [m.data for m in engine.lease("default", 2, 60.0, max_attempts=1)] == [b"y"]
        assert engine.count("default", "dead") == 1
    finally:
        engine.close()
    assert kept(db) == counted(db) == (1, 0)


def _producer_consumer(path, n, start):
    start.wait()
    q = PersistentQueue(path)
    for i in range(n):
        q.put(i)
        if i % 3 == 0:
            q.get()
            q.task_done()
    q.close()
    os._exit(0)


def test_sizes_stay_exact_with_processes_writing_together(db, fork):
    PersistentQueue(db).close()
    start = fork.Barrier(3)
    procs = [fork.Process(target=_producer_consumer, args=(db, 300, start)) for _ in range(2)]
    for p in procs:
        p.start()
    start.wait()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert kept(db) == counted(db) == (400, 400)


def _killed_in_a_transaction(path, ready_w):
    engine = SQLiteEngine(path)
    with engine.transaction() as tx:
        for i in range(50):
            tx.put("default", b"%d" % i)
        os.write(ready_w, b"x")
        signal.pause()  # SIGKILLed here, before COMMIT


def test_a_process_killed_before_its_commit_changes_no_size(db, fork):
    q = PersistentQueue(db)
    q.put(1)
    q.close()
    ready_r, ready_w = os.pipe()
    proc = fork.Process(target=_killed_in_a_transaction, args=(db, ready_w))
    proc.start()
    assert os.read(ready_r, 1) == b"x"
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert kept(db) == counted(db) == (1, 1)


def test_a_file_without_kept_sizes_gets_them_counted_at_its_next_open(db):
    q = LiteQueue(db)
    q.put_batch([b"a", b"b", b"c"])
    q.put_batch([b"d"], qname="other")
    q.close()
    with sqlite3.connect(db) as conn:  # as a file of an older version
        for name in ("insert", "delete", "update"):
            conn.execute("DROP TRIGGER liteq_sizes_%s" % name)
        conn.execute("DROP TABLE liteq_sizes")
        conn.execute("INSERT INTO liteq_messages (queue, data, visible_at, created_at) "
                     "VALUES ('default', x'00', 0, 0)")  # written by the older version
    readonly = SQLiteEngine(db, readonly=True)
    try:
        assert not readonly._sizes_kept  # it counts, and creates nothing
        assert readonly.count("default") == 4
    finally:
        readonly.close()
    assert kept(db) == counted(db) == (4, 4)
    assert kept(db, "other") == counted(db, "other") == (1, 1)
    with sqlite3.connect(db) as conn:  # another program writes: triggers fire for it too
        conn.execute("DELETE FROM liteq_messages WHERE data = x'00'")
        conn.execute("UPDATE liteq_messages SET queue = 'other' WHERE data = x'61'")
    assert kept(db) == counted(db) == (2, 2)
    assert kept(db, "other") == counted(db, "other") == (2, 2)


def test_a_bounded_queue_counts_in_flight_messages_out(db):
    q = PersistentQueue(db, maxsize=2)
    try:
        q.put(1)
        q.put(2)
        assert q.full()
        with pytest.raises(Exception):
            q.put(3, block=False)
        q.get()
        assert q.qsize() == 1 and not q.full()
        q.put(3, block=False)
        assert q.full()
    finally:
        q.close()


def test_a_file_an_older_version_made_while_we_opened_it_gets_kept_sizes(db, monkeypatch):
    # Another process (an older version) makes the tables between our look
    # at the file and our transaction: we must not believe ours were made.
    older = SQLiteEngine(db)
    older.put("default", b"x")
    older.close()
    with sqlite3.connect(db) as conn:
        for name in ("insert", "delete", "update"):
            conn.execute("DROP TRIGGER liteq_sizes_%s" % name)
        conn.execute("DROP TABLE liteq_sizes")
    monkeypatch.setattr(SQLiteEngine, "_wal_and_schema_ready", lambda self, conn: False)
    engine = SQLiteEngine(db)
    try:
        assert engine._sizes_kept
        assert engine.count("default") == 1
        engine.put("default", b"y")
        assert engine.count("default") == 2
    finally:
        engine.close()
    assert counted(db) == (2, 2)
