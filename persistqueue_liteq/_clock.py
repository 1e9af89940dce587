"""What the engine's clock is made of: the boot's identity and a clock that
counts the seconds since boot, which steps of the wall clock do not move.

The SQLite engine keeps, in each database file, an *anchor*: the boot id of
the machine, and one reading of the wall clock and of this clock taken at the
same moment.  Its clock is then ``wall + (boottime() - boottime_then)``: every
process of the machine computes the same value (CLOCK_BOOTTIME is one clock
for the whole kernel, and counts suspend like the wall clock), and nobody's
``date -s`` or NTP step changes it.  See :mod:`persistqueue_liteq.sqlite.anchor`
for the anchor's life.

Where the system has neither (macOS, Windows, a Linux without ``/proc``),
:data:`SUPPORTED` is False and the engine uses the wall clock as before.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Callable, Optional

__all__ = ["SUPPORTED", "boot_id", "boottime", "local_boottime", "ns_offset"]

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
_TIMENS_PATH = "/proc/self/timens_offsets"

# None where the system has no such clock (see SUPPORTED).
_gettime: Optional[Callable[[int], float]] = getattr(time, "clock_gettime", None)
_BOOTTIME: Optional[int] = getattr(time, "CLOCK_BOOTTIME", None)


def _read_boot_id() -> Optional[str]:
    try:
        with open(BOOT_ID_PATH, "rb") as f:
            text = f.read(100).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


def _read_timens_offset() -> float:
    """This process's time namespace's CLOCK_BOOTTIME offset, in seconds.

    A process in a time namespace of its own (``unshare --time``, a restored
    container) reads CLOCK_BOOTTIME shifted by this much; subtracting it gives
    the kernel's own reading, on which every process of the machine agrees.
    """
    try:
        with open(_TIMENS_PATH) as f:
            for line in f:
                parts = line.split()
                # Named since Linux 5.6's release; "7" (the clock's id) before.
                if len(parts) == 3 and parts[0] in ("boottime", "7"):
                    return int(parts[1]) + int(parts[2]) / 1e9
    except (OSError, ValueError):
        pass
    return 0.0


# The boot id never changes while a process lives; read it once.
_boot_id = _read_boot_id() if _BOOTTIME is not None else None
_ns_offset = _read_timens_offset() if _boot_id is not None else 0.0

#: Whether the engine can have a clock immune to wall-clock steps here.
SUPPORTED = _boot_id is not None and _gettime is not None


def boot_id() -> Optional[str]:
    """The kernel's id of this boot (a UUID string), or None."""
    return _boot_id


def boottime() -> float:
    """Seconds since this machine booted, suspend included: the same value in
    every process of the machine, whatever its time namespace."""
    # Called only where SUPPORTED, where neither is None.
    return _gettime(_BOOTTIME) - _ns_offset  # type: ignore[arg-type, misc]


#: CLOCK_BOOTTIME as this process reads it, :func:`boottime` plus
#: :func:`ns_offset`: for the hot path, which adds the offset in beforehand
#: (a C call, no Python frame).
local_boottime: Optional[Callable[[], float]] = (
    # (Where SUPPORTED, neither _gettime nor _BOOTTIME is None.)
    functools.partial(_gettime, _BOOTTIME) if SUPPORTED else None)  # type: ignore[arg-type, misc]


def ns_offset() -> float:
    """How far this process's CLOCK_BOOTTIME is ahead of the machine's."""
    return _ns_offset


def _after_fork() -> None:
    # A child of a process that unshared its time namespace lives in the new
    # one.  Runs before the hooks of modules that import this one.
    global _ns_offset
    _ns_offset = _read_timens_offset()


if SUPPORTED and hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
