"""The upkeep of a queue file: checkpoints, VACUUM (on demand and
automatic), the integrity check and the sizes of the file and its WAL."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, List, Optional, Tuple

from ..engine import Maintenance, StorageSizes
from . import sql as _sql
from .files import file_size

if TYPE_CHECKING:
    from .engine import SQLiteEngine

logger = logging.getLogger("persistqueue_liteq")


class SQLiteMaintenance(Maintenance):
    """The upkeep of an SQLite engine's file (see :class:`Maintenance`):
    ``PRAGMA wal_checkpoint``, ``VACUUM``, ``PRAGMA integrity_check``, the
    automatic vacuum's threshold in the file, and the sizes of the file and
    its ``-wal``."""

    def __init__(self, engine: SQLiteEngine) -> None:
        self._engine = engine
        self._sql = engine.sql

    def checkpoint(self, mode: str = "TRUNCATE") -> Tuple[int, int, int]:
        """Copy the WAL into the database file; return SQLite's
        (busy, wal pages, pages checkpointed)."""
        mode = str(mode).upper()
        if mode not in Maintenance.CHECKPOINT_MODES:
            raise ValueError("checkpoint mode must be PASSIVE, FULL, RESTART or TRUNCATE; got %r" % mode)
        return tuple(self._engine._write("PRAGMA wal_checkpoint(%s)" % mode)[0])

    def vacuum(self) -> None:
        """Rebuild the file to give free pages back to the file system."""
        self._engine._write(self._sql.VACUUM)

    def integrity_check(self) -> List[str]:
        """SQLite's ``PRAGMA integrity_check``: ["ok"] when the file is sound."""
        return [row[0] for row in self._engine._rows("PRAGMA integrity_check")]

    def sizes(self) -> StorageSizes:
        path = self._engine.location
        return StorageSizes(file_size(path), file_size(path + "-wal"))

    @property
    def sizes_at_open(self) -> StorageSizes:
        return StorageSizes(*self._engine._conns.sizes_at_open)

    @property
    def auto_vacuum_free_pages(self) -> Optional[int]:
        """The file's threshold of free pages for an automatic VACUUM, or
        None (the default: never).  Read when the engine opens."""
        return self._engine._auto_vacuum

    def set_auto_vacuum(self, free_pages: Optional[int]) -> None:
        """Store in the file that an engine finding more than ``free_pages``
        free pages after it flushes its counts (at most once a second while
        it works) runs VACUUM; None turns it off.  Engines read the setting
        when they open.  A vacuum rewrites the whole file while holding the
        write lock: choose a threshold well above the pages a busy hour
        frees and fills again."""
        if free_pages is not None and (isinstance(free_pages, bool)
                                       or not isinstance(free_pages, int) or free_pages < 0):
            raise ValueError("free_pages must be a whole number >= 0 or None; got %r"
                             % (free_pages,))
        key = _sql.AUTO_VACUUM_KEY
        if free_pages is None:
            self._engine._write(self._sql.DELETE_META, (key,))
        else:
            self._engine._write(self._sql.WRITE_META, (key, str(free_pages)))
        self._engine._auto_vacuum = free_pages

    def vacuum_if_due(self) -> None:
        """VACUUM if the file has more free pages than its threshold; a busy
        file or any other error is logged and skipped, never raised (the
        engine calls this after its counts are flushed)."""
        engine, threshold = self._engine, self.auto_vacuum_free_pages
        try:
            free = engine._rows(self._sql.FREE_PAGES)[0][0]
            if free <= threshold:
                return
            logger.info("%s has %d free pages (auto_vacuum_free_pages=%d): vacuuming",
                        engine.location, free, threshold)
            engine._write(self._sql.VACUUM)
        except Exception as exc:
            logger.warning("automatic vacuum of %s skipped: %s", engine.location, exc)
