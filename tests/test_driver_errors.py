"""Every error of the driver reaches a front end as an exception of ours
(a StorageError, naming the file), with sqlite3's as its ``__cause__``, and
nothing stored before it is lost.  The front ends never see ``sqlite3``."""

import asyncio
import sqlite3
import threading

import pytest

from persistqueue_liteq import PersistentQueue, StorageError
from persistqueue_liteq.aio import AsyncPersistentQueue


class _Odd:
    """A connection whose statements raise ``error`` while ``armed`` is set
    (the rest is the real connection's)."""

    def __init__(self, conn, error, armed):
        self._conn, self._error, self._armed = conn, error, armed

    def __getattr__(self, name):
        return getattr(self._conn, name)

    def execute(self, *args):
        if self._armed.is_set():
            raise self._error
        return self._conn.execute(*args)

    def executemany(self, *args):
        if self._armed.is_set():
            raise self._error
        return self._conn.executemany(*args)


def _oddly(monkeypatch, engine, error):
    """From now on (until the event returned is cleared) every statement of
    ``engine``, on any thread, raises ``error``."""
    armed = threading.Event()
    conns = engine._conns
    real_get = type(conns).get
    odd = {}

    def get():
        conn = real_get(conns)
        if conn not in odd:
            odd[conn] = _Odd(conn, error, armed)
        return odd[conn]

    monkeypatch.setattr(conns, "get", get)
    armed.set()
    return armed


ODD_ERRORS = [
    sqlite3.DatabaseError("something odd"),
    sqlite3.OperationalError("something odd"),
    sqlite3.InterfaceError("something odd"),
    sqlite3.ProgrammingError("something odd"),  # it used to pass as it was
    sqlite3.IntegrityError("something odd"),
    sqlite3.NotSupportedError("something odd"),
    sqlite3.InternalError("something odd"),
]


def _is_ours(exc, error, db):
    assert isinstance(exc, StorageError), repr(exc)
    assert exc.__cause__ is error
    text = str(exc)
    assert db in text and "something odd" in text and type(error).__name__ in text


@pytest.mark.parametrize("error", ODD_ERRORS, ids=lambda e: type(e).__name__)
def test_liteq_sees_ours_and_keeps_what_it_stored(q, db, monkeypatch, error):
    q.put(b"kept 1")
    q.put_batch([b"kept 2", b"kept 3"])
    armed = _oddly(monkeypatch, q.engine, error)
    for call in (lambda: q.put(b"refused"), lambda: q.put_batch([b"refused"] * 2),
                 lambda: q.pop(), lambda: q.qsize(), lambda: q.peek(),
                 lambda: q.dead_letters()):
        with pytest.raises(StorageError) as caught:
            call()
        _is_ours(caught.value, error, db)
    with pytest.raises(StorageError) as caught:
        with q.transaction() as tx:
            tx.put(b"refused")
    _is_ours(caught.value, error, db)
    armed.clear()
    assert [m.data for m in q.pop_batch(max_messages=10)] == [b"kept 1", b"kept 2", b"kept 3"]
    assert q.integrity_check() == ["ok"]


def test_a_real_driver_error_not_authorized(q, db):
    """No stand-in: SQLite's own refusal of every statement (an authorizer
    that denies), which the engine has no name for."""
    q.put(b"kept")
    conn = q.engine._conns.get()
    conn.set_authorizer(lambda *args: sqlite3.SQLITE_DENY)
    try:
        with pytest.raises(StorageError, match="not authorized") as caught:
            q.put(b"refused")
        assert type(caught.value.__cause__) is sqlite3.DatabaseError
        assert db in str(caught.value)
        with pytest.raises(StorageError):
            q.pop()
    finally:
        conn.set_authorizer(lambda *args: sqlite3.SQLITE_OK)  # None needs Python 3.11
    assert [m.data for m in q.pop_batch(max_messages=10)] == [b"kept"]


def test_the_queue_family_sees_ours(db, monkeypatch):
    queue = PersistentQueue(db)
    try:
        queue.put("kept")
        error = sqlite3.DatabaseError("something odd")
        armed = _oddly(monkeypatch, queue.engine, error)
        for call in (lambda: queue.put("refused"), lambda: queue.get(timeout=1),
                     queue.qsize):
            with pytest.raises(StorageError) as caught:
                call()
            _is_ours(caught.value, error, db)
        armed.clear()
        assert queue.get(timeout=5) == "kept"
        queue.task_done()
        assert queue.qsize() == 0
    finally:
        queue.close()


def test_the_async_queue_sees_ours(db, monkeypatch):
    error = sqlite3.OperationalError("something odd")

    async def main():
        queue = AsyncPersistentQueue(db)
        try:
            await queue.put("kept")
            armed = _oddly(monkeypatch, queue.engine, error)
            with pytest.raises(StorageError) as caught:
                await queue.put("refused")
            _is_ours(caught.value, error, db)
            with pytest.raises(StorageError) as caught:
                await asyncio.wait_for(queue.get(), 10)
            _is_ours(caught.value, error, db)
            armed.clear()
            assert await asyncio.wait_for(queue.get(), 10) == "kept"
        finally:
            await queue.aclose()

    asyncio.run(main())


def test_put_on_the_applications_connection_raises_ours(q, db):
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.set_authorizer(lambda action, *args: sqlite3.SQLITE_DENY
                            if action == sqlite3.SQLITE_INSERT else sqlite3.SQLITE_OK)
        conn.execute("BEGIN IMMEDIATE")
        with pytest.raises(StorageError, match="not authorized") as caught:
            q.put_in(conn, b"refused")
        assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)
        conn.execute("ROLLBACK")
    finally:
        conn.close()
    assert q.qsize() == 0
