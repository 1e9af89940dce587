"""The engine on one SQLite file in WAL mode: producing, leasing and
settling messages (the hot path), and the looks at a queue.

The statements are in :mod:`.sql`, connection handling in :mod:`.connections`,
wake-ups in :mod:`.wakeup`, the opening of the file's tables in
:mod:`.schema`, its clock in :mod:`.anchor` and its upkeep in
:mod:`.maintenance`; the keyed messages and results of the pools in
:mod:`.keyed`, dead letters in :mod:`.dead_letters`, the operations on whole
queues in :mod:`.operating` and the puts inside a transaction in
:mod:`.transactions`.  What is here is the algorithm.

Concurrency: every method is one atomic statement, or a ``BEGIN IMMEDIATE``
transaction, so any number of threads and processes may share the file.  A
lease is a single ``UPDATE ... RETURNING``: two consumers can never lease the
same message while its lease holds, because the second one's statement starts
after the first one's has committed and no longer finds the row ready.
"""

from __future__ import annotations

import atexit
import logging
import os
import weakref
from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, List, Optional, Tuple

from .._sql_engine import SQLEngine, new_token
from ..engine import EngineSpec, Message, Metrics
from . import sql as _sql
from .anchor import AnchoredClock
from .connections import Connections, check_sqlite_version
from .dead_letters import _NUMBER, DeadLetterMixin, _malformed
from .keyed import KeyedMixin
from .maintenance import SQLiteMaintenance
from .operating import OperatingMixin
from .schema import JOURNAL_MODES, SchemaMixin, check_directory
from .transactions import PutOnMixin, _Transaction
from .wakeup import Notifier

if TYPE_CHECKING:
    import sqlite3
    from contextlib import AbstractContextManager

    from _typeshed import StrOrBytesPath

    from .._sql_engine import Params
    from ..engine import CountKind, Order, QueueStats, Sealer, WakeKind, Waiter

__all__ = ["SQLiteEngine", "SQLiteMaintenance", "check_table_prefix"]

logger = logging.getLogger("persistqueue_liteq")


# Engines not closed when the interpreter exits still flush their counts.
_open_engines: weakref.WeakSet[SQLiteEngine] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    for engine in list(_open_engines):
        engine.flush_metrics()


