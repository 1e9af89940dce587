"""Metrics: what this process did (``metrics()``) and the lasting totals of
every process (``counters()``), which ``stats`` shows with the recent rate."""

import json
import os
import subprocess
import sys

import pytest

from persistqueue_liteq import LiteQueue, PersistentQueue
from persistqueue_liteq.sqlite.engine import SQLiteEngine

from .conftest import run_child

NAMES = ("puts", "gets", "acks", "retries", "dead_lettered", "expired")


def counts(**given):
    return {name: given.get(name, 0) for name in NAMES}


def test_metrics_count_what_this_process_did(db, opened):
    q = opened(LiteQueue(db, max_retries=1))
    assert q.metrics() == {}
    q.put(b"a")
    q.put_batch([b"b", b"c"])
    q.put(b"gone", ttl_seconds=0)
    with q.transaction() as t:
        t.put(b"other", "mail")
    q.ack(q.pop())  # a: one get, one ack
    msg = q.pop()  # b fails twice: a retry, then the dead-letter queue
    q.process_failed(msg, "first")
    q.delete(q.pop().id)  # c, ahead of b now: taken out without an ack
    msg = q.pop()
    assert msg.data == b"b"
    q.process_failed(msg, "second")
    assert q.pop() is None  # "gone" expired unseen
    assert q.metrics() == {
        "default": counts(puts=4, gets=4, acks=1, retries=1, dead_lettered=1, expired=1),
        "mail": counts(puts=1),
    }


def test_counters_are_the_lasting_totals_of_every_process(db, fork, opened):
    """Children do the work and exit; their counts are in the file, and a
    child forked while its parent had unflushed counts does not count them
    twice."""
    parent = opened(LiteQueue(db))
    parent.put(b"parent")  # not yet flushed when the children fork

    def work():
        q = LiteQueue(db)
        for i in range(10):
            q.put(b"%d" % i)
        for _ in range(5):
            q.ack(q.pop())
        q.close()

    assert run_child(fork, work) == 0
    assert run_child(fork, work) == 0
    parent.close()
    with LiteQueue(db) as q:
        assert {k: v for k, v in q.counters()["default"].items() if k in NAMES} == counts(
            puts=21, gets=10, acks=10)
        assert q.metrics() == {}


def test_a_process_that_ends_without_close_loses_at_most_the_last_second(db, fork):
    """Counts are flushed while the engine works (at most once a second) and
    when it finds nothing to do; a process that exits without close() loses
    only what it did since."""

    def work():
        q = LiteQueue(db)
        q.put(b"x")
        q.ack(q.pop())
        assert q.pop() is None  # idle: flushes
        os._exit(0)

    assert run_child(fork, work) == 0
    with LiteQueue(db) as q:
        assert q.counters()["default"]["acks"] == 1


def test_persistent_queue_metrics(db):
    q = PersistentQueue(db)
    q.put("a")
    q.get()
    q.task_done()
    assert q.metrics() == counts(puts=1, gets=1, acks=1)
    q.close()


def test_a_read_only_engine_reads_the_counters_and_writes_nothing(db):
    with LiteQueue(db) as q:
        q.put(b"x")
    before = os.stat(db).st_mtime_ns
    engine = SQLiteEngine(db, readonly=True)
    assert engine.counters()["default"]["puts"] == 1
    assert engine.peek("default").data == b"x"
    engine.close()
    assert os.stat(db).st_mtime_ns == before


def test_stats_shows_the_recent_rate(db, tmp_path):
    with LiteQueue(db) as q:
        q.put_batch([b"%d" % i for i in range(30)], "jobs")
        for _ in range(30):
            q.ack(q.pop("jobs"))
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__)))
    out = subprocess.run([sys.executable, "-m", "persistqueue_liteq", "stats", db, "--json"],
                         capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    jobs = json.loads(out.stdout)["queues"]["jobs"]
    assert jobs["counters"] == counts(puts=30, gets=30, acks=30)
    window = jobs["throughput"]["window_seconds"]
    assert 0 < window <= 70
    assert jobs["throughput"]["acks_per_second"] == pytest.approx(30 / window)
    assert jobs["throughput"]["puts_per_second"] == pytest.approx(30 / window)
    table = subprocess.run([sys.executable, "-m", "persistqueue_liteq", "stats", db],
                           capture_output=True, text=True, env=env, timeout=30)
    assert table.returncode == 0, table.stderr
    assert "ACKS/S" in table.stdout.splitlines()[0]


def _forget_plan(engine):
    import sqlite3

    with sqlite3.connect(engine.location) as conn:
        return " ".join(row[3] for row in conn.execute(
            "EXPLAIN QUERY PLAN " + engine.sql.FORGET_ACTIVITY, (0,)))


def test_the_metrics_flush_prunes_old_activity_by_an_index(db):
    # A full scan of the activity table under the write lock grows with its
    # age: a million rows cost 28 ms a flush.
    engine = SQLiteEngine(db)
    try:
        plan = _forget_plan(engine)
        assert "activity_bucket" in plan and "SCAN" not in plan, plan
    finally:
        engine.close()


def test_a_file_without_the_activity_index_gets_it_and_prunes_only_old_buckets(db):
    import sqlite3

    from persistqueue_liteq.sqlite import sql

    SQLiteEngine(db).close()
    with sqlite3.connect(db) as conn:  # as a file of an older version
        conn.execute("DROP INDEX liteq_activity_bucket")
    engine = SQLiteEngine(db)
    try:
        assert "SCAN" not in _forget_plan(engine)
        now = int(engine.now() // sql.ACTIVITY_BUCKET * sql.ACTIVITY_BUCKET)
        old, recent = now - sql.ACTIVITY_KEPT - 10, now - sql.ACTIVITY_KEPT + 10
        with sqlite3.connect(db) as conn:
            conn.executemany("INSERT INTO liteq_activity VALUES ('q', 'puts', ?, 1)",
                             [(old,), (old - 10,), (recent,)])
        engine.put("q", b"x")
        engine.flush_metrics()
        with sqlite3.connect(db) as conn:
            buckets = sorted(b for (b,) in conn.execute(
                "SELECT bucket FROM liteq_activity WHERE queue = 'q'"))
        assert buckets == [recent, now] or buckets == [recent, now + sql.ACTIVITY_BUCKET]
    finally:
        engine.close()
