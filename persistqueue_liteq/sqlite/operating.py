"""Operating on whole queues: what a queue was written with (its codec),
creating one with settings, restoring messages into it, expiring, purging
and deleting it.

Mixed into :class:`~.engine.SQLiteEngine`; it uses the engine's ``_conns``,
``sql``, ``location``, ``_notifier``, ``_metrics``, ``now()``, ``_rows`` and
``_changes``.
"""

from __future__ import annotations

import json
import sqlite3
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional, Tuple

from ..exceptions import StorageError

if TYPE_CHECKING:
    import types

    from .._sql_engine import Params
    from ..engine import Message, Metrics
    from .connections import Connections
    from .wakeup import Notifier


class OperatingMixin:
    """Codecs, and the operations on whole queues (see :class:`~.engine.Engine`)."""

    _conns: Connections
    sql: types.SimpleNamespace
    location: str
    _notifier: Notifier
    _metrics: Metrics

    if TYPE_CHECKING:
        def now(self) -> float:
            """The clock's (see :class:`~.anchor.AnchoredClock`)."""

        def _rows(self, statement: str, params: Params = ()) -> List[Any]:
            """The engine's: all the rows of one read."""

        def _changes(self, statement: str, params: Params) -> int:
            """The engine's: the rows one write changed."""

        @staticmethod
        def _restored(queue: str, msg: Message, now: float) -> Tuple[object, ...]:
            """The engine's: the INSERT_RESTORED values of a message."""

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

    # -- operating --------------------------------------------------------------

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

    def restore(self, queue: str, messages: Iterable[Message]) -> List[int]:
        now = self.now()
        ids: List[int] = []
        try:
            with self._conns.transaction() as conn:
                for msg in messages:
                    ids.append(conn.execute(  # type: ignore[arg-type]  # an INSERT's: its id
                        self.sql.INSERT_RESTORED, self._restored(queue, msg, now)).lastrowid)
        except StorageError as exc:  # the driver's error comes as ours, with it as the cause
            if not isinstance(exc.__cause__, sqlite3.IntegrityError):
                raise
            raise ValueError("cannot restore into queue %r of %s: %s (a message with that key "
                             "is already there); nothing was stored"
                             % (queue, self.location, exc.__cause__)) from None
        if ids:
            self._notifier.notify("put", queue)
        return ids

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
