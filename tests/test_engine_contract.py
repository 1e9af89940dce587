"""The engine contract: what every backend's Engine must do, tested on the
engine itself rather than through a front end.

One class, run against every backend that conftest's ``location`` fixture knows (huey runs
one storage test class against each of its backends the same way).  The
front ends' own suites test argument checking and the stdlib's contracts;
this one tests storage semantics: leases and their tokens, attempts, delays,
TTLs, dead letters, redrive, transactions, keyed tasks and their results.

No test here sleeps to synchronise: a lease of 0 seconds has run out by the
next call, and the few that need time to pass (a delay, a TTL) wait for a
bounded deadline on the condition itself.
"""

import time

import pytest

from persistqueue_liteq.backends import open_engine
from persistqueue_liteq.engine import Engine, Maintenance, QueueStats, StorageSizes, maintenance_of
from persistqueue_liteq.exceptions import LiteQueueError, Unsupported


@pytest.fixture
def engine(location):
    """An engine of each backend (conftest's ``location``)."""
    engine = open_engine(location)
    yield engine
    engine.close()


def wait_until(predicate, timeout=10.0):
    """Poll ``predicate`` until it is true or ``timeout`` passes (for the
    passing of time itself: a delay or a TTL running out)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met within %gs" % timeout
        time.sleep(0.005)


def lease_one(engine, queue="q", seconds=30.0, **kw):
    leased = engine.lease(queue, 1, seconds, **kw)
    assert len(leased) == 1, leased
    return leased[0]


def test_it_is_an_engine(engine):
    assert isinstance(engine, Engine)
    assert isinstance(engine.location, str)


# -- producing and leasing ------------------------------------------------------

def test_put_then_lease_delivers_the_payload_once(engine):
    msg_id = engine.put("q", b"payload")
    msg = lease_one(engine)
    assert (msg.id, msg.data, msg.queue_name, msg.attempts, msg.retry_count) == (
        msg_id, b"payload", "q", 1, 0)
    assert msg.lease is not None
    assert engine.lease("q", 1, 30.0) == []  # hidden while the lease holds


def test_queues_are_separate(engine):
    engine.put("a", b"1")
    assert engine.lease("b", 10, 30.0) == []
    assert [m.data for m in engine.lease("a", 10, 30.0)] == [b"1"]


def test_fifo_lifo_and_priority_orders(engine):
    for data in (b"1", b"2", b"3"):
        engine.put("fifo", data)
        engine.put("lifo", data)
    assert [m.data for m in engine.lease("fifo", 3, 30.0)] == [b"1", b"2", b"3"]
    assert [m.data for m in engine.lease("lifo", 3, 30.0, order="lifo")] == [b"3", b"2", b"1"]
    for data, priority in ((b"low", b"\x09"), (b"high", b"\x01"), (b"mid", b"\x05")):
        engine.put("prio", data, priority=priority)
    assert [m.data for m in engine.lease("prio", 3, 30.0, order="priority")] == [
        b"high", b"mid", b"low"]


def test_lease_takes_at_most_n(engine):
    engine.put_many("q", [b"%d" % i for i in range(5)])
    assert len(engine.lease("q", 2, 30.0)) == 2
    assert len(engine.lease("q", 10, 30.0)) == 3
    assert engine.lease("q", 10, 30.0) == []


def test_put_many_returns_ids_in_order_and_is_all_or_nothing(engine):
    ids = engine.put_many("q", [b"a", b"b", b"c"])
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert [engine.get(i).data for i in ids] == [b"a", b"b", b"c"]

    def failing():
        yield b"x"
        raise RuntimeError("the producer's iterable failed")

    with pytest.raises(RuntimeError):
        engine.put_many("other", failing())
    assert engine.count("other") == 0
    assert engine.put_many("q", []) == []


def test_transaction_commits_to_several_queues_together_or_not_at_all(engine):
    with engine.transaction() as tx:
        tx.put("a", b"1")
        tx.put_many("b", [b"2", b"3"])
    assert (engine.count("a"), engine.count("b")) == (1, 2)
    with pytest.raises(KeyError):
        with engine.transaction() as tx:
            tx.put("a", b"4")
            tx.put("c", b"5")
            raise KeyError("abort")
    assert (engine.count("a"), engine.count("c")) == (1, 0)


# -- settling ---------------------------------------------------------------------

def test_ack_needs_the_current_lease(engine):
    engine.put("q", b"x")
    msg = lease_one(engine)
    assert not engine.ack(msg.id, msg.lease + 1)
    assert engine.count("q") == 1
    assert engine.ack(msg.id, msg.lease)
    assert engine.count("q") == 0
    assert not engine.ack(msg.id, msg.lease)  # once


def test_ack_given_the_queue_deletes_only_a_message_of_that_queue(engine):
    engine.put("q", b"x")
    msg = lease_one(engine)
    assert not engine.ack(msg.id, msg.lease, "other")  # not its queue: nothing
    assert engine.count("q") == 1
    assert not engine.ack(msg.id, msg.lease + 1, "q")
    assert engine.ack(msg.id, msg.lease, "q")
    assert engine.count("q") == 0
    assert not engine.ack(msg.id, msg.lease, "q")  # once
    assert engine.metrics()["q"]["acks"] == 1


def test_an_ack_given_the_queue_wakes_the_waiters_of_that_queue(engine):
    engine.put("q", b"x")
    msg = lease_one(engine)
    with engine.waiter("done", "q") as waiter:
        assert engine.ack(msg.id, msg.lease, "q")
        assert waiter.wait(10.0)


def test_a_lease_that_ran_out_is_delivered_again_with_a_new_token(engine):
    engine.put("q", b"x")
    first = lease_one(engine, seconds=0)
    second = lease_one(engine)
    assert second.id == first.id and second.lease != first.lease
    assert (second.attempts, second.retry_count) == (2, 1)
    assert not engine.ack(first.id, first.lease)  # the old holder lost it
    assert engine.ack(second.id, second.lease)


def test_set_visibility_extends_or_ends_a_lease(engine):
    engine.put("q", b"x")
    msg = lease_one(engine, seconds=0)
    assert engine.set_visibility(msg.id, msg.lease, 30.0)  # extended before anyone took it
    assert engine.lease("q", 1, 30.0) == []
    assert not engine.set_visibility(msg.id, msg.lease + 1, 0)
    assert engine.set_visibility(msg.id, msg.lease, 0)  # ended now: ready again
    assert lease_one(engine).id == msg.id


def test_release_counts_an_attempt_unless_told_otherwise(engine):
    engine.put("q", b"x")
    msg = lease_one(engine)
    assert engine.release(msg.id, msg.lease, error="boom")
    msg = lease_one(engine)
    assert (msg.attempts, msg.last_error) == (2, "boom")
    assert engine.release(msg.id, msg.lease, attempted=False)
    assert lease_one(engine).attempts == 2
    assert not engine.release(msg.id, msg.lease)  # that lease is over


def test_release_with_a_delay_hides_the_message_until_then(engine):
    engine.put("q", b"x")
    msg = lease_one(engine)
    assert engine.release(msg.id, msg.lease, delay=30.0)
    assert engine.lease("q", 1, 30.0) == []
    assert engine.count("q", "ready") == 0 and engine.count("q", "live") == 1
    assert engine.next_visible_at("q") is not None


def test_delete_and_delete_unleased(engine):
    a, b = engine.put("q", b"a"), engine.put("q", b"b")
    held = lease_one(engine)
    assert held.id == a
    assert not engine.delete_unleased(a)  # somebody holds it
    assert engine.delete_unleased(b)
    assert engine.delete(a)
    assert not engine.delete(a)
    assert engine.count("q") == 0


# -- time: delays and TTLs ---------------------------------------------------------

def test_a_delayed_message_is_delivered_once_its_delay_ends(engine):
    engine.put("q", b"later", delay=0.2)
    assert engine.lease("q", 1, 30.0) == []
    due = engine.next_visible_at("q")
    assert due is not None
    assert engine.count("q", "live") == 1 and engine.count("q", "ready") == 0
    got = []
    wait_until(lambda: got.extend(engine.lease("q", 1, 30.0)) or got)
    assert got[0].data == b"later"


def test_a_message_past_its_ttl_is_dropped_and_counted_expired(engine):
    engine.put("q", b"short", ttl=0.05)
    engine.put("q", b"long", ttl=3600)
    wait_until(lambda: engine.peek("q") is None or engine.peek("q").data == b"long")
    leased = engine.lease("q", 10, 30.0)
    assert [m.data for m in leased] == [b"long"]
    engine.flush_metrics()
    assert engine.counters()["q"]["expired"] == 1


# -- dead letters ---------------------------------------------------------------------

def test_max_attempts_sends_a_message_to_the_dead_letter_queue(engine):
    engine.put("q", b"poison")
    for _ in range(2):
        lease_one(engine, seconds=0, max_attempts=2)
    assert engine.lease("q", 1, 30.0, max_attempts=2) == []
    dead = engine.dead_letters("q")
    assert [m.data for m in dead] == [b"poison"]
    assert "2 deliveries" in dead[0].dead_reason and dead[0].dead_at is not None
    assert engine.count("q", "dead") == 1 and engine.count("q", "live") == 0


def test_dead_letter_keeps_reason_and_error_and_redrive_keeps_the_id(engine):
    msg_id = engine.put("q", b"x")
    msg = lease_one(engine)
    assert not engine.dead_letter(msg.id, msg.lease + 1, "wrong lease")
    assert engine.dead_letter(msg.id, msg.lease, "bad input", error="Traceback ...")
    (dead,) = engine.dead_letters("q")
    assert (dead.id, dead.dead_reason, dead.last_error) == (msg_id, "bad input", "Traceback ...")
    assert engine.redrive("q") == 1
    again = lease_one(engine)
    assert (again.id, again.attempts, again.dead_reason) == (msg_id, 1, None)


def test_redrive_by_ids_and_dead_letters_limit(engine):
    ids = engine.put_many("q", [b"a", b"b", b"c"])
    for msg in engine.lease("q", 3, 30.0):
        engine.dead_letter(msg.id, msg.lease, "r")
    assert [m.id for m in engine.dead_letters("q", limit=2)] == ids[:2]
    assert engine.redrive("q", [ids[1]]) == 1
    assert [m.id for m in engine.dead_letters("q")] == [ids[0], ids[2]]
    assert engine.redrive("q", [ids[1]]) == 0  # not dead any more


# -- inspecting and operating ----------------------------------------------------------

def test_peek_and_peek_many_do_not_lease(engine):
    engine.put_many("q", [b"a", b"b"])
    assert engine.peek("q").data == b"a"
    assert [m.data for m in engine.peek_many("q", 5)] == [b"a", b"b"]
    assert len(engine.lease("q", 5, 30.0)) == 2
    assert engine.peek("q") is None


def test_messages_pages_through_live_messages_in_id_order(engine):
    ids = engine.put_many("q", [b"%d" % i for i in range(5)])
    first = engine.messages("q", limit=2)
    assert [m.id for m in first] == ids[:2]
    rest = engine.messages("q", after_id=first[-1].id)
    assert [m.id for m in rest] == ids[2:]


def test_get_finds_a_message_in_any_state(engine):
    msg_id = engine.put("q", b"x")
    assert engine.get(msg_id).data == b"x"
    msg = lease_one(engine)
    assert engine.get(msg_id).visible_at is not None
    engine.dead_letter(msg.id, msg.lease, "r")
    assert engine.get(msg_id).dead_reason == "r"
    assert engine.get(msg_id + 1000) is None


def test_counts_and_queue_stats(engine):
    engine.put_many("q", [b"ready1", b"ready2", b"flight", b"dead"])
    engine.put("q", b"delayed", delay=3600)
    leased = engine.lease("q", 2, 30.0)  # ready1, ready2
    engine.dead_letter(leased[1].id, leased[1].lease, "r")
    assert engine.count("q", "live") == 4
    assert engine.count("q", "ready") == 2
    assert engine.count("q", "waiting") == 3
    assert engine.count("q", "dead") == 1
    assert engine.has_live("q") and not engine.has_live("nothing")
    (stats,) = [s for s in engine.queues() if s.name == "q"]
    assert isinstance(stats, QueueStats)
    assert (stats.ready, stats.delayed, stats.in_flight, stats.dead, stats.live) == (2, 1, 1, 1, 4)
    assert stats.oldest_created_at is not None


def test_purge_and_delete_queue(engine):
    engine.put_many("q", [b"a", b"b", b"c"])
    msg = lease_one(engine)
    engine.dead_letter(msg.id, msg.lease, "r")
    engine.put("other", b"kept")
    assert engine.purge("q") == 2
    assert engine.count("q", "dead") == 1
    assert engine.purge("q", dead=True) == 1
    engine.put_many("q", [b"d", b"e"])
    assert engine.delete_queue("q") == 2
    assert engine.count("q") == 0 and engine.count("other") == 1


def test_metrics_count_what_this_engine_did(engine):
    engine.put_many("q", [b"a", b"b"])
    msg = lease_one(engine)
    engine.ack(msg.id, msg.lease)
    counts = engine.metrics()["q"]
    assert (counts["puts"], counts["gets"], counts["acks"]) == (2, 1, 1)
    engine.flush_metrics()
    assert engine.counters()["q"]["puts"] == 2


# -- keyed messages and results (the pools' tasks) -------------------------------------

def test_put_keyed_stores_each_key_once(engine):
    (status, first), = engine.put_keyed("tasks", [("k1", b"call")])
    assert status == "new"
    statuses = engine.put_keyed("tasks", [("k1", b"call"), ("k2", b"other")])
    assert statuses[0] == ("queued", first)
    assert statuses[1][0] == "new"
    assert engine.count("tasks") == 2


def test_complete_stores_the_result_and_settles_the_task(engine):
    engine.put_keyed("tasks", [("k", b"call")])
    msg = lease_one(engine, "tasks")
    assert msg.key == "k"
    assert engine.complete(msg.id, msg.lease, msg.key, True, b"result")
    assert engine.result("tasks", "k") == (True, b"result")
    assert engine.count("tasks") == 0
    assert engine.put_keyed("tasks", [("k", b"call")]) == [("done", None)]
    assert engine.forget_results("tasks", "k") == 1
    assert engine.result("tasks", "k") is None
    assert engine.put_keyed("tasks", [("k", b"call")])[0][0] == "new"


def test_complete_with_a_dead_reason_dead_letters_and_a_forgotten_failure_runs_again(engine):
    engine.put_keyed("tasks", [("k", b"call")])
    msg = lease_one(engine, "tasks")
    assert engine.complete(msg.id, msg.lease, msg.key, False, b"exc", dead_reason="it failed")
    assert engine.result("tasks", "k") == (False, b"exc")
    assert [m.dead_reason for m in engine.dead_letters("tasks")] == ["it failed"]
    engine.forget_results("tasks", "k")
    (status, msg_id), = engine.put_keyed("tasks", [("k", b"call again")])
    assert (status, msg_id) == ("new", msg.id)
    again = lease_one(engine, "tasks")
    assert (again.data, again.attempts) == (b"call again", 1)


def test_complete_stores_the_outcome_even_when_the_lease_was_lost(engine):
    engine.put_keyed("tasks", [("k", b"call")])
    stale = lease_one(engine, "tasks", seconds=0)
    current = lease_one(engine, "tasks")
    assert not engine.complete(stale.id, stale.lease, stale.key, True, b"late")
    assert engine.result("tasks", "k") == (True, b"late")
    assert engine.ack(current.id, current.lease)


def test_results_since_follows_outcomes_in_order(engine):
    start = engine.last_result_seq()
    engine.put_keyed("tasks", [("a", b"1"), ("b", b"2")])
    for msg in engine.lease("tasks", 2, 30.0):
        engine.complete(msg.id, msg.lease, msg.key, True, msg.data)
    rows = engine.results_since("tasks", start)
    assert [(key, ok, data) for _, key, ok, data in rows] == [("a", True, b"1"), ("b", True, b"2")]
    assert rows[0][0] < rows[1][0] == engine.last_result_seq()
    assert engine.results_since("tasks", rows[-1][0]) == []


def test_complete_many_stores_outcomes_and_leases_the_next_batch_in_one_call(engine):
    engine.put_keyed("tasks", [("a", b"1"), ("b", b"2"), ("c", b"3")])
    first = engine.complete_many("tasks", [], lease=1, seconds=30.0)
    assert [m.key for m in first] == ["a"]
    outcomes = [(m.id, m.lease, m.key, True, b"done " + m.data) for m in first]
    nxt = engine.complete_many("tasks", outcomes, lease=5, seconds=30.0)
    assert [m.key for m in nxt] == ["b", "c"]
    assert len({m.lease for m in nxt}) == 1
    assert engine.result("tasks", "a") == (True, b"done 1")
    assert engine.count("tasks") == 2


def test_complete_many_settles_each_outcome_as_complete_does_in_the_order_given(engine):
    """Thirteen outcomes (more than any one statement takes at once on some
    backends), with a failure for good among them, one whose lease was lost
    and one whose message is gone."""
    start = engine.last_result_seq()
    keys = ["k%02d" % i for i in range(16)]
    engine.put_keyed("tasks", [(k, k.encode()) for k in keys])
    held = engine.lease("tasks", 16, 30.0)
    assert [m.key for m in held] == keys
    stale, gone, waiting = held[3], held[5], held[13:]
    engine.release(stale.id, stale.lease)
    assert engine.delete(gone.id)
    relet = lease_one(engine, "tasks")
    assert relet.id == stale.id
    order = held[:13][::-1]  # not the order of their ids
    outcomes = [(m.id, m.lease, m.key, True, b"done " + m.data) for m in order]
    outcomes[6] += ("poison", "its traceback")  # held[6]: fails for good
    engine.complete_many("tasks", outcomes)
    stored = [m.key for m in order if m is not gone]
    assert [key for _, key, _, _ in engine.results_since("tasks", start)] == stored
    assert engine.result("tasks", stale.key) == (True, b"done " + stale.key.encode())
    assert engine.result("tasks", gone.key) is None
    (dead,) = engine.dead_letters("tasks")
    assert (dead.id, dead.dead_reason) == (held[6].id, "poison")
    # Left: the message whose lease was lost (its new holder acks it), and
    # the three never completed.
    assert engine.count("tasks", "live") == 1 + len(waiting)
    assert engine.ack(relet.id, relet.lease)


# -- waiting ------------------------------------------------------------------------------

def test_a_waiter_entered_before_a_put_is_woken_by_it(engine):
    with engine.waiter("put", "q") as waiter:
        engine.put("q", b"x")
        assert waiter.wait(10.0) is True


def test_wake_wakes_a_waiter_without_a_change(engine):
    with engine.waiter("done", "q") as waiter:
        engine.wake("done", "q")
        assert waiter.wait(10.0) is True


# -- snapshot and restore: what export and import are made of ------------------------------

def _filled_for_snapshot(engine):
    """q: 1 ready, 2 delayed, 3 in flight, 4 dead (with a reason), 5 with a TTL."""
    engine.put("q", b"ready")
    engine.put("q", b"delayed", delay=600)
    engine.put("q", b"held")
    engine.put("q", b"doomed")
    engine.put("q", b"ttl", ttl=900, priority=b"\x01")
    held = {m.data: m for m in engine.lease("q", 5, 300.0)}
    engine.release(held[b"ready"].id, held[b"ready"].lease)
    engine.release(held[b"ttl"].id, held[b"ttl"].lease, error="flaky")
    engine.dead_letter(held[b"doomed"].id, held[b"doomed"].lease, "poison", error="trace")
    return held


def test_snapshot_shows_every_message_with_its_state(engine):
    held = _filled_for_snapshot(engine)
    engine.put("other", b"elsewhere")
    snap = engine.snapshot("q")
    assert [m.data for m in snap] == [b"ready", b"delayed", b"held", b"doomed", b"ttl"]
    by = {m.data: m for m in snap}
    assert by[b"held"].lease == held[b"held"].lease
    assert [by[d].lease for d in (b"ready", b"delayed", b"doomed", b"ttl")] == [None] * 4
    assert by[b"doomed"].visible_at is None and by[b"doomed"].dead_reason == "poison"
    assert by[b"ttl"].last_error == "flaky" and by[b"ttl"].priority == b"\x01"
    assert [m.data for m in engine.snapshot("q", after_id=by[b"held"].id, limit=1)] == [b"doomed"]


def test_restore_keeps_state_attempts_delays_ttls_and_dead_letters(engine):
    _filled_for_snapshot(engine)
    snap = engine.snapshot("q")
    now = engine.now()
    ids = engine.restore("copy", snap)
    assert len(ids) == 5 and ids == sorted(ids) and not set(ids) & {m.id for m in snap}
    copy = {m.data: m for m in engine.snapshot("copy")}
    for old in snap:
        new = copy[old.data]
        assert (new.attempts, new.created_at, new.expires_at, new.last_error, new.priority,
                new.key, new.lease) == (old.attempts, old.created_at, old.expires_at,
                                        old.last_error, old.priority, old.key, None)
    assert copy[b"delayed"].visible_at == snap[1].visible_at  # still delayed
    assert copy[b"held"].visible_at <= engine.now()  # in flight there, ready here
    (dead,) = engine.dead_letters("copy")
    assert (dead.data, dead.dead_reason, dead.last_error, dead.dead_at) == (
        b"doomed", "poison", "trace", snap[3].dead_at)
    stats = {s.name: s for s in engine.queues()}["copy"]
    assert (stats.ready, stats.delayed, stats.in_flight, stats.dead) == (3, 1, 0, 1)
    assert engine.next_visible_at("copy") >= now + 500
    assert engine.metrics().get("copy", {}).get("puts", 0) == 0  # not counted as puts


def test_restore_is_all_or_nothing_and_refuses_a_live_key(engine):
    engine.put_keyed("q", [("k1", b"a")])
    snap = engine.snapshot("q")
    engine.put("q2", b"first")
    before = [m.data for m in engine.snapshot("q")]
    with pytest.raises(ValueError, match="nothing was stored"):
        engine.restore("q", [engine.snapshot("q2")[0]] + snap)
    assert [m.data for m in engine.snapshot("q")] == before


def test_lease_id_leases_that_message_only_if_it_is_ready(engine):
    first = engine.put("q", b"a")
    second = engine.put("q", b"b")
    later = engine.put("q", b"later", delay=600)
    expired = engine.put("q", b"gone", ttl=0.001)
    other = engine.put("other", b"x")
    wait_until(lambda: engine.now() > engine.get(expired).expires_at)
    msg = engine.lease_id("q", second, 30.0)
    assert (msg.id, msg.data, msg.attempts) == (second, b"b", 1) and msg.lease is not None
    assert engine.lease_id("q", second, 30.0) is None  # in flight now
    assert engine.lease_id("q", later, 30.0) is None  # delayed
    assert engine.lease_id("q", expired, 30.0) is None  # past its TTL
    assert engine.lease_id("q", other, 30.0) is None  # another queue's
    assert engine.lease_id("q", 10 ** 6, 30.0) is None
    assert [m.id for m in engine.lease("q", 5, 30.0)] == [first]
    assert engine.ack(msg.id, msg.lease)


class _AppConnection:
    """The application's own connection to the engine's database, with its
    transactions: what put_on joins."""

    def __init__(self, engine):
        self.scheme = engine.spec.scheme
        if self.scheme == "sqlite":
            import sqlite3

            self.conn = sqlite3.connect(engine.location, isolation_level=None)
        else:
            import psycopg

            self.conn = psycopg.connect(engine.spec.location)

    def begin(self):
        if self.scheme == "sqlite":
            self.conn.execute("BEGIN IMMEDIATE")
        # (psycopg opens a transaction at the first statement)

    def commit(self):
        if self.scheme == "sqlite":
            self.conn.execute("COMMIT")
        else:
            self.conn.commit()

    def rollback(self):
        if self.scheme == "sqlite":
            self.conn.execute("ROLLBACK")
        else:
            self.conn.rollback()


def test_put_on_joins_the_applications_transaction(engine):
    app = _AppConnection(engine)
    conn = app.conn
    try:
        app.begin()
        msg_id = engine.put_on(conn, "q", b"outbox", codec=None)
        app.rollback()
        assert engine.get(msg_id) is None
        app.begin()
        msg_id, held = engine.put_on(conn, "q", b"outbox", codec="serializer=bytes;key=none")
        app.commit()
        assert held == "serializer=bytes;key=none" == engine.codec_of("q")
        assert lease_one(engine).id == msg_id
        app.begin()
        assert engine.put_on(conn, "q", b"x", codec="serializer=json;key=none") == (
            None, "serializer=bytes;key=none")  # the queue holds a message of another codec
        app.commit()
    finally:
        conn.close()


# -- issue 15: what Liteq, sqqueue and LeanMQ users reach for -------------------------

def test_has_ready_sees_only_what_a_lease_would_deliver_now(engine):
    engine.put("q", b"later", delay=3600)
    assert engine.has_live("q") and not engine.has_ready("q")
    engine.put("q", b"now")
    assert engine.has_ready("q")
    lease_one(engine)
    assert not engine.has_ready("q")
    engine.put("q", b"short", ttl=0.05)
    wait_until(lambda: not engine.has_ready("q"))  # expired: nothing to deliver


def test_expired_messages_are_counted_nowhere(engine):
    # "short" must be leased before its TTL passes: a second, not 50 ms, so
    # that a loaded machine cannot let it expire first; then it passes while
    # the message is held.
    started = time.monotonic()
    engine.put("q", b"short", ttl=1.0)
    engine.put("q", b"delayed short", delay=3600, ttl=0.05)
    engine.put("q", b"long", ttl=3600)
    expired = engine.put("q", b"expired", ttl=0.05)
    (held,) = engine.lease("q", 1, 3600.0)
    assert held.data == b"short"
    # long, and short while held, its TTL over
    wait_until(lambda: time.monotonic() - started > 1.0 and engine.count("q", "live") == 2)
    assert engine.next_expiry("q") is not None
    assert (engine.count("q", "waiting"), engine.count("q", "ready")) == (1, 1)
    assert engine.has_live("q")
    (stats,) = [s for s in engine.queues() if s.name == "q"]
    assert (stats.ready, stats.delayed, stats.in_flight, stats.live) == (1, 0, 1, 2)
    assert [m.data for m in engine.messages("q")] == [b"short", b"long"]
    assert engine.get(expired).data == b"expired"  # stored until removed


def test_expire_removes_what_has_expired_and_counts_it(engine):
    engine.put("a", b"1", ttl=0.05)
    engine.put("a", b"2", delay=3600, ttl=0.05)
    engine.put("b", b"3", ttl=0.05)
    engine.put("a", b"kept", ttl=3600)
    leased = lease_one(engine, "b", seconds=3600.0)
    engine.put("b", b"4", ttl=0.05)
    wait_until(lambda: engine.count("a") == 1 and engine.count("b") == 1)
    assert engine.expire("a") == 2
    assert engine.expire() == 1  # "4"; "3" is held by its lease
    assert engine.expire() == 0
    assert engine.ack(leased.id, leased.lease)
    assert engine.metrics()["a"]["expired"] == 2
    engine.flush_metrics()
    assert engine.counters()["b"]["expired"] == 1


def test_an_empty_queue_has_no_next_expiry(engine):
    assert engine.next_expiry("q") is None
    engine.put("q", b"x")
    assert engine.next_expiry("q") is None
    engine.put("q", b"y", ttl=3600)
    assert engine.next_expiry("q") > engine.now()


def test_put_with_a_key_stores_it_once_per_queue(engine):
    first = engine.put("q", b"a", key="k")
    assert engine.put("q", b"b", key="k") == first
    assert engine.count("q") == 1 and engine.get(first).key == "k"
    assert engine.put("other", b"c", key="k") != first
    sealed = engine.put("q", b"d", key="k2", seal=lambda msg_id, data: b"%d:" % msg_id + data)
    assert engine.get(sealed).data == b"%d:d" % sealed
    msg = lease_one(engine)
    engine.ack(msg.id, msg.lease)
    assert engine.put("q", b"e", key="k") != first


def test_lease_records_its_holder(engine):
    engine.put_many("q", [b"a", b"b"])
    a = lease_one(engine, holder="w1")
    b = lease_one(engine, seconds=0)  # no holder named
    assert (a.consumer_id, b.consumer_id) == ("w1", None)
    assert engine.get(a.id).consumer_id == "w1"
    (stats,) = [s for s in engine.queues() if s.name == "q"]
    assert stats.consumers == ("w1",)


def test_dead_letter_ids_ack_many_and_recover_leases(engine):
    ids = engine.put_many("q", [b"1", b"2", b"3", b"4", b"5"])
    leased = engine.lease("q", 2, 0.0)  # 1 and 2, run out at once
    assert engine.recover_leases("q") == 2
    assert engine.recover_leases() == 0
    assert not engine.ack(leased[0].id, leased[0].lease)  # the late holder
    assert engine.dead_letter_ids([ids[0], ids[1], 10**6], "why") == 2
    assert engine.dead_letter_ids([ids[2]], "why", queue="other") == 0
    assert [m.dead_reason for m in engine.dead_letters("q")] == ["why", "why"]
    held = lease_one(engine)
    # ids[3] is ready (no lease): a token that is not its lease acks nothing.
    assert engine.ack_many([(held.id, held.lease), (held.id, held.lease), (ids[4], None),
                            (ids[3], held.lease)]) == 2
    assert engine.count("q") == 1 and engine.count("q", "dead") == 2  # ids[3] is left


def test_queues_exist_while_empty_until_deleted(engine):
    assert engine.create_queue("made", {"a": 1}) is True
    assert engine.create_queue("made") is False
    msg_id = engine.put("used", b"x")
    engine.delete(msg_id)
    stats = {s.name: s for s in engine.queues()}
    assert set(stats) == {"made", "used"}
    assert stats["made"].settings == {"a": 1} and stats["made"].live == 0
    assert (stats["used"].live, stats["used"].dead, stats["used"].settings) == (0, 0, {})
    assert engine.delete_queue("made") == 0
    assert [s.name for s in engine.queues()] == ["used"]


def _seal(msg_id, data):
    return b"%d:" % msg_id + data


_STORES = {
    "put": lambda e, q: e.put(q, b"x"),
    "put with a seal": lambda e, q: e.put(q, b"x", seal=_seal),
    "put with a key": lambda e, q: e.put(q, b"x", key="k"),
    "put with a key and a seal": lambda e, q: e.put(q, b"x", key="k", seal=_seal),
    "put_many": lambda e, q: e.put_many(q, [b"x", b"y"]),
    "put_many with a seal": lambda e, q: e.put_many(q, [b"x", b"y"], seal=_seal),
    "put_keyed": lambda e, q: e.put_keyed(q, [("k", b"x")]),
    "a transaction": lambda e, q: _put_in_transaction(e, q),
    "restore": lambda e, q: e.restore(q, e.snapshot("source")),
}


def _put_in_transaction(engine, queue):
    with engine.transaction() as tx:
        tx.put(queue, b"x")


@pytest.mark.parametrize("store", _STORES)
def test_every_way_of_storing_a_message_makes_its_queue_exist(engine, store):
    engine.put("source", b"s")  # for restore
    before = time.time()
    _STORES[store](engine, "new")
    stats = {s.name: s for s in engine.queues()}
    assert "new" in stats and stats["new"].live >= 1
    # Made when its first message was: on the engine's clock, not at a look.
    assert abs(stats["new"].created_at - before) < 60
    # A queue's registration is made once, by its first message.
    _STORES[store](engine, "new")
    assert [s.name for s in engine.queues()].count("new") == 1


# -- the optional maintenance interface -------------------------------------------

def test_maintenance_is_none_or_a_maintenance_that_works(engine):
    upkeep = engine.maintenance()
    if upkeep is None:  # a backend without one: front ends raise Unsupported
        return
    assert isinstance(upkeep, Maintenance)
    engine.put_many("q", [b"x" * 1000] * 50)
    assert upkeep.integrity_check() == ["ok"]
    engine.purge("q")
    before = upkeep.sizes()
    assert isinstance(before, StorageSizes) and before.database > 0
    upkeep.vacuum()
    try:
        upkeep.checkpoint("TRUNCATE")  # where the backend's log is its own
    except Unsupported:
        pass
    assert upkeep.sizes().total < before.total  # the purged pages went back
    assert isinstance(upkeep.sizes_at_open, StorageSizes)
    assert all(isinstance(label, str) and isinstance(text, str)
               for label, text in upkeep.health())
    assert len(engine.lease("q", 10, 30.0)) == 0 and engine.count("q") == 0


def test_a_checkpoint_copies_the_log_or_is_unsupported(engine):
    upkeep = engine.maintenance()
    if upkeep is None:
        return
    engine.put_many("q", [b"x" * 1000] * 50)
    try:
        busy, log_pages, copied = upkeep.checkpoint("PASSIVE")
    except Unsupported:  # the server manages its log: every mode says so
        for mode in Maintenance.CHECKPOINT_MODES:
            with pytest.raises(Unsupported):
                upkeep.checkpoint(mode)
        assert upkeep.sizes().log is None
        return
    assert isinstance(busy, int) and log_pages >= copied
    assert upkeep.checkpoint("TRUNCATE")[0] == 0  # nobody reads: nothing kept
    with pytest.raises(ValueError, match="checkpoint mode"):
        upkeep.checkpoint("SOMETIMES")
    assert engine.count("q") == 50


def test_the_automatic_vacuum_is_kept_in_the_database_or_is_unsupported(engine):
    upkeep = engine.maintenance()
    if upkeep is None:
        return
    assert upkeep.auto_vacuum_free_pages is None
    try:
        upkeep.set_auto_vacuum(500)
    except Unsupported:  # the server vacuums by itself
        assert upkeep.auto_vacuum_free_pages is None
        return
    assert upkeep.auto_vacuum_free_pages == 500
    upkeep.set_auto_vacuum(None)
    assert upkeep.auto_vacuum_free_pages is None


def test_an_engine_without_maintenance_says_so():
    class Bare(Engine):  # the default: no maintenance interface
        location = "bare://"

    for name in list(Bare.__abstractmethods__):
        setattr(Bare, name, lambda self, *args, **kwargs: None)
    Bare.__abstractmethods__ = frozenset()
    bare = Bare()
    assert bare.maintenance() is None
    with pytest.raises(Unsupported, match=r"bare:// \(the Bare backend\).*: vacuum is not") as caught:
        maintenance_of(bare, "vacuum")
    assert isinstance(caught.value, LiteQueueError) and isinstance(caught.value, NotImplementedError)
