"""The engine on a PostgreSQL database (see :class:`~persistqueue_liteq.engine.Engine`).

Statements are in :mod:`.sql`, connections in :mod:`.connections`, wake-ups
(LISTEN/NOTIFY) in :mod:`.notify`; what is here is the algorithm, the same as
the SQLite engine's wherever the databases allow.

Concurrency.  Every method is one transaction.  A lease selects its rows
``FOR UPDATE SKIP LOCKED`` and moves them out of the ready range in the same
statement: two consumers never lease the same message while its lease holds,
and neither waits for the other.  Two producers putting the same ``key`` at
once store it once (``ON CONFLICT``; the second waits for the first's commit
and finds its message).  Writers of results hold an advisory lock of the
namespace from their INSERT to their commit, so results are committed in the
order of their ``seq`` and a reader following :meth:`results_since` never
skips one.

Time.  Stored times are seconds on the *server's* clock, so that processes
on different machines agree whatever their own clocks say.  ``now()`` does
not ask the server each time: when a connection is taken from the pool and
the last reading is older than ``CLOCK_RESYNC`` seconds, the engine reads
``clock_timestamp()`` and keeps its offset from this machine's CLOCK_BOOTTIME
(monotonic where there is none).  The offset is taken at the end of the
round trip, so ``now()`` lags the server by at most that round trip (plus
the drift of the local clock between two readings, a few microseconds a
second): a time compared on the server with ``now()`` has never been reached
early.  ``now()`` never goes back within a process.  A step of the server's
clock moves every lease, delay and TTL; NTP's slewing does not matter.

Namespaces.  ``schema`` (else the connection's ``current_schema()`` when the
engine opens) and ``table_prefix`` name the tables, so several applications
can share a database.  The schema (if missing) and tables are created on
first use under an advisory lock; no superuser is needed, only the right to
create in the database (or the schema).  ``meta`` records the layout's
version; a database of a newer version is refused.
"""

from __future__ import annotations

import atexit
import json
import logging
import threading
import time
import uuid
import weakref
from typing import (TYPE_CHECKING, Any, Callable, ContextManager, Dict, Iterable, List,
                    Mapping, Optional, Sequence, Tuple, TypeVar, Union, overload)

import psycopg

from .. import _clock
from ..backends import redact
from .._sql_engine import SQLEngine, new_token
from ..engine import EngineSpec, Message, Metrics
from ..exceptions import IncompatibleDatabase
from . import notify as _notify
from . import sql as _sql
from .connections import Connections

if TYPE_CHECKING:
    from types import TracebackType
    from typing import Unpack

    from psycopg.abc import Params
    from psycopg.rows import TupleRow

    from ..engine import CountKind, KeyedStatus, Order, Outcome, QueueStats, Sealer, WakeKind
    from .connections import Conn, Tx
    from .maintenance import PostgresMaintenance
    from .notify import _Waiter

    #: What complete_many's transaction returns: acks, dead-lettered, the
    #: rows leased, their token and lease's end, the time and floor it leased at.
    _Completed = Tuple[int, int, List[TupleRow], Optional[int], Optional[float],
                       Optional[float], Optional[float]]

    T = TypeVar("T")

__all__ = ["PostgresEngine"]

logger = logging.getLogger("persistqueue_liteq")

#: Seconds after which the engine reads the server's clock again.
CLOCK_RESYNC = 10.0

# FIFO leases from a floor.  Every message taken leaves index entries
# behind (its versions before the lease and before the ack) that only a
# vacuum removes, and a vacuum cannot while a transaction elsewhere in the
# database is open that may still see them: a lease that scanned the queue
# from its start would step over all of them, ever slower.  So a FIFO lease
# scans from the visible_at of the latest message this engine leased from
# that queue, less FIFO_SLACK seconds (times of two hosts' clocks, commits
# a little out of order), and once every FIFO_FULL_SCAN seconds from the
# start: a message made visible behind that floor (a transaction that put
# it and committed late, a clock stepped back) is leased within that time.
FIFO_SLACK = 0.05
FIFO_FULL_SCAN = 1.0

_local_clock = _clock.local_boottime or time.monotonic

_open_engines: weakref.WeakSet[PostgresEngine] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    for engine in list(_open_engines):
        try:
            engine.flush_metrics()
        except Exception:
            pass


def _namespace_key(schema: str, prefix: str) -> int:
    """The second key of the namespace's advisory locks (an int4)."""
    return int(_notify.digest("%s.%s" % (schema, prefix), 4), 16) - (1 << 31)


