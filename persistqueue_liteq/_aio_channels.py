"""Waiting in the event loop: waiters woken one at a time, and wake-up channels.

Waiters are futures kept in a deque, woken one at a time as
``asyncio.Queue`` does (:func:`_wake_one`, :func:`_wait_turn`).  A
:class:`_Channel` feeds one of the engine's wake-ups (a socket the loop
watches, or a timer where there is none) into such a deque; a queue
object's :class:`_Channels` holds its channels, bound to one event loop.
Used by :mod:`persistqueue_liteq.aio`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import TYPE_CHECKING, Callable, Optional

from .engine import SAFETY_INTERVAL

if TYPE_CHECKING:
    from typing import Deque, Dict, Iterator, Tuple

    from .engine import Engine, WakeKind

    #: Waiting getters, putters or joiners: resolved to wake one.
    Waiters = Deque[asyncio.Future[None]]


def _wake_one(waiters: Waiters) -> bool:
    """asyncio.Queue's _wakeup_next: wake the first waiter still waiting;
    False if there was none."""
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)
            return True
    return False


async def _wait_turn(waiters: Waiters, waiter: asyncio.Future[None],
                     pass_on: Optional[Callable[[], object]]) -> None:
    """Await ``waiter``, one of ``waiters``.  Cancelled, it leaves them; if
    it had been woken already, ``pass_on()`` wakes another in its place (as
    asyncio.Queue does), so that no wake-up is lost with it."""
    try:
        await waiter
    except BaseException:
        woken = waiter.done() and not waiter.cancelled()
        waiter.cancel()
        with contextlib.suppress(ValueError):
            waiters.remove(waiter)
        if woken and pass_on is not None:
            pass_on()
        raise


class _Channel:
    """One wake-up channel of a queue, watched by the event loop.

    The engine's waiter is entered (bound) when the channel is made and left
    at close, so a change committed after any look that follows is never
    missed: its wake-up makes the socket readable.  ``waiters`` are futures;
    ``wake_all`` says whether a wake-up resolves all of them (join) or the
    first (get: each getter that finds an item wakes the next).

    A wake-up can come while a look is under way, too late for that look
    and with nobody waiting yet.  Joiners compare ``version`` (bumped by
    every wake-up) from before their look.  Getters share one flag,
    ``_missed``: the first that would wait looks again instead.  One is
    enough, however many wake-ups were missed: a getter that finds an item
    wakes the next, so the others follow while items remain, and the
    looks stay one per item plus one, not one per getter and wake-up.
    """

    def __init__(self, engine: Engine, kind: WakeKind, queue: str,
                 loop: asyncio.AbstractEventLoop, waiters: Waiters, wake_all: bool) -> None:
        self._loop = loop
        self.waiters = waiters
        self._wake_all = wake_all
        self.version = 0
        self._missed = False
        self._timer: Optional[asyncio.TimerHandle] = None
        self._context = engine.waiter(kind, queue)
        self._waiter = self._context.__enter__()
        fileno = getattr(self._waiter, "fileno", None)
        self._fd: Optional[int] = fileno() if fileno is not None else None
        if self._fd is not None:
            try:
                loop.add_reader(self._fd, self._readable)
            except NotImplementedError:  # a loop that watches no descriptors (a proactor)
                self._fd = None
            except BaseException:
                self._context.__exit__(None, None, None)  # the waiter is not kept
                raise
        if self._fd is not None:
            self._relook: float = SAFETY_INTERVAL  # wake-ups can be lost: a safety net
        else:  # no sockets here, unsafe, or not watched: look again often
            self._relook = getattr(self._waiter, "interval", 0.005)

    def _readable(self) -> None:
        self._waiter.drain()  # type: ignore[attr-defined]  # a waiter with fileno() has it
        self.wake()

    def wake(self) -> None:
        """Something may have changed: let the waiters look again."""
        self.version += 1
        if self._wake_all:
            while self.waiters:
                waiter = self.waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)
        elif not _wake_one(self.waiters):
            self._missed = True

    def arm(self, seconds: Optional[float] = None) -> None:
        """Make sure a waiter looks again within ``seconds`` (and within the
        safety interval) even if no wake-up comes."""
        delay = self._relook if seconds is None else min(seconds, self._relook)
        when = self._loop.time() + delay
        if self._timer is not None:
            if self._timer.when() <= when:
                return
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        self.wake()

    async def wait(self, seen: int, seconds: Optional[float] = None) -> None:
        """Wait until woken, unless a wake-up came since the look: for a
        joiner, ``version`` moved on from ``seen``; for a getter, one was
        missed."""
        if self._wake_all:
            if self.version != seen:
                return
        elif self._missed:
            self._missed = False
            return
        waiter = self._loop.create_future()
        self.waiters.append(waiter)
        self.arm(seconds)
        await _wait_turn(self.waiters, waiter, None if self._wake_all else self.wake)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._fd is not None:
            with contextlib.suppress(Exception):  # the loop may be closed already
                self._loop.remove_reader(self._fd)
            self._fd = None
        self._context.__exit__(None, None, None)


class _Channels:
    """The channels of one queue object, bound to one event loop (as
    asyncio's queues are bound to the loop of their first use)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._by_key: Dict[Tuple[WakeKind, str], _Channel] = {}
        # key -> joins using the channel
        self._holders: collections.Counter[Tuple[WakeKind, str]] = collections.Counter()

    def loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("%r is bound to a different event loop" % (self,))
        return loop

    def find(self, kind: WakeKind, queue: str) -> Optional[_Channel]:
        """The channel if some waiter made it, else None."""
        return self._by_key.get((kind, queue))

    def get(self, kind: WakeKind, queue: str, waiters: Optional[Waiters] = None,
            wake_all: bool = False) -> _Channel:
        loop = self.loop()
        key = (kind, queue)
        channel = self._by_key.get(key)
        if channel is None:
            waiters = collections.deque() if waiters is None else waiters
            channel = self._by_key[key] = _Channel(
                self._engine, kind, queue, loop, waiters, wake_all)
        return channel

    @contextlib.contextmanager
    def held(self, kind: WakeKind, queue: str) -> Iterator[_Channel]:
        """A wake-all channel for the ``with`` block, left when its last
        holder leaves: joins are rare, and a bound socket costs every
        acknowledgement of any process a datagram (the getters' channel,
        used all the time, stays)."""
        key = (kind, queue)
        channel = self.get(kind, queue, wake_all=True)
        self._holders[key] += 1
        try:
            yield channel
        finally:
            self._holders[key] -= 1
            if not self._holders[key]:
                del self._holders[key]
                if self._by_key.get(key) is channel:
                    del self._by_key[key]
                    channel.close()

    def wake(self) -> None:
        for channel in list(self._by_key.values()):
            channel.wake()

    def close(self) -> None:
        channels, self._by_key = list(self._by_key.values()), {}
        for channel in channels:
            channel.close()
