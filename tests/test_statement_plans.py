"""The plans SQLite picks for the hot statements: a change of a statement's
shape that makes it scan, sort or build a temporary table shows here, not
only as a slower benchmark."""

import sqlite3

import pytest

from persistqueue_liteq.sqlite import sql

S = sql.render("liteq_")
PARAMS = {"queue": "q", "now": 1.0, "until": 2.0, "lease": 3, "n": 1, "holder": None}


def plan(statement, params=PARAMS):
    conn = sqlite3.connect(":memory:")
    for create in S.CREATE_TABLES:
        conn.execute(create)
    return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + statement, params)]


@pytest.mark.parametrize("name, index", [
    ("LEASE_FIFO_ONE", "liteq_messages_ready"),
    ("LEASE_LIFO_ONE", "liteq_messages_ready"),
    ("LEASE_PRIORITY_ONE", "liteq_messages_priority"),
])
def test_a_lease_of_one_message_is_one_probe_of_its_index(name, index):
    # "id IN (SELECT ... LIMIT :n)" builds an ephemeral list of ids first:
    # a third of SQLite's instructions for a lease of one.
    steps = plan(getattr(S, name))
    assert "SCALAR SUBQUERY 1" in steps, steps
    assert not any("LIST" in s or "TEMP" in s or s.startswith("SCAN") for s in steps), steps
    assert any(index in s for s in steps), steps


def test_the_engine_leases_one_message_with_the_statement_of_one(tmp_path, monkeypatch):
    from persistqueue_liteq.sqlite.engine import SQLiteEngine

    engine = SQLiteEngine(str(tmp_path / "q.db"))
    try:
        for i in range(3):
            engine.put("q", b"%d" % i)
        ran = []
        write = engine._write
        monkeypatch.setattr(engine, "_write", lambda s, p=(): ran.append(s) or write(s, p))
        assert [m.data for m in engine.lease("q", 1, 60)] == [b"0"]
        assert [m.data for m in engine.lease("q", 2, 60)] == [b"1", b"2"]
        assert ran == [engine.sql.LEASE_FIFO_ONE, engine.sql.LEASE_FIFO]
    finally:
        engine.close()


def test_a_batch_of_outcomes_finds_each_message_by_its_id():
    from persistqueue_liteq.sqlite.keyed import _many_outcomes

    store, ack = _many_outcomes(S.STORE_RESULTS, S.ACK_MANY, 4)
    for statement, params in ((store, [1] * 17), (ack, [1] * 8)):
        steps = plan(statement, params)
        assert "SEARCH m USING INTEGER PRIMARY KEY (rowid=?)" in steps, steps
        assert not any(s.startswith("SCAN") and "liteq_" in s for s in steps), steps
