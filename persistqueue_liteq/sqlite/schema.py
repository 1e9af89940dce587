"""Opening a queue file: its journal mode, and the tables of a prefix made,
checked, migrated and completed.

Mixed into :class:`~.engine.SQLiteEngine`, whose ``__init__`` calls
``_open_schema`` once; it uses the engine's ``_conns``, ``sql``, ``location``,
``readonly`` and ``_journal_mode``, and leaves ``_meta`` (the meta table, for
the clock to read), ``_schema_version`` and ``_sizes_kept``.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional

from .. import _clock
from ..exceptions import IncompatibleDatabase, ReadOnlyDatabase
from . import sql as _sql

if TYPE_CHECKING:
    import sqlite3
    import types

    from .connections import Connections

logger = logging.getLogger("persistqueue_liteq")

#: journal_mode: None (WAL, but an application's database is not switched
#: unless asked), "wal" (switch it), "keep" (leave the file's mode alone).
JOURNAL_MODES = (None, "wal", "keep")


def check_directory(path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.stat(directory)
    except FileNotFoundError:
        raise FileNotFoundError(
            "cannot open queue database %s: directory %s does not exist" % (path, directory)
        ) from None
    except PermissionError as exc:
        raise ReadOnlyDatabase(
            "cannot open queue database %s: no permission to reach %s" % (path, directory)
        ) from exc
    if not os.path.isdir(directory):
        raise NotADirectoryError("cannot open queue database %s: %s is not a directory" % (path, directory))


class SchemaMixin:
    """The tables of an engine's prefix in its file."""

    _conns: Connections
    sql: types.SimpleNamespace
    location: str
    readonly: bool
    _journal_mode: Optional[str]
    #: The meta table as read with the schema (None once the clock has it).
    _meta: Optional[Dict[str, Any]]
    _schema_version: int
    #: Whether the file keeps its queues' sizes (triggers), for counts.
    _sizes_kept: bool

    if TYPE_CHECKING:
        def _anchor(self, conn: sqlite3.Connection) -> float:
            """The clock's (see :class:`~.anchor.AnchoredClock`)."""

    def _open_schema(self) -> None:
        if self.readonly:
            try:
                ours = self._conns.run(self._check_schema)
            except BaseException:
                self._conns.close()
                raise
            if not ours:
                self._conns.close()
                raise IncompatibleDatabase(
                    "%s has no persistqueue_liteq queue tables (table prefix %r)"
                    % (self.location, self.sql.PREFIX)
                )
            if self._schema_version < _sql.SCHEMA_VERSION:
                self._conns.close()
                raise ReadOnlyDatabase(
                    "%s has schema version %d and this persistqueue_liteq reads %d: open it "
                    "once for writing to upgrade it" % (self.location, self._schema_version,
                                                        _sql.SCHEMA_VERSION))
            self._add_missing_schema()  # only looks
            return
        if self._conns.run(self._wal_and_schema_ready):
            if self._schema_version < _sql.SCHEMA_VERSION:
                with self._conns.transaction() as conn:
                    self._check_schema(conn)  # again: another process may have upgraded it
                    self._migrate(conn)
            self._add_missing_schema()
            return
        with self._conns.transaction() as conn:
            if not self._check_schema(conn):
                for statement in self.sql.CREATE_TABLES:
                    conn.execute(statement)
                conn.executemany(
                    self.sql.WRITE_META,
                    [("format", _sql.FORMAT_NAME), ("schema_version", str(_sql.SCHEMA_VERSION))],
                )
                logger.info("created queue tables %s* in %s", self.sql.PREFIX, self.location)
                if _clock.SUPPORTED:  # anchored now, not in a transaction of its own
                    self._anchor(conn)
                    self._meta = dict(conn.execute(self.sql.READ_META).fetchall())
            else:  # made meanwhile by another process, maybe an older version
                self._migrate(conn)
        # Made here, or just now by another process (perhaps of an older
        # version, without kept sizes).
        self._add_missing_schema()

    def _add_missing_schema(self) -> None:
        """Add to a file made by an older version the index and the kept
        sizes it lacks (a read of the schema when it has them).  Both only
        make queries faster: a file we may not write to keeps working
        without them (counting its messages)."""
        s = self.sql
        self._sizes_kept = self._has(s.TRIGGER_EXISTS, s.SIZES_TRIGGER)
        if self.readonly or (self._sizes_kept and self._has(s.INDEX_EXISTS, s.ACTIVITY_INDEX)):
            return
        try:
            with self._conns.transaction() as conn:
                conn.execute(s.CREATE_ACTIVITY_INDEX)
                if not conn.execute(s.TRIGGER_EXISTS, (s.SIZES_TRIGGER,)).fetchone():
                    # Counted in the transaction that makes the triggers:
                    # no change of another process falls in between.
                    conn.execute(s.CREATE_SIZES)
                    for statement in s.CREATE_SIZES_TRIGGERS:
                        conn.execute(statement)
                    conn.execute(s.CLEAR_SIZES)
                    conn.execute(s.COUNT_SIZES)
        except Exception as exc:
            logger.debug("sizes and indexes not added to %s: %s", self.location, exc)
        else:
            self._sizes_kept = True
            logger.info("added kept sizes and indexes to %s", self.location)

    def _has(self, statement: str, name: str) -> bool:
        return bool(self._conns.execute(statement, (name,)))

    def _wal_and_schema_ready(self, conn: sqlite3.Connection) -> bool:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0].lower()
        if mode != "wal" and self._journal_mode != "keep":
            if self._journal_mode is None:
                self._refuse_foreign_wal(conn, mode)
            conn.execute("PRAGMA journal_mode=WAL")
        return self._check_schema(conn)

    def _refuse_foreign_wal(self, conn: sqlite3.Connection, mode: str) -> None:
        """An application's database (tables that are not ours) is not moved
        to WAL mode unless ``journal_mode="wal"`` says so: WAL changes how
        every connection of the application works (the -wal and -shm files,
        no network file systems)."""
        prefix = self.sql.PREFIX
        theirs = [row[0] for row in conn.execute(self.sql.OTHER_TABLES, (prefix, prefix))]
        if theirs:
            raise IncompatibleDatabase(
                "%s is in journal mode %s and holds tables that are not persistqueue_liteq's "
                "(%s): an application's database, which a queue would switch to WAL mode, "
                "changing how every connection to it works.  Pass journal_mode='wal' to "
                "allow the switch, or journal_mode='keep' to keep mode %s (readers then "
                "wait for writers)" % (self.location, mode, ", ".join(theirs), mode))

    def _check_schema(self, conn: sqlite3.Connection) -> bool:
        """True if the tables exist and are ours; False if they must be made."""
        prefix = self.sql.PREFIX
        exists: Callable[[str], Any] = lambda table: conn.execute(
            self.sql.TABLE_EXISTS, (prefix + table,)).fetchone()
        if not exists("meta"):
            if exists("messages"):
                raise IncompatibleDatabase(
                    "%s has a table %smessages that persistqueue_liteq did not create; "
                    "use another table_prefix" % (self.location, prefix)
                )
            return False
        meta = self._meta = dict(conn.execute(self.sql.READ_META).fetchall())
        if meta.get("format") != _sql.FORMAT_NAME:
            raise IncompatibleDatabase(
                "%s has a table %smeta that is not persistqueue_liteq's; use another "
                "table_prefix" % (self.location, prefix)
            )
        try:
            version = self._schema_version = int(meta.get("schema_version", "0"))
        except ValueError:
            raise IncompatibleDatabase(
                "%s: table %smeta says schema version %r, which is not a number; "
                "the file was changed by another program" % (
                    self.location, prefix, meta["schema_version"])
            ) from None
        if version > _sql.SCHEMA_VERSION:
            raise IncompatibleDatabase(
                "%s was written by a newer persistqueue_liteq (schema version %d; this "
                "version reads up to %d): upgrade persistqueue_liteq"
                % (self.location, version, _sql.SCHEMA_VERSION)
            )
        if not exists("messages"):
            raise IncompatibleDatabase(
                "%s has persistqueue_liteq's table %smeta but no %smessages: was it "
                "dropped by another program?" % (self.location, prefix, prefix)
            )
        return True

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Take the file from its schema version to ours, in the caller's
        transaction (so that a crash leaves the old version whole)."""
        old = self._schema_version
        for version in range(old + 1, _sql.SCHEMA_VERSION + 1):
            for statement in self.sql.MIGRATIONS.get(version, ()):
                conn.execute(statement)
        if old < _sql.SCHEMA_VERSION:
            conn.execute(self.sql.WRITE_META, ("schema_version", str(_sql.SCHEMA_VERSION)))
            self._schema_version = _sql.SCHEMA_VERSION
            logger.info("upgraded queue tables %s* in %s from schema version %d to %d",
                        self.sql.PREFIX, self.location, old, _sql.SCHEMA_VERSION)
