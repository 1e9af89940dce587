"""LiteQueue's API: Liteq's names and defaults, and what we add."""

import math
import os
import sqlite3
import threading

import pytest

from persistqueue_liteq import LiteQueue, Message


def test_liteq_readme_round_trip(q):
    msg_id = q.put(b"hello")
    msg = q.pop()
    assert isinstance(msg, Message)
    assert (msg.id, msg.data, msg.queue_name, msg.retry_count) == (msg_id, b"hello", "default", 0)
    assert msg.created_at > 0
    assert q.delete(msg.id) is True
    assert q.pop() is None
    assert q.empty()


def test_fifo_order_and_named_queues_are_separate(q):
    for i in range(5):
        q.put(b"a%d" % i, qname="a")
        q.put(b"b%d" % i, qname="b")
    assert [q.pop("a").data for _ in range(5)] == [b"a%d" % i for i in range(5)]
    assert q.qsize("b") == 5
    assert q.pop("a") is None


def test_put_batch_returns_ids_in_order_and_is_not_limited_to_50(q):
    ids = q.put_batch([b"%d" % i for i in range(1000)])
    assert len(ids) == 1000 and ids == sorted(ids) and len(set(ids)) == 1000
    got = q.pop_batch(max_messages=1000)
    assert [m.id for m in got] == ids
    assert [m.data for m in got][:3] == [b"0", b"1", b"2"]
    assert q.put_batch([]) == []


def test_put_batch_is_all_or_nothing(q):
    q.put(b"before")
    with pytest.raises(TypeError, match="bytes, not str"):
        q.put_batch([b"ok", b"ok", "not bytes", b"never"])
    assert q.qsize() == 1
    assert q.pop().data == b"before"


def test_put_batch_accepts_a_generator(q):
    ids = q.put_batch(b"%d" % i for i in range(3))
    assert [q.get(i).data for i in ids] == [b"0", b"1", b"2"]


def test_peek_does_not_lease(q):
    q.put(b"x")
    assert q.peek().data == b"x"
    assert q.peek().data == b"x"
    assert q.pop().data == b"x"
    assert q.peek() is None


def test_a_leased_message_is_invisible_until_its_lease_runs_out(q):
    q.put(b"x")
    first = q.pop(invisible_seconds=0.3)
    assert q.pop() is None
    again = q.pop(wait_seconds=10)  # woken when the lease runs out
    assert again.id == first.id
    assert (again.attempts, again.retry_count) == (2, 1)


def test_qsize_counts_ready_delayed_and_in_flight_like_liteq(q):
    q.put(b"ready")
    q.put(b"delayed", visible_after_seconds=60)
    q.put(b"leased")
    q.pop()
    assert q.qsize() == 3
    assert not q.empty()


def test_delayed_message_is_delivered_when_due(q):
    q.put(b"later", visible_after_seconds=0.3)
    assert q.pop() is None
    stats = q.queues()[0]
    assert (stats.ready, stats.delayed) == (0, 1)
    assert q.pop(wait_seconds=10).data == b"later"


def test_ack_needs_the_current_lease(q):
    q.put(b"x")
    first = q.pop(invisible_seconds=0)  # lease runs out at once
    second = q.pop()
    assert second.id == first.id
    assert q.ack(first) is False  # stale: it went to somebody else
    assert q.qsize() == 1
    assert q.ack(second) is True
    assert q.qsize() == 0


def test_ack_of_an_unleased_message_is_a_clear_error(q):
    q.put(b"x")
    with pytest.raises(ValueError, match="delivered by pop"):
        q.ack(q.peek())


def test_consume_acks_on_success(q):
    q.put(b"job")
    with q.consume() as msg:
        assert msg.data == b"job"
    assert q.empty()


def test_consume_yields_none_when_nothing_comes(q):
    with q.consume(wait_seconds=0) as msg:
        assert msg is None


def test_consume_records_a_failure_and_retries(q):
    q.put(b"job")
    with pytest.raises(ZeroDivisionError):
        with q.consume(wait_seconds=0):
            1 / 0
    again = q.pop()
    assert again.data == b"job" and again.attempts == 2
    assert "ZeroDivisionError" in again.last_error


def test_poison_message_goes_to_the_dead_letter_queue_with_its_reason(db):
    q = LiteQueue(db, max_retries=2)
    msg_id = q.put(b"poison")
    for attempt in range(3):  # the first delivery and two retries
        with pytest.raises(RuntimeError):
            with q.consume(wait_seconds=0) as msg:
                assert msg.attempts == attempt + 1
                raise RuntimeError("bad input %d" % attempt)
    assert q.pop() is None
    assert q.qsize() == 0
    (dead,) = q.dead_letters()
    assert dead.id == msg_id and dead.data == b"poison" and dead.attempts == 3
    assert "max_retries=2" in dead.dead_reason and "bad input 2" in dead.dead_reason
    assert "Traceback" in dead.last_error
    assert dead.dead_at >= dead.created_at
    assert q.counters()["default"]["dead_lettered"] == 1


