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

The engine is assembled from one mixin per part of the algorithm:

- :mod:`.schema` (:class:`~.schema.SchemaMixin`): the tables of a schema and
  table prefix, made, checked and upgraded under the namespace's lock;
- :mod:`.clock` (:class:`~.clock.ServerClock`): ``now()``, on the server's clock;
- :mod:`.lease` (:class:`~.lease.LeaseMixin`): leases taken (the FIFO floor)
  and settled;
- :mod:`.keyed` (:class:`~.keyed.KeyedMixin`): keyed tasks and their results;
- :mod:`.admin` (:class:`~.admin.AdminMixin`): looking at queues and moving
  their messages in bulk (dead letters redriven, expired, purged, restored).

What is here is the engine's plumbing (one transaction per method), putting
(one message, many, by key, in a transaction of the engine or of the
application), the codec a queue is written with, metrics and wake-ups.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from typing import (TYPE_CHECKING, Callable, ContextManager, Dict, Iterable, List, Optional,
                    Tuple, TypeVar, Union, overload)

import psycopg

from ..backends import redact
from .._sql_engine import SQLEngine
from ..engine import EngineSpec, Metrics
from . import notify as _notify
from . import sql as _sql
from .admin import AdminMixin
from .clock import CLOCK_RESYNC, ServerClock
from .connections import Connections
from .keyed import KeyedMixin
from .lease import LeaseMixin
from .schema import SchemaMixin

if TYPE_CHECKING:
    from types import TracebackType
    from typing import Unpack

    from psycopg.abc import Params
    from psycopg.rows import TupleRow

    from ..engine import Sealer, WakeKind
    from .connections import Conn, Tx
    from .maintenance import PostgresMaintenance
    from .notify import _Waiter

    T = TypeVar("T")

__all__ = ["PostgresEngine"]

logger = logging.getLogger("persistqueue_liteq")

_open_engines: weakref.WeakSet[PostgresEngine] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    for engine in list(_open_engines):
        try:
            engine.flush_metrics()
        except Exception:
            pass


class PostgresEngine(SchemaMixin, ServerClock, LeaseMixin, KeyedMixin, AdminMixin,
                     SQLEngine):
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
        prepared: prepare the statements run often (False behind
            PgBouncer in transaction mode before 1.21, which cannot keep a
            client's prepared statements; from 1.21 on, it keeps psycopg's
            but not those of SQL's PREPARE, which the engine then stops
            using when it sees them gone).
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

    # -- plumbing ---------------------------------------------------------------------

    def _tx(self) -> ContextManager[Tx]:
        return self._conns.transaction()

    def _run(self, work: Callable[[Tx], T]) -> T:
        return self._conns.run(work)

    def _rows(self, statement: str, params: Optional[Params] = None) -> List[TupleRow]:
        return self._conns.execute(statement, params)

    def _notify(self, tx: Tx, kind: WakeKind, queue: str) -> None:
        """Wake the (kind, queue) waiters of every process when ``tx`` commits."""
        tx.notify(*self._notification(kind, queue))

    def _notification(self, kind: WakeKind, queue: str
                      ) -> Tuple[str, str, Callable[[], object]]:
        """What wakes the (kind, queue) waiters of every process: channel,
        payload, and the wake-up of this process's, called once committed."""
        return (self._channel, _notify.payload_of(kind, queue),
                lambda: self._listener.wake_local(self._channel, kind, queue))

    # -- producing --------------------------------------------------------------------

    def put(self, queue: str, data: bytes, delay: float = 0.0, ttl: Optional[float] = None,
            priority: Optional[bytes] = None, seal: Optional[Sealer] = None,
            key: Optional[str] = None) -> int:
        if key is None and seal is None:  # one statement: one round trip
            now = self.now()
            rows, _ = self._conns.once(
                self.sql.INSERT, (queue, data, priority, now + delay, now,
                                  None if ttl is None else now + ttl),
                self._notification("put", queue))
            self._count(queue, "puts")
            return rows[0][0]  # type: ignore[no-any-return]

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
        payloads = list(payloads)  # read once: a transaction retried whole reads it again
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

    # -- upkeep and wake-ups -----------------------------------------------------------

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
