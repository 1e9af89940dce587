"""The tables of an engine's namespace: made, checked and upgraded.

Namespaces.  ``schema`` (else the connection's ``current_schema()`` when the
engine opens) and ``table_prefix`` name the tables, so several applications
can share a database.  The schema (if missing) and tables are created on
first use under an advisory lock; no superuser is needed, only the right to
create in the database (or the schema).  ``meta`` records the layout's
version; a database of a newer version is refused.

Mixed into :class:`~.engine.PostgresEngine`, whose ``__init__`` calls
``_open`` once; it uses the engine's ``_conns``, ``location``, ``readonly``
and ``_sync`` (see :class:`~.clock.ServerClock`), and leaves ``sql``,
``_lock_key`` (the namespace's advisory lock) and ``_instance`` (the id in
``meta`` that tells an application's connection to these tables).
"""

from __future__ import annotations

import logging
import types
import uuid
from typing import TYPE_CHECKING, Dict, Optional

import psycopg

from ..exceptions import IncompatibleDatabase
from . import notify as _notify
from . import sql as _sql

if TYPE_CHECKING:
    from .connections import Conn, Connections

logger = logging.getLogger("persistqueue_liteq")


def _namespace_key(schema: str, prefix: str) -> int:
    """The second key of the namespace's advisory locks (an int4)."""
    return int(_notify.digest("%s.%s" % (schema, prefix), 4), 16) - (1 << 31)


class SchemaMixin:
    """The tables of an engine's schema and table prefix."""

    _conns: Connections
    sql: types.SimpleNamespace
    location: str
    readonly: bool
    # Set when the tables are opened (see _open).
    _lock_key: int
    _instance: Optional[str]

    if TYPE_CHECKING:
        def _sync(self, conn: Conn) -> None:
            """The clock's (see :class:`~.clock.ServerClock`)."""

    def _open(self, schema: Optional[str], prefix: str) -> None:
        conn = self._conns.connect()
        try:
            try:
                self._sync(conn)
                if schema is None:
                    # (current_schema(): one row.)
                    schema = conn.execute(_sql.CURRENT_SCHEMA).fetchone()[0]  # type: ignore[index]
                    if schema is None:
                        raise ValueError(
                            "%s: the connection has no current schema (search_path is "
                            "empty); pass schema=..." % self.location)
                self.sql = _sql.render(schema, prefix)
                self._lock_key = _namespace_key(schema, prefix)
                with self._conns.transaction_on(conn):
                    if not self._check_schema(conn):
                        if self.readonly:
                            raise FileNotFoundError(
                                "no queue tables %s.%s* in %s" % (
                                    self.sql.SCHEMA, self.sql.PREFIX, self.location))
                        self._create_schema(conn)
            except psycopg.Error as exc:
                raise self._conns.error(exc) from exc
        finally:
            conn.close()

    def _create_schema(self, conn: Conn) -> None:
        s = self.sql
        conn.execute(s.LOCK_NAMESPACE, (_sql.LOCK_CLASS, self._lock_key))
        if self._check_schema(conn):  # made meanwhile by another process
            return
        exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s",
                              (s.SCHEMA,)).fetchone()
        if not exists:
            conn.execute(s.CREATE_SCHEMA)
        for statement in s.CREATE_TABLES:
            conn.execute(statement)
        self._instance = str(uuid.uuid4())  # tells an application's connection to here
        with conn.cursor() as cur:
            cur.executemany(s.WRITE_META, [
                ("format", _sql.FORMAT_NAME), ("schema_version", str(_sql.SCHEMA_VERSION)),
                ("instance", self._instance)])
        logger.info("created queue tables %s.%s* in %s", s.SCHEMA, s.PREFIX, self.location)

    def _check_schema(self, conn: Conn) -> bool:
        """True if the tables exist and are ours; False if they must be made."""
        s = self.sql
        where = "%s (schema %s, table prefix %r)" % (self.location, s.SCHEMA, s.PREFIX)
        # (Each SELECT of these returns one row.)
        if not conn.execute(s.META_EXISTS).fetchone()[0]:  # type: ignore[index]
            if conn.execute(s.MESSAGES_EXISTS).fetchone()[0]:  # type: ignore[index]
                raise IncompatibleDatabase(
                    "%s has a table %smessages that persistqueue_liteq did not create; use "
                    "another table_prefix or schema" % (where, s.PREFIX))
            return False
        meta: Dict[str, str] = dict(conn.execute(s.READ_META).fetchall())
        if meta.get("format") != _sql.FORMAT_NAME:
            raise IncompatibleDatabase("%s has a table %smeta that is not persistqueue_liteq's; "
                                       "use another table_prefix or schema" % (where, s.PREFIX))
        try:
            version = int(meta.get("schema_version", "0"))
        except ValueError:
            raise IncompatibleDatabase("%s: its meta table says schema version %r, which is "
                                       "not a number" % (where, meta["schema_version"])) from None
        if version > _sql.SCHEMA_VERSION:
            raise IncompatibleDatabase(
                "%s was written by a newer persistqueue_liteq (schema version %d; this "
                "version reads up to %d): upgrade persistqueue_liteq"
                % (where, version, _sql.SCHEMA_VERSION))
        if not conn.execute(s.MESSAGES_EXISTS).fetchone()[0]:  # type: ignore[index]  # one row
            raise IncompatibleDatabase("%s has persistqueue_liteq's meta table but no "
                                       "%smessages: was it dropped?" % (where, s.PREFIX))
        self._instance = meta.get("instance")
        if version < _sql.SCHEMA_VERSION and not self.readonly:
            self._upgrade(conn)  # a read-only engine reads the older tables as they are
        return True

    def _upgrade(self, conn: Conn) -> None:
        """Take the tables to this version, in the transaction that opens
        them, once whoever else opens them at the same time."""
        s = self.sql
        conn.execute(s.LOCK_NAMESPACE, (_sql.LOCK_CLASS, self._lock_key))
        meta: Dict[str, str] = dict(conn.execute(s.READ_META).fetchall())
        old = int(meta["schema_version"])
        for version in range(old + 1, _sql.SCHEMA_VERSION + 1):
            for statement in s.MIGRATIONS.get(version, ()):
                conn.execute(statement)
        if old < _sql.SCHEMA_VERSION:
            conn.execute(s.WRITE_META, ("schema_version", str(_sql.SCHEMA_VERSION)))
            logger.info("upgraded queue tables %s.%s* in %s from schema version %d to %d",
                        s.SCHEMA, s.PREFIX, self.location, old, _sql.SCHEMA_VERSION)

    def _check_same_database(self, conn: Conn) -> None:
        s = self.sql
        theirs = None
        if conn.execute(s.META_EXISTS).fetchone()[0]:  # type: ignore[index]  # one row
            row = conn.execute(s.READ_INSTANCE).fetchone()
            theirs = row and row[0]
        if theirs is None or theirs != self._instance:
            raise ValueError("the connection is not to the queue's database %s (schema %s, "
                             "table prefix %r)" % (self.location, s.SCHEMA, s.PREFIX))
