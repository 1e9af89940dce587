"""Keyed messages and their results: what the pools store.

A pool's task is a message with a key (the pool's id for it): ``put_keyed``
stores it unless the key is queued or done already, ``complete`` and
``complete_many`` store its outcome as the key's *result* and ack (or
dead-letter) the message in the same transaction, and the pool reads the
results back by key or in the order they were stored (``results_since``,
one read, in ``_sql_engine.SQLEngine``).

Mixed into :class:`~.engine.SQLiteEngine`; it uses the engine's ``_conns``,
``sql``, ``_notifier``, ``now()``, ``_rows``, ``_changes`` and its counts.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any, Iterable, List, Optional, Sequence, Tuple

from .._sql_engine import new_token
from ..engine import Message

if TYPE_CHECKING:
    import sqlite3
    import types

    from .._sql_engine import Params
    from ..engine import KeyedStatus, Outcome
    from .connections import Connections
    from .wakeup import Notifier

    #: An outcome of complete_many without a dead reason.
    _PlainOutcome = Tuple[int, Optional[int], str, bool, bytes]

logger = logging.getLogger("persistqueue_liteq")

# The most outcomes complete_many stores in one statement: 2**6.
_MOST_OUTCOMES_BITS = 6


@functools.lru_cache(maxsize=64)
def _many_outcomes(store_results: str, ack_many: str, n: int) -> Tuple[str, str]:
    """STORE_RESULTS and ACK_MANY for ``n`` outcomes."""
    return (store_results.replace("{rows}", ", ".join("(%d, ?, ?, ?, ?)" % i for i in range(n))),
            ack_many.replace("{pairs}", ", ".join(["(?, ?)"] * n)))


class KeyedMixin:
    """Keyed messages and their results (see :class:`~.engine.Engine`)."""

    _conns: Connections
    sql: types.SimpleNamespace
    _notifier: Notifier

    if TYPE_CHECKING:
        def now(self) -> float:
            """The clock's (see :class:`~.anchor.AnchoredClock`)."""

        def _rows(self, statement: str, params: Params = ()) -> List[Any]:
            """The engine's: all the rows of one read."""

        def _changes(self, statement: str, params: Params) -> int:
            """The engine's: the rows one write changed."""

        def _count(self, queue: str, name: str, n: int = 1, lasting: bool = False) -> None:
            """The counts' (see :class:`~.._sql_engine.SQLEngine`)."""

        def _count_deliveries(self, queue: str, *attempts: int) -> None:
            """The counts' (see :class:`~.._sql_engine.SQLEngine`)."""

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

    def forget_results(self, queue: str, key: Optional[str] = None) -> int:
        if key is None:
            return self._changes(self.sql.PURGE_RESULTS, (queue,))
        return self._changes(self.sql.FORGET_RESULT, (queue, key))

    def forget_results_matching(self, queue: str, pattern: str, up_to_seq: Optional[int] = None,
                                failed_only: bool = False) -> int:
        up_to = (1 << 63) - 1 if up_to_seq is None else up_to_seq
        return self._changes(self.sql.FORGET_RESULTS_MATCHING,
                             (queue, pattern, up_to, int(not failed_only)))
