"""The clock of a queue file.

Leases, delays and TTLs are compared with :meth:`SQLiteEngine.now`, the
file's own clock, not with the wall clock.  The file keeps an *anchor* in its
meta table: the machine's boot id and a reading of the wall clock and of
CLOCK_BOOTTIME taken together (see :mod:`.._clock`); ``now()`` is that wall
time plus the CLOCK_BOOTTIME seconds since.  Every process of the machine
reads the same value whatever its own wall clock says; a step of the wall
clock (``date -s``, an NTP step, a restored VM) does not move it, and NTP's
slewing, which changes the rate of both clocks, keeps them together.  So:

* A lease of ``s`` seconds ends ``s`` seconds after it was taken or renewed,
  for every process: a step of anyone's wall clock neither ends it early
  (re-delivering a message whose holder lives) nor late (stranding the
  message of a dead holder).  Seconds are CLOCK_BOOTTIME's, which counts a
  suspend of the machine as the wall clock does.
* A delay or TTL is a duration from the put, counted the same way: a message
  put with a delay of 600 s is ready 600 s later and one with a TTL of 600 s
  is dropped 600 s later, whichever wall clock was stepped in between.  They
  are not appointments on the wall clock: after a step forward of an hour, a
  message delayed by two hours still waits two hours from its put.
* Stored times (``created_at``, ``visible_at``, ``expires_at``, ``dead_at``,
  the results' ``finished_at``, the activity buckets) are on this clock.  They
  read like wall-clock times, and are, until the wall clock is stepped;
  :meth:`SQLiteEngine.wall_time` turns one into the wall clock's reading (the
  command line shows times that way).

Across a reboot.  The first process that opens the file for writing in a new
boot finds another boot id in the anchor and, in one transaction, anchors it
again and releases every lease: their holders died with the old boot, so
their messages are ready at once (the delivery counted as an attempt).  The
clock goes on from the wall clock at that moment, so a delay or TTL pending
across a reboot ends by the wall clock (the time the machine was down counts),
but never from earlier than the old anchor or the newest message or result
stored: a wall clock that is far behind at boot would otherwise hold every
message back for the whole boot.  The wall clock is read once per boot, then:
if delays and TTLs must be right across reboots, start the first process
after the clock is synchronised (systemd's ``time-sync.target``).  A file
copied to another machine is re-anchored the same way at its first open
there.  A read-only engine never anchors; until a writer has, it reads the
wall clock.

Not covered.  Where there is no CLOCK_BOOTTIME or boot id (macOS, Windows, a
Linux without ``/proc``) the wall clock decides everything, as
:func:`~persistqueue_liteq.engine.clock` reads it (never going back within a
process): a step of the wall clock moves leases, delays and TTLs.  A file
last written by a version without anchors is anchored at its first open
without releasing anything (processes of that version may hold leases, on
the wall clock).  All processes must run on one kernel, as SQLite's WAL mode
requires anyway: containers of one host are (their time namespaces are
allowed for).

Cost: ``now()`` is one ``clock_gettime`` and an addition; the anchor is read
with the schema at open, no statement more; the first open of a boot runs
one transaction that scans the messages table once.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Tuple, overload

from .. import _clock
from ..engine import clock
from . import sql as _sql

if TYPE_CHECKING:
    import sqlite3
    import types

    from .connections import Connections

logger = logging.getLogger("persistqueue_liteq")

_local_boottime = _clock.local_boottime

# Engines whose clock is anchored: a forked child in another time namespace
# (see _clock) reads CLOCK_BOOTTIME shifted, and shifts their clocks back.
_anchored: weakref.WeakSet[AnchoredClock] = weakref.WeakSet()


_offset_applied = _clock.ns_offset()


def _after_fork() -> None:
    global _offset_applied
    if _clock.ns_offset() != _offset_applied:  # hardly ever: see _clock
        _offset_applied = _clock.ns_offset()
        for engine in list(_anchored):
            # Anchored: it has an _anchor_shift.
            engine._shift = engine._anchor_shift - _offset_applied  # type: ignore[operator]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)

# How far the wall clock must be from the engine's before times are shown
# shifted by the difference (seconds).
_SHOWN_OFFSET = 1.0


def _read_anchor(meta: Mapping[str, Any]) -> Tuple[Optional[float], Optional[float]]:
    """(shift, None) for an anchor made in this boot; (None, its wall time)
    for one made in another boot (0.0 if it is unreadable); (None, None) if
    the file has none (new, or written by a version before anchors)."""
    boot = meta.get(_sql.CLOCK_BOOT_ID)
    if boot is None:
        return None, None
    try:
        wall, since_boot = float(meta[_sql.CLOCK_WALL]), float(meta[_sql.CLOCK_BOOTTIME])
    except (KeyError, TypeError, ValueError):
        return None, 0.0
    if not (0.0 < wall < 1e12 and 0.0 <= since_boot < 1e12):  # not NaN, not absurd
        return None, 0.0
    if boot != _clock.boot_id():
        return None, wall
    return wall - since_boot, None


class AnchoredClock:
    """``now()`` and ``wall_time()`` of an engine, on its file's anchor.

    Mixed into :class:`~.engine.SQLiteEngine`, whose ``__init__`` calls
    ``_open_clock`` once the schema is open (``_meta`` read); it uses the
    engine's ``_conns``, ``sql``, ``location`` and ``readonly``.
    """

    _conns: Connections
    sql: types.SimpleNamespace
    location: str
    readonly: bool
    #: The meta table as read with the schema; None once the clock is set.
    _meta: Optional[Dict[str, Any]]
    #: The clock minus this process's CLOCK_BOOTTIME; None: the wall clock.
    _shift: Optional[float]
    #: The file's anchor (the clock minus the machine's CLOCK_BOOTTIME).
    _anchor_shift: Optional[float]

    def now(self) -> float:
        # The hot path: one C call and an addition.  Replaced by the wall
        # clock (engine.clock) where there is no anchor.
        # Never called with _shift None: _open_clock replaces it by the wall
        # clock then (and where _clock is not SUPPORTED, _local_boottime is None).
        return self._shift + _local_boottime()  # type: ignore[operator, misc]

    @overload
    def wall_time(self, t: float) -> float: ...
    @overload
    def wall_time(self, t: None) -> None: ...
    @overload
    def wall_time(self, t: Optional[float]) -> Optional[float]: ...

    def wall_time(self, t: Optional[float]) -> Optional[float]:
        if t is None or self._shift is None:
            return t
        # Under a second apart, the two clocks differ by their rates (NTP's
        # slewing), not by a step: shown as stored, the same at every look.
        offset = time.time() - self.now()
        return t + offset if abs(offset) >= _SHOWN_OFFSET else t

    def _open_clock(self) -> None:
        """Set the clock from the file's anchor, anchoring it first if the
        file was last anchored in another boot (or never)."""
        self._shift = None
        if _clock.SUPPORTED:
            shift, _ = _read_anchor(self._meta)  # type: ignore[arg-type]  # read by the schema
            if shift is None and not self.readonly:
                try:
                    with self._conns.transaction() as conn:
                        shift = self._anchor(conn)
                except BaseException:  # busy past the timeout, say: nothing is left open
                    self._conns.close()
                    raise
            self._anchor_shift = shift
            if shift is not None:
                self._shift = shift - _clock.ns_offset()
                _anchored.add(self)
        if self._shift is None:  # nothing better here, or read-only and not anchored
            self.now = clock  # type: ignore[method-assign]  # per engine: a plain function
        self._meta = None

    def _anchor(self, conn: sqlite3.Connection) -> float:
        """Anchor the file's clock in this boot, in a transaction; return its
        shift (the clock minus CLOCK_BOOTTIME)."""
        shift, old_wall = _read_anchor(dict(conn.execute(self.sql.READ_META).fetchall()))
        if shift is not None:
            return shift  # another process of this boot came first
        wall, since_boot = time.time(), _clock.boottime()
        if old_wall is not None:
            # Anchored in another boot: whoever held a lease died with it.
            # The clock goes on from the wall clock, but never back past the
            # newest thing stored (a wall clock behind at boot would hold
            # every message back until it caught up).
            newest = conn.execute(self.sql.NEWEST_TIME).fetchone()[0]
            if isinstance(newest, (int, float)):  # a tampered row holds anything
                wall = max(wall, newest)
            wall = max(wall, old_wall)
            released = conn.execute(self.sql.RELEASE_ALL_LEASES, (wall,)).rowcount
            logger.info("%s: its clock was anchored in another boot (or the anchor was "
                        "unreadable): anchored anew, released %d lease(s) held there",
                        self.location, released)
        conn.executemany(self.sql.WRITE_META, [
            (_sql.CLOCK_BOOT_ID, _clock.boot_id()),
            (_sql.CLOCK_WALL, repr(wall)),
            (_sql.CLOCK_BOOTTIME, repr(since_boot)),
        ])
        return wall - since_boot
