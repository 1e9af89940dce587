"""What the engines that keep their queues in SQL tables share: messages
made from rows, the looks that are one read (the pools' stored results
among them), and the counts.

A backend's engine subclasses :class:`SQLEngine` and gives it ``sql`` (its
statements, under the same names in every backend, each with the columns
:meth:`SQLEngine._stored` reads), ``_rows(statement, params)`` (one read:
all its rows), ``now()``, ``_metrics`` (an :class:`~.engine.Metrics`) and
``flush_metrics()``.  The front ends see only :class:`~.engine.Engine`.
"""

from __future__ import annotations

import json
import random
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .engine import METRIC_NAMES, Engine, Message, QueueStats

if TYPE_CHECKING:
    import types
    from typing import Union

    from .engine import Counts, Metrics

    #: A statement's parameters: positional (``?``, ``%s``) or named.
    Params = Union[Sequence[object], Mapping[str, object]]

# Seconds an activity bucket spans (the same in every backend's tables).
ACTIVITY_BUCKET = 10
# Seconds of activity kept.
ACTIVITY_KEPT = 3600


def new_token() -> int:
    """A lease's token: random, never 0."""
    return random.getrandbits(62) + 1


def queue_settings(text: Optional[str]) -> Dict[str, Any]:
    """The settings of a queue as stored (JSON text, or NULL: none)."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError:  # a tampered row: shown, not trusted
        return {"unreadable": text}
    return value if isinstance(value, dict) else {"unreadable": text}


class SQLEngine(Engine):
    """The part of an SQL backend's engine that is the same in every one."""

    #: The parameter of DEAD_LETTERS that means "no limit".
    NO_LIMIT: Optional[int] = None

    #: The backend's statements (its ``sql.render``), as named in every backend.
    sql: types.SimpleNamespace
    #: What this engine counted in this process.
    _metrics: Metrics

    if TYPE_CHECKING:
        def _rows(self, statement: str, params: Params = ...) -> List[Any]:
            """All the rows of one read."""

    @staticmethod
    def _stored(row: Sequence[Any]) -> Message:
        """The Message of a row of the messages table (13 columns)."""
        return Message(
            id=row[0], data=row[1], queue_name=row[2], retry_count=max(row[3] - 1, 0),
            created_at=row[4], attempts=row[3], expires_at=row[5], last_error=row[6],
            priority=row[7], visible_at=row[8], dead_at=row[9], dead_reason=row[10],
            key=row[11], consumer_id=row[12],
        )

    # -- inspecting ---------------------------------------------------------------

    def peek_many(self, queue: str, n: int) -> List[Message]:
        now = self.now()
        return [self._stored(row) for row in self._rows(self.sql.PEEK_MANY, (queue, now, now, n))]

    def messages(self, queue: str, after_id: int = 0, limit: int = 1000) -> List[Message]:
        rows = self._rows(self.sql.LIVE_MESSAGES, {
            "queue": queue, "after": after_id, "limit": limit, "now": self.now()})
        return [self._stored(row) for row in rows]

    def get(self, msg_id: int) -> Optional[Message]:
        rows = self._rows(self.sql.GET, (msg_id,))
        return self._stored(rows[0]) if rows else None

    def has_live(self, queue: str) -> bool:
        return bool(self._rows(self.sql.ANY_LIVE, {"queue": queue, "now": self.now()})[0][0])

    def next_expiry(self, queue: str) -> Optional[float]:
        rows = self._rows(self.sql.NEXT_EXPIRY, {"queue": queue, "now": self.now()})
        return rows[0][0] if rows else None

    def has_ready(self, queue: str) -> bool:
        return bool(self._rows(self.sql.ANY_READY, {"queue": queue, "now": self.now()})[0][0])

    @staticmethod
    def _queue_stats(rows: Iterable[Sequence[Any]], holders: Iterable[Sequence[Any]]
                     ) -> List[QueueStats]:
        """QueueStats from the rows of QUEUE_STATS and of HOLDERS."""
        consumers: Dict[str, List[str]] = {}
        for queue, holder in holders:
            consumers.setdefault(queue, []).append(holder)
        return [
            QueueStats(name, int(ready), int(delayed), int(in_flight), int(dead), oldest,
                       created, queue_settings(settings), codec,
                       tuple(consumers.get(name, ())))
            for name, ready, delayed, in_flight, dead, oldest, created, settings, codec in rows
        ]

    def dead_letters(self, queue: str, limit: Optional[int] = None) -> List[Message]:
        rows = self._rows(self.sql.DEAD_LETTERS, (queue, self.NO_LIMIT if limit is None else limit))
        return [self._stored(row) for row in rows]

    def snapshot(self, queue: str, after_id: int = 0, limit: int = 1000) -> List[Message]:
        messages: List[Message] = []
        for row in self._rows(self.sql.SNAPSHOT, (queue, after_id, limit)):
            msg = self._stored(row)
            if row[-1] is not None and msg.visible_at is not None:
                msg.lease = row[-1]
            messages.append(msg)
        return messages

    @staticmethod
    def _restored(queue: str, msg: Message, now: float) -> Tuple[object, ...]:
        """The INSERT_RESTORED values of ``msg`` (from a snapshot) in
        ``queue``: a message that was leased, or had no time, is ready again
        from ``now`` at the latest; a dead one stays dead."""
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

    # -- the pools' stored results ---------------------------------------------------

    def result(self, queue: str, key: str) -> Optional[Tuple[bool, bytes]]:
        rows = self._rows(self.sql.RESULT, (queue, key))
        return (bool(rows[0][0]), rows[0][1]) if rows else None

    def results_since(self, queue: str, seq: int, limit: int = 1000
                      ) -> List[Tuple[int, str, bool, bytes]]:
        return [(row[0], row[1], bool(row[2]), row[3])
                for row in self._rows(self.sql.RESULTS_SINCE, (queue, seq, limit))]

    def last_result_seq(self) -> int:
        return self._rows(self.sql.LAST_RESULT_SEQ)[0][0]  # type: ignore[no-any-return]  # an int

    # -- counts -------------------------------------------------------------------

    def counters(self) -> Counts:
        result: Counts = {}
        for queue, name, value in self._rows(self.sql.READ_COUNTERS):
            result.setdefault(queue, dict.fromkeys(METRIC_NAMES, 0))[name] = value
        return result

    def _count(self, queue: str, name: str, n: int = 1, lasting: bool = False) -> None:
        if self._metrics.add(queue, name, n, lasting):
            self.flush_metrics()

    def _count_deliveries(self, queue: str, *attempts: int) -> None:
        self._count(queue, "gets", len(attempts))
        retries = attempts[0] > 1 if len(attempts) == 1 else sum(a > 1 for a in attempts)
        if retries:
            self._count(queue, "retries", retries)

    def metrics(self) -> Counts:
        return self._metrics.snapshot()

    def activity(self, seconds: float = 60.0) -> Tuple[float, Counts]:
        now = self.now()
        start = (now - seconds) // ACTIVITY_BUCKET * ACTIVITY_BUCKET
        result: Counts = {}
        for queue, name, value in self._rows(self.sql.READ_ACTIVITY, (start,)):
            result.setdefault(queue, dict.fromkeys(METRIC_NAMES, 0))[name] = value
        return now - start, result
