"""SQLite connections: one per thread, reopened after fork, errors translated.

Rules kept here so that the engine need not think of them:

* Autocommit mode (``isolation_level=None``).  A statement on its own is its
  own transaction; several statements that must hold together run inside
  :meth:`Connections.transaction`, which says ``BEGIN IMMEDIATE`` (the write
  lock is taken before anything is read, so no snapshot can go stale) and
  rolls back on any ``BaseException``, KeyboardInterrupt included.
* A connection is used only by the thread and process that opened it.  After
  a fork the child opens its own; the parent's connection objects are kept
  referenced and never closed in the child, because closing them there could
  disturb the locks the parent still holds.
* SQLite's "database is locked" after ``timeout`` seconds of retrying becomes
  :class:`~persistqueue_liteq.exceptions.DatabaseBusy`; "file is not a
  database" and friends become ``IncompatibleDatabase``; "readonly database"
  becomes ``ReadOnlyDatabase``.  Each names the file.
"""

import contextlib
import os
import sqlite3
import threading

from .exceptions import DatabaseBusy, IncompatibleDatabase, ReadOnlyDatabase

#: The oldest SQLite with everything the engine uses (RETURNING).
MIN_SQLITE = (3, 35, 0)

SYNCHRONOUS = ("NORMAL", "FULL")

# Connections inherited through fork: referenced forever so that the garbage
# collector never closes them in the child (see the module docstring).
_inherited = []


def check_sqlite_version(version=sqlite3.sqlite_version_info):
    if version < MIN_SQLITE:
        raise RuntimeError(
            "persistqueue_liteq needs SQLite %s or newer; this Python uses %s"
            % (".".join(map(str, MIN_SQLITE)), ".".join(map(str, version)))
        )


@contextlib.contextmanager
def translate_errors(path, timeout):
    """Turn sqlite3's errors into ours, naming the file and the timeout."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        text = str(exc).lower()
        if "locked" in text or "busy" in text:
            raise DatabaseBusy(
                "%s stayed locked by another connection for more than "
                "timeout_seconds=%g" % (path, timeout)
            ) from exc
        if "readonly" in text or "read-only" in text or "read only" in text:
            raise ReadOnlyDatabase("%s cannot be written: %s" % (path, exc)) from exc
        if "unable to open" in text:
            raise ReadOnlyDatabase(
                "%s cannot be opened for writing (is the file or its directory "
                "read-only?): %s" % (path, exc)
            ) from exc
        raise
    except sqlite3.DatabaseError as exc:
        if "not a database" in str(exc) or "malformed" in str(exc):
            raise IncompatibleDatabase("%s is not a usable SQLite database: %s" % (path, exc)) from exc
        raise


class Connections:
    """Hands each thread of each process its own connection to one file.

    The lock guards ``_all`` (every connection this process opened, so that
    :meth:`close` can close them from any thread); the connections themselves
    are never shared between threads.
    """

    def __init__(self, path, timeout, synchronous="NORMAL"):
        synchronous = str(synchronous).upper()
        if synchronous not in SYNCHRONOUS:
            raise ValueError(
                "synchronous must be one of %s, got %r" % (", ".join(SYNCHRONOUS), synchronous)
            )
        self.path = path
        self.timeout = timeout
        self.synchronous = synchronous
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all = []
        self._pid = os.getpid()
        self.closed = False

    def get(self):
        """Return this thread's connection, opening it if need be."""
        if self.closed:
            raise ValueError("operation on a closed queue (%s)" % self.path)
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is not None and local.pid == os.getpid():
            return conn
        if conn is not None:  # inherited through fork
            _inherited.append(conn)
        conn = self._open()
        local.conn, local.pid = conn, os.getpid()
        return conn

    def _open(self):
        pid = os.getpid()
        with self._lock:
            if pid != self._pid:  # forked: the parent's connections are not ours
                _inherited.extend(self._all)
                self._all, self._pid = [], pid
        with translate_errors(self.path, self.timeout):
            conn = sqlite3.connect(
                self.path,
                timeout=self.timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            try:
                conn.execute("PRAGMA synchronous=%s" % self.synchronous)
                # After a checkpoint the WAL file is cut back to this size, so
                # a burst of traffic does not leave a large file behind.
                conn.execute("PRAGMA journal_size_limit=%d" % (16 << 20))
            except BaseException:
                conn.close()
                raise
        with self._lock:
            self._all.append(conn)
        return conn

    @contextlib.contextmanager
    def transaction(self):
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; roll back on any exception.

        Nested use on one thread joins the outer transaction.
        """
        conn = self.get()
        if conn.in_transaction:
            yield conn
            return
        with translate_errors(self.path, self.timeout):
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            try:
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise

    def execute(self, sql, params=()):
        """Run one statement and return all its rows (which completes it)."""
        with translate_errors(self.path, self.timeout):
            return self.get().execute(sql, params).fetchall()

    def close(self):
        """Close every connection this process opened to the file."""
        with self._lock:
            conns, self._all = (self._all if self._pid == os.getpid() else []), []
            self.closed = True
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass
