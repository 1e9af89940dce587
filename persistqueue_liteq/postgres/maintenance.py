"""The upkeep of a PostgreSQL engine's tables: VACUUM and ANALYZE, a check
of the tables and their indexes, their sizes, and what autovacuum sees of
them.

PostgreSQL manages its own write-ahead log and vacuums tables by itself
(autovacuum, with the settings the tables get when they are created: see
``sql.TABLE_SETTINGS``), so there is no checkpoint to ask for and no
automatic vacuum of ours to configure: those two raise Unsupported.
Everything here works on this engine's tables only (its schema and table
prefix), never on the rest of the database, and needs no superuser: the
role that owns the tables may vacuum them.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import psycopg
from psycopg import errors

from ..engine import Maintenance, StorageSizes
from ..exceptions import ReadOnlyDatabase, StorageError, Unsupported
from . import sql as _sql

if TYPE_CHECKING:
    from typing import NoReturn

    from psycopg.abc import Params

    from .engine import PostgresEngine

#: The engine's tables, without their prefix: what is vacuumed, checked
#: and measured.
TABLES = ("messages", "queues", "results", "counters", "activity", "meta")

# -- the statements (catalog reads: nothing to render; most take the list of the
# engine's tables) -------------------------------------------------------------------

TABLES_EXIST = "SELECT t, to_regclass(t) IS NOT NULL FROM unnest(%s::text[]) AS t"

INVALID_INDEXES = """
SELECT i.indexrelid::regclass::text FROM pg_index i
 WHERE i.indrelid IN (SELECT to_regclass(t) FROM unnest(%s::text[]) AS t)
   AND NOT (i.indisvalid AND i.indisready)"""

BTREE_INDEXES = """
SELECT i.indexrelid::regclass::text FROM pg_index i
  JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
 WHERE a.amname = 'btree'
   AND i.indrelid IN (SELECT to_regclass(t) FROM unnest(%s::text[]) AS t)"""

# amcheck's checks, schema-qualified, where the extension is installed and
# this role may run them (by default only superusers may).
AMCHECK_FUNCTIONS = """
SELECT p.proname, quote_ident(n.nspname) || '.' || quote_ident(p.proname)
  FROM pg_extension e
  JOIN pg_depend d ON d.refobjid = e.oid AND d.deptype = 'e'
       AND d.classid = 'pg_proc'::regclass
  JOIN pg_proc p ON p.oid = d.objid JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE e.extname = 'amcheck' AND has_function_privilege(p.oid, 'EXECUTE')
   AND ((p.proname = 'bt_index_check' AND p.pronargs = 2) OR p.proname = 'verify_heapam')"""

TABLES_SIZE = """
SELECT coalesce(sum(pg_total_relation_size(to_regclass(t))), 0)::bigint
  FROM unnest(%s::text[]) AS t"""

TABLE_OPTIONS = """
SELECT t, c.reloptions FROM unnest(%s::text[]) AS t JOIN pg_class c ON c.oid = to_regclass(t)"""

TABLE_ROWS = """
SELECT t, s.n_live_tup, s.n_dead_tup,
       extract(epoch FROM greatest(s.last_vacuum, s.last_autovacuum))::float8
  FROM unnest(%s::text[]) AS t JOIN pg_stat_all_tables s ON s.relid = to_regclass(t)"""

# The transaction of the database that holds back, the longest, what a
# vacuum may remove (its snapshot may still see the dead rows).
OLDEST_TRANSACTION = """
SELECT extract(epoch FROM clock_timestamp() - xact_start)::float8, pid, state
  FROM pg_stat_activity
 WHERE datname = current_database() AND backend_xmin IS NOT NULL
   AND pid <> pg_backend_pid()
 ORDER BY age(backend_xmin) DESC LIMIT 1"""


class PostgresMaintenance(Maintenance):
    """The upkeep of a :class:`~persistqueue_liteq.postgres.engine.PostgresEngine`'s
    tables (see :class:`Maintenance`)."""

    def __init__(self, engine: PostgresEngine) -> None:
        self._engine = engine
        self._sql = engine.sql
        self._tables = tuple(self._qualified(name) for name in TABLES)
        self._at_open: Optional[StorageSizes] = None

    def _qualified(self, name: str) -> str:
        s = self._sql
        return "%s.%s" % (_sql.quote_ident(s.SCHEMA), _sql.quote_ident(s.PREFIX + name))

    # -- PostgreSQL does these itself ------------------------------------------------

    def checkpoint(self, mode: str = "TRUNCATE") -> NoReturn:
        raise Unsupported(
            "%s (PostgreSQL) manages its write-ahead log itself: there is no checkpoint "
            "to ask for" % self._engine.location)

    @property
    def auto_vacuum_free_pages(self) -> Optional[int]:
        """None: PostgreSQL's autovacuum, not this library, vacuums the tables
        (:meth:`vacuum_settings` shows how)."""
        return None

    def set_auto_vacuum(self, free_pages: Optional[int]) -> NoReturn:
        raise Unsupported(
            "%s (PostgreSQL): autovacuum vacuums the queue tables, with the settings they "
            "get at creation (see vacuum_settings()); change them with ALTER TABLE ... SET"
            % self._engine.location)

    # -- vacuum ---------------------------------------------------------------------

    def vacuum(self, full: bool = True) -> None:
        """``VACUUM (FULL, ANALYZE)`` of the engine's tables: rewritten
        without their dead rows, so the space goes back to the file system.
        It holds an exclusive lock on each table while it rewrites it (every
        put and lease waits).  With ``full=False``, a plain ``VACUUM
        (ANALYZE)``: no such lock, the space is only made reusable, as
        autovacuum does it.  Neither can remove rows that a transaction
        still open elsewhere in the database may see."""
        self._writable("vacuum")
        options = "FULL, ANALYZE" if full else "ANALYZE"
        # VACUUM refuses to run in a transaction: on a connection of its own.
        self._autocommit("VACUUM (%s) %s" % (options, ", ".join(self._tables)))

    def analyze(self) -> None:
        """``ANALYZE`` of the engine's tables (fresh statistics for the
        planner; autovacuum also does it)."""
        self._writable("analyze")
        self._autocommit("ANALYZE %s" % ", ".join(self._tables))

    def apply_table_settings(self) -> None:
        """Give the engine's tables the storage settings that new tables get
        (``sql.TABLE_SETTINGS``: autovacuum at 2% of the messages table,
        fillfactor for the counters): for tables made by an earlier version.
        Needs the role that owns them (ReadOnlyDatabase otherwise)."""
        self._writable("apply_table_settings")
        for statement in self._sql.TABLE_SETTINGS:
            self._autocommit(statement)

    def _writable(self, operation: str) -> None:
        if self._engine.readonly:
            raise ReadOnlyDatabase("%s was opened read-only: %s changes it"
                                   % (self._engine.location, operation))

    def _autocommit(self, statement: str, params: Optional[Params] = None) -> List[Any]:
        """Run ``statement`` on a connection of its own, outside any
        transaction, waiting for locks up to the engine's timeout; return
        its rows, if it has any.  (Works once the engine is closed too.)"""
        conns = self._engine._conns
        conn = conns.connect()
        try:
            conn.execute("SET lock_timeout = %d" % max(int(conns.timeout * 1000), 1))
            cursor = conn.execute(statement, params)
            return cursor.fetchall() if cursor.description is not None else []
        except psycopg.Error as exc:
            raise conns.error(exc) from exc
        finally:
            conn.close()

    # -- looking ---------------------------------------------------------------------

    def integrity_check(self) -> List[str]:
        """``["ok"]``, or one str per problem: a table of the engine missing,
        an index left invalid (a failed ``CREATE INDEX CONCURRENTLY``, say),
        and what the ``amcheck`` extension finds in the B-tree indexes and
        (PostgreSQL 14 and later) the tables, where that extension is
        installed in the database (the check reads every page)."""
        problems: List[str] = []
        for table, exists in self._engine._rows(TABLES_EXIST, (list(self._tables),)):
            if not exists:
                problems.append("table %s is missing" % table)
        for (index,) in self._engine._rows(INVALID_INDEXES, (list(self._tables),)):
            problems.append("index %s is invalid: rebuild it with REINDEX INDEX %s"
                            % (index, index))
        if not problems:
            problems.extend(self._amcheck())
        return problems or ["ok"]

    def _amcheck(self) -> List[str]:
        """What amcheck's functions that this role may run find; nothing
        when the extension is not installed."""
        functions: Dict[str, str] = dict(self._engine._rows(AMCHECK_FUNCTIONS))
        problems: List[str] = []
        check_index = functions.get("bt_index_check")
        if check_index is not None:
            for (index,) in self._engine._rows(BTREE_INDEXES,
                                               (list(self._tables),)):
                try:
                    self._engine._rows("SELECT %s(%%s::regclass, true)" % check_index,
                                       (index,))
                except StorageError as exc:
                    if not isinstance(exc.__cause__, (errors.IndexCorrupted,
                                                      errors.DataCorrupted)):
                        raise
                    problems.append("index %s: %s" % (index, exc.__cause__))
        check_table = functions.get("verify_heapam")
        if check_table is not None:
            for table in self._tables:
                for block, item, message in self._engine._rows(
                        "SELECT blkno, offnum, msg FROM %s(%%s::regclass)" % check_table,
                        (table,)):
                    problems.append("table %s, block %s, item %s: %s"
                                    % (table, block, item, message))
        return problems

    def sizes(self) -> StorageSizes:
        """The bytes of the engine's tables with their indexes and TOAST
        (``pg_total_relation_size``); ``log`` is None: the write-ahead log
        is the whole server's.  Works once the engine is closed too."""
        return StorageSizes(self._autocommit(TABLES_SIZE,
                                             (list(self._tables),))[0][0], None)

    @property
    def sizes_at_open(self) -> StorageSizes:
        """The sizes when this was first read (opening an engine writes no
        file: the nearest moment before the caller's work)."""
        if self._at_open is None:
            self._at_open = self.sizes()
        return self._at_open

    def vacuum_settings(self) -> Dict[str, Dict[str, str]]:
        """``{table: {setting: value}}``: the storage settings (reloptions:
        autovacuum thresholds, fillfactor) of each of the engine's tables."""
        settings: Dict[str, Dict[str, str]] = {}
        for table, options in self._engine._rows(TABLE_OPTIONS,
                                                 (list(self._tables),)):
            settings[table] = dict(option.split("=", 1) for option in options or ())
        return settings

    def dead_rows(self) -> Dict[str, Tuple[int, int, Optional[float]]]:
        """``{table: (live rows, dead rows, last vacuum)}`` as the server's
        statistics have them (approximate; ``last vacuum`` the wall-clock
        seconds of the latest manual or automatic vacuum, or None).  Dead
        rows that stay high mean that vacuums cannot remove them: a
        transaction open for long elsewhere in the database."""
        return {table: (live, dead, last)
                for table, live, dead, last in self._engine._rows(
                    TABLE_ROWS, (list(self._tables),))}

    def oldest_transaction(self) -> Optional[Tuple[float, int, str]]:
        """``(seconds, pid, state)`` of the oldest transaction open in the
        database that holds back what vacuums may remove, or None."""
        rows = self._engine._rows(OLDEST_TRANSACTION)
        return tuple(rows[0]) if rows else None

    def health(self) -> List[Tuple[str, str]]:
        """The dead rows of the messages table, the transaction that holds
        back vacuums the longest, and the table's autovacuum settings."""
        lines: List[Tuple[str, str]] = []
        messages = self._tables[0]
        live, dead, last = self.dead_rows().get(messages, (0, 0, None))
        lines.append(("rows", "%d live, %d dead in %s (last vacuum: %s)" % (
            live, dead, messages, "never" if last is None else
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last)))))
        oldest = self.oldest_transaction()
        if oldest is not None:
            seconds, pid, state = oldest
            lines.append(("oldest tx", "%.0f s open (pid %s, %s): no vacuum removes rows "
                          "that it may still see" % (seconds or 0, pid, state or "?")))
        options = self.vacuum_settings().get(messages, {})
        lines.append(("autovacuum", ", ".join("%s=%s" % item for item in sorted(options.items()))
                      or "PostgreSQL's defaults (made by an earlier version: "
                         "apply_table_settings() gives this version's)"))
        return lines
