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
* Checkpoints (copying the WAL back into the database file) are run here;
  SQLite's automatic ones are off.  With several processes writing, those
  never caught up: a checkpoint hardly ever found no other writer, so the
  WAL was never restarted, every commit past its 1,000 pages ran one more
  checkpoint with two fsyncs, and the WAL grew without end (316 MB after
  20,000 items through 2+2 processes).  Here, after a commit (at most once
  a millisecond), a process reads how long the WAL is and how much of it is
  checkpointed already (two numbers in the ``-shm`` file's header, read
  with one ``pread``), and once ``_CHECKPOINT_PAGES`` pages wait to be copied, whoever
  wrote them, checkpoints (PASSIVE: nobody waits).  Once the WAL is longer
  than ``_RESTART_PAGES`` (16 MB), every writer that commits runs a RESTART
  checkpoint before it writes again (:meth:`Connections._restart`), so
  that the next writer starts the WAL from its beginning: the WAL peaks
  near 16 MB plus a commit or two, whatever the size of the messages.
  Pages are counted as SQLite wrote them, so a 1 MB message counts as its
  257 pages (an estimate from the rows changed took it for 3, and 300 such
  round trips grew the WAL to 782 MB), and so does deleting it, which
  SQLite built with ``secure_delete`` (Debian's) overwrites.  Where the
  ``-shm`` cannot be read, the pages are estimated from the rows changed.
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
  naming the file, with sqlite3's as its ``__cause__``: "database is locked"
  becomes :class:`~persistqueue_liteq.exceptions.DatabaseBusy`; "file is not
  a database", "malformed" and "no such table" become
  ``IncompatibleDatabase``; "readonly database" becomes ``ReadOnlyDatabase``;
  "database or disk is full" ``DiskFull``; "string or blob too big"
  ``PayloadTooLarge``; "unable to open" is ``OutOfFileDescriptors`` when the
  process cannot open a file just then (SQLite says the same for both),
  else ``ReadOnlyDatabase``; anything else (a disk I/O error, an error
  the driver has no other name for, even its ``ProgrammingError``) is a
  ``StorageError`` that names the file and the driver's error.  No
  ``sqlite3`` exception reaches a front end, so none of them needs to know
  the driver.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pathlib
import random
import sqlite3
import stat
import struct
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Tuple, TypeVar

try:
    import resource
except ImportError:  # not on Windows
    resource = None  # type: ignore[assignment]  # tested for None where it is used

from .. import _fork
from ..exceptions import (
    DatabaseBusy,
    DatabaseReplaced,
    DiskFull,
    IncompatibleDatabase,
    OutOfFileDescriptors,
    PayloadTooLarge,
    ReadOnlyDatabase,
    StorageError,
    UnsafePath,
)

if TYPE_CHECKING:
    from .._sql_engine import Params
    from ..exceptions import LiteQueueError

#: What a statement, a transaction's body or a write returns.
_T = TypeVar("_T")

logger = logging.getLogger("persistqueue_liteq")

#: The oldest SQLite with everything the engine uses (RETURNING).
MIN_SQLITE = (3, 35, 0)

SYNCHRONOUS = ("NORMAL", "FULL")

_FIRST_RETRY = 0.00005
_LONGEST_RETRY = 0.005

# Pages in the WAL not yet copied into the file that call for a checkpoint,
# as SQLite's automatic checkpoint does.  SQLite does not tell Python how many
# pages a commit wrote (its wal_hook is not exposed): the -shm file's header
# says how long the WAL is, or else _pages_written estimates it.
_CHECKPOINT_PAGES = 1000
# A WAL longer than this (pages) after a PASSIVE checkpoint gets a RESTART
# one, which waits at most _RESTART_WAIT seconds for other connections; if
# they hold on longer (a long read), the next RESTART waits until the WAL is
# twice as long, and so on, so that a long reader costs few such waits.
_RESTART_PAGES = 4096
_RESTART_WAIT = 0.2

# The WAL-index header at the start of the -shm file (SQLite's file format
# document, "WAL-index format"), in native byte order: mxFrame, the frames
# in the WAL, at byte 16, and nBackfill, how many of them are copied into
# the database file, at byte 96.  Read without SQLite's locks it may be a
# commit behind, which only moves a checkpoint by a commit.
_SHM_HEADER = struct.Struct("=16xI76xI")
_UNREADABLE = -1  # no -shm to read: estimate the pages

# Seconds between two looks at the files (see Connections._look).
_LOOK_INTERVAL = 0.001

# Connections inherited through fork: referenced forever so that the garbage
# collector never closes them in the child (see the module docstring).
_inherited: List[sqlite3.Connection] = []

# Descriptors of -shm files opened here to read their header, by (st_dev,
# st_ino).  Closing any descriptor of a file drops every POSIX lock this
# process holds on it, SQLite's own included ("How To Corrupt An SQLite
# Database File", 2.2), so one is closed only once nothing of this process
# can hold a lock on its file: the -shm was removed (SQLite removes it with
# the last connection to the database, in any process) and no Connections
# that read it has a connection left (see _drop_kept).  _kept_users: the
# Connections that took one.  Both guarded by _kept_lock.
_kept: Dict[Tuple[int, int], int] = {}
_kept_users: weakref.WeakSet[Connections] = weakref.WeakSet()
_kept_lock = threading.Lock()


def _new_kept_lock() -> None:
    global _kept_lock
    _kept_lock = threading.Lock()  # another thread may have held it at fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_kept_lock)

def check_sqlite_version(version: Tuple[int, int, int] = sqlite3.sqlite_version_info) -> None:
    if version < MIN_SQLITE:
        raise RuntimeError(
            "persistqueue_liteq needs SQLite %s or newer; this Python uses %s"
            % (".".join(map(str, MIN_SQLITE)), ".".join(map(str, version)))
        )


def _is_busy(exc: sqlite3.Error) -> bool:
    text = str(exc)
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


class Connections:
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

    def _restart(self, conn: sqlite3.Connection, frames: int) -> None:
        """Copy the whole WAL and have every connection let go of it, so
        that the next writer starts it from its beginning.  Tried for up to
        ``_RESTART_WAIT`` seconds, holding this process's writers back; a
        writer of another process that finds the WAL this long does the
        same instead of making it longer, so one of them gets SQLite's write
        lock free of the others.  (SQLite's busy handler, which sleeps a
        millisecond at least, lost that lock again and again to writers
        polling faster: 300 MB of 1 MB messages from two processes grew the
        WAL past 1 GB.)  If a long read holds on past the wait, the WAL is
        let grow to twice this length before the next try."""
        deadline = time.monotonic() + _RESTART_WAIT
        delay = _FIRST_RETRY
        while True:
            if not conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()[0]:
                self._restart_pages = _RESTART_PAGES
                return
            wal = self._wal_frames()
            if wal is None or wal[0] < frames or wal[1] == wal[0]:
                return  # restarted, or all copied, by another connection
            if time.monotonic() >= deadline:
                self._restart_pages = frames * 2
                logger.debug("%s: a RESTART checkpoint stayed busy for %gs (another "
                             "connection reads or writes); the WAL may grow to %d pages "
                             "before the next", self.path, _RESTART_WAIT, frames * 2)
                return
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, _LONGEST_RETRY)

    def _checkpoint_blind(self, conn: sqlite3.Connection) -> None:
        """Where the WAL's length cannot be read: a PASSIVE checkpoint, and
        a RESTART one if the WAL is still long."""
        try:
            pages = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
            if pages < self._restart_pages:
                return
            conn.execute("PRAGMA busy_timeout=%d" % (_RESTART_WAIT * 1000))
            try:
                busy = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()[0]
            finally:
                conn.execute("PRAGMA busy_timeout=0")
            self._restart_pages = pages * 2 if busy else _RESTART_PAGES
            if busy:
                logger.debug("%s: a RESTART checkpoint stayed busy for %gs (another "
                             "connection reads or writes); the WAL may grow to %d pages "
                             "before the next", self.path, _RESTART_WAIT, pages * 2)
        except sqlite3.Error:
            pass

    def _wal_frames(self) -> Optional[Tuple[int, int]]:
        """(frames in the WAL, frames of it checkpointed) from the -shm
        file's header, or None where it cannot be read."""
        if self._shm is None:
            fd = _kept_open(self._target + "-shm", self)
            self._shm = _UNREADABLE if fd is None else fd
        if self._shm == _UNREADABLE:
            return None
        try:
            return _SHM_HEADER.unpack(os.pread(self._shm, _SHM_HEADER.size, 0))
        except (OSError, struct.error):  # too short: not yet made
            return None

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

    def error(self, exc: sqlite3.Error) -> LiteQueueError:
        """The exception of ours that says what sqlite3's ``exc`` means,
        naming the file (sqlite3's own is chained as its cause)."""
        text = str(exc).lower()
        if isinstance(exc, sqlite3.ProgrammingError):
            # A bug (ours, or a caller's misuse of a connection), not the
            # file's doing; still ours, naming the file, with sqlite3's as
            # its cause.
            return StorageError("%s: SQLite refused a statement (%s: %s); nothing of "
                                "this operation was done" % (self.path, type(exc).__name__, exc))
        if "locked" in text or "busy" in text:
            return DatabaseBusy(
                "%s stayed locked by another connection for more than "
                "timeout_seconds=%g" % (self.path, self.timeout)
            )
        if "unable to open" in text or "disk i/o error" in text:
            # SQLite says the same when the process has no descriptor left
            # to open the file (or its -wal or -shm) with: ask the OS.
            starved = _out_of_descriptors()
            if starved:
                return OutOfFileDescriptors(
                    "%s cannot be opened: %s (SQLite said: %s); close files or "
                    "queues, or raise the limit (ulimit -n)" % (self.path, starved, exc)
                )
        if "readonly" in text or "read-only" in text or "read only" in text:
            return ReadOnlyDatabase("%s cannot be written: %s" % (self.path, exc))
        if "unable to open" in text:
            return ReadOnlyDatabase(
                "%s cannot be opened for writing (is the file or its directory "
                "read-only?): %s" % (self.path, exc)
            )
        if "disk is full" in text:
            return DiskFull(
                "%s: no room to write (%s; %s); nothing of this operation was "
                "stored, the queue works again once there is room"
                % (self.path, exc, _free_space(self._target))
            )
        if "too big" in text:
            return PayloadTooLarge(
                "%s: a value is longer than SQLite stores (its length limit is %s "
                "bytes); nothing was stored" % (self.path, _length_limit(self._local))
            )
        if "no such table" in text:
            return IncompatibleDatabase(
                "%s no longer has its queue tables (%s): were they dropped by another "
                "program while this queue had the file open?" % (self.path, exc)
            )
        if "not a database" in text or "malformed" in text:
            return IncompatibleDatabase("%s is not a usable SQLite database: %s" % (self.path, exc))
        if "disk i/o error" in text:
            return StorageError(
                "%s: the operating system failed to read or write the file or its "
                "-wal/-shm (%s); nothing of this operation was stored" % (self.path, exc)
            )
        return StorageError("%s: SQLite failed with %s: %s; nothing of this operation was "
                            "done" % (self.path, type(exc).__name__, exc))

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
        with _kept_lock:
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


