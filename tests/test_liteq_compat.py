"""What Liteq, sqqueue and LeanMQ users reach for, on LiteQueue (issue 15).

Liteq's whole documented signature, ids that round-trip through ``str()``,
Liteq's meaning of ``empty()``; expired messages counted nowhere; leases,
dead-lettering and acknowledgements by the batch; caller-chosen ids; queue
handles and queues that exist while empty.
"""

import logging
import sqlite3
import threading

import pytest

from persistqueue_liteq import DatabaseBusy, LiteQueue, wakeup


# -- Liteq's signature ----------------------------------------------------------

def test_liteq_documented_keywords_are_accepted(q):
    ids = [
        q.put(b"a", "default", 0, 5, 0.05),
        q.put(b"b", qname="default", visible_after_seconds=0, retries_on_conflict=5,
              pause_on_conflict=0.05),
    ]
    ids += q.put_batch([b"c", b"d"], "default", 0, 5, 0.05)
    ids += q.put_batch([b"e"], qname="default", retries_on_conflict=1, pause_on_conflict=0)
    got = [q.pop("default", 60, 0, 0.05), q.pop(qname="default", invisible_seconds=60,
                                                 wait_seconds=0, pause_on_empty_fetch=0.01)]
    got += q.pop_batch("default", 10, 60, 0, pause_on_empty_fetch=0.01)
    assert [m.id for m in got] == ids


@pytest.mark.parametrize("kw, match", [
    ({"retries_on_conflict": -1}, "retries_on_conflict must be at least 0"),
    ({"retries_on_conflict": 1.5}, "retries_on_conflict must be an int"),
    ({"pause_on_conflict": -0.1}, "pause_on_conflict must be non-negative"),
    ({"pause_on_conflict": float("nan")}, "pause_on_conflict must be a finite"),
])
def test_bad_conflict_keywords_are_refused_and_nothing_is_stored(q, kw, match):
    with pytest.raises((TypeError, ValueError), match=match):
        q.put(b"x", **kw)
    with pytest.raises((TypeError, ValueError), match=match):
        q.put_batch([b"x"], **kw)
    assert q.qsize() == 0


def test_bad_pause_on_empty_fetch_is_refused(q):
    for bad in (-1, 0, float("inf"), "1"):
        with pytest.raises((TypeError, ValueError), match="pause_on_empty_fetch must be"):
            q.pop(wait_seconds=1, pause_on_empty_fetch=bad)


def _hold_write_lock(db):
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def test_retries_on_conflict_retry_a_put_that_found_the_file_locked(db):
    q = LiteQueue(db, timeout_seconds=0.05)
    try:
        holder = _hold_write_lock(db)
        with pytest.raises(DatabaseBusy):
            q.put(b"x")  # no retries by default: DatabaseBusy after timeout_seconds
        retried = threading.Event()

        class OnRetry(logging.Handler):
            def emit(self, record):
                if "retrying" in record.getMessage():
                    retried.set()

        handler = OnRetry()
        logging.getLogger("persistqueue_liteq").addHandler(handler)
        try:
            def release_after_first_retry():
                retried.wait(30)
                holder.rollback()

            t = threading.Thread(target=release_after_first_retry)
            t.start()
            msg_id = q.put(b"x", retries_on_conflict=10000, pause_on_conflict=0.001)
            t.join()
        finally:
            logging.getLogger("persistqueue_liteq").removeHandler(handler)
        assert retried.is_set()
        assert q.get(msg_id).data == b"x"
        assert q.qsize() == 1  # stored once, whatever the retries
    finally:
        q.close()


def test_pause_on_empty_fetch_bounds_the_time_between_looks(q, db, monkeypatch):
    # A message written where no wake-up reaches us (another machine's
    # writer, a raw INSERT) is found within pause_on_empty_fetch.
    monkeypatch.setattr(wakeup, "SAFETY_INTERVAL", 60.0)
    engine = q.engine
    looks = threading.Semaphore(0)
    lease = engine.lease

    def counting_lease(*args, **kwargs):
        looks.release()
        return lease(*args, **kwargs)

    monkeypatch.setattr(engine, "lease", counting_lease)

    def insert_unannounced():
        looks.acquire(timeout=30)
        looks.acquire(timeout=30)  # the look made inside the waiter: it sleeps next
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("INSERT INTO liteq_messages (queue, data, visible_at, created_at) "
                     "VALUES ('default', x'6869', 0, 0)")
        conn.close()

    t = threading.Thread(target=insert_unannounced)
    t.start()
    msg = q.pop(wait_seconds=30, pause_on_empty_fetch=0.01)
    t.join()
    assert msg is not None and msg.data == b"hi"