def test_process_failed_really_records_the_failure(q):
    q.put(b"job")
    msg = q.pop()
    assert q.process_failed(msg, "upstream said 503", delay_seconds=0) is True
    again = q.pop()
    assert again.id == msg.id and again.last_error == "upstream said 503"
    assert again.retry_count == 1


def test_process_failed_with_a_delay_backs_off(q):
    q.put(b"job")
    q.process_failed(q.pop(), "later", delay_seconds=60)
    assert q.pop() is None
    assert q.queues()[0].delayed == 1


def test_unacknowledged_deliveries_also_exhaust_retries(db):
    q = LiteQueue(db, max_retries=1)
    q.put(b"x")
    q.pop(invisible_seconds=0)
    q.pop(invisible_seconds=0)
    assert q.pop() is None  # a third delivery would exceed max_retries=1
    (dead,) = q.dead_letters()
    assert "not acknowledged after 2 deliveries" in dead.dead_reason


def test_redrive_keeps_the_original_id(db):
    q = LiteQueue(db, max_retries=0)
    ids = q.put_batch([b"a", b"b"])
    for _ in ids:
        q.process_failed(q.pop(), "boom")
    assert [d.id for d in q.dead_letters()] == ids
    assert q.redrive(ids=[ids[1]]) == 1
    msg = q.pop()
    assert (msg.id, msg.attempts) == (ids[1], 1)
    assert q.redrive() == 1
    assert q.pop().id == ids[0]
    assert q.dead_letters() == []


def test_clear_live_and_dead(db):
    q = LiteQueue(db, max_retries=0)
    q.put_batch([b"1", b"2", b"3"])
    q.process_failed(q.pop(), "x")
    assert q.clear() == 2
    assert q.clear(dlq=True) == 1
    # Emptied, the queue still exists (issue 15): only delete_queue ends it.
    assert [(s.name, s.live, s.dead) for s in q.queues()] == [("default", 0, 0)]


def test_change_visibility_extends_or_ends_a_lease(q):
    q.put(b"x")
    msg = q.pop(invisible_seconds=0.2)
    assert q.change_visibility(msg, 60) is True
    assert q.queues()[0].in_flight == 1
    assert q.change_visibility(msg, 0) is True
    assert q.pop().id == msg.id


def test_release_with_a_delay(q):
    q.put(b"x")
    msg = q.pop()
    assert q.release(msg, delay_seconds=60) is True
    assert q.pop() is None
    assert q.release(msg) is False  # no longer leased


def test_pop_batch_leases_up_to_n_at_once(q):
    q.put_batch([b"%d" % i for i in range(5)])
    batch = q.pop_batch(max_messages=3)
    assert [m.data for m in batch] == [b"0", b"1", b"2"]
    assert len({m.lease for m in batch}) == 1
    assert len(q.pop_batch(max_messages=3)) == 2
    assert q.pop_batch() == []


def test_expired_messages_are_never_delivered_and_are_counted(q):
    q.put(b"stale", ttl_seconds=0)
    q.put(b"fresh", ttl_seconds=60)
    assert q.pop().data == b"fresh"
    assert q.pop() is None
    assert q.counters()["default"]["expired"] == 1


def test_transaction_across_queues_commits_together(q):
    with q.transaction() as tx:
        tx.put(b"debit", qname="ledger")
        tx.put_batch([b"audit1", b"audit2"], qname="audit")
    assert (q.qsize("ledger"), q.qsize("audit")) == (1, 2)


def test_transaction_that_raises_stores_nothing(q):
    with pytest.raises(KeyError):
        with q.transaction() as tx:
            tx.put(b"debit", qname="ledger")
            tx.put(b"audit", qname="audit")
            raise KeyError("abort")
    assert q.queues() == []


def test_inventory_purge_and_delete_queue(q):
    q.put(b"r", qname="a")
    q.put(b"d", qname="a", visible_after_seconds=60)
    q.put(b"f", qname="a")
    q.pop("a")
    q.put(b"b", qname="b")
    stats = {s.name: s for s in q.queues()}
    a = stats["a"]
    assert (a.ready, a.delayed, a.in_flight, a.dead, a.live) == (1, 1, 1, 0, 3)
    assert a.oldest_created_at <= stats["b"].oldest_created_at
    assert q.purge("b") == 1
    assert q.delete_queue("a") == 3
    assert [(s.name, s.live) for s in q.queues()] == [("b", 0)]  # emptied, not deleted
    assert q.delete_queue("b") == 0
    assert q.queues() == []


def test_join_returns_when_every_message_is_done(q):
    q.put_batch([b"1", b"2"])
    assert q.join(timeout=0) is False
    done = threading.Event()

    def consumer():
        for _ in range(2):
            with q.consume(wait_seconds=10):
                pass
        done.set()

    thread = threading.Thread(target=consumer)
    thread.start()
    assert q.join(timeout=30) is True
    thread.join()
    assert done.is_set()