def file_size(path: str) -> Optional[int]:
    """Bytes of the file at ``path``, or None if there is none."""
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def _out_of_descriptors() -> Optional[str]:
    """What says that this process cannot open a file now (SQLite needs up
    to three: the database, its -wal and its -shm), or None."""
    opened: List[int] = []
    try:
        for _ in range(3):
            opened.append(os.open(os.devnull, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)))
    except OSError as exc:
        if exc.errno == errno.ENFILE:
            return "the system ran out of file descriptors (ENFILE)"
        if exc.errno == errno.EMFILE:
            limit = "its limit" if resource is None else "its limit of %d" % (
                resource.getrlimit(resource.RLIMIT_NOFILE)[0])
            return "this process ran out of file descriptors (EMFILE: %s open files)" % limit
    finally:
        for fd in opened:
            os.close(fd)
    return None


def _free_space(path: str) -> str:
    try:
        st = os.statvfs(os.path.dirname(path))
    except OSError:
        return "free space unknown"
    return "%d bytes free on its file system" % (st.f_bavail * st.f_frsize)


def _length_limit(local: threading.local) -> str:
    """SQLITE_LIMIT_LENGTH of the connection in ``local`` (the thread's)."""
    try:
        return "%d" % local.conn.getlimit(sqlite3.SQLITE_LIMIT_LENGTH)
    except (AttributeError, sqlite3.Error):  # Python < 3.11 cannot ask
        return "1,000,000,000 unless this SQLite was built otherwise"


