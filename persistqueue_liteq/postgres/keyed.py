"""Keyed tasks and their results: putting by key, completing (a result
stored and the message settled in one transaction), and reading and
forgetting results (reading them is one read: ``_sql_engine.SQLEngine``).

Writers of results hold an advisory lock of the namespace from their INSERT
to their commit, so results are committed in the order of their ``seq`` and
a reader following ``results_since`` never skips one.

Mixed into :class:`~.engine.PostgresEngine`; it uses the engine's ``sql``,
``_conns``, ``_lock_key``, its plumbing (``_run``, ``_rows``, ``_notify``),
``now()``, its counts, and the FIFO floor of :class:`~.lease.LeaseMixin`
(``complete_many`` leases the next batch in the same transaction).
"""

from __future__ import annotations

import logging
import types
from typing import TYPE_CHECKING, Callable, Iterable, List, Optional, Sequence, Tuple, TypeVar

from .._sql_engine import new_token
from ..engine import Message
from . import sql as _sql

if TYPE_CHECKING:
    from psycopg.abc import Params
    from psycopg.rows import TupleRow

    from ..engine import KeyedStatus, Outcome, WakeKind
    from .connections import Connections, Tx

    #: What complete_many's transaction returns: acks, dead-lettered, the
    #: rows leased, their token and lease's end, the time and floor it leased at.
    _Completed = Tuple[int, int, List[TupleRow], Optional[int], Optional[float],
                       Optional[float], Optional[float]]

    T = TypeVar("T")

logger = logging.getLogger("persistqueue_liteq")


class KeyedMixin:
    """Keyed tasks and their results."""

    sql: types.SimpleNamespace
    _conns: Connections
    _lock_key: int

    if TYPE_CHECKING:
        def now(self) -> float: ...
        def _run(self, work: Callable[[Tx], T]) -> T: ...
        def _rows(self, statement: str, params: Optional[Params] = None) -> List[TupleRow]: ...
        def _notify(self, tx: Tx, kind: WakeKind, queue: str) -> None: ...
        def _count(self, queue: str, name: str, n: int = 1, lasting: bool = False) -> None: ...
        def _count_deliveries(self, queue: str, *attempts: int) -> None: ...
        def _fifo_statement(self, queue: str) -> Tuple[str, Optional[float]]: ...
        def _fifo_leased(self, queue: str, floor: Optional[float], rows: Sequence[TupleRow],
                         now: float) -> None: ...

    def put_keyed(self, queue: str, items: Iterable[Tuple[str, bytes]]
                  ) -> List[Tuple[KeyedStatus, Optional[int]]]:
        s = self.sql
        items = list(items)  # read once: a transaction retried whole reads it again

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
        tx.lock(s.LOCK_NAMESPACE, (_sql.LOCK_CLASS, self._lock_key))  # see STORE_RESULT
        tx.rows(s.STORE_RESULT, (queue, key, bool(ok), data, now))
        self._notify(tx, "done", queue)
        if dead_reason is None:
            return queue, bool(tx.rows(s.ACK, (msg_id, lease)))
        held = bool(tx.rows(s.DEAD_LETTER, (now, dead_reason, error, msg_id, lease)))
        if held:
            tx.rows(s.ADD_COUNTER, (queue, "dead_lettered", 1))
            logger.warning("task %s of queue %r dead-lettered: %s", key, queue, dead_reason)
        return queue, held

    def forget_results(self, queue: str, key: Optional[str] = None) -> int:
        if key is None:
            return self._conns.changes(self.sql.PURGE_RESULTS, (queue,))
        return self._conns.changes(self.sql.FORGET_RESULT, (queue, key))

    def forget_results_matching(self, queue: str, pattern: str, up_to_seq: Optional[int] = None,
                                failed_only: bool = False) -> int:
        up_to = (1 << 63) - 1 if up_to_seq is None else up_to_seq
        return self._conns.changes(self.sql.FORGET_RESULTS_MATCHING, (
            queue, _sql.glob_to_regex(pattern), up_to, not failed_only))
