"""asyncio front ends: a durable asyncio.Queue, and LiteQueue for async code.

:class:`AsyncPersistentQueue` (and its Lifo and Priority variants) is a
drop-in for ``asyncio.Queue`` whose items live in an SQLite file, shared with
the synchronous :class:`~persistqueue_liteq.PersistentQueue` and with other
processes; :class:`AsyncLiteQueue` makes :class:`~persistqueue_liteq.LiteQueue`'s
operations awaitable.  Both hold the synchronous object and reuse its logic
(leases, heartbeat, dead letters, serializers and HMAC): only the waiting is
new, and it is done in the event loop::

    await q.get()                              the event loop
      one look, off the loop:  -------------->  storage thread (STORAGE_THREADS
        lease the next item, or say when          per process): the sync
        the earliest delayed one is due           queue's _get_ready()
      nothing: wait on a future in _getters
                       ^
      woken one at a time by: a put of this object; the wake-up socket of
      the queue's "put" channel (loop.add_reader: any process's put, a
      release, a shutdown); a timer at the earliest due item, or after
      SAFETY_INTERVAL (wake-ups can be lost); a getter that got an item
      (there may be more: it passes the turn on)

The loop never waits for SQLite in an ``await``-able method: storage calls
run on a small pool of threads shared by every queue of the process
(:data:`STORAGE_THREADS`).  The methods that asyncio.Queue makes synchronous
(``put_nowait``, ``get_nowait``, ``qsize``, ``empty``, ``full``,
``shutdown``) run their one statement on the calling thread, as they must
return its result; ``task_done`` picks the item at once and acknowledges it
on a storage thread (``join`` waits for those acknowledgements).

Puts awaited while one of the same queue object is being committed are
committed together, in the next transaction (group commit): many producer
tasks cost few commits.  An item that fails to serialize fails its own put.

A waiting getter costs a future and nothing else: no thread, no timer of its
own, no polling.  One socket per queue object and channel is watched by the
loop; where there are no Unix sockets (Windows), or wake-ups cannot be used
safely, that channel's timer looks again every few milliseconds instead.

Cancellation loses nothing: an item leased for a get that was cancelled
before it returned is handed back at once (its delivery not counted as an
attempt), and an item whose task was cancelled between ``get`` and
``task_done`` is no longer kept alive by the heartbeat: it comes back after
``visibility_timeout``.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import itertools
import logging
import math
import os
import threading
from queue import Empty, Full
from types import GenericAlias
from typing import TYPE_CHECKING, Any, Callable, Generic, Optional, TypeVar

from . import _checks
from .exceptions import CodecMismatch
from ._policy import describe_exception, seconds_until
from .liteq import LiteQueue
from .queues import (
    PersistentLifoQueue,
    PersistentPriorityQueue,
    PersistentQueue,
    ShutDown,
    _FULL_RECHECK,
)
from .engine import SAFETY_INTERVAL

if TYPE_CHECKING:
    import sys
    from typing import (AsyncIterator, Awaitable, ClassVar, Deque, Dict, Hashable, Iterable,
                        Iterator, List, ParamSpec, Self, Set, Tuple, Type, TypeVarTuple,
                        Union, Unpack)

    from .backends import Location
    from .engine import Engine, Message, QueueStats, WakeKind
    from .liteq import MessageId, Payload
    from .queues import _Lease
    from .serializers import Serializer

    R = TypeVar("R")
    P = ParamSpec("P")
    Ts = TypeVarTuple("Ts")
    #: Waiting getters, putters or joiners: resolved to wake one.
    Waiters = Deque[asyncio.Future[None]]
    #: A put waiting for its group's commit: (item, outcome, over).
    PendingPut = Tuple[object, asyncio.Future[None], asyncio.Future[None]]
    #: What a look of a get leased: (item, its lease; None with auto_ack).
    Taken = Tuple[Any, Optional[_Lease]]
    #: What a look of a pop leased, and else the seconds until one is due.
    Looked = Tuple[List[Message], Optional[float]]

__all__ = [
    "AsyncPersistentQueue",
    "AsyncPersistentLifoQueue",
    "AsyncPersistentPriorityQueue",
    "AsyncLiteQueue",
    "QueueShutDown",
    "STORAGE_THREADS",
]

T = TypeVar("T")

logger = logging.getLogger("persistqueue_liteq")

if TYPE_CHECKING:
    # What the try below makes, as type checkers see it.
    if sys.version_info >= (3, 13):
        from asyncio import QueueShutDown as QueueShutDown
    else:
        class QueueShutDown(Exception):
            """Python 3.13's ``asyncio.QueueShutDown``, for the Pythons before it."""
