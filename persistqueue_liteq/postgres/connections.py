"""Connections of one engine to one PostgreSQL database: a psycopg_pool per
process, transactions, and what psycopg's errors mean in our exceptions.

The pool is made on first use in each process: a forked child never uses
(or closes) its parent's connections, which it keeps referenced so that no
finalizer of theirs runs there (psycopg itself never ends a connection from
another process than the one that opened it).

Every operation is one transaction on one connection of the pool.  Nested
use on one thread joins the outer transaction (as the SQLite engine's
``Connections.transaction`` does).  Deadlocks and serialization failures
roll back and are run again, whole, a few times.  A lock held longer than
``timeout`` (``lock_timeout``), or no free connection for that long, is
:class:`~persistqueue_liteq.exceptions.DatabaseBusy`.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import threading
import time
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Tuple,
                    TypeVar)

import psycopg
import psycopg_pool
from psycopg import errors, sql

from .. import _fork
from ..exceptions import (DatabaseBusy, DiskFull, IncompatibleDatabase, LiteQueueError,
                          PayloadTooLarge, ReadOnlyDatabase, StorageError)

if TYPE_CHECKING:
    from psycopg.abc import Params
    from psycopg.rows import TupleRow

    #: A connection of ours: rows are tuples.
    Conn = psycopg.Connection[TupleRow]

    T = TypeVar("T")

_RETRIED = (errors.DeadlockDetected, errors.SerializationFailure)
_ATTEMPTS = 5

# Pools of a parent process: kept, never used or closed.
_inherited: List[psycopg_pool.ConnectionPool[Any]] = []

#: libpq's TCP settings for every connection whose location does not set
#: them.  Without them a peer that vanished (a cut link, a machine switched
#: off, a NAT that forgot the connection) leaves a statement or a COMMIT
#: waiting for TCP's own timeout, about 15 minutes: with them an idle or
#: waiting connection is found dead after 5 + 3 * 2 s of unanswered
#: keepalives, and one whose data goes unacknowledged after 10 s
#: (``tcp_user_timeout``); a connection attempt gives up after 10 s.
TCP_DEFAULTS = {"keepalives": "1", "keepalives_idle": "5", "keepalives_interval": "2",
                "keepalives_count": "3", "tcp_user_timeout": "10000", "connect_timeout": "10"}
#: Environment variables of libpq that set one of them instead.
_TCP_ENV = {"connect_timeout": "PGCONNECT_TIMEOUT"}


#: What every connection of the pool says it is, at connection time (a
#: SET would stay on the server's session, which a pooler in transaction
#: mode hands to other clients).
APPLICATION_NAME = "persistqueue_liteq"


def with_tcp_defaults(conninfo: str) -> str:
    """``conninfo`` with :data:`TCP_DEFAULTS` for what it does not say
    itself (its own values, or $PGCONNECT_TIMEOUT, win)."""
    try:
        given = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.Error:
        return conninfo  # libpq says what is wrong with it when connecting
    missing = {name: value for name, value in TCP_DEFAULTS.items()
               if name not in given and not os.environ.get(_TCP_ENV.get(name, ""))}
    return psycopg.conninfo.make_conninfo(conninfo, **missing) if missing else conninfo


class Connections:
    """A process's pool of connections to ``conninfo`` (``shown``: it
    without the password, for messages)."""

    def __init__(self, conninfo: str, shown: str, timeout: float, pool_size: int,
                 readonly: bool = False, prepared: bool = True) -> None:
        self.conninfo = conninfo
        self._dsn = with_tcp_defaults(conninfo)  # what is connected to
        self.readonly = readonly
        # Connection settings, none of them a SET that outlives a transaction
        # (see APPLICATION_NAME): what a transaction needs, it sets for itself.
        self._kwargs: Dict[str, Any] = {"application_name": APPLICATION_NAME}
        if not prepared:
            self._kwargs["prepare_threshold"] = None
        self._begin = ("BEGIN READ ONLY" if readonly else "BEGIN",
                       "SET LOCAL lock_timeout = %d" % max(int(timeout * 1000), 1))
        self.shown = shown
        self.timeout = timeout
        self.pool_size = pool_size
        self.closed = False
        self._lock = threading.Lock()  # guards _pool and _pid
        self._pool: Optional[psycopg_pool.ConnectionPool[Conn]] = None
        self._pid: Optional[int] = None
        self._local = threading.local()
        self._generation = _fork.generation
        #: Called with a fresh connection, before it is used (the clock).
        self.on_connect: Optional[Callable[[Conn], object]] = None

    # -- the pool ---------------------------------------------------------------

    def pool(self) -> psycopg_pool.ConnectionPool[Conn]:
        if self.closed:
            raise ValueError("the queue engine on %s is closed" % self.shown)
        pool, pid = self._pool, self._pid
        if pool is not None and pid == os.getpid():
            return pool
        with self._lock:
            if self._pool is not None and self._pid != os.getpid():
                _inherited.append(self._pool)  # the parent's: left alone
                self._pool = None
            if self._pool is None:
                # No check at each getconn (a round trip per operation): a
                # connection found dead at its first use is retried (see run).
                self._pool = psycopg_pool.ConnectionPool(
                    self._dsn, min_size=1, max_size=self.pool_size, open=True,
                    kwargs=dict(self._kwargs, autocommit=True),
                    timeout=self.timeout, name="persistqueue_liteq", num_workers=1)
                self._pid = os.getpid()
            return self._pool

    def connect(self) -> Conn:
        """A connection of its own (not pooled, autocommit: see
        :meth:`transaction_on`): the caller closes it."""
        try:
            return psycopg.connect(self._dsn, autocommit=True,
                                   connect_timeout=max(int(self.timeout), 2), **self._kwargs)
        except psycopg.Error as exc:
            raise self.error(exc) from None

    @contextlib.contextmanager
    def transaction_on(self, conn: Conn) -> Iterator[Conn]:
        """A transaction on ``conn`` (from :meth:`connect`) with this
        engine's settings, committed at the end of the block."""
        for statement in self._begin:  # read-only: every write is refused (ReadOnlyDatabase)
            conn.execute(statement)
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self.closed = True
            pool, self._pool = self._pool, None
            mine = self._pid == os.getpid()
        if pool is not None:
            if mine:
                pool.close()
            else:
                _inherited.append(pool)

    # -- transactions -------------------------------------------------------------

    def _current(self) -> Optional[Tx]:
        """This thread's transaction, to join, unless it is in the middle of
        a statement or of its COMMIT (a put from a ``__del__`` that the
        garbage collector ran there): that call gets a transaction of its
        own."""
        if self._generation != _fork.generation:
            self._local = threading.local()
            self._generation = _fork.generation
        tx: Optional[Tx] = getattr(self._local, "tx", None)
        return None if tx is None or tx.busy else tx

    # (The last attempt returns or raises: the loop never ends.)
    def _getconn(self, checked: bool) -> Conn:  # type: ignore[return]
        """A connection of the pool, ``on_connect`` called with it; with
        ``checked``, one that answered a first statement.  A connection
        found dead there (the server ended it while it was idle) is put
        back, which discards it, and another taken (each of the pool's
        may be, after a restart of the server), until ``timeout``."""
        began = time.monotonic()
        attempts = max(_ATTEMPTS, self.pool_size + 1)
        for attempt in range(attempts):
            try:
                conn = self.pool().getconn(timeout=self.timeout)
            except psycopg_pool.PoolTimeout as exc:
                raise DatabaseBusy(
                    "no connection to %s within timeout_seconds=%g: all %d of this process's "
                    "are busy, or the server does not answer (%s)"
                    % (self.shown, self.timeout, self.pool_size, exc)) from None
            except psycopg.Error as exc:
                raise self.error(exc) from None
            try:
                if checked:
                    conn.execute("SELECT 1")
                if self.on_connect is not None:
                    self.on_connect(conn)
                return conn
            except psycopg.Error as exc:
                self.pool().putconn(conn)
                if (not conn.broken or attempt == attempts - 1
                        or time.monotonic() - began >= self.timeout):
                    raise self.error(exc) from exc

    @contextlib.contextmanager
    def transaction(self, checked: bool = False) -> Iterator[Tx]:
        """A transaction on a pooled connection: yields a :class:`Tx`;
        committed at the end of the block, rolled back if it raises.  The
        notifications the block asked for are sent in it (delivered at
        commit); ``tx.after`` callbacks run once it committed.

        ``checked``: for a block that cannot be run again (an application's
        transaction; :meth:`run` runs its work again instead), a round trip
        first makes sure the connection still works."""
        outer = self._current()
        if outer is not None:
            yield outer
            return
        conn = self._getconn(checked)
        tx = Tx(conn, self._begin)
        outer, self._local.tx = getattr(self._local, "tx", None), tx
        try:
            try:
                yield tx
                tx.committing = True
                tx.commit()
            except BaseException:
                try:
                    conn.rollback()
                except psycopg.Error:
                    pass
                raise
        except psycopg.Error as exc:
            raise self.error(exc) from exc
        finally:
            self._local.tx = outer
            self.pool().putconn(conn)
        for callback in tx.after:
            callback()

    # (The last attempt returns or raises: the loop never ends.)
    def run(self, work: Callable[[Tx], T]) -> T:  # type: ignore[return]
        """``work(tx)`` in a transaction of its own, run again (whole) after a
        deadlock or a serialization failure, or a connection lost before
        its COMMIT was sent (the server rolled it back: nothing happened;
        a connection of the pool that died while idle shows so), as long as
        ``timeout`` has not passed: a connection that took that long to be
        found dead (``tcp_user_timeout``, keepalives: the network or the
        server is gone) is not tried again on each of the pool's others."""
        outer = self._current()
        if outer is not None:
            return work(outer)
        began = time.monotonic()
        for attempt in range(_ATTEMPTS):
            tx: Optional[Tx] = None
            try:
                with self.transaction() as tx:
                    return work(tx)
            except StorageError as exc:
                lost = (isinstance(exc.__cause__, psycopg.OperationalError)
                        and not isinstance(exc.__cause__, _RETRIED)
                        and tx is not None and not tx.committing and tx.conn.broken
                        and time.monotonic() - began < self.timeout)
                if not (isinstance(exc.__cause__, _RETRIED) or lost) or attempt == _ATTEMPTS - 1:
                    raise
            time.sleep(0.01 * attempt * (0.5 + random.random()))

    def execute(self, statement: str, params: Optional[Params] = None) -> List[TupleRow]:
        """Run one statement; return all its rows."""
        return self.run(lambda tx: tx.rows(statement, params))

    def changes(self, statement: str, params: Optional[Params] = None) -> int:
        """Run one statement; return how many rows it changed."""
        return self.run(lambda tx: tx.rowcount(statement, params))

    # -- errors ---------------------------------------------------------------------

    def error(self, exc: psycopg.Error) -> LiteQueueError:
        """The exception of ours that says what psycopg's ``exc`` means."""
        text = _scrub(str(exc).strip(), self.conninfo)
        if isinstance(exc, (errors.LockNotAvailable, errors.QueryCanceled)):
            return DatabaseBusy("%s: a lock stayed held by another connection for more than "
                                "timeout_seconds=%g (%s)" % (self.shown, self.timeout, text))
        if isinstance(exc, errors.DiskFull):
            return DiskFull("%s: the server has no room to write (%s); nothing of this "
                            "operation was stored" % (self.shown, text))
        if isinstance(exc, errors.ProgramLimitExceeded):
            return PayloadTooLarge("%s: a value is longer than PostgreSQL stores (%s); "
                                   "nothing was stored" % (self.shown, text))
        if isinstance(exc, (errors.ReadOnlySqlTransaction, errors.InsufficientPrivilege)):
            return ReadOnlyDatabase("%s cannot be written: %s" % (self.shown, text))
        if isinstance(exc, (errors.UndefinedTable, errors.UndefinedFunction,
                            errors.InvalidSchemaName)):
            return IncompatibleDatabase(
                "%s no longer has its queue tables (%s): were they dropped by another "
                "program while this queue had them open?" % (self.shown, text))
        if isinstance(exc, psycopg.OperationalError):
            return StorageError("%s: cannot reach the database: %s" % (self.shown, text))
        return StorageError("%s: PostgreSQL failed: %s" % (self.shown, text))


