"""Bad input: a clear error that names what was wrong, and nothing stored or lost."""

import os
import shutil
import sqlite3
import tempfile
import threading
import time

import pytest

from persistqueue_liteq import DatabaseBusy, IncompatibleDatabase, LiteQueue, ReadOnlyDatabase
from persistqueue_liteq.sqlite import connections, sql

from .conftest import run_child


@pytest.mark.parametrize("data", ["text", 42, None, [b"x"]])
def test_payload_that_is_not_bytes(q, data):
    with pytest.raises(TypeError, match="must be bytes, not"):
        q.put(data)
    assert q.qsize() == 0


def test_bytes_like_payloads_are_accepted(q):
    q.put(bytearray(b"ab"))
    q.put(memoryview(b"cd"))
    assert [q.pop().data, q.pop().data] == [b"ab", b"cd"]


def test_put_batch_of_a_single_bytes_object_is_refused(q):
    with pytest.raises(TypeError, match="iterable of messages"):
        q.put_batch(b"abc")


@pytest.mark.parametrize("qname, error", [("", ValueError), (None, TypeError), (3, TypeError),
                                          ("a\0b", ValueError)])
def test_bad_queue_names(location, qname, error):
    """On every backend (PostgreSQL's text cannot hold a NUL: the same
    ValueError on both, not a StorageError from one)."""
    q = LiteQueue(location)
    try:
        q.put(b"kept", qname="other")
        with pytest.raises(error, match="qname"):
            q.put(b"x", qname=qname)
        with pytest.raises(error, match="qname"):
            q.put_batch([b"x"], qname=qname)
        with pytest.raises(error, match="qname"):
            q.pop(qname)
        assert [stats.name for stats in q.queues()] == ["other"]
        assert q.pop("other").data == b"kept"
    finally:
        q.close()


def test_bad_numbers_in_the_constructor(db):
    with pytest.raises(ValueError, match="max_retries"):
        LiteQueue(db, max_retries=-1)
    with pytest.raises(TypeError, match="timeout_seconds"):
        LiteQueue(db, timeout_seconds="5")
    with pytest.raises(ValueError, match="synchronous"):
        LiteQueue(db, synchronous="OFF")
    with pytest.raises(ValueError, match="table_prefix"):
        LiteQueue(db, table_prefix="x; DROP TABLE users; --")


def test_pop_batch_needs_a_positive_count(q):
    with pytest.raises(ValueError, match="max_messages"):
        q.pop_batch(max_messages=0)


def test_unreachable_directory_is_not_called_missing(tmp_path, fork):
    def child():
        if os.getuid() == 0:
            os.setgid(65534)
            os.setuid(65534)
        try:
            LiteQueue(str(tmp_path / "queue.db"))
        except ReadOnlyDatabase as exc:
            os._exit(0 if "no permission" in str(exc) else 3)
        except BaseException:
            os._exit(2)
        os._exit(1)

    os.chmod(tmp_path, 0o700)
    if os.getuid() != 0:
        os.chmod(tmp_path, 0o000)
    try:
        assert run_child(fork, child) == 0
    finally:
        os.chmod(tmp_path, 0o755)


def test_missing_directory(tmp_path):
    path = tmp_path / "missing" / "queue.db"
    with pytest.raises(FileNotFoundError, match="missing"):
        LiteQueue(str(path))
    assert not path.parent.exists()


def test_in_memory_database_is_refused():
    with pytest.raises(ValueError, match="memory"):
        LiteQueue(":memory:")


def test_a_file_that_is_not_sqlite(db):
    with open(db, "wb") as f:
        f.write(b"this is my thesis, do not touch" * 100)
    with pytest.raises(IncompatibleDatabase, match="not a usable SQLite database"):
        LiteQueue(db)
    with open(db, "rb") as f:
        assert f.read().startswith(b"this is my thesis")


def test_sqlite_but_not_ours(db):
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE liteq_messages (id TEXT, payload TEXT)")
    conn.execute("INSERT INTO liteq_messages VALUES ('1', 'theirs')")
    conn.commit()
    with pytest.raises(IncompatibleDatabase, match="did not create"):
        LiteQueue(db)
    assert conn.execute("SELECT * FROM liteq_messages").fetchall() == [("1", "theirs")]


def test_foreign_meta_table(db):
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE liteq_meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute("INSERT INTO liteq_meta VALUES ('format', 'somebody-else')")
    conn.commit()
    with pytest.raises(IncompatibleDatabase, match="not persistqueue_liteq's"):
        LiteQueue(db)


def test_newer_schema_version(db):
    LiteQueue(db).put(b"from the future")
    conn = sqlite3.connect(db)
    conn.execute("UPDATE liteq_meta SET value = ? WHERE key = 'schema_version'",
                 (str(sql.SCHEMA_VERSION + 1),))
    conn.commit()
    with pytest.raises(IncompatibleDatabase, match="newer persistqueue_liteq"):
        LiteQueue(db)
    assert conn.execute("SELECT count(*) FROM liteq_messages").fetchone() == (1,)


def _lock_exclusively(db):
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("PRAGMA locking_mode=EXCLUSIVE")
    blocker.execute("BEGIN EXCLUSIVE")
    blocker.execute("INSERT INTO liteq_meta VALUES ('lock', 'held')")
    return blocker


def test_opening_an_exclusively_locked_database(db):
    with LiteQueue(db) as q:
        q.put(b"waiting")
    blocker = _lock_exclusively(db)
    with pytest.raises(DatabaseBusy, match="timeout_seconds=0.1"):
        LiteQueue(db, timeout_seconds=0.1)
    blocker.rollback()
    blocker.close()
    assert LiteQueue(db).pop().data == b"waiting"


