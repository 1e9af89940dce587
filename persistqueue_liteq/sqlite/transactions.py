"""Puts inside a transaction: the engine's own (``SQLiteEngine.transaction()``
gives a :class:`_Transaction`: puts to any queues, committed together) or the
application's (``put_on`` its own ``sqlite3.Connection`` to the queue file,
committed with its own writes).
"""

from __future__ import annotations

import os
import sqlite3
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Tuple, Union, overload

if TYPE_CHECKING:
    import types
    from contextlib import AbstractContextManager

    from ..engine import Sealer
    from .connections import Connections
    from .engine import SQLiteEngine


class PutOnMixin:
    """``put_on`` the application's connection.  Mixed into
    :class:`~.engine.SQLiteEngine`; it uses the engine's ``_conns``, ``sql``,
    ``location`` and ``now()``."""

    _conns: Connections
    sql: types.SimpleNamespace
    location: str

    if TYPE_CHECKING:
        def now(self) -> float:
            """The clock's (see :class:`~.anchor.AnchoredClock`)."""

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
