"""Files written by an earlier schema version are upgraded at open.

``data/schema_v1.db`` was written by persistqueue_liteq at schema version 1
(main at c3b1b96): queues "default" (a dead letter, a delayed message, one
with a TTL, one ready), "emails" (leased messages) and a PersistentQueue
"objects" with its codec record.
"""

import shutil
import sqlite3
from pathlib import Path

import pytest

from persistqueue_liteq import LiteQueue, PersistentQueue, ReadOnlyDatabase
from persistqueue_liteq.sqlite import sql
from persistqueue_liteq.sqlite.engine import SQLiteEngine

from .conftest import run_children

V1 = Path(__file__).parent / "data" / "schema_v1.db"


@pytest.fixture
def v1(tmp_path):
    path = tmp_path / "v1.db"
    shutil.copyfile(V1, path)
    return str(path)


def _meta(path):
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT key, value FROM liteq_meta"))
    finally:
        conn.close()


def _indexes(path):
    conn = sqlite3.connect(path)
    try:
        return {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index'")}
    finally:
        conn.close()


def test_a_version_1_file_is_upgraded_at_open_and_keeps_every_message(v1, opened):
    assert _meta(v1)["schema_version"] == "1"
    q = opened(LiteQueue(v1))
    assert sql.SCHEMA_VERSION > 1
    assert _meta(v1)["schema_version"] == str(sql.SCHEMA_VERSION)
    assert "liteq_messages_expiry" in _indexes(v1)
    assert [m.data for m in q.dead_letters()] == [b"ready"]
    assert q.qsize() == 3 and q.qsize("emails") == 2
    assert [m.data for m in q.engine.messages("default")] == [b"delayed", b"ttl", b"leased"]
    assert q.pop().data == b"ttl"
    assert opened(PersistentQueue(v1, name="objects")).get(timeout=5) == {"a": 1}
    assert q.integrity_check() == ["ok"]
    # What version 2 added: the queues as things, and lease holders.
    stats = {s.name: s for s in q.queues()}
    assert set(stats) == {"default", "emails", "objects"}
    assert stats["objects"].codec.startswith("serializer=pickle")
    assert q.pop(consumer_id="w").consumer_id == "w"
    q.put(b"new", qname="fresh")
    assert q.stats("fresh").live == 1


def test_an_upgraded_file_opens_again_without_change(v1, opened):
    opened(LiteQueue(v1)).close()
    before = _meta(v1)
    q = opened(LiteQueue(v1))
    assert _meta(v1)["schema_version"] == before["schema_version"] == str(sql.SCHEMA_VERSION)
    assert "liteq_messages_expiry" in _indexes(v1)
    assert q.qsize() == 3


def test_a_read_only_open_of_an_old_file_says_to_upgrade_it(v1):
    with pytest.raises(ReadOnlyDatabase, match="schema version 1.*open it once for writing"):
        SQLiteEngine(v1, readonly=True)
    assert _meta(v1)["schema_version"] == "1"  # nothing was changed


def _open_after(barrier, path):
    barrier.wait(30)
    q = LiteQueue(path)
    assert q.qsize() == 3
    q.close()


def test_processes_that_open_an_old_file_together_upgrade_it_once(v1, fork):
    assert run_children(fork, 3, _open_after, v1) == [0, 0, 0]
    assert _meta(v1)["schema_version"] == str(sql.SCHEMA_VERSION)
    assert "liteq_messages_expiry" in _indexes(v1)
    with LiteQueue(v1) as q:
        assert q.integrity_check() == ["ok"] and q.qsize() == 3
        assert [s.name for s in q.queues()] == ["default", "emails", "objects"]