class PostgresEngine(SQLEngine):
    """Messages of many named queues in one PostgreSQL database.

    Args:
        url: a ``postgresql://`` URL (libpq's parameters in its query stay
            there: ``sslmode``, ``connect_timeout``, ...).
        timeout: seconds to wait for a row lock or a free connection of
            this process's pool before raising DatabaseBusy.
        table_prefix: prefix of the tables (several applications, or
            several sets of queues, in one database).
        schema: the schema of the tables (made if missing); None: the
            connection's ``current_schema()``.
        pool_size: most connections this engine opens in one process.
        readonly: only look at existing queue tables: nothing is created or
            changed (the server refuses every write: ReadOnlyDatabase).
        prepared: let psycopg prepare the statements it runs often (False
            behind PgBouncer in transaction mode before 1.21, which cannot
            keep a client's prepared statements).
        listen_url: where the connection that LISTENs for wake-ups goes
            (None: ``url``).  Behind a pooler in transaction mode, give the
            server's own address here: LISTEN needs a session of its own.

    Raises:
        StorageError: the server cannot be reached (the message says why,
            without the password).
        IncompatibleDatabase: tables of that prefix that are not ours, or of
            a newer version.
        FileNotFoundError: with ``readonly``, there are no queue tables.
    """

    DEFAULT_OPTIONS = {"timeout": 5.0, "table_prefix": _sql.DEFAULT_PREFIX, "schema": None,
                       "pool_size": 10, "readonly": False, "prepared": True,
                       "listen_url": None}

    #: Options the front ends pass, defaults included, that mean nothing
    #: here: dropped when they have these values (see backends.front_end_engine).
    IGNORED_DEFAULTS = {"synchronous": "NORMAL", "journal_mode": None}

    @staticmethod
    def check_location(url: object) -> str:
        """``url`` if it is a postgresql:// URL; else ValueError."""
        if not isinstance(url, str) or not url.lower().startswith(("postgresql://",
                                                                   "postgres://")):
            raise ValueError("a PostgreSQL location is a postgresql:// URL; got %r"
                             % (redact(url),))
        return url

    # Set when the tables are opened (see _open).
    _lock_key: int
    _instance: Optional[str]

    def __init__(self, url: str, timeout: float = 5.0, table_prefix: str = _sql.DEFAULT_PREFIX,
                 schema: Optional[str] = None, pool_size: int = 10, readonly: bool = False,
                 prepared: bool = True, listen_url: Optional[str] = None) -> None:
        url = self.check_location(url)
        if listen_url is not None:
            try:
                listen_url = self.check_location(listen_url)
            except ValueError as exc:
                raise ValueError("listen_url: %s" % exc) from None
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
            raise ValueError("timeout must be a number of seconds >= 0; got %r" % (timeout,))
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError("pool_size must be a whole number >= 1; got %r" % (pool_size,))
        _sql.check_identifier(table_prefix, "table_prefix", _sql.MAX_PREFIX)
        if schema is not None:
            _sql.check_identifier(schema, "schema", 63)
        self.location = redact(url)
        self.spec = EngineSpec("postgresql", url, dict(
            timeout=timeout, table_prefix=table_prefix, schema=schema, pool_size=pool_size,
            readonly=readonly, prepared=prepared, listen_url=listen_url))
        self.timeout = float(timeout)
        self.readonly = bool(readonly)
        self._conns = Connections(url, self.location, self.timeout, pool_size, self.readonly,
                                  bool(prepared))
        self._clock_lock = threading.Lock()
        # Set by _open's first _sync, before now() is ever called.
        self._offset: float = None  # type: ignore[assignment]
        self._synced_at = -CLOCK_RESYNC
        self._last_now = 0.0
        self._open(schema, table_prefix)
        self._conns.on_connect = self._maybe_sync
        self._lease_sql = {"fifo": self.sql.LEASE_FIFO, "lifo": self.sql.LEASE_LIFO,
                           "priority": self.sql.LEASE_PRIORITY}
        # queue: (floor, monotonic time of the next scan from the start)
        self._fifo_floors: Dict[str, Tuple[float, float]] = {}
        self._count_sql = {"live": self.sql.COUNT_LIVE, "waiting": self.sql.COUNT_WAITING,
                           "ready": self.sql.COUNT_READY, "dead": self.sql.COUNT_DEAD}
        self._channel = _notify.channel_of(self.sql.SCHEMA, table_prefix)
        if listen_url is None:
            self._listener = _notify.listener_for(url, self.location)
        else:
            self._listener = _notify.listener_for(listen_url, redact(listen_url))
        self._metrics = Metrics(location=self.location)
        _open_engines.add(self)

    # -- schema -----------------------------------------------------------------

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

    # -- the clock --------------------------------------------------------------------

    def _sync(self, conn: Conn) -> None:
        """Read the server's clock through ``conn`` and keep its offset."""
        server = conn.execute(_sql.SERVER_TIME).fetchone()[0]  # type: ignore[index]  # one row
        local = _local_clock()  # after the round trip: now() lags, never leads
        with self._clock_lock:
            self._offset = server - local
            self._synced_at = local

    def _maybe_sync(self, conn: Conn) -> None:
        if _local_clock() - self._synced_at >= CLOCK_RESYNC:
            self._sync(conn)

    def now(self) -> float:
        t = self._offset + _local_clock()
        if t < self._last_now:  # a new reading put us back a little
            return self._last_now
        self._last_now = t
        return t

    # -- plumbing ---------------------------------------------------------------------

    def _tx(self) -> ContextManager[Tx]:
        return self._conns.transaction()

    def _run(self, work: Callable[[Tx], T]) -> T:
        return self._conns.run(work)

    def _rows(self, statement: str, params: Optional[Params] = None) -> List[TupleRow]:
        return self._conns.execute(statement, params)

    def _notify(self, tx: Tx, kind: WakeKind, queue: str) -> None:
        """Wake the (kind, queue) waiters of every process when ``tx`` commits."""
        tx.notify(self._channel, _notify.payload_of(kind, queue),
                  lambda: self._listener.wake_local(self._channel, kind, queue))

    # -- producing --------------------------------------------------------------------

    def put(self, queue: str, data: bytes, delay: float = 0.0, ttl: Optional[float] = None,
            priority: Optional[bytes] = None, seal: Optional[Sealer] = None,
            key: Optional[str] = None) -> int:
        # (A type comment: an annotation would cost the hot path a constant.)
        def work(tx):  # type: (Tx) -> Tuple[int, bool]
            if key is not None:
                return self._insert_with_key(tx, queue, data, delay, ttl, priority, seal, key)
            return self._insert_one(tx, queue, data, delay, ttl, priority, seal), True

        msg_id, new = self._run(work)
        if new:
            self._count(queue, "puts")
        return msg_id

    def _insert_one(self, tx: Tx, queue: str, data: bytes, delay: float, ttl: Optional[float],
                    priority: Optional[bytes], seal: Optional[Sealer]) -> int:
        now = self.now()
        expires = None if ttl is None else now + ttl
        if seal is None:
            # (INSERT ... RETURNING and nextval: one row each.)
            msg_id: int = tx.one(self.sql.INSERT, (queue, data, priority, now + delay, now,
                                                   expires))[0]  # type: ignore[index]
        else:
            msg_id = tx.one(self.sql.NEXT_ID)[0]  # type: ignore[index]
            tx.rows(self.sql.INSERT_WITH_ID, (msg_id, queue, seal(msg_id, data), priority,
                                              now + delay, now, expires))
        self._notify(tx, "put", queue)
        return msg_id

    def _insert_with_key(self, tx: Tx, queue: str, data: bytes, delay: float,
                         ttl: Optional[float], priority: Optional[bytes], seal: Optional[Sealer],
                         key: str) -> Tuple[int, bool]:
        s = self.sql
        while True:
            now = self.now()
            msg_id = None
            stored = data
            if seal is not None:
                msg_id = tx.one(s.NEXT_ID)[0]  # type: ignore[index]  # one row
                stored = seal(msg_id, data)
            row = tx.one(s.INSERT_WITH_KEY, (
                msg_id, queue, stored, priority, now + delay, now,
                None if ttl is None else now + ttl, key))
            if row is not None:
                self._notify(tx, "put", queue)
                return row[0], True
            row = tx.one(s.FIND_KEY, (queue, key))
            if row is not None:
                return row[0], False
            # Acknowledged between the two statements: the key is free again.

    def put_many(self, queue: str, payloads: Iterable[bytes], delay: float = 0.0,
                 ttl: Optional[float] = None, seal: Optional[Sealer] = None) -> List[int]:
        ids = self._run(lambda tx: self._insert_many(tx, queue, payloads, delay, ttl, seal))
        if ids:
            self._count(queue, "puts", len(ids))
        return ids

    def _insert_many(self, tx: Tx, queue: str, payloads: Iterable[bytes], delay: float,
                     ttl: Optional[float], seal: Optional[Sealer] = None) -> List[int]:
        payloads = list(payloads)
        if not payloads:
            return []
        now = self.now()
        expires = None if ttl is None else now + ttl
        ids = [row[0] for row in tx.rows(self.sql.NEXT_IDS, (len(payloads),))]
        if seal is not None:
            payloads = [seal(msg_id, data) for msg_id, data in zip(ids, payloads)]
        tx.rows(self.sql.INSERT_MANY, (queue, now + delay, now, expires, ids, payloads))
        self._notify(tx, "put", queue)
        return ids

    def transaction(self) -> _Transaction:
        return _Transaction(self)

    @overload
    def put_on(self, conn: object, queue: str, data: bytes, delay: float = ...,
               ttl: Optional[float] = ..., seal: Optional[Sealer] = ..., codec: None = ...,
               priority: Optional[bytes] = ...) -> int: ...
    @overload
    def put_on(self, conn: object, queue: str, data: bytes, delay: float = ...,
               ttl: Optional[float] = ..., seal: Optional[Sealer] = ..., *, codec: str,
               priority: Optional[bytes] = ...) -> Tuple[Optional[int], str]: ...

    def put_on(self, conn: object, queue: str, data: bytes, delay: float = 0.0,
               ttl: Optional[float] = None, seal: Optional[Sealer] = None,
               codec: Optional[str] = None, priority: Optional[bytes] = None
               ) -> Union[int, Tuple[Optional[int], str]]:
        if not isinstance(conn, psycopg.Connection):
            raise TypeError("put_on needs the application's psycopg.Connection, not %s"
                            % type(conn).__name__)
        s = self.sql
        try:
            self._check_same_database(conn)
            held = None
            if codec is not None:
                held = self._claim_codec_in(conn, queue, codec)
                if held != codec:
                    return None, held
            now = self.now()
            expires = None if ttl is None else now + ttl
            if seal is None:
                # (INSERT ... RETURNING and nextval: one row each.)
                msg_id = conn.execute(s.INSERT, (queue, data, priority, now + delay, now,
                                                 expires)).fetchone()[0]  # type: ignore[index]
            else:
                msg_id = conn.execute(s.NEXT_ID).fetchone()[0]  # type: ignore[index]
                conn.execute(s.INSERT_WITH_ID, (msg_id, queue, seal(msg_id, data), priority,
                                                now + delay, now, expires))
            # Delivered if and when the application commits.
            conn.execute(s.NOTIFY, (self._channel, _notify.payload_of("put", queue)))
        except psycopg.Error as exc:
            raise self._conns.error(exc) from exc
        # (With a codec, held is a str.)
        return msg_id if codec is None else (msg_id, held)  # type: ignore[return-value]

    def _check_same_database(self, conn: Conn) -> None:
        s = self.sql
        theirs = None
        if conn.execute(s.META_EXISTS).fetchone()[0]:  # type: ignore[index]  # one row
            row = conn.execute(s.READ_INSTANCE).fetchone()
            theirs = row and row[0]
        if theirs is None or theirs != self._instance:
            raise ValueError("the connection is not to the queue's database %s (schema %s, "
                             "table prefix %r)" % (self.location, s.SCHEMA, s.PREFIX))

    # -- what a queue was written with ------------------------------------------------

    def codec_of(self, queue: str) -> Optional[str]:
        rows = self._rows(self.sql.READ_CODEC, (queue,))
        return rows[0][0] if rows else None

    def _claim_codec_in(self, conn: Conn, queue: str, fingerprint: str) -> str:
        s = self.sql
        # Serialised per queue: the row lock of its codec, or (none yet) the
        # namespace's lock, so that two first writers agree.
        row: Optional[Tuple[str]] = conn.execute(s.READ_CODEC_FOR_UPDATE, (queue,)).fetchone()
        if row is None:
            conn.execute(s.LOCK_NAMESPACE, (_sql.LOCK_CLASS + 1, self._lock_key))
            row = conn.execute(s.READ_CODEC_FOR_UPDATE, (queue,)).fetchone()
        if row is not None and (row[0] == fingerprint
                                # (SELECT EXISTS: one row.)
                                or conn.execute(s.ANY_MESSAGE,
                                                (queue,)).fetchone()[0]):  # type: ignore[index]
            return row[0]
        conn.execute(s.WRITE_CODEC, (queue, fingerprint))
        return fingerprint

    def claim_codec(self, queue: str, fingerprint: str) -> str:
        def work(tx: Tx) -> str:
            with tx.direct() as conn:
                return self._claim_codec_in(conn, queue, fingerprint)

        return self._run(work)

    def replace_data(self, msg_id: int, old: bytes, new: bytes) -> bool:
        return bool(self._conns.changes(self.sql.REPLACE_DATA, (new, msg_id, old)))

    def put_keyed(self, queue: str, items: Iterable[Tuple[str, bytes]]
                  ) -> List[Tuple[KeyedStatus, Optional[int]]]:
        s = self.sql

        def work(tx: Tx) -> List[Tuple[KeyedStatus, Optional[int]]]:
            out: List[Tuple[KeyedStatus, Optional[int]]] = []
            now = self.now()
            for key, data in items:
                if tx.one(s.RESULT, (queue, key)) is not None:
                    out.append(("done", None))
                    continue
                row = tx.one(s.INSERT_KEYED, (queue, data, key, now, now))
                if row is not None:
                    out.append(("new", row[0]))
                    continue
                row = tx.one(s.FIND_KEY, (queue, key))
                if row is None:  # settled meanwhile: store it now
                    row = tx.one(s.INSERT_KEYED, (queue, data, key, now, now))
                    out.append(("new", row[0]) if row else ("queued", None))
                elif row[1]:  # dead, its failure forgotten: it runs again
                    tx.rows(s.REVIVE_KEYED, (data, now, row[0]))
                    out.append(("new", row[0]))
                else:
                    out.append(("queued", row[0]))
            if any(status == "new" for status, _ in out):
                self._notify(tx, "put", queue)
            return out

        out = self._run(work)
        new = sum(status == "new" for status, _ in out)
        if new:
            self._count(queue, "puts", new)
        return out

    # -- results of keyed messages ------------------------------------------------------

    def complete(self, msg_id: int, lease: Optional[int], key: str, ok: bool, data: bytes,
                 dead_reason: Optional[str] = None) -> bool:
        queue, held = self._run(
            lambda tx: self._complete_in(tx, msg_id, lease, key, ok, data, dead_reason))
        if queue is not None and held:
            self._count(queue, "acks" if dead_reason is None else "dead_lettered",
                        lasting=dead_reason is not None)
        return held

    def complete_many(self, queue: str, outcomes: Sequence[Outcome], lease: int = 0,
                      seconds: float = 0.0) -> List[Message]:
        outcomes = list(outcomes)

        # (A type comment: an annotation would cost the worker's loop a constant.)
        def work(tx):  # type: (Tx) -> _Completed
            acks = dead = 0
            for msg_id, token, key, ok, data, *failure in outcomes:
                dead_reason, error = failure or (None, None)
                if self._complete_in(tx, msg_id, token, key, ok, data, dead_reason, error)[1]:
                    if dead_reason is None:
                        acks += 1
                    else:
                        dead += 1
            rows: List[TupleRow]
            until: Optional[float]
            now: Optional[float]
            floor: Optional[float]
            rows, token, until, now, floor = [], None, None, None, None
            if lease:
                now = self.now()
                token = new_token()
                until = now + seconds
                statement, floor = self._fifo_statement(queue)
                rows = tx.rows(statement, {
                    "queue": queue, "now": now, "until": until, "lease": token,
                    "n": lease, "holder": None, "floor": floor})
            return acks, dead, rows, token, until, now, floor

        acks, dead, rows, token, until, now, floor = self._run(work)
        if now is not None:  # it leased, and committed: what it leased is taken
            self._fifo_leased(queue, floor, rows, now)
        if acks:
            self._count(queue, "acks", acks)
        if dead:
            self._count(queue, "dead_lettered", dead, lasting=True)
        if not rows:
            return []
        self._count_deliveries(queue, *(row[3] for row in rows))
        return sorted((Message(row[0], row[1], row[2], row[3] - 1, row[4], row[3], token,
                               until, row[5], row[6], row[7], None, None, row[8])
                       for row in rows), key=lambda m: m.id)

    def _complete_in(self, tx: Tx, msg_id: int, lease: Optional[int], key: str, ok: bool,
                     data: bytes, dead_reason: Optional[str], error: Optional[str] = None
                     ) -> Tuple[Optional[str], bool]:
        s = self.sql
        now = self.now()
        row = tx.one(s.GET, (msg_id,))
        if row is None:
            return None, False
        queue = row[2]
        tx.rows(s.LOCK_NAMESPACE, (_sql.LOCK_CLASS, self._lock_key))  # see STORE_RESULT
        tx.rows(s.STORE_RESULT, (queue, key, bool(ok), data, now))
        self._notify(tx, "done", queue)
        if dead_reason is None:
            return queue, bool(tx.rows(s.ACK, (msg_id, lease)))
        held = bool(tx.rows(s.DEAD_LETTER, (now, dead_reason, error, msg_id, lease)))
        if held:
            tx.rows(s.ADD_COUNTER, (queue, "dead_lettered", 1))
            logger.warning("task %s of queue %r dead-lettered: %s", key, queue, dead_reason)
        return queue, held

    def result(self, queue: str, key: str) -> Optional[Tuple[bool, bytes]]:
        rows = self._rows(self.sql.RESULT, (queue, key))
        return (bool(rows[0][0]), rows[0][1]) if rows else None

    def results_since(self, queue: str, seq: int, limit: int = 1000
                      ) -> List[Tuple[int, str, bool, bytes]]:
        return [(row[0], row[1], bool(row[2]), row[3])
                for row in self._rows(self.sql.RESULTS_SINCE, (queue, seq, limit))]

    def last_result_seq(self) -> int:
        return self._rows(  # type: ignore[no-any-return]  # a row's value
            self.sql.LAST_RESULT_SEQ)[0][0]

    def forget_results(self, queue: str, key: Optional[str] = None) -> int:
        if key is None:
            return self._conns.changes(self.sql.PURGE_RESULTS, (queue,))
        return self._conns.changes(self.sql.FORGET_RESULT, (queue, key))

    def forget_results_matching(self, queue: str, pattern: str, up_to_seq: Optional[int] = None,
                                failed_only: bool = False) -> int:
        up_to = (1 << 63) - 1 if up_to_seq is None else up_to_seq
        return self._conns.changes(self.sql.FORGET_RESULTS_MATCHING, (
            queue, _sql.glob_to_regex(pattern), up_to, not failed_only))

    # -- consuming -------------------------------------------------------------------

    def _fifo_statement(self, queue: str) -> Tuple[str, Optional[float]]:
        """The FIFO lease statement and its floor (None: from the start)."""
        floor = self._fifo_floors.get(queue)
        if floor is None or time.monotonic() >= floor[1]:
            return self.sql.LEASE_FIFO, None
        return self.sql.LEASE_FIFO_FROM, floor[0] - FIFO_SLACK

    def _fifo_leased(self, queue: str, floor: Optional[float], rows: Sequence[TupleRow],
                     now: float) -> None:
        """Move ``queue``'s floor to what a FIFO lease from ``floor`` found:
        the latest visible_at among ``rows``, or ``now`` if a scan from the
        start found nothing ready."""
        if floor is None:
            top = max(row[9] for row in rows) if rows else now
            self._fifo_floors[queue] = (top, time.monotonic() + FIFO_FULL_SCAN)
        elif rows:
            top = max(row[9] for row in rows)
            old = self._fifo_floors.get(queue)
            if old is not None and top > old[0]:
                self._fifo_floors[queue] = (top, old[1])

    def lease(self, queue: str, n: int, seconds: float, order: Order = "fifo",
              max_attempts: Optional[int] = None, holder: Optional[str] = None
              ) -> List[Message]:
        statement = self._lease_sql[order]
        leased: List[Message] = []
        while len(leased) < n:
            now = self.now()
            token = new_token()
            until = now + seconds
            params = {"queue": queue, "now": now, "until": until, "lease": token,
                      "n": n - len(leased), "holder": holder}
            if order == "fifo":
                statement, floor = self._fifo_statement(queue)
                params["floor"] = floor
            rows = self._rows(statement, params)
            if order == "fifo":
                self._fifo_leased(queue, floor, rows, now)
            if not rows:
                break
            unfit: List[Message] = []
            for row in rows:
                m = Message(row[0], row[1], row[2], row[3] - 1, row[4], row[3], token, until,
                            row[5], row[6], row[7], None, None, row[8], holder)
                if ((m.expires_at is not None and m.expires_at <= now)
                        or (max_attempts is not None and m.attempts > max_attempts)):
                    unfit.append(m)
                else:
                    leased.append(m)
            if not unfit:
                break
            self._drop_unfit(unfit, now, max_attempts)
        if not leased:
            if self._metrics.unflushed():
                self.flush_metrics()  # idle: a good moment
            return leased
        self._count_deliveries(queue, *(m.attempts for m in leased))
        if order == "lifo":
            leased.sort(key=lambda m: m.id, reverse=True)
        elif order == "priority":
            leased.sort(key=lambda m: (m.priority, m.id))
        else:
            leased.sort(key=lambda m: m.id)
        return leased

    def _drop_unfit(self, messages: List[Message], now: float, max_attempts: Optional[int]
                    ) -> None:
        """Drop the expired and dead-letter the exhausted, which we hold."""
        s = self.sql

        def work(tx: Tx) -> List[Tuple[str, str]]:
            counted: List[Tuple[str, str]] = []
            for m in messages:
                if m.expires_at is not None and m.expires_at <= now:
                    if tx.rowcount(s.DELETE_LEASED, (m.id, m.lease)):
                        tx.rows(s.ADD_COUNTER, (m.queue_name, "expired", 1))
                        counted.append((m.queue_name, "expired"))
                    continue
                # Not expired: so over max_attempts, which is not None.
                reason = "not acknowledged after %d deliveries (max_retries=%d)" % (
                    m.attempts - 1, max_attempts - 1)  # type: ignore[operator]
                if tx.rows(s.DEAD_LETTER, (now, reason, None, m.id, m.lease)):
                    tx.rows(s.ADD_COUNTER, (m.queue_name, "dead_lettered", 1))
                    counted.append((m.queue_name, "dead_lettered"))
                    logger.warning("message %d of queue %r dead-lettered: %s", m.id,
                                   m.queue_name, reason)
            for queue in {m.queue_name for m in messages}:
                self._notify(tx, "done", queue)
            return counted

        for queue, name in self._run(work):
            self._metrics.add(queue, name, lasting=True)

    def lease_id(self, queue: str, msg_id: int, seconds: float) -> Optional[Message]:
        now = self.now()
        token = new_token()
        until = now + seconds
        rows = self._rows(self.sql.LEASE_ID, {"queue": queue, "id": msg_id, "now": now,
                                              "until": until, "lease": token})
        if not rows:
            return None
        row = rows[0]
        self._count_deliveries(queue, row[3])
        return Message(row[0], row[1], row[2], row[3] - 1, row[4], row[3], token, until,
                       row[5], row[6], row[7], None, None, row[8])

    def next_visible_at(self, queue: str) -> Optional[float]:
        return self._rows(  # type: ignore[no-any-return]  # a row's value
            self.sql.NEXT_VISIBLE_AT, (queue, self.now()))[0][0]

    def _settle(self, statement: str, params: Params, kind: WakeKind) -> List[TupleRow]:
        """Run one settling statement; wake ``kind`` waiters of its queue."""
        def work(tx):  # type: (Tx) -> List[TupleRow]
            rows = tx.rows(statement, params)
            if rows:
                self._notify(tx, kind, rows[0][0])
            return rows

        return self._run(work)

    def ack(self, msg_id: int, lease: Optional[int], queue: Optional[str] = None) -> bool:
        if queue is None:
            rows = self._settle(self.sql.ACK, (msg_id, lease), "done")
            if not rows:
                return False
            queue = rows[0][0]
        else:
            def work(tx):  # type: (Tx) -> int
                done = tx.rowcount(self.sql.ACK_IN_QUEUE, (msg_id, lease, queue))
                if done:
                    self._notify(tx, "done", queue)
                return done

            if not self._run(work):
                return False
        self._count(queue, "acks")
        return True

    def delete(self, msg_id: int) -> bool:
        return bool(self._settle(self.sql.DELETE, (msg_id,), "done"))

    def delete_unleased(self, msg_id: int) -> bool:
        return bool(self._settle(self.sql.DELETE_UNLEASED, (msg_id,), "done"))

    def set_visibility(self, msg_id: int, lease: Optional[int], seconds: float) -> bool:
        # A lease ended now makes the message ready: wake consumers.  One
        # extended wakes nobody.
        params = (self.now() + seconds, msg_id, lease)
        if seconds <= 0:
            return bool(self._settle(self.sql.SET_VISIBILITY, params, "put"))
        return bool(self._rows(self.sql.SET_VISIBILITY, params))

    def release(self, msg_id: int, lease: Optional[int], delay: float = 0.0,
                error: Optional[str] = None, attempted: bool = True) -> bool:
        statement = self.sql.RELEASE if attempted else self.sql.RELEASE_UNATTEMPTED
        return bool(self._settle(statement, (self.now() + delay, error, msg_id, lease), "put"))

    def dead_letter(self, msg_id: int, lease: Optional[int], reason: str,
                    error: Optional[str] = None) -> bool:
        def work(tx: Tx) -> Optional[TupleRow]:
            row = tx.one(self.sql.DEAD_LETTER, (self.now(), reason, error, msg_id, lease))
            if row:
                tx.rows(self.sql.ADD_COUNTER, (row[0], "dead_lettered", 1))
                self._notify(tx, "done", row[0])
            return row

        row = self._run(work)
        if row:
            logger.warning("message %d of queue %r dead-lettered: %s", msg_id, row[0], reason)
            self._metrics.add(row[0], "dead_lettered", lasting=True)
        return row is not None

    def dead_letter_ids(self, ids: Iterable[int], reason: str, queue: Optional[str] = None
                        ) -> int:
        ids = list(ids)

        def work(tx: Tx) -> Dict[str, int]:
            now = self.now()
            moved: Dict[str, int] = {}
            for msg_id in ids:
                row = tx.one(self.sql.DEAD_LETTER_ID, {
                    "now": now, "reason": reason, "id": msg_id, "queue": queue})
                if row:
                    moved[row[0]] = moved.get(row[0], 0) + 1
            for name, n in sorted(moved.items()):
                tx.rows(self.sql.ADD_COUNTER, (name, "dead_lettered", n))
                self._notify(tx, "done", name)
            return moved

        moved = self._run(work)
        for name, n in moved.items():
            logger.warning("%d message(s) of queue %r dead-lettered: %s", n, name, reason)
            self._metrics.add(name, "dead_lettered", n, lasting=True)
        return sum(moved.values())

    def ack_many(self, items: Iterable[Tuple[int, Optional[int]]]) -> int:
        items = list(items)

        leased = [(msg_id, lease) for msg_id, lease in items if lease is not None]
        any_lease = [msg_id for msg_id, lease in items if lease is None]

        def work(tx: Tx) -> Tuple[Dict[str, int], Dict[str, int]]:
            removed: Dict[str, int]
            acks: Dict[str, int]
            removed, acks = {}, {}
            if leased:  # one round trip for all of them, not one each
                for (name,) in tx.rows(self.sql.ACK_MANY, ([i for i, _ in leased],
                                                          [lease for _, lease in leased])):
                    acks[name] = acks.get(name, 0) + 1
                    removed[name] = removed.get(name, 0) + 1
            if any_lease:
                for (name,) in tx.rows(self.sql.DELETE_MANY, (any_lease,)):
                    removed[name] = removed.get(name, 0) + 1
            for name in removed:
                self._notify(tx, "done", name)
            return removed, acks

        removed, acks = self._run(work)
        for name, n in acks.items():
            self._count(name, "acks", n)
        return sum(removed.values())

    def recover_leases(self, queue: Optional[str] = None) -> int:
        def work(tx: Tx) -> int:
            now = self.now()
            if queue is None:
                rows = tx.rows(self.sql.RECOVER_ALL_LEASES, {"now": now})
            else:
                rows = tx.rows(self.sql.RECOVER_LEASES, {"queue": queue, "now": now})
            for name in {row[0] for row in rows}:
                self._notify(tx, "put", name)
            return len(rows)

        return self._run(work)

    # -- inspecting -------------------------------------------------------------------

    def peek(self, queue: str) -> Optional[Message]:
        found = self.peek_many(queue, 1)
        return found[0] if found else None

    def count(self, queue: str, what: CountKind = "live") -> int:
        statement = self._count_sql.get(what)
        if statement is None:
            raise ValueError("count() what must be live, waiting, ready or dead; got %r"
                             % (what,))
        return self._rows(  # type: ignore[no-any-return]  # a row's value
            statement, {"queue": queue, "now": self.now()})[0][0]

    def queues(self) -> List[QueueStats]:
        now = self.now()

        def work(tx: Tx) -> Tuple[List[TupleRow], List[TupleRow]]:  # one snapshot for both
            return (tx.rows(self.sql.QUEUE_STATS, {"now": now}),
                    tx.rows(self.sql.HOLDERS, {"now": now}))

        return self._queue_stats(*self._run(work))

    def create_queue(self, queue: str, settings: Optional[Mapping[str, Any]] = None) -> bool:
        text = None if settings is None else json.dumps(settings, sort_keys=True)

        def work(tx: Tx) -> bool:
            if tx.one(self.sql.CREATE_QUEUE, (queue, self.now(), text)) is not None:
                return True
            if text is not None:
                tx.rows(self.sql.SET_QUEUE_SETTINGS, (text, queue))
            return False

        return self._run(work)

    # -- metrics ---------------------------------------------------------------------

    def flush_metrics(self) -> None:
        pending = self._metrics.take()
        if not pending:
            return
        bucket = int(self.now() // _sql.ACTIVITY_BUCKET * _sql.ACTIVITY_BUCKET)
        items = sorted(pending.items())  # one order for every process: no deadlock

        def work(tx: Tx) -> None:
            with tx.direct() as conn, conn.cursor() as cur:
                cur.executemany(self.sql.ADD_COUNTER,
                                [(queue, name, n) for (queue, name), n in items])
                cur.executemany(self.sql.ADD_ACTIVITY,
                                [(queue, name, bucket, n) for (queue, name), n in items])
            tx.rows(self.sql.FORGET_ACTIVITY, (bucket - _sql.ACTIVITY_KEPT,))

        try:
            self._run(work)
        except Exception as exc:  # counting never fails the operation counted
            logger.debug("metrics not flushed to %s: %s", self.location, exc)
            self._metrics.give_back(pending)

    # -- operating ---------------------------------------------------------------------

    def restore(self, queue: str, messages: Iterable[Message]) -> List[int]:
        messages = list(messages)

        def row(msg: Message, now: float) -> Tuple[object, ...]:
            dead = msg.dead_at is not None
            if dead:
                visible = None
            elif msg.lease is not None or msg.visible_at is None:
                visible = now if msg.visible_at is None else min(msg.visible_at, now)
            else:
                visible = msg.visible_at
            return (queue, msg.data, msg.priority, visible, msg.created_at, msg.expires_at,
                    msg.attempts, msg.last_error, msg.dead_at if dead else None,
                    msg.dead_reason if dead else None, msg.key)

        def work(tx: Tx) -> List[int]:
            now = self.now()
            ids: List[int] = []
            try:
                for msg in messages:
                    # (INSERT ... RETURNING: one row.)
                    ids.append(tx.one(self.sql.INSERT_RESTORED,
                                      row(msg, now))[0])  # type: ignore[index]
            except psycopg.errors.UniqueViolation as exc:
                raise ValueError(
                    "cannot restore into queue %r of %s: %s (a message with that key is "
                    "already there); nothing was stored"
                    % (queue, self.location, str(exc).splitlines()[0])) from None
            if ids:
                self._notify(tx, "put", queue)
            return ids

        return self._run(work)

    def redrive(self, queue: str, ids: Optional[Iterable[int]] = None) -> int:
        def work(tx: Tx) -> int:
            now = self.now()
            if ids is None:
                moved = tx.rowcount(self.sql.REDRIVE_ALL, (now, queue))
            else:
                moved = sum(tx.rowcount(self.sql.REDRIVE_ONE, (now, queue, msg_id))
                            for msg_id in ids)
            if moved:
                self._notify(tx, "put", queue)
            return moved

        return self._run(work)

    def expire(self, queue: Optional[str] = None) -> int:
        def work(tx: Tx) -> Dict[str, int]:
            now = self.now()
            if queue is None:
                rows = tx.rows(self.sql.EXPIRE_ALL, {"now": now})
            else:
                rows = tx.rows(self.sql.EXPIRE, {"queue": queue, "now": now})
            expired: Dict[str, int] = {}
            for (name,) in rows:
                expired[name] = expired.get(name, 0) + 1
            for name, n in sorted(expired.items()):
                tx.rows(self.sql.ADD_COUNTER, (name, "expired", n))
                self._notify(tx, "done", name)
            return expired

        expired = self._run(work)
        for name, n in expired.items():
            self._metrics.add(name, "expired", n, lasting=True)
        return sum(expired.values())

    def purge(self, queue: str, dead: bool = False) -> int:
        statement = self.sql.PURGE_DEAD if dead else self.sql.PURGE_LIVE

        def work(tx: Tx) -> int:
            removed = tx.rowcount(statement, (queue,))
            if removed:
                self._notify(tx, "done", queue)
            return removed

        return self._run(work)

    def delete_queue(self, queue: str) -> int:
        s = self.sql

        def work(tx: Tx) -> int:
            removed = tx.rowcount(s.DELETE_QUEUE, (queue,))
            for statement in (s.DELETE_QUEUE_COUNTERS, s.DELETE_QUEUE_ACTIVITY,
                              s.DELETE_QUEUE_RESULTS, s.DELETE_QUEUE_CODEC,
                              s.DELETE_QUEUE_ENTRY):
                tx.rows(statement, (queue,))
            if removed:
                self._notify(tx, "done", queue)
            return removed

        return self._run(work)

    def maintenance(self) -> PostgresMaintenance:
        from .maintenance import PostgresMaintenance

        return PostgresMaintenance(self)

    def waiter(self, kind: WakeKind, queue: str) -> _Waiter:
        return self._listener.waiter(self._channel, kind, queue)

    def wake(self, kind: WakeKind, queue: str) -> None:
        self._listener.wake_local(self._channel, kind, queue)
        try:
            self._rows(self.sql.NOTIFY, (self._channel, _notify.payload_of(kind, queue)))
        except Exception as exc:  # waiters look again within a second anyway
            logger.debug("wake-up of %s not sent to other processes: %s", self.location, exc)

    def close(self) -> None:
        if self._conns.closed:
            return
        self.flush_metrics()
        _open_engines.discard(self)
        self._conns.close()

    def __repr__(self) -> str:
        return "PostgresEngine(%r, schema=%r, table_prefix=%r)" % (
            self.location, self.sql.SCHEMA, self.sql.PREFIX)


class _Transaction:
    """Puts to any queues, committed together."""

    def __init__(self, engine: PostgresEngine) -> None:
        self._engine = engine
        # Set by __enter__: used only inside the block.
        self._context: ContextManager[Tx] = None  # type: ignore[assignment]
        self._tx: Tx = None  # type: ignore[assignment]
        self._queues: Dict[str, int] = {}

    def __enter__(self) -> _Transaction:
        # Checked: a pooled connection found dead cannot be run again here.
        self._context = self._engine._conns.transaction(checked=True)
        self._tx = self._context.__enter__()
        return self

    def __exit__(self, *exc_info: Unpack[Tuple[Optional[type[BaseException]],
                                                 Optional[BaseException],
                                                 Optional[TracebackType]]]) -> Optional[bool]:
        result = self._context.__exit__(*exc_info)
        if exc_info[0] is None:
            for queue, n in self._queues.items():
                self._engine._count(queue, "puts", n)
        return result

    def put(self, queue: str, data: bytes, delay: float = 0.0, ttl: Optional[float] = None,
            priority: Optional[bytes] = None, seal: Optional[Sealer] = None) -> int:
        msg_id = self._engine._insert_one(self._tx, queue, data, delay, ttl, priority, seal)
        self._queues[queue] = self._queues.get(queue, 0) + 1
        return msg_id

    def put_many(self, queue: str, payloads: Iterable[bytes], delay: float = 0.0,
                 ttl: Optional[float] = None, seal: Optional[Sealer] = None) -> List[int]:
        ids = self._engine._insert_many(self._tx, queue, payloads, delay, ttl, seal)
        self._queues[queue] = self._queues.get(queue, 0) + len(ids)
        return ids
