"""Connections of one engine to one PostgreSQL database: a psycopg_pool per
process, transactions, and what psycopg's errors mean in our exceptions.

The pool is made on first use in each process: a forked child never uses
(or closes) its parent's connections, which it keeps referenced so that no
finalizer of theirs runs there (psycopg itself never ends a connection from
another process than the one that opened it).

Every operation is one transaction on one connection of the pool: one of
a single statement in one round trip (``once``), any other in two.  Nested
use on one thread joins the outer transaction (as the SQLite engine's
``Connections.transaction`` does).  Deadlocks and serialization failures
roll back and are run again, whole, a few times.  A lock held longer than
``timeout`` (``lock_timeout``), or no free connection for that long, is
:class:`~persistqueue_liteq.exceptions.DatabaseBusy`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import re
import select
import threading
import time
import weakref
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Match,
                    Optional, Set, Tuple, TypeVar)

import psycopg
import psycopg_pool
from psycopg import errors, sql

from .. import _fork
from ..exceptions import (DatabaseBusy, DiskFull, IncompatibleDatabase, LiteQueueError,
                          PayloadTooLarge, ReadOnlyDatabase, StorageError)

logger = logging.getLogger("persistqueue_liteq")

if TYPE_CHECKING:
    from psycopg.abc import Params
    from psycopg.rows import TupleRow

    #: A connection of ours: rows are tuples.
    Conn = psycopg.Connection[TupleRow]

    T = TypeVar("T")

_TUPLES_OK = psycopg.pq.ExecStatus.TUPLES_OK
_RETRIED = (errors.DeadlockDetected, errors.SerializationFailure)
# In once(), also a prepared statement gone (see Connections._once).
_RETRIED_ONCE = _RETRIED + (errors.InvalidSqlStatementName,)
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
        #: once() prepares its statements (SQL's PREPARE, which PgBouncer
        #: does not keep even where it keeps psycopg's): they are named by
        #: their text, so that on a server session shared through a pooler
        #: a name never means another statement.  statement -> (name,
        #: PREPARE, EXECUTE's template); and the names prepared on each
        #: connection.
        self.prepares = prepared
        self._statements: Dict[str, Tuple[str, str, str]] = {}
        self._prepared_on: weakref.WeakKeyDictionary[Conn, Set[str]] = (
            weakref.WeakKeyDictionary())
        #: Whether commits notify: not while PostgreSQL's notification
        #: queue is more than NOTIFY_QUEUE_LIMIT full, as last read (every
        #: NOTIFY_CHECK_INTERVAL seconds, on a connection taken).
        self.notifying = True
        self._notify_checked_at = -float("inf")
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
                if checked or _hung_up(conn):
                    conn.execute("SELECT 1")
                if self.on_connect is not None:
                    self.on_connect(conn)
                if time.monotonic() - self._notify_checked_at >= NOTIFY_CHECK_INTERVAL:
                    self._check_notify_queue(conn)
                return conn
            except psycopg.Error as exc:
                self.pool().putconn(conn)
                if (not conn.broken or attempt == attempts - 1
                        or time.monotonic() - began >= self.timeout):
                    raise self.error(exc) from exc

    def _check_notify_queue(self, conn: Conn) -> None:
        row = conn.execute("SELECT pg_catalog.pg_notification_queue_usage()").fetchone()
        usage = row[0] if row is not None else 0.0  # (one row)
        notifying = usage < NOTIFY_QUEUE_LIMIT
        if notifying and not self.notifying:
            logger.warning("%s: PostgreSQL's notification queue is %.0f%% full; wake-ups "
                           "are sent again", self.shown, 100 * usage)
        elif not notifying and self.notifying:
            logger.warning("%s: PostgreSQL's notification queue is %.0f%% full: no wake-ups "
                           "are sent until it is below %.0f%% (a session that LISTENs does "
                           "not read: see pg_stat_activity); waiters look every second",
                           self.shown, 100 * usage, 100 * NOTIFY_QUEUE_LIMIT)
        self.notifying = notifying
        self._notify_checked_at = time.monotonic()

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
        tx = Tx(conn, self._begin, self.notifying)
        outer, self._local.tx = getattr(self._local, "tx", None), tx
        try:
            try:
                yield tx
                tx.committing = True
                tx.commit()
            except BaseException:
                _roll_back(conn)
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

    # (The last attempt returns or raises: the loop never ends.)
    def once(self, statement: str, params: Optional[Params] = None,
             notify: Optional[Tuple[str, str, Callable[[], object]]] = None,
             lost_is_retried: bool = False
             ) -> Tuple[List[TupleRow], int]:
        """``statement`` as a transaction of its own, in one round trip: its
        rows and how many rows it changed.

        One query of several statements: BEGIN and the SET LOCALs, the
        statement (its parameters bound here: such a query takes none), the
        COMMIT, then the notification that ``notify`` asks for (channel,
        payload, and what to call once committed).  :meth:`run` takes two
        round trips (the BEGIN goes with the first statement, the COMMIT is
        sent once the work is done).  In the thread's transaction, if there
        is one, the statement joins it.

        Run again after a deadlock or a serialization failure (nothing was
        committed).  A connection lost on the way may have committed: that
        is a StorageError, unless ``lost_is_retried`` (a lease, which a
        lost answer only holds back until it expires, as a dead worker's).
        """
        outer = self._current()
        if outer is not None:
            cursor = outer._execute(statement, params)
            if notify is not None:
                outer.notify(*notify)
            return _results(cursor)
        began = time.monotonic()
        for attempt in range(_ATTEMPTS):
            conn = self._getconn(False)
            try:
                try:
                    results = self._once(conn, statement, params,
                                         None if notify is None else notify[:2])
                except BaseException:
                    _roll_back(conn)
                    raise
            except psycopg.Error as exc:
                lost = (lost_is_retried and isinstance(exc, psycopg.OperationalError)
                        and conn.broken and time.monotonic() - began < self.timeout)
                if (not (isinstance(exc, _RETRIED_ONCE) or lost)
                        or attempt == _ATTEMPTS - 1):
                    raise self.error(exc) from exc
            else:
                break
            finally:
                self.pool().putconn(conn)
            time.sleep(0.01 * attempt * (0.5 + random.random()))
        if notify is not None:
            notify[2]()
        return results

    def _once(self, conn: Conn, statement: str, params: Optional[Params],
              notification: Optional[Tuple[str, str]]) -> Tuple[List[TupleRow], int]:
        """once() on ``conn``: the statement run as a prepared one unless
        prepared statements are off (PgBouncer), prepared first if need be
        (a round trip of its own, once per statement and connection)."""
        prepared_now = False
        if self.prepares:
            known = self._statements.get(statement)
            if known is None:
                known = self._statements[statement] = _prepared(statement)
            name, prepare, execute = known
            here = self._prepared_on.get(conn)
            if here is None:
                here = self._prepared_on[conn] = set()
            if name not in here:
                # In a transaction with the lock_timeout: parsing the
                # statement takes its tables' locks, and one held by another
                # tool (LOCK TABLE) must be DatabaseBusy, not a wait.
                try:
                    conn.execute("; ".join(self._begin + (prepare, "COMMIT")), prepare=False)
                except errors.DuplicatePreparedStatement:
                    conn.rollback()
                here.add(name)
                prepared_now = True
            statement = execute
        parts = list(self._begin)
        parts.append(psycopg.ClientCursor(conn).mogrify(statement, params))
        parts.append("COMMIT")
        if notification is not None and self.notifying:
            parts.append(_notifying((notification,)))
        try:
            cursor = conn.execute("; ".join(parts), prepare=False)
        except errors.InvalidSqlStatementName:
            # Deallocated behind our back (DISCARD ALL, an operator): it is
            # prepared again.  Gone between two queries of one connection: a
            # pooler in transaction mode hands us another server session at
            # each transaction; from now on the statements go whole.
            self._prepared_on.pop(conn, None)
            if prepared_now:
                self.prepares = False
                logger.info("%s: the server session changes between transactions (a pooler "
                            "in transaction mode?): statements are no longer prepared",
                            self.shown)
            raise
        for _ in self._begin:
            cursor.nextset()
        return _results(cursor)

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


#: Above this share of PostgreSQL's notification queue in use, nothing is
#: notified (waiters see a change at their next look, within a second).
#: The queue fills when a listening session of any program stops reading
#: (it sits in a transaction): a NOTIFY then fails at its commit, which
#: here comes after ours, and would make a committed operation raise.  Read
#: every NOTIFY_CHECK_INTERVAL seconds: the half left takes billions of
#: notifications to fill.
NOTIFY_QUEUE_LIMIT = 0.5
NOTIFY_CHECK_INTERVAL = 10.0


def _notifying(notifications: Iterable[Tuple[str, str]]) -> str:
    """The statements that send ``notifications`` (channel, payload), to
    follow a COMMIT in the same query.

    After the COMMIT, not before: they then run in a transaction of their
    own that writes nothing, whose commit waits for no WAL flush.
    PostgreSQL serialises the commits of notifying transactions on one
    lock, held until the commit ends; before the COMMIT, that lock was held
    for each transaction's WAL flush (4 processes inserting a row a
    transaction, in one query each: 5,100 commits/s with the NOTIFY before
    the COMMIT, 9,700 after it, 10,400 with none).  A listener is woken
    once the change is committed, as before.  NOTIFY, not pg_notify(): a
    statement the server neither plans nor executes as a query."""
    return "; ".join("NOTIFY %s, %s" % (_identifier(channel), _literal(payload))
                     for channel, payload in notifications)


# What channels are made of (notify.channel_of): an identifier as it is.
_CHANNEL = re.compile(r"pqlq_[a-z0-9_]*\Z")


def _identifier(name: str) -> str:
    if _CHANNEL.match(name):
        return name
    return sql.Identifier(name).as_string()


_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s|%%")


def _prepared(statement: str) -> Tuple[str, str, str]:
    """A name for ``statement`` (from its text), the PREPARE of it with
    ``$1``, ``$2``... for its ``%s`` or ``%(name)s`` placeholders, and the
    template of the EXECUTE that runs it (its arguments in the same
    placeholders)."""
    arguments: List[str] = []

    def number_of(match: Match[str]) -> str:
        if match.group(0) == "%%":
            return "%"
        argument = match.group(0)
        if match.group(1) is None or argument not in arguments:
            arguments.append(argument)
            return "$%d" % len(arguments)
        return "$%d" % (arguments.index(argument) + 1)

    name = "pqlq_" + hashlib.blake2b(statement.encode(), digest_size=12).hexdigest()
    text = _PLACEHOLDER.sub(number_of, statement)
    execute = "EXECUTE " + name
    if arguments:
        execute += " (%s)" % ", ".join(arguments)
    return name, "PREPARE %s AS %s" % (name, text), execute


def _roll_back(conn: Conn) -> None:
    """Roll back what ``conn`` is in, if it can (an exception is on its way)."""
    try:
        conn.rollback()
    except psycopg.Error:
        pass


def _results(cursor: psycopg.Cursor[TupleRow]) -> Tuple[List[TupleRow], int]:
    return _rows_of(cursor), cursor.rowcount


def _rows_of(cursor: psycopg.Cursor[TupleRow]) -> List[TupleRow]:
    """The rows of ``cursor``'s result ([]: a statement that returns none).
    (Its ``description`` would say as much, but builds a Column for each
    column first: a tenth of a lease's CPU.)"""
    result = cursor.pgresult
    return cursor.fetchall() if result is not None and result.status == _TUPLES_OK else []


def _hung_up(conn: Conn) -> bool:
    """Whether ``conn``, idle, has something to read: the server closed it
    (it restarted, or ended idle sessions) or sent a message of its own.
    A query sent on a closed connection fails, and one that commits cannot
    tell whether it did."""
    try:
        poller = select.poll()
        poller.register(conn.pgconn.socket, select.POLLIN)
        return bool(poller.poll(0))
    except (psycopg.Error, OSError, ValueError):
        return True


class Tx:
    """One transaction: its connection, and what to send at its commit.

    The connection is in autocommit mode and the transaction is begun by an
    explicit BEGIN sent with its first statement, in one round trip
    (psycopg's implicit BEGIN is a round trip of its own): a transaction is
    two round trips, this and the COMMIT, instead of three.  One of a
    single statement (a put, a lease, an ack) is one: Connections.once."""

    __slots__ = ("conn", "notifications", "after", "committing", "busy", "begun", "_begin",
                 "_notifying", "_locked")

    def __init__(self, conn: Conn, begin: Tuple[str, ...], notifying: bool = True) -> None:
        self.conn = conn
        self._begin = begin  # the BEGIN, and the SET LOCALs that go with it
        self._notifying = notifying  # (Connections.notifying)
        self._locked: Set[Tuple[int, int]] = set()  # advisory locks held until the end
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

    def lock(self, statement: str, key: Tuple[int, int]) -> None:
        """Take the advisory lock ``key`` until the end of the transaction
        with ``statement`` (pg_advisory_xact_lock), unless it is held: a
        round trip the first time only."""
        if key not in self._locked:
            self.rows(statement, key)
            self._locked.add(key)

    def rows(self, statement: str, params: Optional[Params] = None) -> List[TupleRow]:
        cur = self._execute(statement, params)
        return _rows_of(cur)

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
        if not (self.notifications and self._notifying):
            self.conn.execute("COMMIT")
            return
        self.conn.execute("COMMIT; " + _notifying(self.notifications))
