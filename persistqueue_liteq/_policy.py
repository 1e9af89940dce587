"""What every front end decides the same way: the text stored for a
failure, the reason a message is dead-lettered, how long to sleep until the
next message is due, and what redriving a pool's task forgets.

Front ends (liteq, queues, aio, pool, cli) use these and nothing of each
other; these use nothing but the engine interface.
"""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING, Iterable, Optional

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["describe_exception", "last_line", "out_of_retries", "redrive_tasks",
           "seconds_until"]


def describe_exception(exc: BaseException) -> str:
    """The text stored as a message's last error: the full traceback."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()


def last_line(text: str) -> str:
    """The last line of a stored error (a traceback's: the exception), or ""."""
    text = text.strip()
    return text.splitlines()[-1] if text else ""


def out_of_retries(attempts: int, max_retries: int, reason: str) -> str:
    """The dead reason of a message whose every attempt failed."""
    return "failed %d time%s (max_retries=%d): %s" % (
        attempts, "" if attempts == 1 else "s", max_retries, reason)


def seconds_until(engine: Engine, due: Optional[float], at_most: float = float("inf")) -> float:
    """Seconds from now until ``due`` (a time of ``engine``'s clock, or None:
    nothing due), 1 ms at least (a message due now is leased by the next
    look), and ``at_most`` at most."""
    if due is None:
        return at_most
    return min(at_most, max(due - engine.now(), 0.001))


def redrive_tasks(engine: Engine, queue: str, ids: Optional[Iterable[int]] = None) -> int:
    """Return dead letters of ``queue`` (all, or those ids) to it, as
    ``engine.redrive`` does, first forgetting the failures stored as their
    tasks' results: else a pool would answer a resubmission with the stored
    failure instead of running the task.  Returns how many were redriven."""
    chosen = None if ids is None else list(ids)  # read once: ids may be an iterator
    wanted = None if chosen is None else set(chosen)
    for msg in engine.dead_letters(queue):
        if msg.key is not None and (wanted is None or msg.id in wanted):
            engine.forget_results(queue, msg.key)
    return engine.redrive(queue, chosen)