class SQLiteEngine(KeyedMixin, DeadLetterMixin, OperatingMixin, PutOnMixin, SchemaMixin,
                   AnchoredClock, SQLEngine):
    """Messages of many named queues in one SQLite file (see :class:`Engine`).

    Args:
        path: the database file; created if missing (its directory must exist).
        timeout: seconds to wait for another connection's lock before raising
            :class:`~persistqueue_liteq.exceptions.DatabaseBusy`.
        synchronous: "NORMAL" (survives any crash of the process) or "FULL"
            (also survives a power loss or an OS crash).
        table_prefix: prefix of the tables, so that queues can live inside an
            application's own database.
        readonly: open an existing queue file only to look at it: nothing is
            created or changed, and any write raises ReadOnlyDatabase.
        journal_mode: None (default): the file is put in WAL mode, unless it
            is an application's database (it holds tables that are not
            ours) in another mode: then IncompatibleDatabase, naming the two
            ways out.  "wal": switch any file to WAL mode.  "keep": leave the
            file's journal mode as it is.  In the rollback-journal modes
            every reader blocks every commit: fine for one process that puts
            and gets now and then (or a file system without the shared
            memory WAL needs), not for many busy consumers, and not for the
            pools, which refuse it.

    Raises:
        FileNotFoundError: the file's directory does not exist (or, with
            ``readonly``, the file itself).
        IncompatibleDatabase: the file is not SQLite, or holds tables of that
            prefix that are not ours, or was written by a newer version.
        ReadOnlyDatabase: the file must be created or upgraded but cannot be
            written.
    """

    NO_LIMIT = -1  # SQLite's LIMIT -1

    #: The options of :mod:`.backends` that this engine takes, with their
    #: defaults.
    DEFAULT_OPTIONS: Dict[str, Any] = {"timeout": 5.0, "synchronous": "NORMAL",
                                       "table_prefix": _sql.DEFAULT_PREFIX, "readonly": False,
                                       "journal_mode": None}

    @staticmethod
    def check_location(path: StrOrBytesPath) -> str:
        """``path`` as a str, if it can name a queue file; else ValueError."""
        path = os.fspath(path)
        if not isinstance(path, str):
            path = os.fsdecode(path)
        if path in ("", ":memory:") or path.startswith("file:"):
            raise ValueError(
                "a queue needs a database file that several connections can open; "
                "got %r" % (path,)
            )
        return path

    def __init__(self, path: StrOrBytesPath, timeout: float = 5.0, synchronous: str = "NORMAL",
                 table_prefix: str = _sql.DEFAULT_PREFIX, readonly: bool = False,
                 journal_mode: Optional[str] = None) -> None:
        check_sqlite_version()
        if journal_mode not in JOURNAL_MODES:
            raise ValueError("journal_mode must be None, 'wal' or 'keep'; got %r"
                             % (journal_mode,))
        self._journal_mode = journal_mode
        self.sql = _sql.render(table_prefix)
        path = self.check_location(path)
        check_directory(path)
        if os.path.isdir(path):
            raise IsADirectoryError(
                "cannot open queue database %s: it is a directory; give the path of a file "
                "(e.g. %s), or use persistqueue_liteq.persistqueue_compat, whose queues take "
                "a directory as persist-queue's do" % (path, os.path.join(path, "queue.db")))
        if readonly and not os.path.isfile(path):
            raise FileNotFoundError("no such queue file: %s" % path)
        self.location = path
        self.spec = EngineSpec("sqlite", os.path.abspath(path), dict(
            timeout=timeout, synchronous=synchronous, table_prefix=table_prefix,
            readonly=readonly, journal_mode=journal_mode))
        self.readonly = readonly
        self._conns = Connections(path, timeout, synchronous, readonly=readonly)
        self._lease_sql = {
            "fifo": self.sql.LEASE_FIFO,
            "lifo": self.sql.LEASE_LIFO,
            "priority": self.sql.LEASE_PRIORITY,
        }
        self._lease_one_sql = {
            "fifo": self.sql.LEASE_FIFO_ONE,
            "lifo": self.sql.LEASE_LIFO_ONE,
            "priority": self.sql.LEASE_PRIORITY_ONE,
        }
        self._count_sql = {
            "live": self.sql.COUNT_LIVE,
            "waiting": self.sql.COUNT_WAITING,
            "ready": self.sql.COUNT_READY,
            "dead": self.sql.COUNT_DEAD,
        }
        self._kept_sql = {"live": self.sql.KEPT_LIVE, "waiting": self.sql.KEPT_WAITING}
        self._meta = {}
        self._open_schema()
        auto_vacuum = self._meta.get(_sql.AUTO_VACUUM_KEY)
        self._auto_vacuum = None if auto_vacuum is None else int(auto_vacuum)
        self._open_clock()
        self._notifier = Notifier(path, table_prefix)
        self._metrics = Metrics(location=path)
        if not readonly:
            _open_engines.add(self)

    def _rows(self, statement: str, params: Params = ()) -> List[Any]:
        return self._conns.execute(statement, params)

    def _changes(self, statement: str, params: Params) -> int:
        return self._conns.write(lambda conn: conn.execute(statement, params).rowcount)

    def _write(self, statement: str, params: Params = ()) -> List[Any]:
        return self._conns.write(lambda conn: conn.execute(statement, params).fetchall())

    # -- producing ------------------------------------------------------------

    def put(self, queue: str, data: bytes, delay: float = 0.0, ttl: Optional[float] = None,
            priority: Optional[bytes] = None, seal: Optional[Sealer] = None,
            key: Optional[str] = None) -> int:
        if key is not None:
            msg_id, new = self._conns.write_transaction(
                lambda conn: self._insert_with_key(conn, queue, data, delay, ttl, priority, seal,
                                                   key))
            if not new:
                return msg_id
        elif seal is not None:
            msg_id = self._conns.write_transaction(
                lambda conn: self._insert_sealed(conn, queue, data, delay, ttl, priority, seal))
        else:
            now = self.now()
            params = (queue, data, priority, now + delay, now, None if ttl is None else now + ttl)
            insert = self.sql.INSERT
            # An INSERT's lastrowid is its row's id, never None.
            msg_id = self._conns.write(
                lambda conn: conn.execute(insert, params).lastrowid)  # type: ignore[assignment]
        self._notifier.notify("put", queue)
        self._count(queue, "puts")
        return msg_id

    def _insert_with_key(self, conn: sqlite3.Connection, queue: str, data: bytes, delay: float,
                         ttl: Optional[float], priority: Optional[bytes], seal: Optional[Sealer],
                         key: str) -> Tuple[int, bool]:
        """INSERT a message with the caller's id unless ``queue`` holds one
        with it; return (id, whether it was stored)."""
        row = conn.execute(self.sql.FIND_KEY, (queue, key)).fetchone()
        if row is not None:
            return row[0], False
        now = self.now()
        msg_id: Optional[int] = None
        if seal is not None:
            msg_id = conn.execute(self.sql.NEXT_ID).fetchone()[0]
            data = seal(msg_id, data)
        cursor = conn.execute(self.sql.INSERT_WITH_KEY, (
            msg_id, queue, data, priority, now + delay, now, None if ttl is None else now + ttl,
            key))
        return cursor.lastrowid, True  # type: ignore[return-value]  # an INSERT's: its id

    def _insert_sealed(self, conn: sqlite3.Connection, queue: str, data: bytes, delay: float,
                       ttl: Optional[float], priority: Optional[bytes], seal: Sealer) -> int:
        """INSERT one message whose stored payload is ``seal(id, data)``:
        the id is chosen first, as AUTOINCREMENT would, under the write lock
        that the transaction holds."""
        now = self.now()
        msg_id: int = conn.execute(self.sql.NEXT_ID).fetchone()[0]
        conn.execute(self.sql.INSERT_WITH_ID, (
            msg_id, queue, seal(msg_id, data), priority, now + delay, now,
            None if ttl is None else now + ttl))
        return msg_id

    def put_many(self, queue: str, payloads: Iterable[bytes], delay: float = 0.0,
                 ttl: Optional[float] = None, seal: Optional[Sealer] = None) -> List[int]:
        with self._conns.transaction() as conn:
            ids = self._insert_many(conn, queue, payloads, delay, ttl, seal)
        self._notifier.notify("put", queue)
        self._count(queue, "puts", len(ids))
        return ids

    def _insert_many(self, conn: sqlite3.Connection, queue: str, payloads: Iterable[bytes],
                     delay: float, ttl: Optional[float], seal: Optional[Sealer] = None
                     ) -> List[int]:
        now = self.now()
        visible = now + delay
        expires = None if ttl is None else now + ttl
        count = 0
        if seal is not None:
            first: int = conn.execute(self.sql.NEXT_ID).fetchone()[0]

            def sealed_rows() -> Iterator[Tuple[object, ...]]:
                nonlocal count
                for msg_id, data in enumerate(payloads, first):
                    count += 1
                    yield (msg_id, queue, seal(msg_id, data), None, visible, now, expires)

            conn.executemany(self.sql.INSERT_WITH_ID, sealed_rows())
            return list(range(first, first + count))

        def rows() -> Iterator[Tuple[object, ...]]:
            nonlocal count
            for data in payloads:
                count += 1
                yield (queue, data, None, visible, now, expires)

        conn.executemany(self.sql.INSERT, rows())
        if not count:
            return []
        # AUTOINCREMENT under the write lock hands out consecutive ids.
        last: int = conn.execute(self.sql.LAST_ID).fetchone()[0]
        return list(range(last - count + 1, last + 1))

    def transaction(self) -> AbstractContextManager[_Transaction]:
        return _Transaction(self)

    # -- consuming ------------------------------------------------------------

    def lease(self, queue: str, n: int, seconds: float, order: Order = "fifo",
              max_attempts: Optional[int] = None, holder: Optional[str] = None
              ) -> List[Message]:
        many, one = self._lease_sql[order], self._lease_one_sql[order]
        leased: List[Message] = []
        while len(leased) < n:
            now = self.now()
            token = new_token()
            until = now + seconds
            wanted = n - len(leased)
            rows = self._write(
                one if wanted == 1 else many,
                {"queue": queue, "now": now, "until": until, "lease": token, "n": wanted,
                 "holder": holder},
            )
            if not rows:
                break
            unfit: List[Message] = []
            for row in rows:  # a plain loop: most leases are of one message
                m = Message(row[0], row[1], row[2], row[3] - 1, row[4], row[3], token, until,
                            row[5], row[6], row[7], None, None, row[8], holder)
                if (_malformed(m) is not None
                        or (m.expires_at is not None and m.expires_at <= now)
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
        if len(leased) == 1:
            self._count_deliveries(queue, leased[0].attempts)
            return leased
        self._count_deliveries(queue, *(m.attempts for m in leased))
        if order == "lifo":
            leased.sort(key=lambda m: m.id, reverse=True)
        elif order == "priority":
            leased.sort(key=lambda m: (m.priority, m.id))
        else:
            leased.sort(key=lambda m: m.id)
        return leased

    def lease_id(self, queue: str, msg_id: int, seconds: float) -> Optional[Message]:
        now = self.now()
        token = new_token()
        until = now + seconds
        rows = self._write(self.sql.LEASE_ID, {"queue": queue, "id": msg_id, "now": now,
                                               "until": until, "lease": token})
        if not rows:
            return None
        row = rows[0]
        self._count_deliveries(queue, row[3])
        return Message(row[0], row[1], row[2], row[3] - 1, row[4], row[3], token, until,
                       row[5], row[6], row[7], None, None, row[8])

    def next_visible_at(self, queue: str) -> Optional[float]:
        now = self.now()
        due = self._rows(self.sql.NEXT_VISIBLE_AT, (queue, now))[0][0]
        if due is None or isinstance(due, _NUMBER):
            return due
        # Text or a blob, written by another program: SQLite sorts it after
        # every number, so it is never leased; it would stop every waiting
        # consumer here.  Dead-letter it, saying what it was.
        self._dead_letter_bad_visible(queue, now)
        return self._rows(  # type: ignore[no-any-return]  # a time, or NULL: none
            self.sql.NEXT_VISIBLE_AT, (queue, now))[0][0]

    def _settle(self, statement: str, params: Params, kind: WakeKind) -> bool:
        """Run one settling statement; wake ``kind`` waiters of its queue."""
        rows = self._write(statement, params)
        if rows:
            self._notifier.notify(kind, rows[0][0])
        return bool(rows)

    def ack(self, msg_id: int, lease: Optional[int], queue: Optional[str] = None) -> bool:
        if queue is None:
            rows = self._write(self.sql.ACK, (msg_id, lease))
            if not rows:
                return False
            queue = rows[0][0]
        elif not self._changes(self.sql.ACK_IN_QUEUE, (msg_id, lease, queue)):
            return False
        self._notifier.notify("done", queue)
        self._count(queue, "acks")
        return True

    def delete(self, msg_id: int) -> bool:
        return self._settle(self.sql.DELETE, (msg_id,), "done")

    def delete_unleased(self, msg_id: int) -> bool:
        return self._settle(self.sql.DELETE_UNLEASED, (msg_id,), "done")

    def set_visibility(self, msg_id: int, lease: Optional[int], seconds: float) -> bool:
        # A lease ended now makes the message ready: wake consumers.  A lease
        # extended (a heartbeat) or merely cut short wakes nobody: a waiter
        # looks again within wakeup.SAFETY_INTERVAL anyway.
        rows = self._write(self.sql.SET_VISIBILITY, (self.now() + seconds, msg_id, lease))
        if rows and seconds <= 0:
            self._notifier.notify("put", rows[0][0])
        return bool(rows)

    def release(self, msg_id: int, lease: Optional[int], delay: float = 0.0,
                error: Optional[str] = None, attempted: bool = True) -> bool:
        statement = self.sql.RELEASE if attempted else self.sql.RELEASE_UNATTEMPTED
        return self._settle(statement, (self.now() + delay, error, msg_id, lease), "put")

    def ack_many(self, items: Iterable[Tuple[int, Optional[int]]]) -> int:
        removed: Dict[str, int]
        acks: Dict[str, int]
        removed, acks = {}, {}
        with self._conns.transaction() as conn:
            for msg_id, lease in items:
                if lease is None:
                    row = conn.execute(self.sql.DELETE, (msg_id,)).fetchone()
                else:
                    row = conn.execute(self.sql.ACK, (msg_id, lease)).fetchone()
                    if row:
                        acks[row[0]] = acks.get(row[0], 0) + 1
                if row:
                    removed[row[0]] = removed.get(row[0], 0) + 1
        for name in removed:
            self._notifier.notify("done", name)
        for name, n in acks.items():
            self._count(name, "acks", n)
        return sum(removed.values())

    def recover_leases(self, queue: Optional[str] = None) -> int:
        now = self.now()
        if queue is None:
            rows = self._write(self.sql.RECOVER_ALL_LEASES, {"now": now})
        else:
            rows = self._write(self.sql.RECOVER_LEASES, {"queue": queue, "now": now})
        for name in {row[0] for row in rows}:
            self._notifier.notify("put", name)
        return len(rows)

    # -- inspecting -------------------------------------------------------------

    def peek(self, queue: str) -> Optional[Message]:
        now = self.now()
        rows = self._rows(self.sql.PEEK, (queue, now, now))
        return self._stored(rows[0]) if rows else None

    def count(self, queue: str, what: CountKind = "live") -> int:
        statement = self._count_sql.get(what)
        if statement is None:
            raise ValueError("count() what must be live, waiting, ready or dead; got %r"
                             % (what,))
        if self._sizes_kept:
            statement = self._kept_sql.get(what, statement)
        return self._rows(  # type: ignore[no-any-return]  # a COUNT: an int
            statement, {"queue": queue, "now": self.now()})[0][0]

    def queues(self) -> List[QueueStats]:
        now = self.now()
        return self._queue_stats(self._rows(self.sql.QUEUE_STATS, {"now": now}),
                                 self._rows(self.sql.HOLDERS, {"now": now}))

    # -- metrics ------------------------------------------------------------------

    def flush_metrics(self) -> None:
        pending = self._metrics.take()
        if not pending or self.readonly:
            return
        bucket = int(self.now() // _sql.ACTIVITY_BUCKET * _sql.ACTIVITY_BUCKET)
        try:
            with self._conns.transaction() as conn:
                conn.executemany(self.sql.ADD_COUNTER,
                                 [(queue, name, n) for (queue, name), n in pending.items()])
                conn.executemany(self.sql.ADD_ACTIVITY,
                                 [(queue, name, bucket, n) for (queue, name), n in pending.items()])
                conn.execute(self.sql.FORGET_ACTIVITY, (bucket - _sql.ACTIVITY_KEPT,))
        except Exception as exc:  # counting never fails the operation counted
            # Busy, closed, file gone: keep them for the next flush.
            logger.debug("metrics not flushed to %s: %s", self.location, exc)
            self._metrics.give_back(pending)
            return
        if self._auto_vacuum is not None:
            self.maintenance().vacuum_if_due()

    def maintenance(self) -> SQLiteMaintenance:
        return SQLiteMaintenance(self)

    def waiter(self, kind: WakeKind, queue: str) -> AbstractContextManager[Waiter]:
        return self._notifier.waiter(kind, queue)

    def wake(self, kind: WakeKind, queue: str) -> None:
        self._notifier.notify(kind, queue)

    def close(self) -> None:
        self.flush_metrics()
        _open_engines.discard(self)
        self._conns.close()


def check_table_prefix(prefix: str) -> str:
    """Return ``prefix`` if the SQLite engine takes it as ``table_prefix``;
    else ValueError saying why (for checking a user's input early)."""
    _sql.render(prefix)
    return prefix