def _scrub(text: str, conninfo: str) -> str:
    """``text`` without the password of ``conninfo``, if it is there."""
    try:
        password = psycopg.conninfo.conninfo_to_dict(conninfo).get("password")
    except psycopg.Error:
        password = None
    if password:
        text = text.replace(str(password), "***")
    return text


# What channels and payloads are made of (notify.channel_of, payload_of):
# quoted as they are, in a microsecond instead of psycopg's 15.
_PLAIN = re.compile(r"[A-Za-z0-9_:]*\Z")


def _literal(text: str) -> str:
    if _PLAIN.match(text):
        return "'%s'" % text
    return sql.Literal(text).as_string()


class Tx:
    """One transaction: its connection, and what to send at its commit.

    The connection is in autocommit mode and the transaction is begun by an
    explicit BEGIN sent with its first statement, in one round trip
    (psycopg's implicit BEGIN is a round trip of its own): a put is two
    round trips, this and the COMMIT, instead of three."""

    __slots__ = ("conn", "notifications", "after", "committing", "busy", "begun", "_begin")

    def __init__(self, conn: Conn, begin: Tuple[str, ...]) -> None:
        self.conn = conn
        self._begin = begin  # the BEGIN, and the SET LOCALs that go with it
        self.notifications: Dict[Tuple[str, str], None] = {}  # (channel, payload): None, in order
        self.after: List[Callable[[], object]] = []
        self.committing = False
        #: In a statement or the COMMIT: a reentrant call must not join.
        self.busy = False
        self.begun = False

    def _execute(self, statement: str, params: Optional[Params]
                 ) -> psycopg.Cursor[TupleRow]:
        self.busy = True
        try:
            if self.begun:
                return self.conn.execute(statement, params)
            with self.conn.pipeline():
                self._start()
                cursor = self.conn.execute(statement, params)
            return cursor
        finally:
            self.busy = False

    def _start(self) -> None:
        for statement in self._begin:
            self.conn.execute(statement)
        self.begun = True

    def rows(self, statement: str, params: Optional[Params] = None) -> List[TupleRow]:
        cur = self._execute(statement, params)
        return cur.fetchall() if cur.description is not None else []

    def one(self, statement: str, params: Optional[Params] = None) -> Optional[TupleRow]:
        return self._execute(statement, params).fetchone()

    def rowcount(self, statement: str, params: Optional[Params] = None) -> int:
        return self._execute(statement, params).rowcount

    @contextlib.contextmanager
    def direct(self) -> Iterator[Conn]:
        """The connection, in the transaction, for statements of the
        caller's own (``executemany``, a helper that takes a connection)."""
        if not self.begun:
            with self.conn.pipeline():
                self._start()
        self.busy = True
        try:
            yield self.conn
        finally:
            self.busy = False

    def notify(self, channel: str, payload: str,
               callback: Optional[Callable[[], object]] = None) -> None:
        self.notifications[channel, payload] = None
        if callback is not None:
            self.after.append(callback)

    def commit(self) -> None:
        """Send the notifications (delivered at commit) and COMMIT, in one
        round trip: one query of several statements, not a pipeline.

        A pipeline ends with a Sync, and then with a Flush if its results
        were not all in yet.  PgBouncer (1.18 at least) in transaction mode
        gives the server session back at the Sync's ReadyForQuery that ends
        the transaction; a Flush that comes after it takes a session again,
        and since a Flush is never answered, keeps it until this connection
        sends something else: idle in the pool, it starved every other
        client of that session (the other connections of this process
        too).  The pipeline that begins a transaction is safe: its Sync
        leaves the transaction open, so the session stays ours anyway."""
        if not self.begun:
            return  # nothing was done (a notification goes with a change)
        self.busy = True
        if not self.notifications:
            self.conn.execute("COMMIT")
            return
        self.conn.execute("; ".join(
            ["SELECT pg_notify(%s, %s)" % (_literal(channel), _literal(payload))
             for channel, payload in self.notifications] + ["COMMIT"]))