def test_get_and_delete_by_message(q):
    msg_id = q.put(b"x")
    assert q.get(msg_id).data == b"x"
    assert q.delete(q.get(msg_id)) is True
    assert q.get(msg_id) is None
    assert q.delete(msg_id) is False


def test_ids_are_never_reused(q):
    first = q.put(b"x")
    q.delete(first)
    assert q.put(b"y") > first


def test_messages_survive_reopening(db):
    with LiteQueue(db) as q:
        q.put(b"persisted")
    with LiteQueue(db) as q:
        assert q.pop().data == b"persisted"


def test_default_path_from_the_environment(db, monkeypatch):
    monkeypatch.setenv("PERSISTQUEUE_LITEQ_DB", db)
    LiteQueue().put(b"x")
    assert LiteQueue(db).qsize() == 1


def test_no_path_and_no_environment_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("PERSISTQUEUE_LITEQ_DB", raising=False)
    with pytest.raises(TypeError, match="PERSISTQUEUE_LITEQ_DB"):
        LiteQueue()


def test_queue_lives_inside_an_application_database(db):
    app = sqlite3.connect(db)
    app.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    app.execute("INSERT INTO users (name) VALUES ('ada')")
    app.commit()
    # Issue 15: the application's file is switched to WAL mode only when asked
    # (test_app_database.py has the refusal and journal_mode="keep").
    q = LiteQueue(db, table_prefix="myapp_queue_", journal_mode="wal")
    q.put(b"welcome ada")
    other = LiteQueue(db, table_prefix="other_")
    assert other.qsize() == 0
    assert app.execute("SELECT name FROM users").fetchall() == [("ada",)]
    tables = {r[0] for r in app.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"users", "myapp_queue_messages", "other_messages"} <= tables
    assert q.pop().data == b"welcome ada"


def test_full_durability_option(db):
    q = LiteQueue(db, synchronous="FULL")
    q.put(b"x")
    conn = q.engine._conns.get()
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert LiteQueue(db).engine._conns.get().execute("PRAGMA synchronous").fetchone()[0] == 1


def test_file_is_in_wal_mode(q, db):
    q.put(b"x")
    conn = sqlite3.connect(db)  # WAL mode is the file's, seen by every connection
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def pages(path):
    """(page_count, freelist_count) of the file, as another connection sees it."""
    conn = sqlite3.connect(path)
    try:
        return tuple(conn.execute("PRAGMA %s" % pragma).fetchone()[0]
                     for pragma in ("page_count", "freelist_count"))
    finally:
        conn.close()


def test_checkpoint_and_vacuum(q, db):
    """After many puts and acks, vacuum gives the freed pages back (the file
    shrinks) and keeps every live message as it was: ready, delayed, leased."""
    q.put_batch([b"kept %d" % i for i in range(3)], "kept")
    q.put(b"delayed", "kept", visible_after_seconds=3600)
    assert q.pop("kept", invisible_seconds=600).data == b"kept 0"
    q.put_batch([os.urandom(1000) for _ in range(2000)])
    while True:
        msgs = q.pop_batch(max_messages=500)
        if not msgs:
            break
        assert q.ack_batch(msgs) == len(msgs)
    kept = q.engine.snapshot("kept")
    assert len(kept) == 4
    busy, _, _ = q.checkpoint()
    assert busy == 0
    page_count, free = pages(db)
    size = os.path.getsize(db)
    assert free > 400  # the 2 MB acked
    q.vacuum()
    q.checkpoint()
    after, free_after = pages(db)
    assert free_after == 0 and after <= page_count - free
    assert os.path.getsize(db) < size / 2
    assert q.engine.snapshot("kept") == kept
    assert q.integrity_check() == ["ok"]


def test_file_stays_bounded_under_steady_traffic(db):
    """40 MB pass through; the file and its WAL stay a small fraction of it."""
    import os

    q = LiteQueue(db)
    payload = b"x" * 4096
    for _ in range(10):
        q.put_batch([payload] * 1000)
        while True:
            batch = q.pop_batch(max_messages=250)
            if not batch:
                break
            for msg in batch:
                q.ack(msg)
    size = sum(os.path.getsize(p) for p in (db, db + "-wal") if os.path.exists(p))
    assert size < 20 * 2**20, size


def test_nan_and_infinity_are_refused(q):
    for bad in (math.nan, math.inf, -1):
        with pytest.raises(ValueError, match="visible_after_seconds"):
            q.put(b"x", visible_after_seconds=bad)
        with pytest.raises(ValueError, match="invisible_seconds"):
            q.pop(invisible_seconds=bad)
        with pytest.raises(ValueError, match="wait_seconds"):
            q.pop(wait_seconds=bad)
    assert q.qsize() == 0


def test_a_relative_path_means_the_same_file_after_chdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    q = LiteQueue("jobs.db")
    q.put(b"x")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    got = []
    thread = threading.Thread(target=lambda: got.append(q.pop()))  # a new connection
    thread.start()
    thread.join()
    assert got[0].data == b"x"
    assert not (tmp_path / "elsewhere" / "jobs.db").exists()
