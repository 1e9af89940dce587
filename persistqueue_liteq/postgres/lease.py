"""Consuming: leases taken (FIFO from a floor, LIFO, by priority, by id)
and settled (acknowledged, released, renewed, dead-lettered, recovered).

A lease selects its rows ``FOR UPDATE SKIP LOCKED`` and moves them out of
the ready range in the same statement: two consumers never lease the same
message while its lease holds, and neither waits for the other.

Mixed into :class:`~.engine.PostgresEngine`, whose ``__init__`` sets
``_lease_sql`` and ``_fifo_floors``; it uses the engine's ``sql``,
``_metrics``, its plumbing (``_conns``, ``_run``, ``_rows``, ``_notify``,
``_notification``), ``now()``,
its counts and ``flush_metrics()``.
"""

from __future__ import annotations

import logging
import time
import types
from typing import (TYPE_CHECKING, Callable, Dict, Iterable, List, Optional, Sequence, Tuple,
                    TypeVar)

from .._sql_engine import new_token
from ..engine import Message

if TYPE_CHECKING:
    from psycopg.abc import Params
    from psycopg.rows import TupleRow

    from ..engine import Metrics, Order, WakeKind
    from .connections import Connections, Tx

    T = TypeVar("T")

logger = logging.getLogger("persistqueue_liteq")

# FIFO leases from a floor.  Every message taken leaves index entries
# behind (its versions before the lease and before the ack) that only a
# vacuum removes, and a vacuum cannot while a transaction elsewhere in the
# database is open that may still see them: a lease that scanned the queue
# from its start would step over all of them, ever slower.  So a FIFO lease
# scans from the visible_at of the latest message this engine leased from
# that queue, less FIFO_SLACK seconds (times of two hosts' clocks, commits
# a little out of order), and once every FIFO_FULL_SCAN seconds from the
# start.  A scan from the start that finds nothing moves the floor up to
# FIFO_FULL_SCAN seconds before now, no further: a put in flight meanwhile
# (its visible_at is its start) is found at once if it commits within that
# time.  A message made visible further behind the floor (a transaction
# that put it and committed later still, a clock stepped back, two
# producers' puts committed out of order) is leased at the next scan from
# the start, within FIFO_FULL_SCAN seconds.
FIFO_SLACK = 0.05
FIFO_FULL_SCAN = 1.0
# Floors kept at most (one per queue leased from): past this many queues,
# they are all forgotten, and each queue's next lease scans from the start.
FIFO_FLOORS_KEPT = 10_000


class LeaseMixin:
    """Leases of an engine's messages, taken and settled."""

    sql: types.SimpleNamespace
    _metrics: Metrics
    #: The lease statement of each order.
    _lease_sql: Dict[str, str]
    #: queue: (floor, monotonic time of the next scan from the start)
    _fifo_floors: Dict[str, Tuple[float, float]]
    _conns: Connections

    if TYPE_CHECKING:
        def now(self) -> float: ...
        def flush_metrics(self) -> None: ...
        def _run(self, work: Callable[[Tx], T]) -> T: ...
        def _rows(self, statement: str, params: Optional[Params] = None) -> List[TupleRow]: ...
        def _notify(self, tx: Tx, kind: WakeKind, queue: str) -> None: ...
        def _notification(self, kind: WakeKind, queue: str
                          ) -> Tuple[str, str, Callable[[], object]]: ...
        def _count(self, queue: str, name: str, n: int = 1, lasting: bool = False) -> None: ...
        def _count_deliveries(self, queue: str, *attempts: int) -> None: ...

    def _fifo_statement(self, queue: str) -> Tuple[str, Optional[float]]:
        """The FIFO lease statement and its floor (None: from the start)."""
        floor = self._fifo_floors.get(queue)
        if floor is None or time.monotonic() >= floor[1]:
            return self.sql.LEASE_FIFO, None
        return self.sql.LEASE_FIFO_FROM, floor[0] - FIFO_SLACK

    def _fifo_leased(self, queue: str, floor: Optional[float], rows: Sequence[TupleRow],
                     now: float) -> None:
        """Move ``queue``'s floor after a FIFO lease from ``floor`` (None:
        from the start) found ``rows``: up to the latest visible_at among
        them; after a scan from the start that found nothing, up to
        FIFO_FULL_SCAN seconds before ``now``.  Only a scan from the start
        moves it down (to an older message it found) and restarts its timer."""
        old = self._fifo_floors.get(queue)
        if floor is None:
            if rows:
                top = max(row[9] for row in rows)
            else:
                top = now - FIFO_FULL_SCAN
                if old is not None and old[0] > top:
                    top = old[0]
            if old is None and len(self._fifo_floors) >= FIFO_FLOORS_KEPT:
                self._fifo_floors.clear()
            self._fifo_floors[queue] = (top, time.monotonic() + FIFO_FULL_SCAN)
        elif rows:
            top = max(row[9] for row in rows)
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
            rows, _ = self._conns.once(statement, params, lost_is_retried=True)
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
        rows, _ = self._conns.once(self.sql.NEXT_VISIBLE_AT, (queue, self.now()),
                                   lost_is_retried=True)  # (a read)
        return rows[0][0]  # type: ignore[no-any-return]  # a row's value

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
            # (One round trip: its waiters are told even if nothing was
            # acknowledged, which is rare, and wakes them for nothing.)
            _, done = self._conns.once(self.sql.ACK_IN_QUEUE, (msg_id, lease, queue),
                                       self._notification("done", queue))
            if not done:
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
        return bool(self._conns.once(self.sql.SET_VISIBILITY, params)[1])

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