# -- ids that round-trip through str() --------------------------------------------

def test_ids_round_trip_through_str(q):
    msg_id = q.put(b"x")
    assert q.get(str(msg_id)).data == b"x"
    assert q.delete(str(msg_id)) is True
    assert q.get(str(msg_id)) is None
    assert q.delete(str(msg_id)) is False


@pytest.mark.parametrize("bad", ["", "abc", "-1", "1.0", " 1", "1e3", "٣", "0x1"])
def test_a_str_that_is_not_an_id_is_a_clear_error(q, bad):
    q.put(b"keep")
    with pytest.raises(ValueError, match="message id"):
        q.delete(bad)
    with pytest.raises(ValueError, match="message id"):
        q.get(bad)
    assert q.qsize() == 1


def test_redrive_takes_str_ids(db, opened):
    q = opened(LiteQueue(db, max_retries=0))
    q.put(b"x")
    msg = q.pop()
    q.process_failed(msg, "boom")
    assert q.redrive(ids=[str(msg.id)]) == 1
    assert q.pop().id == msg.id


# -- empty() as Liteq means it -------------------------------------------------------

def test_empty_is_true_when_nothing_is_visible(q):
    q.put(b"later", visible_after_seconds=60)
    assert q.empty()  # Liteq: "True if the queue has no visible messages"
    assert q.qsize() == 1  # but it is there
    q.put(b"now")
    assert not q.empty()
    q.pop()
    assert q.empty()  # the one visible message is in flight
    assert q.qsize() == 2


# -- expired messages are counted nowhere ------------------------------------------

def _expired(q, qname="default"):
    """Wait for a 0.05-second TTL to pass, by the engine's own clock."""
    deadline = q.engine.now() + 0.06
    while q.engine.now() < deadline:
        threading.Event().wait(0.01)


def test_join_returns_once_the_last_message_expired(q):
    q.put(b"x", ttl_seconds=0.1)
    assert q.join(timeout=2) is True
    assert q.join(timeout=0) is True
    # A leased message past its TTL counts while its lease holds: its
    # holder may still acknowledge it.
    q.put(b"x", ttl_seconds=0.05)
    msg = q.pop(invisible_seconds=60)
    _expired(q)
    assert q.qsize() == 1
    assert q.join(timeout=0) is False
    assert q.ack(msg) is True
    assert q.join(timeout=0) is True


def test_counts_queues_and_stats_see_only_unexpired_messages(q):
    q.put(b"short", ttl_seconds=0.05)
    q.put(b"delayed short", visible_after_seconds=3600, ttl_seconds=0.05)
    q.put(b"long", ttl_seconds=3600)
    _expired(q)
    assert q.qsize() == 1
    (stats,) = [s for s in q.queues() if s.name == "default"]
    assert (stats.ready, stats.delayed, stats.in_flight, stats.dead) == (1, 0, 0, 0)
    assert [m.data for m in q.engine.messages("default")] == [b"long"]
    assert q.engine.count("default", "waiting") == 1
    assert q.engine.count("default", "ready") == 1


def test_expire_now_removes_expired_messages_and_counts_them(q):
    for qname in ("default", "other"):
        q.put(b"e1", qname=qname, ttl_seconds=0.05)
    q.put(b"e2", visible_after_seconds=3600, ttl_seconds=0.05)
    q.put(b"kept", ttl_seconds=3600)
    _expired(q)
    assert q.expire_now("default") == 2
    assert q.process_expired_messages() == 1  # LeanMQ's name; every queue
    assert q.expire_now() == 0
    assert [m.data for m in q.engine.messages("default")] == [b"kept"]
    assert q.metrics()["default"]["expired"] == 2
    assert q.metrics()["other"]["expired"] == 1
    q.engine.flush_metrics()
    assert q.counters()["default"]["expired"] == 2


def test_expire_now_leaves_a_held_lease_and_dead_letters_alone(db, opened):
    q = opened(LiteQueue(db, max_retries=0))
    q.put(b"held", ttl_seconds=0.05)
    q.put(b"dead", ttl_seconds=0.05)
    held = q.pop(invisible_seconds=60)
    dead = q.pop(invisible_seconds=60)
    q.process_failed(dead, "boom")
    _expired(q)
    assert q.expire_now() == 0
    assert q.ack(held) is True
    assert [m.data for m in q.dead_letters()] == [b"dead"]