def test_opening_waits_for_a_lock_that_is_let_go(db, monkeypatch):
    # Setting up a new connection reads the file (PRAGMA synchronous needs
    # the schema), so it meets the locks that every statement meets: the
    # checkpoint of a process closing the file, another one's WAL recovery.
    # It used to fail there at once, which processes opening one file
    # together ran into about once in a hundred.
    LiteQueue(db).close()
    blocker = _lock_exclusively(db)
    retrying, settled = threading.Event(), threading.Event()

    class Clock:
        monotonic = staticmethod(time.monotonic)

        @staticmethod
        def sleep(seconds):
            retrying.set()
            settled.set()
            time.sleep(seconds)

    monkeypatch.setattr(connections, "time", Clock)
    opened = {}

    def open_queue():
        try:
            opened["queue"] = LiteQueue(db, timeout_seconds=30)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            opened["error"] = exc
        finally:
            settled.set()

    opener = threading.Thread(target=open_queue)
    opener.start()
    try:
        assert settled.wait(30)
        assert retrying.is_set(), "the open did not wait: %r" % opened.get("error")
    finally:
        blocker.rollback()
        blocker.close()
        opener.join(30)
    assert "error" not in opened
    q = opened["queue"]
    q.put(b"after the wait")
    assert q.pop().data == b"after the wait"
    q.close()


def test_a_write_lock_held_by_another_writer(db):
    q = LiteQueue(db, timeout_seconds=0.1)
    q.put(b"waiting")
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    with pytest.raises(DatabaseBusy, match="stayed locked"):
        q.pop()  # Liteq would answer None here: a busy queue is not empty
    with pytest.raises(DatabaseBusy):
        q.put(b"x")
    with pytest.raises(DatabaseBusy):
        q.pop(wait_seconds=0.5)
    assert q.qsize() == 1  # readers are not blocked in WAL mode
    blocker.rollback()
    assert q.pop().data == b"waiting"
    assert q.pop() is None  # the failed put stored nothing


def _write_as_nobody(db):
    if os.getuid() == 0:
        os.setgid(65534)
        os.setuid(65534)
    try:
        q = LiteQueue(db)
        q.put(b"intruder")
    except ReadOnlyDatabase as exc:
        os._exit(0 if db in str(exc) else 3)
    except Exception:
        os._exit(2)
    os._exit(1)


def test_a_read_only_file(fork):
    # pytest's tmp_path is private to root; the unprivileged child needs to
    # reach the file, so it lives in a directory of its own.
    directory = tempfile.mkdtemp(prefix="pqlq-ro-")
    db = os.path.join(directory, "queue.db")
    q = LiteQueue(db)
    q.put(b"precious")
    q.close()
    os.chmod(db, 0o444)
    os.chmod(directory, 0o555)
    try:
        assert run_child(fork, _write_as_nobody, db) == 0
    finally:
        os.chmod(directory, 0o755)
        os.chmod(db, 0o644)
    q = LiteQueue(db)
    assert [m.data for m in q.pop_batch()] == [b"precious"]
    assert q.integrity_check() == ["ok"]
    q.close()
    shutil.rmtree(directory)


def test_closed_queue(q):
    q.close()
    with pytest.raises(ValueError, match="closed"):
        q.put(b"x")


def test_ids_must_be_ints(q):
    # An id's str() is one too (issue 15: Liteq's ids are strings); see
    # test_liteq_compat for the strings that are not.
    for bad in (1.0, None, b"1", [1]):
        with pytest.raises(TypeError, match="message id"):
            q.delete(bad)
    with pytest.raises(ValueError, match="message id"):
        q.delete("one")


def _check_gives(check, value, argument, expected, kind):
    """``check(value, argument)`` raises ``expected`` (an exception class)
    naming the argument, or returns ``expected``, of type ``kind``."""
    if isinstance(expected, type):
        with pytest.raises(expected, match=argument):
            check(value, argument)
    else:
        got = check(value, argument)
        assert got == expected and type(got) is kind


# Seconds and counts as every method checks them: the fast paths for a
# plain int or float must accept and refuse exactly what the full checks do.
@pytest.mark.parametrize("value, expected", [
    (0, 0.0), (3, 3.0), (0.0, 0.0), (-0.0, 0.0), (0.05, 0.05), (1e300, 1e300),
    (True, TypeError), ("1", TypeError), (None, TypeError), (-1, ValueError),
    (-0.5, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
    (float("-inf"), ValueError),
])
def test_seconds_are_checked_the_same_on_every_path(value, expected):
    from fractions import Fraction

    from persistqueue_liteq import _checks

    _check_gives(_checks.seconds, value, "wait_seconds", expected, float)
    assert _checks.seconds(Fraction(1, 4), "wait_seconds") == 0.25
    for zero in (0, 0.0, -0.0):
        with pytest.raises(ValueError, match="must be positive"):
            _checks.seconds(zero, "pause_on_empty_fetch", positive=True)


@pytest.mark.parametrize("value, expected", [
    (0, 0), (1, 1), (10**30, 10**30), (True, TypeError), (1.0, TypeError),
    ("1", TypeError), (None, TypeError), (-1, ValueError),
])
def test_counts_are_checked_the_same_on_every_path(value, expected):
    import enum

    from persistqueue_liteq import _checks

    _check_gives(_checks.count, value, "max_messages", expected, int)
    with pytest.raises(ValueError, match="at least 1"):
        _checks.count(0, "max_messages", minimum=1)
    assert type(_checks.count(enum.IntEnum("N", "one")(1), "max_messages")) is int