else:
    try:
        from asyncio import QueueShutDown
    except ImportError:  # Python < 3.13

        class QueueShutDown(Exception):
            """Raised by ``put`` and ``get`` of a queue that was shut down:
            Python 3.13's ``asyncio.QueueShutDown``, for the Pythons before it
            (on 3.13 and later this name *is* ``asyncio.QueueShutDown``)."""


#: Threads per process that run the storage calls of every async queue.  Each
#: queue object uses one of them, so that its calls run in the order made
#: (they would take turns on the sync queue's lock anyway); queues on
#: different threads run in parallel.
STORAGE_THREADS = 4

_lanes: List[Optional[concurrent.futures.ThreadPoolExecutor]] = []
_lanes_pid: Optional[int] = None
_lanes_lock = threading.Lock()
_next_lane = itertools.count()


def storage_thread(index: int) -> concurrent.futures.ThreadPoolExecutor:
    """The executor (one thread) of storage lane ``index``: made on first
    use, and again in a forked child."""
    global _lanes, _lanes_pid
    with _lanes_lock:
        if _lanes_pid != os.getpid():
            _lanes = [None] * STORAGE_THREADS
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


def _seconds_until(engine: Engine, due: Optional[float]) -> Optional[float]:
    """_policy.seconds_until, but None (wait for a wake-up) if nothing is
    due.  The one place this module reads the engine's clock."""
    return None if due is None else seconds_until(engine, due)


# -- running off the loop ----------------------------------------------------------


class _Offloader:
    """Runs one queue object's storage calls, in order, on its storage
    thread, and counts those in flight."""

    def __init__(self) -> None:
        self.in_flight = 0
        self._lane = next(_next_lane) % STORAGE_THREADS

    def submit(self, fn: Callable[[Unpack[Ts]], R],
               *args: Unpack[Ts]) -> concurrent.futures.Future[R]:
        """``fn(*args)`` on the storage thread: a concurrent Future."""
        return storage_thread(self._lane).submit(fn, *args)

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
            loop.add_reader(self._fd, self._readable)
            self._relook: float = SAFETY_INTERVAL  # wake-ups can be lost: a safety net
        else:  # no sockets here, or unsafe: look again often
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


# -- the asyncio.Queue drop-ins -------------------------------------------------