def _check_path(path: str, target: str) -> Optional[os.stat_result]:
    """Refuse what SQLite would follow or trust (see UnsafePath).

    SQLite follows a symlink at the database path (and creates the file
    where it points, as whoever runs it), and takes an existing -wal for
    the database's own: its frames are read as committed.  It opens the
    -wal and -shm with O_NOFOLLOW itself, but then says only "unable to open
    database file".  Called before every new connection (four lstat()s);
    what changes between this look and SQLite's open is not caught.
    """
    sides: Dict[str, os.stat_result] = {}
    for suffix in ("-wal", "-shm"):
        try:
            sides[suffix] = os.lstat(target + suffix)
        except FileNotFoundError:
            pass
        except OSError:
            pass  # SQLite will say what it cannot reach
    try:
        main = os.lstat(target)
    except OSError:
        main = None
    if main is not None and stat.S_ISLNK(main.st_mode):
        raise UnsafePath(
            "%s is a symbolic link (to %s): a queue does not follow one at its "
            "database path, since whoever made it chooses where the file is "
            "created; pass the real path" % (path, os.readlink(target))
        )
    if main is not None and not stat.S_ISREG(main.st_mode):
        raise UnsafePath("%s is not a regular file (mode %o)" % (path, main.st_mode))
    try:
        shared = os.stat(os.path.dirname(target)).st_mode & stat.S_IWOTH
    except OSError:
        shared = 0
    trusted = {os.geteuid()} if hasattr(os, "geteuid") else set()
    if main is not None:
        trusted.add(main.st_uid)
    for suffix, st in sides.items():
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
            raise UnsafePath(
                "%s%s is %s, not a file SQLite made: refused (remove it if no "
                "process has the queue open)" % (
                    path, suffix, "a symbolic link" if stat.S_ISLNK(st.st_mode)
                    else "not a regular file")
            )
        if main is None:
            raise UnsafePath(
                "%s%s exists but %s does not: SQLite would read its frames as the "
                "new database's content; remove it" % (path, suffix, path)
            )
        if shared and trusted and st.st_uid not in trusted:
            raise UnsafePath(
                "%s%s belongs to uid %d, neither the database's owner nor this "
                "process, in a directory that anyone may write: refused, since "
                "its content would be taken as committed" % (path, suffix, st.st_uid)
            )
    return main


