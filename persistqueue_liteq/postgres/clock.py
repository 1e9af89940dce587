"""The engine's clock: the server's, read now and then.

Time.  Stored times are seconds on the *server's* clock, so that processes
on different machines agree whatever their own clocks say.  ``now()`` does
not ask the server each time: when a connection is taken from the pool and
the last reading is older than ``CLOCK_RESYNC`` seconds, the engine reads
``clock_timestamp()`` and keeps its offset from this machine's CLOCK_BOOTTIME
(monotonic where there is none).  The offset is taken at the end of the
round trip, so ``now()`` lags the server by at most that round trip (plus
the drift of the local clock between two readings, a few microseconds a
second): a time compared on the server with ``now()`` has never been reached
early.  ``now()`` never goes back within a process.  A step of the server's
clock moves every lease, delay and TTL; NTP's slewing does not matter.

Mixed into :class:`~.engine.PostgresEngine`, whose ``__init__`` sets
``_clock_lock``, ``_offset``, ``_synced_at`` and ``_last_now``, and makes
``_maybe_sync`` its connections' ``on_connect``.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from .. import _clock
from . import sql as _sql

if TYPE_CHECKING:
    from .connections import Conn

#: Seconds after which the engine reads the server's clock again.
CLOCK_RESYNC = 10.0

_local_clock = _clock.local_boottime or time.monotonic


class ServerClock:
    """``now()`` of an engine, on its server's clock."""

    _clock_lock: threading.Lock
    #: The server's clock minus this machine's (see _local_clock).
    _offset: float
    #: When the server's clock was last read, on this machine's.
    _synced_at: float
    #: What now() last returned.
    _last_now: float

    def _sync(self, conn: Conn) -> None:
        """Read the server's clock through ``conn`` and keep its offset."""
        server = conn.execute(_sql.SERVER_TIME).fetchone()[0]  # type: ignore[index]  # one row
        local = _local_clock()  # after the round trip: now() lags, never leads
        with self._clock_lock:
            self._offset = server - local
            self._synced_at = local

    def _maybe_sync(self, conn: Conn) -> None:
        if _local_clock() - self._synced_at >= CLOCK_RESYNC:
            self._sync(conn)

    def now(self) -> float:
        t = self._offset + _local_clock()
        if t < self._last_now:  # a new reading put us back a little
            return self._last_now
        self._last_now = t
        return t
