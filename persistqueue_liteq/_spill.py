"""Counts by key in a private temporary SQLite database (on disk, deleted
when closed), not in any queue file: where a pool's count of identical calls
goes once it has seen more distinct calls than it counts in memory (see
``pool._storer._Occurrences``)."""

from __future__ import annotations

import sqlite3

from .sqlite import sql
from .exceptions import StorageError

__all__ = ["SpilledCounts"]


class SpilledCounts:
    """How many times each key was counted before; used under its owner's
    lock (one connection, any thread)."""

    def __init__(self) -> None:
        try:
            self._conn = sqlite3.connect("", isolation_level=None, check_same_thread=False)
            self._conn.execute(sql.CREATE_OCCURRENCES)
        except sqlite3.Error as exc:
            raise _error(exc) from exc

    def next(self, key: str) -> int:
        """How many times ``key`` was counted before this time."""
        try:
            # A row of sqlite3 is Any: here n - 1, an INTEGER.
            return self._conn.execute(  # type: ignore[no-any-return]
                sql.NEXT_OCCURRENCE, (key,)).fetchone()[0]
        except sqlite3.Error as exc:
            raise _error(exc) from exc

    def close(self) -> None:
        self._conn.close()


def _error(exc: sqlite3.Error) -> StorageError:
    return StorageError("the temporary database counting a pool's calls failed (%s: %s); "
                        "the call was not submitted" % (type(exc).__name__, exc))
