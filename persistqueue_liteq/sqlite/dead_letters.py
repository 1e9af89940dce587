"""Dead letters: how a message becomes one, and back.

A message is dead-lettered when its consumer says so (``dead_letter``), when
an operator names it (``dead_letter_ids``), or when a lease finds it unfit:
delivered more than ``max_attempts`` times, or its row malformed by another
program (``_malformed``; SQLite stores any type in any column).  A leased
message past its TTL is dropped instead.  ``redrive`` makes dead letters
ready again.

Mixed into :class:`~.engine.SQLiteEngine`; it uses the engine's ``_conns``,
``sql``, ``_notifier``, ``_metrics`` and ``now()``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Tuple

if TYPE_CHECKING:
    import types

    from ..engine import Message, Metrics
    from .connections import Connections
    from .wakeup import Notifier

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


class DeadLetterMixin:
    """Dead-lettering and redriving messages (see :class:`~.engine.Engine`)."""

    _conns: Connections
    sql: types.SimpleNamespace
    _notifier: Notifier
    _metrics: Metrics

    if TYPE_CHECKING:
        def now(self) -> float:
            """The clock's (see :class:`~.anchor.AnchoredClock`)."""

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