class _PutGroups:
    """Group commit: the puts awaited while a commit of the queue is under
    way are stored together, in the next transaction (one commit and one
    wake-up for all of them instead of one each).

    ``_lock`` guards ``_waiting`` (the (item, outcome, over) not yet taken by a
    storage thread) and ``_scheduled``; the loop appends, the storage thread
    takes the whole list.
    """

    def __init__(self, sync: _TaskLeases, offload: _Offloader,
                 stored: Callable[[], None]) -> None:
        self._sync = sync
        self._offload = offload
        self._stored = stored
        self._lock = threading.Lock()
        self._waiting: List[PendingPut] = []
        self._scheduled = False

    async def put(self, item: object) -> None:
        loop = asyncio.get_running_loop()
        # ``outcome`` is what the caller awaits; ``over`` is set with it but
        # never cancelled: a cancelled put waits on it for its commit.  The
        # caller awaits ``outcome`` itself, not a shield of it, so that it
        # resumes in the same turn of the loop as a get of this queue that
        # leased the item (its look ran after this commit, on the same
        # storage thread): when that get returns, this put is done.
        outcome: asyncio.Future[None]
        over: asyncio.Future[None]
        outcome, over = loop.create_future(), loop.create_future()
        with self._lock:
            self._waiting.append((item, outcome, over))
            start, self._scheduled = not self._scheduled, True
        if start:
            self._offload.submit(self._store, loop)
        self._offload.in_flight += 1
        try:
            await outcome
        except asyncio.CancelledError:
            if not self._withdraw(over):  # taken: wait for its commit
                await _uncancellable(over)
            raise
        finally:
            self._offload.in_flight -= 1

    def _withdraw(self, over: asyncio.Future[None]) -> bool:
        """Take back a put that no storage thread took yet; True if done."""
        with self._lock:
            for i, waiting in enumerate(self._waiting):
                if waiting[2] is over:
                    del self._waiting[i]
                    return True
        return False

    def _store(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            group, self._waiting, self._scheduled = self._waiting, [], False
        if not group:
            return
        outcomes: List[Optional[BaseException]]
        try:
            outcomes = self._sync._store_group([item for item, _, _ in group])
        except BaseException as exc:  # DatabaseBusy: none of them stored
            outcomes = [exc] * len(group)
        with contextlib.suppress(RuntimeError):  # the loop was closed
            loop.call_soon_threadsafe(self._settle, group, outcomes)

    def _settle(self, group: List[PendingPut], outcomes: List[Optional[BaseException]]) -> None:
        for (_, future, over), outcome in zip(group, outcomes):
            over.set_result(None)
            if future.done():  # cancelled
                continue
            if outcome is None:
                future.set_result(None)
            else:
                future.set_exception(outcome)
        if any(outcome is None for outcome in outcomes):
            self._stored()


_owning = threading.local()


def _current_task() -> Optional[asyncio.Task[Any]]:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop in this thread
        return None


def _abandoned(owner: Hashable) -> bool:
    """True for a task that was cancelled: what it got and did not finish is
    not kept alive any more.  (A task that failed is not asked: exception()
    would silence asyncio's "exception was never retrieved"; its items stay
    leased while the process lives, as a sync thread's do.)"""
    return isinstance(owner, asyncio.Task) and owner.cancelled()


if TYPE_CHECKING:
    # To the type checker the mixin is what it is mixed into.
    _Mixed = PersistentQueue[Any]
else:
    _Mixed = object


class _TaskLeases(_Mixed):
    """What the sync queues inside the async ones do differently: a lease is
    held by the asyncio task that got it (task_done settles the oldest of the
    calling task's first), and the heartbeat stops renewing those of a task
    that was cancelled."""

    def _owner(self) -> Hashable:
        owner = getattr(_owning, "task", None)
        if owner is None:
            owner = _current_task()
        return owner if owner is not None else threading.get_ident()

    def _extend_leases(self) -> None:
        with self._leases_lock:
            for lease in [lease for lease in self._held.values()
                          if not lease.settling and _abandoned(lease.thread)]:
                self._forget(lease)
        super()._extend_leases()

    def _look(self, task: Optional[asyncio.Task[Any]]) -> Taken:
        """One look for a get awaited by ``task``, on a storage thread:
        (item, lease) or raise queue.Empty with the seconds until the earliest
        item is due as its argument, or ShutDown."""
        _owning.task = task
        try:
            item = self._get_ready()
            with self._leases_lock:
                mine = self._held_by_thread.get(task)
                lease = mine[-1] if mine else None
            return item, lease
        except Empty:
            with self.mutex:
                due = self._engine.next_visible_at(self.name)
            raise Empty(_seconds_until(self._engine, due)) from None
        finally:
            _owning.task = None

    def _give_back(self, taken: Taken) -> None:
        """Hand back at once an item leased for a get that was cancelled."""
        lease = taken[1]
        if lease is None:
            return
        with self._leases_lock:
            if self._held.get(lease.token) is not lease:
                return
            self._forget(lease)
        with self.mutex:
            self._engine.release(lease.id, lease.token, attempted=False)

    def _has_live(self) -> bool:
        with self.mutex:
            return self._engine.has_live(self.name)

    def _store_group(self, items: List[object]) -> List[Optional[BaseException]]:
        """Store what fits of ``items`` in one transaction, on a storage
        thread; for each, None (stored) or the exception it gets: Full,
        ShutDown, or what serializing it raised (nothing of it stored)."""
        order_key = getattr(self, "_order_key", None)
        with self.mutex:
            if self.is_shutdown:
                return [ShutDown()] * len(items)
            free = len(items) if self.maxsize <= 0 else self.maxsize - self._qsize()
            codec = self._codec
            outcomes: List[Optional[BaseException]]
            rows: List[Tuple[bytes, Optional[bytes]]]
            outcomes, rows = [], []
            for item in items:
                if len(rows) >= free:
                    outcomes.append(Full())
                    continue
                try:
                    rows.append((codec.dumps(item),
                                 None if order_key is None else order_key(item)))
                except Exception as exc:
                    outcomes.append(exc)
                else:
                    outcomes.append(None)
            if rows:
                if not self._codec_ok:
                    try:
                        self._claim_codec()  # as PersistentQueue._store does
                    except CodecMismatch as exc:
                        return [exc if outcome is None else outcome for outcome in outcomes]
                with self._engine.transaction() as tx:
                    for data, priority in rows:
                        # The signature binds the id, which the engine chooses.
                        tx.put(self.name, data, priority=priority, seal=codec.sealer)
            return outcomes


class _SyncQueue(_TaskLeases, PersistentQueue[Any]):
    pass


class _SyncLifoQueue(_TaskLeases, PersistentLifoQueue[Any]):
    pass


class _SyncPriorityQueue(_TaskLeases, PersistentPriorityQueue[Any]):
    pass


class AsyncPersistentQueue(Generic[T]):
    """An asyncio.Queue (FIFO) whose items live in an SQLite file until done.

    Args:
        path: the SQLite file; the same file and queue ``name`` may be used
            at once by :class:`~persistqueue_liteq.PersistentQueue` objects,
            other async queues, and other processes.
        maxsize: as asyncio.Queue: ``put`` waits while ``qsize() >= maxsize``
            (counted in the file); 0 or less is unbounded.
        options: those of :class:`~persistqueue_liteq.PersistentQueue`
            (name, visibility_timeout, max_retries, serializer, hmac_key,
            auto_ack, timeout_seconds, synchronous, table_prefix).

    What differs from asyncio.Queue is what persistence needs, as for
    PersistentQueue: ``get`` leases the item and ``task_done`` acknowledges
    the oldest item that the calling task got (from a task that got none,
    the process's oldest); counts and ``join`` read the file; and
    ``shutdown(immediate=True)`` keeps the stored items (:meth:`clear`
    discards them).  A putter waiting on a full queue looks again every
    few hundredths of a second (another process's get sends no wake-up).
    Close it (``await q.aclose()``, ``async with``, or ``close()``) to hand
    back the unfinished items at once.
    """

    _sync_class: ClassVar[Type[_TaskLeases]] = _SyncQueue

    if not TYPE_CHECKING:  # as asyncio.Queue[int]: a types.GenericAlias
        __class_getitem__ = classmethod(GenericAlias)

    if TYPE_CHECKING:
        # The sync queue's, read through __getattr__ (see _SHARED).
        path: str
        name: str
        visibility_timeout: float
        max_retries: int
        serializer: Serializer
        timeout_seconds: float
        engine: Engine
        is_shutdown: bool

        def metrics(self) -> Dict[str, int]: ...

    def __init__(self, path: Location, maxsize: int = 0, **options: Any) -> None:
        if isinstance(maxsize, float) and math.isfinite(maxsize):
            # asyncio.Queue allows 1.3: full when qsize() >= 1.3, i.e. >= 2.
            self._maxsize: Optional[float] = maxsize
            maxsize = math.ceil(maxsize)
        else:
            self._maxsize = None
        auto_ack = bool(options.pop("auto_ack", False))
        # Leased, never acknowledged by the sync queue, so that a cancelled
        # get can hand its item back: auto_ack happens here, once delivered.
        self._sync = self._sync_class(path, maxsize, **options)
        self.auto_ack = auto_ack
        self._getters: Waiters = collections.deque()
        self._putters: Waiters = collections.deque()
        self._channels = _Channels(self._sync.engine)
        self._offload = _Offloader()
        self._puts = _PutGroups(self._sync, self._offload, self._wake_getter)
        # concurrent futures of the acknowledgements under way
        self._acks: Set[concurrent.futures.Future[None]] = set()
        self._acks_lock = threading.Lock()  # they end on the storage thread
        self._freed = 0  # slots freed by this object's gets (for putters)

    @property
    def maxsize(self) -> int:
        """Number of items allowed in the queue (0 or less: unbounded)."""
        # A float only if one was passed, as asyncio.Queue allows (typeshed: int).
        return (self._sync.maxsize if self._maxsize is None  # type: ignore[return-value]
                else self._maxsize)

    @property
    def sync(self) -> PersistentQueue[T]:
        """The PersistentQueue underneath (for its other methods)."""
        return self._sync

    if not TYPE_CHECKING:  # declared above, for the type checker
        def __getattr__(self, name):
            # path, name, visibility_timeout, serializer, engine, metrics, ...
            if name.startswith("_") or name not in _SHARED:
                raise AttributeError(
                    "%r object has no attribute %r" % (type(self).__name__, name))
            return getattr(self._sync, name)

    def __repr__(self) -> str:
        return "<%s at %#x %r name=%r %s>" % (
            type(self).__name__, id(self), self._sync.path, self._sync.name, self._format())

    def __str__(self) -> str:
        return "<%s %r name=%r %s>" % (
            type(self).__name__, self._sync.path, self._sync.name, self._format())

    def _format(self) -> str:
        # asyncio.Queue's, without the items (they are in the file).
        result = "maxsize=%r" % (self.maxsize,)
        if self._getters:
            result += " _getters[%d]" % len(self._getters)
        if self._putters:
            result += " _putters[%d]" % len(self._putters)
        unfinished = self._sync._unfinished_here()
        if unfinished:
            result += " tasks=%d" % unfinished
        if self._sync.is_shutdown:
            result += " shutdown"
        return result

    # -- counting (one read of the file, on the calling thread) -----------------

    def qsize(self) -> int:
        """Items stored and not being worked on (across processes)."""
        return self._sync.qsize()

    def empty(self) -> bool:
        """True if no item is waiting to be got (across processes)."""
        return self._sync.empty()

    def full(self) -> bool:
        """True if ``qsize() >= maxsize > 0``."""
        if self.maxsize <= 0:
            return False
        return self.qsize() >= self.maxsize

    # -- putting -------------------------------------------------------------

    async def put(self, item: T) -> None:
        """Put an item into the queue (committed when this returns),
        waiting while it is full.  Raises QueueShutDown if the queue was
        shut down.  Cancelled while its commit is under way, it raises
        CancelledError once the commit is over: the item is stored."""
        loop = self._channels.loop()
        while True:
            freed = self._freed
            try:
                await self._puts.put(item)
            except Full:
                pass
            except ShutDown:
                raise QueueShutDown from None
            else:
                return
            if self._freed != freed:
                continue
            putter = loop.create_future()
            self._putters.append(putter)
            # Another process's get frees a slot without a wake-up.
            timer = loop.call_later(_FULL_RECHECK, _resolve, putter)
            try:
                await _wait_turn(self._putters, putter, lambda: _wake_one(self._putters))
            finally:
                timer.cancel()
            if self._sync.is_shutdown:
                raise QueueShutDown

    def put_nowait(self, item: T) -> None:
        """Put an item without waiting (its commit runs on the calling
        thread); asyncio.QueueFull if the queue is full."""
        try:
            self._sync.put(item, block=False)
        except Full:
            raise asyncio.QueueFull from None
        except ShutDown:
            raise QueueShutDown from None
        self._wake_getter()

    # -- getting -------------------------------------------------------------

    async def get(self) -> T:
        """Remove and return an item, waiting until one is available (put by
        any task, thread or process): lease it until task_done().

        Raises QueueShutDown if the queue was shut down and is empty, or
        shut down immediately.  Cancelled while waiting, it leaves nothing
        leased.
        """
        channel = self._channels.get("put", self._sync.name, self._getters)
        task = asyncio.current_task()
        while True:
            seen = channel.version
            try:
                item, lease = await self._offload.run(
                    self._sync._look, task, undo=self._sync._give_back)
            except Empty as empty:
                due = empty.args[0] if empty.args else None
            except ShutDown:
                channel.wake()  # the others raise too
                raise QueueShutDown from None
            else:
                return self._delivered(item, lease)
            await channel.wait(seen, due)

    def get_nowait(self) -> T:
        """Remove and return an item if one is ready (its statement runs on
        the calling thread); else asyncio.QueueEmpty."""
        try:
            item = self._sync.get(block=False)
        except Empty:
            raise asyncio.QueueEmpty from None
        except ShutDown:
            raise QueueShutDown from None
        lease: Optional[_Lease] = None
        if self.auto_ack:
            with self._sync._leases_lock:
                mine = self._sync._held_by_thread.get(self._sync._owner())
                lease = mine[-1] if mine else None
        return self._delivered(item, lease)

    def _wake_getter(self) -> None:
        """Wake the first waiting getter, or the next one to wait."""
        channel = self._channels.find("put", self._sync.name)
        if channel is not None:
            channel.wake()

    def _delivered(self, item: T, lease: Optional[_Lease]) -> T:
        """An item leased for a caller that gets it: wake a putter (a slot is
        free) and the next getter (there may be more)."""
        self._freed += 1
        _wake_one(self._putters)
        self._wake_getter()
        if self.auto_ack and lease is not None:
            lease.settling = True
            with self._sync._leases_lock:
                self._sync._auto_unfinished += 1
            self._acknowledge(lease)
        return item

    # -- finishing -------------------------------------------------------------

    def task_done(self) -> None:
        """Indicate that an item got is done: the oldest unfinished item the
        calling task got (or this process's oldest) is acknowledged, on a
        storage thread; join() waits for it.  ValueError if this process has
        no unfinished item."""
        lease = self._sync._pick_finished()
        if lease is not None:
            self._acknowledge(lease)

    def _acknowledge(self, lease: _Lease) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside the loop: acknowledge here
            self._sync._acknowledge(lease)
            return
        # The acknowledgement ends on the storage thread, and wakes the loop
        # only if a join() waits for it: one cross-thread wake-up per
        # task_done() instead of two.
        future = self._offload.submit(self._sync._acknowledge, lease)
        with self._acks_lock:
            self._acks.add(future)
        future.add_done_callback(functools.partial(self._acknowledged, loop))

    def _acknowledged(self, loop: asyncio.AbstractEventLoop,
                      future: concurrent.futures.Future[None]) -> None:
        """On the storage thread (or here, if it ended already)."""
        try:
            if not future.cancelled() and future.exception() is not None:
                # Still held: the heartbeat keeps it; close() hands it back.
                logger.warning("task_done() of queue %r in %s: the acknowledgement "
                               "failed (%s); the item will be delivered again",
                               self._sync.name, self._sync.path, future.exception())
            channel = self._channels.find("done", self._sync.name)
            if channel is not None:  # a join() is under way
                with contextlib.suppress(RuntimeError):  # the loop was closed
                    loop.call_soon_threadsafe(channel.wake)
        finally:
            # Only now: whoever sees no acknowledgement under way finds its
            # wake-up already queued on the loop.
            with self._acks_lock:
                self._acks.discard(future)

    async def _acknowledgements(self) -> bool:
        """Wait for the acknowledgements under way; False if there were none."""
        with self._acks_lock:
            acks = [asyncio.wrap_future(future) for future in self._acks]
        if acks:
            self._offload.in_flight += 1  # until the caller goes on
            try:
                await asyncio.wait(acks)
            finally:
                self._offload.in_flight -= 1
        return bool(acks)

    async def join(self) -> None:
        """Wait until every item put by any process is got and done (or
        dead-lettered).  After ``shutdown(immediate=True)``, only until the
        items this process got are done."""
        with self._channels.held("done", self._sync.name) as channel:
            while True:
                seen = channel.version
                if await self._acknowledgements():
                    continue
                if self._sync._shutdown_immediate:
                    if not self._sync._unfinished_here():
                        return
                elif not await self._offload.run(self._sync._has_live):
                    return
                await channel.wait(seen)

    # -- shutting down and closing ------------------------------------------------

    def shutdown(self, immediate: bool = False) -> None:
        """Shut down the queue: puts raise QueueShutDown, and gets raise it
        once the queue is empty, or at once if ``immediate``.  Waiting
        callers are woken.  ``immediate`` keeps the stored items (see
        :meth:`PersistentQueue.shutdown`)."""
        self._sync.shutdown(immediate)
        for waiters in (self._getters, self._putters):
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)
        self._channels.wake()

    async def clear(self) -> int:
        """Delete every item not yet acknowledged; return how many."""
        return await self._offload.run(self._sync.clear)

    async def dead_letters(self, limit: Optional[int] = None) -> List[Message]:
        """The items that could not be delivered (see PersistentQueue)."""
        return await self._offload.run(self._sync.dead_letters, limit)

    async def redrive(self, ids: Optional[Iterable[Union[int, Message]]] = None) -> int:
        """Return dead letters to the queue; return how many."""
        return await self._offload.run(self._sync.redrive, ids)

    def close(self) -> None:
        """Stop watching for wake-ups, hand back the unfinished items and
        close the connections.  It waits for the storage thread: in a
        coroutine, prefer :meth:`aclose`."""
        self._channels.close()
        self._offload.submit(self._sync.close).result()
        self._sync.engine.close()  # the calling thread's connection (the _nowait methods')

    async def aclose(self) -> None:
        """close(), with the acknowledgements under way finished first and
        the storage calls off the loop."""
        await self._acknowledgements()
        self._channels.close()
        await self._offload.run(self._sync.close)
        self._sync.engine.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


