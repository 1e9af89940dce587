"""Rows changed by another program (SQLite stores any type in any column):
the malformed one is dead-lettered with what was wrong, the others flow."""

import queue
import sqlite3

import pytest

from persistqueue_liteq import PersistentQueue


def _tamper(db, column, value, data=b"bad"):
    conn = sqlite3.connect(db)
    conn.execute("UPDATE liteq_messages SET %s = ? WHERE data = ?" % column, (value, data))
    conn.commit()
    conn.close()


@pytest.mark.parametrize("column, value, said", [
    ("expires_at", "never", "expires_at is 'never' (str)"),
    ("created_at", "yesterday", "created_at is 'yesterday' (str)"),
    ("data", "text, not bytes", "data is 'text, not bytes' (str)"),
    ("key", b"\x00", "key is b'\\x00' (bytes)"),
])
def test_a_malformed_leased_row_is_dead_lettered(q, db, column, value, said):
    q.put(b"bad")
    q.put(b"good")
    _tamper(db, column, value)
    # pop used to raise TypeError (comparing a str with a float), with the
    # row leased: every pop after its lease raised again.
    assert [m.data for m in q.pop_batch(max_messages=10)] == [b"good"]
    assert q.pop() is None
    dead = q.dead_letters()
    assert len(dead) == 1 and said in dead[0].dead_reason
    assert dead[0].dead_reason.startswith("malformed row")
    assert q.counters()["default"]["dead_lettered"] == 1


@pytest.mark.parametrize("value, said", [
    ("soon", "visible_at is 'soon' (text)"),
    (b"\x01", "visible_at is X'01' (blob)"),
])
def test_a_row_whose_visible_at_is_not_a_time(q, db, value, said):
    q.put(b"bad")
    _tamper(db, "visible_at", value)
    # SQLite sorts text and blobs after every number: the row was never
    # leased, and every waiting pop raised TypeError computing its wait.
    assert q.pop(wait_seconds=0.05) is None
    dead = q.dead_letters()
    assert len(dead) == 1 and said in dead[0].dead_reason, dead
    q.put(b"good")
    assert q.pop(wait_seconds=5).data == b"good"


def test_a_waiting_get_of_the_queue_like_front_end(db):
    pq = PersistentQueue(db)
    pq.put("bad")
    conn = sqlite3.connect(db)
    conn.execute("UPDATE liteq_messages SET visible_at = 'later'")
    conn.commit()
    with pytest.raises(queue.Empty):  # it raised TypeError
        pq.get(timeout=0.05)
    pq.put("good")
    assert pq.get(timeout=5) == "good"
    pq.close()
