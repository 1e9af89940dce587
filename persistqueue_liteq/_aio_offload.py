"""Running the storage calls of the asyncio front ends off the event loop.

:data:`persistqueue_liteq.aio.STORAGE_THREADS` threads per process (made on
first use, and again in a forked child) run the storage calls of every async
queue; each queue
object's :class:`_Offloader` sends its calls, in order, to one of them, and
turns a cancellation into "never ran" or "ran, and what it took was handed
back" (:func:`_uncancellable`).  Used by :mod:`persistqueue_liteq.aio`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import os
import threading
from typing import TYPE_CHECKING, Callable, Optional, TypeVar

if TYPE_CHECKING:
    from typing import Awaitable, List, TypeVarTuple, Unpack

    R = TypeVar("R")
    Ts = TypeVarTuple("Ts")


_lanes: List[Optional[concurrent.futures.ThreadPoolExecutor]] = []
_lanes_pid: Optional[int] = None
_lanes_lock = threading.Lock()
_next_lane = itertools.count()


def storage_thread(index: int, lanes: int) -> concurrent.futures.ThreadPoolExecutor:
    """The executor (one thread) of storage lane ``index`` of ``lanes``: made
    on first use, and again in a forked child."""
    global _lanes, _lanes_pid
    with _lanes_lock:
        if _lanes_pid != os.getpid():
            _lanes = [None] * lanes
            _lanes_pid = os.getpid()
        lane = _lanes[index]
        if lane is None:
            lane = _lanes[index] = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="persistqueue_liteq storage %d" % index)
        return lane


def _after_fork() -> None:
    global _lanes_lock
    _lanes_lock = threading.Lock()  # a thread of the parent may have held it


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


# -- running off the loop ----------------------------------------------------------


class _Offloader:
    """Runs one queue object's storage calls, in order, on its storage
    thread, and counts those in flight."""

    def __init__(self, lanes: int) -> None:
        self.in_flight = 0
        self._lanes = lanes
        self._lane = next(_next_lane) % lanes

    def submit(self, fn: Callable[[Unpack[Ts]], R],
               *args: Unpack[Ts]) -> concurrent.futures.Future[R]:
        """``fn(*args)`` on the storage thread: a concurrent Future."""
        return storage_thread(self._lane, self._lanes).submit(fn, *args)

    async def run(self, fn: Callable[[Unpack[Ts]], R], *args: Unpack[Ts],
                  undo: Optional[Callable[[R], object]] = None) -> R:
        """``fn(*args)`` on the storage thread.

        A cancelled caller does not leave the call behind: if it has not
        started it never runs; if it is running, the cancellation waits for
        it to end and passes its result to ``undo`` (on the storage thread:
        what it leased goes back), so that when CancelledError is raised
        nothing is left half done."""
        cf = self.submit(fn, *args)
        self.in_flight += 1
        try:
            return await asyncio.wrap_future(cf)
        except asyncio.CancelledError:
            if not cf.cancel():
                await _uncancellable(self._undo(cf, undo))
            raise
        finally:
            self.in_flight -= 1

    async def _undo(self, cf: concurrent.futures.Future[R],
                    undo: Optional[Callable[[R], object]]) -> None:
        try:
            result = await asyncio.wrap_future(cf)
        except Exception:
            return  # it took nothing
        if undo is not None:
            await asyncio.wrap_future(self.submit(undo, result))


async def _uncancellable(coro: Awaitable[R]) -> R:
    """Await ``coro`` to its end, whatever cancellations come meanwhile."""
    task = asyncio.ensure_future(coro)
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            pass
    return task.result()
