"""Keyed messages and stored outcomes: what the durable pools stand on."""

import sqlite3

import pytest

from persistqueue_liteq.sqlite.engine import SQLiteEngine


@pytest.fixture
def engine(db):
    e = SQLiteEngine(db)
    yield e
    e.close()


def test_a_key_is_stored_once(engine):
    first = engine.put_keyed("tasks", [("k1", b"a"), ("k2", b"b")])
    assert [status for status, _ in first] == ["new", "new"]
    again = engine.put_keyed("tasks", [("k1", b"a"), ("k3", b"c")])
    assert again[0] == ("queued", first[0][1])
    assert again[1][0] == "new"
    assert engine.count("tasks") == 3


def test_the_same_key_in_another_queue_is_another_task(engine):
    engine.put_keyed("a", [("k", b"x")])
    assert engine.put_keyed("b", [("k", b"x")])[0][0] == "new"


def test_complete_stores_the_outcome_and_settles_in_one_go(engine):
    engine.put_keyed("tasks", [("k1", b"a")])
    (msg,) = engine.lease("tasks", 1, 60)
    assert msg.key == "k1"
    assert engine.complete(msg.id, msg.lease, "k1", True, b"42") is True
    assert engine.count("tasks") == 0
    assert engine.result("tasks", "k1") == (True, b"42")
    assert engine.put_keyed("tasks", [("k1", b"a")]) == [("done", None)]


def test_complete_can_dead_letter_with_the_outcome(engine):
    engine.put_keyed("tasks", [("k1", b"a")])
    (msg,) = engine.lease("tasks", 1, 60)
    assert engine.complete(msg.id, msg.lease, "k1", False, b"exc", dead_reason="worker died")
    (dead,) = engine.dead_letters("tasks")
    assert (dead.key, dead.dead_reason) == ("k1", "worker died")
    assert engine.result("tasks", "k1") == (False, b"exc")
    assert engine.put_keyed("tasks", [("k1", b"a")]) == [("done", None)]


def test_a_dead_key_whose_outcome_was_forgotten_comes_back(engine):
    (first,) = engine.put_keyed("tasks", [("k1", b"a")])
    (msg,) = engine.lease("tasks", 1, 60)
    engine.complete(msg.id, msg.lease, "k1", False, b"exc", dead_reason="poison")
    assert engine.put_keyed("tasks", [("k1", b"a")]) == [("done", None)]
    assert engine.forget_results("tasks") == 1
    assert engine.put_keyed("tasks", [("k1", b"fixed")]) == [("new", first[1])]
    assert engine.dead_letters("tasks") == []
    (again,) = engine.lease("tasks", 1, 60)
    assert (again.id, again.data, again.attempts, again.dead_reason) == (msg.id, b"fixed", 1, None)


def test_an_outcome_is_kept_even_if_the_lease_was_lost(engine):
    engine.put_keyed("tasks", [("k1", b"a")])
    (stale,) = engine.lease("tasks", 1, 0)
    (current,) = engine.lease("tasks", 1, 60)
    assert engine.complete(stale.id, stale.lease, "k1", True, b"first") is False
    assert engine.count("tasks") == 1  # the current holder still has it
    assert engine.complete(current.id, current.lease, "k1", True, b"second") is True
    assert engine.result("tasks", "k1") == (True, b"second")


def test_results_since_follows_along_in_order(engine):
    start = engine.last_result_seq()
    engine.put_keyed("tasks", [("k%d" % i, b"") for i in range(3)])
    for msg in engine.lease("tasks", 3, 60):
        engine.complete(msg.id, msg.lease, msg.key, True, msg.key.encode())
    rows = engine.results_since("tasks", start)
    assert [key for _, key, _, _ in rows] == ["k0", "k1", "k2"]
    assert engine.results_since("tasks", rows[-1][0]) == []
    assert engine.results_since("other", start) == []
    assert engine.forget_results("tasks", "k0") == 1
    assert engine.result("tasks", "k0") is None
    assert engine.forget_results("tasks") == 2


# -- looking without touching: what the command-line tool stands on ------------

def test_peek_many_and_messages_do_not_lease(engine):
    ids = engine.put_many("q", [b"a", b"b", b"c"])
    engine.put("q", b"later", delay=60)
    assert [m.data for m in engine.peek_many("q", 2)] == [b"a", b"b"]
    assert [m.id for m in engine.messages("q", after_id=ids[0], limit=10)] == ids[1:] + [ids[2] + 1]
    assert engine.count("q", "ready") == 3


def test_a_read_only_engine_changes_nothing(db):
    from persistqueue_liteq import IncompatibleDatabase, ReadOnlyDatabase
    import os
    import sqlite3

    writer = SQLiteEngine(db)
    writer.put("q", b"kept")
    writer.close()
    with open(db, "rb") as f:
        before = f.read()
    reader = SQLiteEngine(db, readonly=True)
    assert [m.data for m in reader.messages("q")] == [b"kept"]
    with pytest.raises(ReadOnlyDatabase, match="cannot be written"):
        reader.put("q", b"intruder")
    with pytest.raises(ReadOnlyDatabase):
        reader.lease("q", 1, 60)
    reader.close()
    with open(db, "rb") as f:
        assert f.read() == before
    with pytest.raises(FileNotFoundError, match="no such queue file"):
        SQLiteEngine(db + ".missing", readonly=True)
    assert not os.path.exists(db + ".missing")
    other = db + ".other"
    sqlite3.connect(other).execute("CREATE TABLE notes (x)")
    with pytest.raises(IncompatibleDatabase, match="no persistqueue_liteq queue tables"):
        SQLiteEngine(other, readonly=True)


def test_waiting_counts_a_message_whose_lease_ran_out(engine):
    engine.put("q", b"a")
    engine.put("q", b"b", delay=60)
    engine.lease("q", 1, 0)  # its consumer died: the lease is already over
    assert engine.count("q", "waiting") == 2
    engine.lease("q", 1, 60)
    assert engine.count("q", "waiting") == 1


def test_the_priority_lease_walks_the_priority_index(engine):
    conn = sqlite3.connect(engine.location)  # the plan is the file's schema's
    try:
        plan = conn.execute(
            "EXPLAIN QUERY PLAN " + engine.sql.LEASE_PRIORITY,
            {"queue": "q", "now": 0, "until": 1, "lease": 1, "n": 1, "holder": None},
        ).fetchall()
    finally:
        conn.close()
    text = " ".join(row[3] for row in plan)
    assert "messages_priority" in text and "TEMP B-TREE" not in text, text
