"""The WAL checkpoint policy of Connections (a mixin), and the -shm reads.

Checkpoints (copying the WAL back into the database file) are run here;
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
"""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import struct
import threading
import time
import weakref
from typing import Dict, Optional, Tuple

from .errors import _FIRST_RETRY, _LONGEST_RETRY

logger = logging.getLogger("persistqueue_liteq")

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

# Descriptors of -shm files opened here to read their header, by (st_dev,
# st_ino).  Closing any descriptor of a file drops every POSIX lock this
# process holds on it, SQLite's own included ("How To Corrupt An SQLite
# Database File", 2.2), so one is closed only once nothing of this process
# can hold a lock on its file: the -shm was removed (SQLite removes it with
# the last connection to the database, in any process) and no Connections
# that read it has a connection left (see _drop_kept).  _kept_users: the
# Connections that took one.  Both guarded by _kept_lock.
_kept: Dict[Tuple[int, int], int] = {}
_kept_users: weakref.WeakSet[_Checkpointing] = weakref.WeakSet()
_kept_lock = threading.Lock()


def _new_kept_lock() -> None:
    global _kept_lock
    _kept_lock = threading.Lock()  # another thread may have held it at fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_kept_lock)


class _Checkpointing:
    """The part of :class:`~persistqueue_liteq.sqlite.connections.Connections`
    that checkpoints the WAL (its callers, ``_look`` and ``_changed``, stay
    on the write path there); every method is called with the write lock
    held."""

    path: str
    _target: str
    _shm: Optional[int]
    _restart_pages: int
    _all: Dict[sqlite3.Connection, threading.Thread]
    _broken: Optional[str]

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


def _kept_open(path: str, user: _Checkpointing) -> Optional[int]:
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


def _pages_written(rows: int) -> int:
    """About how many pages a commit that changed ``rows`` rows writes: a
    message's row, its index entries and the id sequence take 3 pages for
    one row, and rows share pages (some 25 small messages to a page, with
    their index entries)."""
    return 3 + rows // 25 if rows else 0