# Attributes of the sync queue that the async one shows as its own.
_SHARED = frozenset({
    "path", "name", "visibility_timeout", "max_retries", "serializer",
    "timeout_seconds", "engine", "metrics", "is_shutdown", "key",
})


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class AsyncPersistentLifoQueue(AsyncPersistentQueue[T]):
    """An asyncio.LifoQueue whose items live in an SQLite file: the most
    recently put ready item comes first.  See :class:`AsyncPersistentQueue`."""

    _sync_class = _SyncLifoQueue


class AsyncPersistentPriorityQueue(AsyncPersistentQueue[T]):
    """An asyncio.PriorityQueue whose items live in an SQLite file: the
    lowest item first, ordered as :class:`PersistentPriorityQueue` orders
    them (``key=`` for items with no stored order).  See
    :class:`AsyncPersistentQueue`."""

    _sync_class = _SyncPriorityQueue

    if TYPE_CHECKING:
        key: Optional[Callable[[T], object]]  # the sync queue's, read through __getattr__

    def __init__(self, path: Location, maxsize: int = 0, *,
                 key: Optional[Callable[[T], object]] = None, **options: Any) -> None:
        super().__init__(path, maxsize, key=key, **options)


# -- LiteQueue ---------------------------------------------------------------------


class AsyncLiteQueue:
    """:class:`~persistqueue_liteq.LiteQueue` for async code: every
    operation is awaitable and runs on a storage thread; ``pop`` and
    ``pop_batch`` wait in the event loop, woken by the same wake-ups as
    synchronous consumers (no thread per waiter, no polling).

        async with AsyncLiteQueue("jobs.db") as q:
            await q.put(b"hello")
            async with q.consume() as msg:
                ...                        # acknowledged on success

    The arguments are LiteQueue's; ``sync`` is the LiteQueue underneath.
    A ``pop`` cancelled while its lease was being taken hands the message
    back at once (the delivery not counted).
    """

    def __init__(self, filename: Location = None, max_retries: int = 5,
                 timeout_seconds: float = 5, **options: Any) -> None:
        self._sync = LiteQueue(filename, max_retries, timeout_seconds, **options)
        self._channels = _Channels(self._sync.engine)
        self._offload = _Offloader()

    @property
    def sync(self) -> LiteQueue:
        return self._sync

    @property
    def filename(self) -> str:
        return self._sync.filename

    @property
    def max_retries(self) -> int:
        return self._sync.max_retries

    def __repr__(self) -> str:
        return "<%s %r>" % (type(self).__name__, self.filename)

    def _run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> Awaitable[R]:
        return self._offload.run(lambda: fn(*args, **kwargs))

    async def put(self, data: Payload, qname: str = "default", visible_after_seconds: float = 0,
                  *, ttl_seconds: Optional[float] = None) -> int:
        """LiteQueue.put, awaited: the id of the message stored."""
        return await self._run(self._sync.put, data, qname, visible_after_seconds,
                               ttl_seconds=ttl_seconds)

    async def put_batch(self, messages: Iterable[Payload], qname: str = "default",
                        visible_after_seconds: float = 0, *,
                        ttl_seconds: Optional[float] = None) -> List[int]:
        """LiteQueue.put_batch, awaited (all or none)."""
        if not isinstance(messages, (bytes, bytearray, str)):
            messages = list(messages)  # an iterable is consumed here, not on a thread
        return await self._run(self._sync.put_batch, messages, qname, visible_after_seconds,
                               ttl_seconds=ttl_seconds)

    async def pop(self, qname: str = "default", invisible_seconds: float = 60,
                  wait_seconds: Optional[float] = 0) -> Optional[Message]:
        """LiteQueue.pop, waiting in the loop: a message, or None if none
        came within ``wait_seconds``."""
        messages = await self.pop_batch(qname, 1, invisible_seconds, wait_seconds)
        return messages[0] if messages else None

    async def pop_batch(self, qname: str = "default", max_messages: int = 10,
                        invisible_seconds: float = 60,
                        wait_seconds: Optional[float] = 0) -> List[Message]:
        """LiteQueue.pop_batch, waiting in the loop up to ``wait_seconds``
        (None: for ever) for something to lease; [] if nothing came."""
        qname = _checks.queue_name(qname)
        wait = _checks.seconds(wait_seconds, "wait_seconds", allow_none=True)
        loop = self._channels.loop()
        deadline = None if wait is None else loop.time() + wait
        channel = self._channels.get("put", qname) if wait != 0 else None
        while True:
            seen = channel.version if channel is not None else 0
            messages, due = await self._offload.run(
                self._look, qname, max_messages, invisible_seconds, undo=self._give_back)
            remaining = None if deadline is None else deadline - loop.time()
            if messages or (remaining is not None and remaining <= 0):
                if messages and channel is not None:
                    channel.wake()  # there may be more: the next popper looks
                return messages
            if due is not None:
                remaining = due if remaining is None else min(remaining, due)
            await channel.wait(seen, remaining)  # type: ignore[union-attr]  # wait != 0 here

    def _look(self, qname: str, n: int, invisible_seconds: float) -> Looked:
        messages = self._sync.pop_batch(qname, n, invisible_seconds, 0)
        engine = self._sync.engine
        due = None if messages else _seconds_until(engine, engine.next_visible_at(qname))
        return messages, due

    def _give_back(self, looked: Looked) -> None:
        for msg in looked[0]:
            self._sync.engine.release(msg.id, msg.lease, attempted=False)

    async def ack(self, msg: Message) -> bool:
        """LiteQueue.ack, awaited."""
        return await self._run(self._sync.ack, msg)

    async def release(self, msg: Message, delay_seconds: float = 0) -> bool:
        """LiteQueue.release, awaited."""
        return await self._run(self._sync.release, msg, delay_seconds)

    async def process_failed(self, msg: Message, reason: object, *,
                             delay_seconds: float = 0) -> bool:
        """LiteQueue.process_failed, awaited: retried or dead-lettered."""
        return await self._run(self._sync.process_failed, msg, reason,
                               delay_seconds=delay_seconds)

    async def change_visibility(self, msg: Message, seconds: float) -> bool:
        return await self._run(self._sync.change_visibility, msg, seconds)

    async def delete(self, msg_id: MessageId) -> bool:
        return await self._run(self._sync.delete, msg_id)

    async def peek(self, qname: str = "default") -> Optional[Message]:
        return await self._run(self._sync.peek, qname)

    async def get(self, msg_id: MessageId) -> Optional[Message]:
        return await self._run(self._sync.get, msg_id)

    async def qsize(self, qname: str = "default") -> int:
        return await self._run(self._sync.qsize, qname)

    async def empty(self, qname: str = "default") -> bool:
        return await self._run(self._sync.empty, qname)

    async def queues(self) -> List[QueueStats]:
        return await self._run(self._sync.queues)

    async def dead_letters(self, qname: str = "default",
                           limit: Optional[int] = None) -> List[Message]:
        return await self._run(self._sync.dead_letters, qname, limit)

    async def redrive(self, qname: str = "default",
                      ids: Optional[Iterable[MessageId]] = None) -> int:
        return await self._run(self._sync.redrive, qname, ids)

    async def clear(self, qname: str = "default", dlq: bool = False) -> int:
        return await self._run(self._sync.clear, qname, dlq)

    async def join(self, qname: str = "default", timeout: Optional[float] = None) -> bool:
        """Wait until every message of ``qname`` is acknowledged or dead;
        False if ``timeout`` seconds passed first."""
        qname = _checks.queue_name(qname)
        timeout = _checks.seconds(timeout, "timeout", allow_none=True)
        loop = self._channels.loop()
        deadline = None if timeout is None else loop.time() + timeout
        with self._channels.held("done", qname) as channel:
            while True:
                seen = channel.version
                if not await self._run(self._sync.engine.has_live, qname):
                    return True
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    return False
                await channel.wait(seen, remaining)

    @contextlib.asynccontextmanager
    async def consume(self, qname: str = "default", invisible_on_receive: float = 60,
                      wait_seconds: Optional[float] = 20) -> AsyncIterator[Optional[Message]]:
        """LiteQueue.consume for ``async with``: the message (or None if none
        came) is acknowledged when the block succeeds; an exception records
        the failure (retried or dead-lettered) and propagates; a
        cancellation hands the message back for another consumer."""
        msg = await self.pop(qname, invisible_on_receive, wait_seconds)
        if msg is None:
            yield None
            return
        try:
            yield msg
        except Exception as exc:
            await self._run(self._sync.process_failed, msg, describe_exception(exc))
            raise
        except BaseException:
            # Cancelled (or exiting): hand it back, even if cancelled again.
            await asyncio.shield(self._run(self._sync.engine.release, msg.id, msg.lease))
            raise
        await self._run(self._sync.engine.ack, msg.id, msg.lease)

    async def listen(self, qname: str = "default", invisible_seconds: float = 60,
                     max_messages: int = 1) -> AsyncIterator[Message]:
        """Iterate over the messages of ``qname`` as they come, for ever:
        ``async for msg in q.listen("jobs"): ...; await q.ack(msg)``."""
        while True:
            for msg in await self.pop_batch(qname, max_messages, invisible_seconds, None):
                yield msg

    def __aiter__(self) -> AsyncIterator[Message]:
        """``async for msg in q``: :meth:`listen` on the default queue."""
        return self.listen()

    def close(self) -> None:
        """Stop watching for wake-ups and close the connections (it waits
        for the storage thread: in a coroutine, prefer :meth:`aclose`)."""
        self._channels.close()
        self._offload.submit(self._sync.close).result()
        self._sync.engine.close()  # the connection that opened the file

    async def aclose(self) -> None:
        self._channels.close()
        await self._run(self._sync.close)
        self._sync.engine.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