def _create(target: str) -> None:
    """Create the (empty) database file with mode 0666 less the umask, as
    open() would.  SQLite would make it 0644 less the umask, so a group's
    umask 002 still gave 0644; it gives the -wal and -shm the database
    file's mode.  mknod() opens nothing: no descriptor of ours whose close
    could drop another connection's locks.  It never follows a symlink."""
    try:
        os.mknod(target, 0o666 | stat.S_IFREG)
        return
    except AttributeError:
        pass  # no mknod() at all (Windows)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EINVAL, errno.ENOSYS):
            return  # there already, or cannot be made: SQLite says so as before
    # No mknod() for files here (macOS): open and close at once, before any
    # connection of ours has the file.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        os.close(os.open(target, flags | getattr(os, "O_CLOEXEC", 0), 0o666))
    except OSError:
        pass


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


def _kept_open(path: str, user: Connections) -> Optional[int]:
    """A read-only descriptor of ``path`` (never through a symlink), kept
    open while ``user`` (a Connections) or others may need it (see
    ``_kept``); None if it cannot be opened."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    with _kept_lock:
        _kept_users.add(user)
        fd = _kept.get((st.st_dev, st.st_ino))
        if fd is not None:
            return fd
        _drop_kept()  # a new -shm: the one it replaced may be let go now
        flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(path, flags)
        except OSError:
            return None
        st = os.fstat(fd)
        return _kept.setdefault((st.st_dev, st.st_ino), fd)


def _drop_kept() -> None:
    """Close the kept descriptors of -shm files that were removed and that
    no connection of ours uses any more (see ``_kept``); called with
    ``_kept_lock`` held.  Without this, a process that opens and closes
    queues again and again kept a descriptor for every -shm it ever read."""
    users = list(_kept_users)
    for key, fd in list(_kept.items()):
        try:
            removed = os.fstat(fd).st_nlink == 0
        except OSError:
            continue
        if removed and not any(c._shm == fd and (c._all or c._broken is not None)
                               for c in users):
            del _kept[key]
            os.close(fd)


def _chained(error: LiteQueueError, cause: BaseException) -> LiteQueueError:
    """``error`` with ``cause`` as its cause, unless it is ``cause`` itself."""
    if error is not cause:
        error.__cause__ = cause
    return error


def _pages_written(rows: int) -> int:
    """About how many pages a commit that changed ``rows`` rows writes: a
    message's row, its index entries and the id sequence take 3 pages for
    one row, and rows share pages (some 25 small messages to a page, with
    their index entries)."""
    return 3 + rows // 25 if rows else 0


def _begin_immediate(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
