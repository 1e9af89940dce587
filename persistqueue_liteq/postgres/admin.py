"""What an operator does with queues: looks at them (peek, counts, the
inventory of queues), makes them, and moves their messages in bulk
(restore, redrive dead letters, expire, purge, delete a queue).

Mixed into :class:`~.engine.PostgresEngine`, whose ``__init__`` sets
``_count_sql``; it uses the engine's ``sql``, ``location``, ``_metrics``,
its plumbing (``_run``, ``_rows``, ``_notify``), ``now()`` and what
:class:`~persistqueue_liteq._sql_engine.SQLEngine` reads
(``peek_many``, ``_queue_stats``).
"""

from __future__ import annotations

import json
import types
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Mapping, Optional,
                    Sequence, Tuple, TypeVar)

import psycopg

from ..engine import Message

if TYPE_CHECKING:
    from psycopg.abc import Params
    from psycopg.rows import TupleRow

    from ..engine import CountKind, Metrics, QueueStats, WakeKind
    from .connections import Tx

    T = TypeVar("T")


class AdminMixin:
    """Looking at queues and moving their messages in bulk."""

    sql: types.SimpleNamespace
    location: str
    _metrics: Metrics
    #: The count statement of each kind of count.
    _count_sql: Dict[str, str]
    _fifo_floors: Dict[str, Tuple[float, float]]  # (lease.py's)

    if TYPE_CHECKING:
        def now(self) -> float: ...
        def peek_many(self, queue: str, n: int) -> List[Message]: ...
        def _run(self, work: Callable[[Tx], T]) -> T: ...
        def _rows(self, statement: str, params: Optional[Params] = None) -> List[TupleRow]: ...
        def _notify(self, tx: Tx, kind: WakeKind, queue: str) -> None: ...
        @staticmethod
        def _queue_stats(rows: Iterable[Sequence[Any]], holders: Iterable[Sequence[Any]]
                         ) -> List[QueueStats]: ...
        @staticmethod
        def _restored(queue: str, msg: Message, now: float) -> Tuple[object, ...]: ...

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

    def restore(self, queue: str, messages: Iterable[Message]) -> List[int]:
        messages = list(messages)

        def work(tx: Tx) -> List[int]:
            now = self.now()
            ids: List[int] = []
            try:
                for msg in messages:
                    # (INSERT ... RETURNING: one row.)
                    ids.append(tx.one(self.sql.INSERT_RESTORED,
                                      self._restored(queue, msg, now))[0])  # type: ignore[index]
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
        chosen = None if ids is None else list(ids)  # read once: a retry reads them again

        def work(tx: Tx) -> int:
            now = self.now()
            if chosen is None:
                moved = tx.rowcount(self.sql.REDRIVE_ALL, (now, queue))
            else:
                moved = sum(tx.rowcount(self.sql.REDRIVE_ONE, (now, queue, msg_id))
                            for msg_id in chosen)
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

        removed = self._run(work)
        self._fifo_floors.pop(queue, None)  # (a queue made again later starts afresh)
        return removed
