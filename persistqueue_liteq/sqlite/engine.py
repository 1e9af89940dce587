"""The engine on one SQLite file in WAL mode.

The statements are in :mod:`.sql`, connection handling in :mod:`.connections`,
wake-ups in :mod:`.wakeup`, the opening of the file's tables in
:mod:`.schema`, its clock in :mod:`.anchor` and its upkeep in
:mod:`.maintenance`; what is here is the algorithm.

Concurrency: every method is one atomic statement, or a ``BEGIN IMMEDIATE``
transaction, so any number of threads and processes may share the file.  A
lease is a single ``UPDATE ... RETURNING``: two consumers can never lease the
same message while its lease holds, because the second one's statement starts
after the first one's has committed and no longer finds the row ready.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import sqlite3
import weakref
from typing import (TYPE_CHECKING, Any, Dict, Iterable, Iterator, List, Mapping, Optional,
                    Sequence, Tuple, Union, overload)

from .._sql_engine import SQLEngine, new_token
from ..engine import EngineSpec, Message, Metrics
from ..exceptions import StorageError
from . import sql as _sql
from .anchor import AnchoredClock
from .connections import Connections, check_sqlite_version
from .maintenance import SQLiteMaintenance
from .schema import JOURNAL_MODES, SchemaMixin, check_directory
from .wakeup import Notifier

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from _typeshed import StrOrBytesPath

    from .._sql_engine import Params
    from ..engine import (CountKind, KeyedStatus, Order, Outcome, QueueStats, Sealer, WakeKind,
                          Waiter)

    #: An outcome of complete_many without a dead reason.
    _PlainOutcome = Tuple[int, Optional[int], str, bool, bytes]

__all__ = ["SQLiteEngine", "SQLiteMaintenance", "check_table_prefix"]

logger = logging.getLogger("persistqueue_liteq")


_NUMBER = (int, float)


def _malformed(m: Message) -> Optional[str]:
    """What is wrong with leased message ``m``, whose row another program
    wrote or changed (SQLite stores any type in any column), or None."""
    if not isinstance(m.data, bytes):
        return _wrong("data", m.data, "bytes")
    if not isinstance(m.created_at, _NUMBER):
        return _wrong("created_at", m.created_at, "a time (seconds since the epoch)")
    if m.expires_at is not None and not isinstance(m.expires_at, _NUMBER):
        return _wrong("expires_at", m.expires_at, "a time (seconds since the epoch) or NULL")
    if m.key is not None and not isinstance(m.key, str):
        return _wrong("key", m.key, "text or NULL")
    return None


def _wrong(column: str, value: object, expected: str) -> str:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return "malformed row: %s is %s (%s), not %s" % (column, shown, type(value).__name__, expected)


# The most outcomes complete_many stores in one statement: 2**6.
_MOST_OUTCOMES_BITS = 6

# Engines not closed when the interpreter exits still flush their counts.
_open_engines: weakref.WeakSet[SQLiteEngine] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    for engine in list(_open_engines):
        engine.flush_metrics()


@functools.lru_cache(maxsize=64)
def _many_outcomes(store_results: str, ack_many: str, n: int) -> Tuple[str, str]:
    """STORE_RESULTS and ACK_MANY for ``n`` outcomes."""
    return (store_results.replace("{rows}", ", ".join("(%d, ?, ?, ?, ?)" % i for i in range(n))),
            ack_many.replace("{pairs}", ", ".join(["(?, ?)"] * n)))


class SQLiteEngine(SchemaMixin, AnchoredClock, SQLEngine):
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
        if not isinstance(conn, sqlite3.Connection):
            raise TypeError("put_on needs the application's sqlite3.Connection, not %s"
                            % type(conn).__name__)
        self._check_same_file(conn)
        try:
            return self._put_on(conn, queue, data, delay, ttl, seal, codec, priority)
        except sqlite3.Error as exc:  # on the application's connection: ours all the same
            raise self._conns.error(exc) from exc

    def _put_on(self, conn: sqlite3.Connection, queue: str, data: bytes, delay: float,
                ttl: Optional[float], seal: Optional[Sealer], codec: Optional[str],
                priority: Optional[bytes]) -> Union[int, Tuple[Optional[int], str]]:
        s = self.sql
        held: Optional[str] = None
        if codec is not None:
            row = conn.execute(s.READ_CODEC, (queue,)).fetchone()
            if row is not None and (row[0] == codec
                                    or conn.execute(s.ANY_MESSAGE, (queue,)).fetchone()[0]):
                held = row[0]
            else:
                conn.execute(s.WRITE_CODEC, (queue, codec))
                held = codec
            if held != codec:
                return None, held
        now = self.now()
        expires = None if ttl is None else now + ttl
        if seal is None:
            msg_id = conn.execute(s.INSERT, (queue, data, priority, now + delay, now,
                                             expires)).lastrowid
        else:
            msg_id = conn.execute(s.NEXT_ID).fetchone()[0]
            conn.execute(s.INSERT_WITH_ID, (msg_id, queue, seal(msg_id, data), priority,
                                            now + delay, now, expires))
        # An INSERT's lastrowid is its id; held is the codec that holds (set with codec).
        return msg_id if codec is None else (msg_id, held)  # type: ignore[return-value]

    def _check_same_file(self, conn: sqlite3.Connection) -> None:
        try:
            (where,) = conn.execute(self.sql.MAIN_FILE).fetchone()
        except sqlite3.Error as exc:
            raise ValueError("cannot use that connection: %s" % exc) from None
        ours = os.path.realpath(self.location)
        if not where or os.path.realpath(where) != ours:
            raise ValueError("the connection is to %s, not to the queue's database %s"
                             % (where or "an in-memory database", ours))

    # -- what a queue was written with ----------------------------------------------

    def codec_of(self, queue: str) -> Optional[str]:
        rows = self._rows(self.sql.READ_CODEC, (queue,))
        return rows[0][0] if rows else None

    def claim_codec(self, queue: str, fingerprint: str) -> str:
        s = self.sql
        with self._conns.transaction() as conn:
            row: Optional[Tuple[str]] = conn.execute(s.READ_CODEC, (queue,)).fetchone()
            if row is not None and (row[0] == fingerprint
                                    or conn.execute(s.ANY_MESSAGE, (queue,)).fetchone()[0]):
                return row[0]
            conn.execute(s.WRITE_CODEC, (queue, fingerprint))
            return fingerprint

    def replace_data(self, msg_id: int, old: bytes, new: bytes) -> bool:
        return bool(self._changes(self.sql.REPLACE_DATA, (new, msg_id, old)))

    def put_keyed(self, queue: str, items: Iterable[Tuple[str, bytes]]
                  ) -> List[Tuple[KeyedStatus, Optional[int]]]:
        s = self.sql
        out: List[Tuple[KeyedStatus, Optional[int]]] = []
        with self._conns.transaction() as conn:
            now = self.now()
            for key, data in items:
                if conn.execute(s.RESULT, (queue, key)).fetchone() is not None:
                    out.append(("done", None))
                    continue
                row = conn.execute(s.FIND_KEY, (queue, key)).fetchone()
                if row is not None:
                    if row[1]:  # dead, its failure forgotten: it runs again
                        conn.execute(s.REVIVE_KEYED, (data, now, row[0]))
                        out.append(("new", row[0]))
                    else:
                        out.append(("queued", row[0]))
                    continue
                cursor = conn.execute(s.INSERT_KEYED, (queue, data, key, now, now))
                out.append(("new", cursor.lastrowid))
        new = sum(status == "new" for status, _ in out)
        if new:
            self._notifier.notify("put", queue)
            self._count(queue, "puts", new)
        return out

    # -- results of keyed messages ------------------------------------------------

    def complete(self, msg_id: int, lease: Optional[int], key: str, ok: bool, data: bytes,
                 dead_reason: Optional[str] = None) -> bool:
        with self._conns.transaction() as conn:
            queue, held = self._complete_in(conn, msg_id, lease, key, ok, data, dead_reason)
        if queue is not None:
            self._notifier.notify("done", queue)
            if held:
                self._count(queue, "acks" if dead_reason is None else "dead_lettered",
                            lasting=dead_reason is not None)
        return held

    def complete_many(self, queue: str, outcomes: Sequence[Outcome], lease: int = 0,
                      seconds: float = 0.0) -> List[Message]:
        acks = dead = 0
        with self._conns.transaction() as conn:
            # Successive outcomes without a dead reason, stored together.
            plain: List[_PlainOutcome] = []
            for outcome in outcomes:
                if len(outcome) == 5:
                    plain.append(outcome)
                    continue
                acks += self._complete_plain(conn, plain)
                msg_id, token, key, ok, data, dead_reason, error = outcome
                dead += self._complete_in(conn, msg_id, token, key, ok, data, dead_reason,
                                          error)[1]
            acks += self._complete_plain(conn, plain)
            rows: List[Any] = []
            if lease:
                now = self.now()
                token = new_token()
                rows = conn.execute(self.sql.LEASE_FIFO, {
                    "queue": queue, "now": now, "until": now + seconds, "lease": token,
                    "n": lease, "holder": None,
                }).fetchall()
        if outcomes:
            self._notifier.notify("done", queue)
            if acks:
                self._count(queue, "acks", acks)
            if dead:
                self._count(queue, "dead_lettered", dead, lasting=True)
        if not rows:
            return []
        self._count_deliveries(queue, *(row[3] for row in rows))
        return sorted((Message(row[0], row[1], row[2], row[3] - 1, row[4], row[3], token,
                               now + seconds, row[5], row[6], row[7], None, None, row[8])
                       for row in rows), key=lambda m: m.id)

    def _complete_plain(self, conn: sqlite3.Connection, outcomes: List[_PlainOutcome]) -> int:
        """Store and ack ``outcomes`` (emptied), in statements of 2**k of
        them (few statement texts, for SQLite's statement cache); return how
        many were acked."""
        acked, now = 0, self.now()
        while outcomes:
            n = 1 << min(len(outcomes).bit_length() - 1, _MOST_OUTCOMES_BITS)
            chunk, outcomes[:n] = outcomes[:n], []
            rows, pairs = _many_outcomes(self.sql.STORE_RESULTS, self.sql.ACK_MANY, n)
            conn.execute(rows, [x for o in chunk for x in (o[0], o[2], int(bool(o[3])), o[4])]
                         + [now])
            acked += conn.execute(pairs, [x for o in chunk for x in o[:2]]).rowcount
        return acked

    def _complete_in(self, conn: sqlite3.Connection, msg_id: int, lease: Optional[int], key: str,
                     ok: bool, data: bytes, dead_reason: Optional[str],
                     error: Optional[str] = None) -> Tuple[Optional[str], bool]:
        s = self.sql
        now = self.now()
        row = conn.execute(s.GET, (msg_id,)).fetchone()
        if row is None:
            return None, False
        queue = row[2]
        conn.execute(s.STORE_RESULT, (queue, key, int(bool(ok)), data, now))
        if dead_reason is None:
            return queue, bool(conn.execute(s.ACK, (msg_id, lease)).fetchall())
        held = bool(conn.execute(s.DEAD_LETTER, (now, dead_reason, error, msg_id, lease)).fetchall())
        if held:
            conn.execute(s.ADD_COUNTER, (queue, "dead_lettered", 1))
            logger.warning("task %s of queue %r dead-lettered: %s", key, queue, dead_reason)
        return queue, held

    def result(self, queue: str, key: str) -> Optional[Tuple[bool, bytes]]:
        rows = self._rows(self.sql.RESULT, (queue, key))
        return (bool(rows[0][0]), rows[0][1]) if rows else None

    def results_since(self, queue: str, seq: int, limit: int = 1000
                      ) -> List[Tuple[int, str, bool, bytes]]:
        return [
            (row[0], row[1], bool(row[2]), row[3])
            for row in self._rows(self.sql.RESULTS_SINCE, (queue, seq, limit))
        ]

    def last_result_seq(self) -> int:
        return self._rows(self.sql.LAST_RESULT_SEQ)[0][0]  # type: ignore[no-any-return]  # an int

    def forget_results(self, queue: str, key: Optional[str] = None) -> int:
        if key is None:
            return self._changes(self.sql.PURGE_RESULTS, (queue,))
        return self._changes(self.sql.FORGET_RESULT, (queue, key))

    def forget_results_matching(self, queue: str, pattern: str, up_to_seq: Optional[int] = None,
                                failed_only: bool = False) -> int:
        up_to = (1 << 63) - 1 if up_to_seq is None else up_to_seq
        return self._changes(self.sql.FORGET_RESULTS_MATCHING,
                             (queue, pattern, up_to, int(not failed_only)))

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

    def _drop_unfit(self, messages: List[Message], now: float, max_attempts: Optional[int]
                    ) -> None:
        """Drop the expired and dead-letter the exhausted and the malformed,
        which we hold leased."""
        s = self.sql
        counted: List[Tuple[str, str]] = []
        with self._conns.transaction() as conn:
            for m in messages:
                reason = _malformed(m)
                if reason is None and m.expires_at is not None and m.expires_at <= now:
                    if conn.execute(s.DELETE_LEASED, (m.id, m.lease)).rowcount:
                        conn.execute(s.ADD_COUNTER, (m.queue_name, "expired", 1))
                        counted.append((m.queue_name, "expired"))
                    continue
                if reason is None:
                    # Neither malformed nor expired: exhausted, so max_attempts is set.
                    reason = "not acknowledged after %d deliveries (max_retries=%d)" % (
                        m.attempts - 1, max_attempts - 1,  # type: ignore[operator]
                    )
                if conn.execute(s.DEAD_LETTER, (now, reason, None, m.id, m.lease)).fetchall():
                    conn.execute(s.ADD_COUNTER, (m.queue_name, "dead_lettered", 1))
                    counted.append((m.queue_name, "dead_lettered"))
                    logger.warning("message %d of queue %r dead-lettered: %s", m.id, m.queue_name, reason)
        for queue in {m.queue_name for m in messages}:
            self._notifier.notify("done", queue)
        for queue, name in counted:
            self._metrics.add(queue, name, lasting=True)

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

    def _dead_letter_bad_visible(self, queue: str, now: float) -> None:
        with self._conns.transaction() as conn:
            rows = conn.execute(self.sql.DEAD_LETTER_BAD_VISIBLE, (now, queue, now)).fetchall()
            if rows:
                conn.execute(self.sql.ADD_COUNTER, (queue, "dead_lettered", len(rows)))
        for msg_id, reason in rows:
            logger.warning("message %d of queue %r dead-lettered: %s", msg_id, queue, reason)
        if rows:
            self._notifier.notify("done", queue)
            self._metrics.add(queue, "dead_lettered", len(rows), lasting=True)

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

    def dead_letter_ids(self, ids: Iterable[int], reason: str,
                        queue: Optional[str] = None) -> int:
        now = self.now()
        moved: Dict[str, int] = {}
        with self._conns.transaction() as conn:
            for msg_id in ids:
                row = conn.execute(self.sql.DEAD_LETTER_ID, {
                    "now": now, "reason": reason, "id": msg_id, "queue": queue}).fetchone()
                if row:
                    moved[row[0]] = moved.get(row[0], 0) + 1
            conn.executemany(self.sql.ADD_COUNTER,
                             [(name, "dead_lettered", n) for name, n in moved.items()])
        for name, n in moved.items():
            logger.warning("%d message(s) of queue %r dead-lettered: %s", n, name, reason)
            self._notifier.notify("done", name)
            self._metrics.add(name, "dead_lettered", n, lasting=True)
        return sum(moved.values())

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

    def dead_letter(self, msg_id: int, lease: Optional[int], reason: str,
                    error: Optional[str] = None) -> bool:
        with self._conns.transaction() as conn:
            row = conn.execute(
                self.sql.DEAD_LETTER, (self.now(), reason, error, msg_id, lease)
            ).fetchone()
            if row:
                conn.execute(self.sql.ADD_COUNTER, (row[0], "dead_lettered", 1))
        if row:
            logger.warning("message %d of queue %r dead-lettered: %s", msg_id, row[0], reason)
            self._notifier.notify("done", row[0])
            self._metrics.add(row[0], "dead_lettered", lasting=True)
        return row is not None

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

    def create_queue(self, queue: str, settings: Optional[Mapping[str, Any]] = None) -> bool:
        text = None if settings is None else json.dumps(settings, sort_keys=True)
        with self._conns.transaction() as conn:
            row = conn.execute(self.sql.QUEUE_EXISTS, (queue,)).fetchone()
            if row is None:
                conn.execute(self.sql.CREATE_QUEUE, (queue, self.now(), text))
                return True
            if text is not None:
                conn.execute(self.sql.SET_QUEUE_SETTINGS, (text, queue))
            return False

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

    # -- operating --------------------------------------------------------------

    def restore(self, queue: str, messages: Iterable[Message]) -> List[int]:
        now = self.now()

        def row(msg: Message) -> Tuple[object, ...]:
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

        ids: List[int] = []
        try:
            with self._conns.transaction() as conn:
                for msg in messages:
                    ids.append(conn.execute(  # type: ignore[arg-type]  # an INSERT's: its id
                        self.sql.INSERT_RESTORED, row(msg)).lastrowid)
        except StorageError as exc:  # the driver's error comes as ours, with it as the cause
            if not isinstance(exc.__cause__, sqlite3.IntegrityError):
                raise
            raise ValueError("cannot restore into queue %r of %s: %s (a message with that key "
                             "is already there); nothing was stored"
                             % (queue, self.location, exc.__cause__)) from None
        if ids:
            self._notifier.notify("put", queue)
        return ids

    def redrive(self, queue: str, ids: Optional[Iterable[int]] = None) -> int:
        now = self.now()
        with self._conns.transaction() as conn:
            if ids is None:
                moved = conn.execute(self.sql.REDRIVE_ALL, (now, queue)).rowcount
            else:
                moved = sum(
                    conn.execute(self.sql.REDRIVE_ONE, (now, queue, msg_id)).rowcount
                    for msg_id in ids
                )
        if moved:
            self._notifier.notify("put", queue)
        return moved

    def expire(self, queue: Optional[str] = None) -> int:
        now = self.now()
        with self._conns.transaction() as conn:
            if queue is None:
                rows = conn.execute(self.sql.EXPIRE_ALL, {"now": now}).fetchall()
            else:
                rows = conn.execute(self.sql.EXPIRE, {"queue": queue, "now": now}).fetchall()
            expired: Dict[str, int] = {}
            for (name,) in rows:
                expired[name] = expired.get(name, 0) + 1
            conn.executemany(self.sql.ADD_COUNTER,
                             [(name, "expired", n) for name, n in expired.items()])
        for name, n in expired.items():
            self._notifier.notify("done", name)
            self._metrics.add(name, "expired", n, lasting=True)
        return sum(expired.values())

    def purge(self, queue: str, dead: bool = False) -> int:
        statement = self.sql.PURGE_DEAD if dead else self.sql.PURGE_LIVE
        removed = self._changes(statement, (queue,))
        if removed:
            self._notifier.notify("done", queue)
        return removed

    def delete_queue(self, queue: str) -> int:
        with self._conns.transaction() as conn:
            removed = conn.execute(self.sql.DELETE_QUEUE, (queue,)).rowcount
            conn.execute(self.sql.DELETE_QUEUE_COUNTERS, (queue,))
            conn.execute(self.sql.DELETE_QUEUE_ACTIVITY, (queue,))
            conn.execute(self.sql.DELETE_QUEUE_RESULTS, (queue,))
            conn.execute(self.sql.DELETE_QUEUE_CODEC, (queue,))
            conn.execute(self.sql.DELETE_QUEUE_ENTRY, (queue,))
        if removed:
            self._notifier.notify("done", queue)
        return removed

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


class _Transaction:
    """Puts to any queues, committed together; wake-ups sent after COMMIT."""

    # Set by __enter__: a transaction is used only inside its ``with``.
    _conn: sqlite3.Connection
    _context: AbstractContextManager[sqlite3.Connection]

    def __init__(self, engine: SQLiteEngine) -> None:
        self._engine = engine
        self._conn = None  # type: ignore[assignment]  # until entered
        self._queues: Dict[str, int] = {}  # queue -> messages put
        self._context = None  # type: ignore[assignment]  # until entered

    def __enter__(self) -> _Transaction:
        self._context = self._engine._conns.transaction()
        self._conn = self._context.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> Optional[bool]:
        try:
            return self._context.__exit__(*exc_info)
        finally:
            if exc_info[0] is None:
                for queue, n in self._queues.items():
                    self._engine._notifier.notify("put", queue)
                    self._engine._count(queue, "puts", n)

    def put(self, queue: str, data: bytes, delay: float = 0.0, ttl: Optional[float] = None,
            priority: Optional[bytes] = None, seal: Optional[Sealer] = None) -> int:
        if seal is not None:
            msg_id = self._engine._insert_sealed(self._conn, queue, data, delay, ttl, priority,
                                                 seal)
        else:
            now = self._engine.now()
            expires = None if ttl is None else now + ttl
            msg_id = self._conn.execute(  # type: ignore[assignment]  # an INSERT's: its id
                self._engine.sql.INSERT, (queue, data, priority, now + delay, now, expires)
            ).lastrowid
        self._queues[queue] = self._queues.get(queue, 0) + 1
        return msg_id

    def put_many(self, queue: str, payloads: Iterable[bytes], delay: float = 0.0,
                 ttl: Optional[float] = None, seal: Optional[Sealer] = None) -> List[int]:
        ids = self._engine._insert_many(self._conn, queue, payloads, delay, ttl, seal)
        self._queues[queue] = self._queues.get(queue, 0) + len(ids)
        return ids
