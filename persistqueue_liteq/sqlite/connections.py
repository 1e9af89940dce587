"""SQLite connections: one per thread, reopened after fork, errors translated.

Rules kept here so that the engine need not think of them:

* Autocommit mode (``isolation_level=None``).  A statement on its own is its
  own transaction; several statements that must hold together run inside
  :meth:`Connections.transaction`, which says ``BEGIN IMMEDIATE`` (the write
  lock is taken before anything is read, so no snapshot can go stale) and
  rolls back on any ``BaseException``, KeyboardInterrupt included.
* A connection is used only by the thread and process that opened it, and
  is closed when that thread ends: a small object in the thread's
  ``threading.local`` slot closes it as the slot is dropped (in the ending
  thread, after its last statement), so a server that runs a thread per
  request does not leak two descriptors a request.  After a fork the child
  opens its own; the parent's connection objects are kept referenced and
  never closed in the child, because closing them there could disturb the
  locks the parent still holds.  (In a forked child, CPython drops the slots
  of the parent's other threads; that object sees another pid and leaves
  the connection alone.)
* Waiting for a lock is done here, not by SQLite's busy handler, whose
  shortest sleep is a whole millisecond: under contention between a few
  processes that millisecond, paid again and again, was most of the cost.  A
  statement or ``BEGIN IMMEDIATE`` that finds the database locked is retried
  whole (nothing of it happened) after 50 us, then doubling sleeps up to 5 ms,
  until ``timeout`` seconds have passed.
* Threads of one process do not race each other for SQLite's lock: writes
  take this process's write lock first (a blocking, fair-enough mutex), so
  only other processes are waited for by polling.  Without it, a hundred
  threads polling the file lock starved some of them into DatabaseBusy.
* Checkpoints (copying the WAL back into the database file) are run here,
  after a commit (:meth:`Connections._changed`); SQLite's automatic ones
  are off.  The policy, and why, is in
  :mod:`persistqueue_liteq.sqlite.checkpoints`.
* Files deleted or replaced under an open queue are refused where SQLite
  would lose committed data without a word (:meth:`Connections._check_files`):
  before a write (at most once a millisecond, see :meth:`Connections._look`),
  an ``fstat`` of the ``-shm`` tells whether it was deleted, and a ``stat``
  of the path whether the database file is still the one (st_dev, st_ino)
  our connections have open; the latter is also checked whenever a
  connection is opened.  Then every use
  raises ``DatabaseReplaced``, and the connections are never closed, since
  closing them would checkpoint a stale view and delete the WAL.
* Then every error of the driver becomes one of ours (:meth:`Connections.error`),
  naming the file, with sqlite3's as its ``__cause__`` (the list is in
  :mod:`persistqueue_liteq.sqlite.errors`).  No ``sqlite3`` exception
  reaches a front end, so none of them needs to know the driver.

The files themselves (path checks, creation, sizes) are looked at in
:mod:`persistqueue_liteq.sqlite.files`.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import random
import sqlite3
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Tuple, TypeVar

from .. import _fork
from ..exceptions import DatabaseBusy, DatabaseReplaced
from . import checkpoints
from .checkpoints import (_CHECKPOINT_PAGES, _RESTART_PAGES, _UNREADABLE, _Checkpointing,
                          _drop_kept, _pages_written)
from .errors import _FIRST_RETRY, _LONGEST_RETRY, _chained, _ErrorTranslation, _is_busy
from .files import _check_path, _create, file_size

if TYPE_CHECKING:
    from .._sql_engine import Params

#: What a statement, a transaction's body or a write returns.
_T = TypeVar("_T")

#: The oldest SQLite with everything the engine uses (RETURNING).
MIN_SQLITE = (3, 35, 0)

SYNCHRONOUS = ("NORMAL", "FULL")

# Seconds between two looks at the files (see Connections._look).
_LOOK_INTERVAL = 0.001

# Connections inherited through fork: referenced forever so that the garbage
# collector never closes them in the child (see the module docstring).
_inherited: List[sqlite3.Connection] = []


def check_sqlite_version(version: Tuple[int, int, int] = sqlite3.sqlite_version_info) -> None:
    if version < MIN_SQLITE:
        raise RuntimeError(
            "persistqueue_liteq needs SQLite %s or newer; this Python uses %s"
            % (".".join(map(str, MIN_SQLITE)), ".".join(map(str, version)))
        )


class Connections(_Checkpointing, _ErrorTranslation):
    """Hands each thread of each process its own connection to one file.

    ``_lock`` (reentrant: marking the queue broken takes it again) guards
    ``_all``: {connection: its thread} for every connection of this process
    that is still open, so that :meth:`close` can close them; whoever takes a
    connection out of ``_all`` closes it.  A connection is used only by its
    thread, and closed by another thread only once its own thread has ended
    (closing it under a running statement would crash).
    ``writer`` is held for every write of this process (see the module
    docstring); it is reentrant, for a write inside a transaction.
    """

    def __init__(self, path: str, timeout: float, synchronous: str = "NORMAL",
                 readonly: bool = False) -> None:
        synchronous = str(synchronous).upper()
        if synchronous not in SYNCHRONOUS:
            raise ValueError(
                "synchronous must be one of %s, got %r" % (", ".join(SYNCHRONOUS), synchronous)
            )
        self.path = path  # as given, for messages
        # Connected to by its absolute path: a thread that connects after an
        # os.chdir() must still find the same file.
        self._target = os.path.abspath(path)
        self.timeout = timeout
        self.synchronous = synchronous
        # Read-only: SQLite's mode=ro, so that the OS refuses any write.
        self._uri = pathlib.Path(self._target).as_uri() + "?mode=ro" if readonly else None
        # Bytes of the file and its -wal before any connection of ours (a
        # read-only one creates an empty -wal): what maintenance reports.
        self.sizes_at_open = (file_size(self._target), file_size(self._target + "-wal"))
        self._local = threading.local()
        self._lock = threading.RLock()
        self.writer = threading.RLock()
        # Guarded by writer (but _open, under _lock, forgets _shm when this
        # process has no connection left, so no writer is running): the
        # -shm file, read-only, for the WAL's length and to see it deleted
        # (a descriptor, see _kept_open; _UNREADABLE; None: not tried yet);
        # when to look at the files next; the WAL length at our last
        # checkpoint; pages written since then where they must be estimated;
        # the WAL length that calls for a RESTART checkpoint.
        self._shm: Optional[int] = None
        self._look_at = 0.0
        self._checked_at = 0
        self._pages = 0
        self._restart_pages = _RESTART_PAGES
        # Guarded by _lock: (st_dev, st_ino) of the database file our
        # connections have open, and why every use raises DatabaseReplaced.
        self._file: Optional[Tuple[int, int]] = None
        self._broken: Optional[str] = None
        self._all: Dict[sqlite3.Connection, threading.Thread] = {}
        self._generation = _fork.generation
        self.closed = False

    # -- connections ----------------------------------------------------------

    def get(self) -> sqlite3.Connection:
        """Return this thread's connection, opening it if need be."""
        local = self._local
        conn: Optional[sqlite3.Connection] = getattr(local, "conn", None)
        if self.closed:
            if conn is not None and local.generation == _fork.generation:
                local.conn = local.end = None
                self._forget(conn)  # closed by its own thread, now that it is free
            raise ValueError("operation on a closed queue (%s)" % self.path)
        if self._broken is not None:
            raise DatabaseReplaced(self._broken)
        if conn is not None and local.generation == _fork.generation:
            return conn
        if conn is not None:  # inherited through fork
            _inherited.append(conn)
        conn = self._open()
        local.conn, local.generation = conn, _fork.generation
        local.end = _ThreadEnd(self, conn)
        return conn

    def _open(self) -> sqlite3.Connection:
        with self._lock:
            if self._generation != _fork.generation:  # forked: the parent's are not ours
                _inherited.extend(self._all)
                self._all, self._generation = {}, _fork.generation
        if _check_path(self.path, self._target) is None and self._uri is None:
            _create(self._target)
        try:
            conn = sqlite3.connect(
                self._uri or self._target, timeout=0, isolation_level=None,
                check_same_thread=False, uri=self._uri is not None,
            )
        except sqlite3.Error as exc:
            raise _chained(self.error(exc), exc)
        if self._uri is None:
            try:
                # Reads the file (the pragma needs the schema), so it may
                # find it locked like any statement, and waits the same way.
                try:
                    self._set_up(conn)
                except sqlite3.Error as exc:
                    if not _is_busy(exc):
                        raise _chained(self.error(exc), exc)
                    self._retry(self._set_up, conn)
            except BaseException:
                conn.close()
                raise
        with self._lock:
            if not self._all:
                self._shm = None  # may have been removed with our last connection
            broken = self._check_same_file(opening=True)
            if broken is None:
                self._all[conn] = threading.current_thread()
        if broken is not None:
            conn.close()  # a connection to the new file, none of the old one's
            raise DatabaseReplaced(broken)
        return conn

    def _forget(self, conn: sqlite3.Connection, blocking: bool = True) -> None:
        """Close ``conn`` unless somebody else already took it out of
        ``_all`` (and so closes it); without ``blocking``, only if ``_lock``
        is free (else ``conn`` stays open, for the process's exit to close)."""
        if not self._lock.acquire(blocking):
            return
        try:
            if self._generation != _fork.generation or self._all.pop(conn, None) is None:
                return
        finally:
            self._lock.release()
        if self._broken is not None:
            return  # kept open for good by _break
        try:
            conn.close()
        except sqlite3.Error:
            pass

    def _set_up(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA synchronous=%s" % self.synchronous)
        # After a checkpoint the WAL file is cut back to this size, so a burst
        # of traffic does not leave a large file behind.
        conn.execute("PRAGMA journal_size_limit=%d" % (16 << 20))
        conn.execute("PRAGMA wal_autocheckpoint=0")  # see the module docstring

    # -- running statements ---------------------------------------------------

    def _acquire_writer(self) -> None:
        """Take this process's write lock, waiting up to ``timeout`` seconds."""
        if not self.writer.acquire(timeout=self.timeout if self.timeout > 0 else -1):
            raise DatabaseBusy(
                "%s: another thread of this process held the write lock for more than "
                "timeout_seconds=%g" % (self.path, self.timeout)
            )

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold this process's write lock (up to ``timeout`` seconds)."""
        self._acquire_writer()
        try:
            yield
        finally:
            self.writer.release()

    def write(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """:meth:`run` for a statement that writes (the hot path:
        :meth:`writing` without a generator)."""
        self._acquire_writer()
        try:
            conn = self.get()
            look = self._look()
            before = conn.total_changes
            busy = False
            try:  # run(work), inlined: one get() per write, not two
                value = work(conn)
            except sqlite3.Error as exc:
                if not _is_busy(exc) or conn.in_transaction:
                    raise _chained(self.error(exc), exc)
                busy = True
            if busy:
                value = self._retry(work, conn)
            self._changed(conn, before, look)
            return value
        finally:
            self.writer.release()

    def write_transaction(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """:meth:`transaction` around a short ``work(conn)`` without the
        context managers (a signed put's hot path): ``BEGIN IMMEDIATE``,
        ``work``, ``COMMIT``, retried whole while the lock is busy and rolled
        back on any exception.  Inside a transaction of this thread it joins
        it."""
        # A type comment: annotations would cost this hot path a constant per call.
        def whole(conn):  # type: (sqlite3.Connection) -> _T
            if conn.in_transaction:
                return work(conn)
            conn.execute("BEGIN IMMEDIATE")
            try:
                value = work(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise
            return value

        return self.write(whole)

    def _look(self) -> bool:
        """Before a write, at most every ``_LOOK_INTERVAL`` seconds: check
        that the files are still ours (:meth:`_check_files`), and say that
        the WAL's length is to be read after the commit.  (Both on every
        write cost 3.8 us of a 27 us put; a process writes at most a few MB
        in that millisecond.)  Called with the write lock held."""
        now = time.monotonic()
        if now < self._look_at:
            return False
        self._look_at = now + _LOOK_INTERVAL
        self._check_files()
        return True

    def _changed(self, conn: sqlite3.Connection, before: int, look: bool) -> None:
        """After a commit (since ``before``, conn.total_changes) that wrote,
        checkpoint outside any transaction when enough pages wait in the
        WAL (read if ``look``).  Called with the write lock held."""
        if conn.in_transaction or (not look and self._shm != _UNREADABLE):
            return
        wal = self._wal_frames()
        if wal is None:  # estimate what this process wrote
            self._pages += _pages_written(conn.total_changes - before)
            if self._pages >= _CHECKPOINT_PAGES:
                self._pages = 0
                self._checkpoint_blind(conn)
            return
        frames, copied = wal
        restart = frames >= self._restart_pages and copied < frames
        # (A PASSIVE one that a reader held back is not tried again on every
        # commit: only once the WAL has grown by as much again.)
        passive = frames - copied >= _CHECKPOINT_PAGES and not (
            self._checked_at <= frames < self._checked_at + _CHECKPOINT_PAGES)
        if not (restart or passive):
            return
        try:
            if restart:
                self._restart(conn, frames)
            else:
                self._checked_at = frames
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error:
            pass  # the write it follows is committed; the next one tries again

    def _check_files(self) -> None:
        """Before a write: raise DatabaseReplaced if the database file or
        the -shm index that this process's connections use was deleted or
        replaced (an fstat and a stat: 2 us).

        SQLite finds the WAL's frames through the -shm index.  A process
        that opens the file after its -shm was deleted makes a new one and
        appends to the WAL; a process still on the old one knows nothing of
        those frames, and its next commit overwrites them: 200 committed
        puts of another process vanished so.  Only the last connection to a
        database removes its -shm legitimately, and ours was open since the
        descriptor was taken (it is dropped when this process has none).
        A database file replaced (a backup restored over it) shares its
        -wal by name with the old one that our connections still write:
        their frames would be read into the restored file.
        """
        shm = self._shm
        if shm is not None and shm != _UNREADABLE and os.fstat(shm).st_nlink == 0:
            self._break(
                "%s: its -shm index was deleted or replaced while this process had "
                "the database open; writing on would overwrite what other processes "
                "committed since, so this queue refuses.  Exit this process (or "
                "close every queue on the file in it) and open the file again; "
                "never delete the -shm or -wal of a database in use" % self.path
            )
        elif self._check_same_file(opening=False) is None:
            return
        raise DatabaseReplaced(self._broken)

    def _break(self, reason: str) -> None:
        """From now on every use raises DatabaseReplaced(reason), and no
        connection of ours is ever closed (see _keep_forever)."""
        with self._lock:
            if self._broken is None:
                self._broken = reason
                for conn in self._all:
                    _keep_forever(conn)

    def _check_same_file(self, opening: bool) -> Optional[str]:
        """Mark this queue broken (and say why) if the path now names
        another file than the one this process's connections have open."""
        try:
            st = os.stat(self._target)
        except OSError:
            st = None
        now = None if st is None else (st.st_dev, st.st_ino)
        if self._file is None or (opening and not self._all):
            self._file = now  # none of ours is open: whatever is there now
            return None
        if now != self._file:
            self._break(
                "%s was %s while this process had it open; its connections still "
                "use the old file, which other processes no longer see, so this "
                "queue refuses to go on.  Exit this process (or close every queue "
                "on the file in it) and open the file again" % (
                    self.path, "deleted" if now is None else "replaced by another file")
            )
        return self._broken

    def run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Return ``work(conn)``: one autocommit statement, or reads, retried
        whole while another connection holds the lock."""
        conn = self.get()
        try:
            return work(conn)
        except sqlite3.Error as exc:
            if not _is_busy(exc) or conn.in_transaction:
                raise _chained(self.error(exc), exc)
        return self._retry(work, conn)

    def execute(self, sql: str, params: Params = ()) -> List[Any]:
        """Run one statement and return all its rows (which completes it)."""
        conn = self.get()
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            if not _is_busy(exc) or conn.in_transaction:
                raise _chained(self.error(exc), exc)
        return self._retry(lambda c: c.execute(sql, params).fetchall(), conn)

    def _retry(self, work: Callable[[sqlite3.Connection], _T], conn: sqlite3.Connection) -> _T:
        deadline = time.monotonic() + self.timeout
        delay = _FIRST_RETRY
        while True:
            if time.monotonic() >= deadline:
                raise DatabaseBusy(
                    "%s stayed locked by another connection for more than "
                    "timeout_seconds=%g" % (self.path, self.timeout)
                )
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, _LONGEST_RETRY)
            try:
                return work(conn)
            except sqlite3.Error as exc:
                if not _is_busy(exc) or conn.in_transaction:
                    raise _chained(self.error(exc), exc)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; roll back on any exception.

        Nested use on one thread joins the outer transaction.
        """
        conn = self.get()
        if conn.in_transaction:
            yield conn
            return
        with self.writing():
            look = self._look()
            before = conn.total_changes
            self.run(_begin_immediate)
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                try:
                    if conn.in_transaction:
                        conn.rollback()
                except sqlite3.Error as failed:  # raised with exc as its context
                    raise _chained(self.error(failed), failed)
                if isinstance(exc, sqlite3.Error):
                    raise _chained(self.error(exc), exc)
                raise
            self._changed(conn, before, look)

    def close(self) -> None:
        """Close this thread's connection and those of threads that ended;
        every other thread closes its own at its next use (and gets a
        ValueError: the queue is closed)."""
        me = threading.current_thread()
        with self._lock:
            self.closed = True
            mine = self._all if self._generation == _fork.generation else {}
            closable = [c for c, t in mine.items() if t is me or not t.is_alive()]
            for conn in closable:
                del mine[conn]
        if getattr(self._local, "conn", None) in closable:
            self._local.conn = self._local.end = None
        if self._broken is not None:
            return  # kept open for good by _break
        for conn in closable:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        with checkpoints._kept_lock:  # by its module: a fork makes it anew
            _drop_kept()


class _ThreadEnd:
    """Kept in a thread's ``threading.local`` slot beside its connection:
    when the thread ends, CPython drops the slot, and this closes the
    connection (in the ending thread, which runs no statement any more)."""

    __slots__ = ("_conns", "_conn", "_pid", "_thread")
    # Kept here: late in the interpreter's exit, module globals may be gone.
    _finalizing = staticmethod(sys.is_finalizing)
    _get_ident = staticmethod(threading.get_ident)

    def __init__(self, conns: Connections, conn: sqlite3.Connection) -> None:
        self._conns = weakref.ref(conns)
        self._conn = conn
        self._pid = os.getpid()
        self._thread = threading.get_ident()

    def __del__(self) -> None:
        # In a forked child the parent's other threads' slots are dropped
        # too: those connections are inherited, never closed here.
        if os.getpid() != self._pid:
            return
        conns = self._conns()
        if conns is None:
            return
        if not self._finalizing():
            conns._forget(self._conn)
        elif self._get_ident() == self._thread:
            # The interpreter's exit, in the connection's own thread; but a
            # daemon thread the interpreter stopped inside ``with _lock``
            # holds it for good: never wait for it.
            conns._forget(self._conn, blocking=False)
        # Else the interpreter's exit clears the state of a daemon thread it
        # stopped, from the main thread: wherever that thread stopped (in a
        # statement on this connection, which closing would crash, or
        # holding the lock, which waiting for would hang), its connection
        # is left for the process's exit to close.


def _keep_forever(conn: sqlite3.Connection) -> None:
    """Never close ``conn``, not even as the interpreter exits: it is a
    connection to a database whose -shm or file was replaced, and closing it
    would checkpoint its stale view of the WAL and then delete the WAL, with
    what other processes committed since (a normal exit lost 200 puts so).
    The OS drops its locks when the process ends."""
    try:
        import ctypes

        ctypes.pythonapi.Py_IncRef(ctypes.py_object(conn))
    except Exception:  # noqa: BLE001 - no ctypes: at least while we run
        _inherited.append(conn)


def _begin_immediate(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
