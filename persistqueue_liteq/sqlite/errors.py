"""What sqlite3's errors mean, as exceptions of ours (a mixin of Connections).

Every error of the driver becomes one of ours (:meth:`Connections.error`),
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

import sqlite3
import threading
from typing import TYPE_CHECKING

from ..exceptions import (
    DatabaseBusy,
    DiskFull,
    IncompatibleDatabase,
    OutOfFileDescriptors,
    PayloadTooLarge,
    ReadOnlyDatabase,
    StorageError,
)
from .files import _free_space, _out_of_descriptors

if TYPE_CHECKING:
    from ..exceptions import LiteQueueError

# Sleeps between two tries of a statement that found the database locked
# (see the connections module's docstring), and of a RESTART checkpoint.
_FIRST_RETRY = 0.00005
_LONGEST_RETRY = 0.005


def _is_busy(exc: sqlite3.Error) -> bool:
    text = str(exc)
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


class _ErrorTranslation:
    """The part of :class:`~persistqueue_liteq.sqlite.connections.Connections`
    that turns sqlite3's errors into ours."""

    path: str
    timeout: float
    _target: str
    _local: threading.local

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


def _length_limit(local: threading.local) -> str:
    """SQLITE_LIMIT_LENGTH of the connection in ``local`` (the thread's)."""
    try:
        return "%d" % local.conn.getlimit(sqlite3.SQLITE_LIMIT_LENGTH)
    except (AttributeError, sqlite3.Error):  # Python < 3.11 cannot ask
        return "1,000,000,000 unless this SQLite was built otherwise"


def _chained(error: LiteQueueError, cause: BaseException) -> LiteQueueError:
    """``error`` with ``cause`` as its cause, unless it is ``cause`` itself."""
    if error is not cause:
        error.__cause__ = cause
    return error
