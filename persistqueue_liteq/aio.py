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

This module holds the public classes; their machinery is in private
modules: ``_aio_offload`` (the storage threads, running a call off the
loop), ``_aio_channels`` (waiters and the wake-up channels watched by the
loop), ``_aio_sync`` (what the sync queues inside the asyncio.Queue
drop-ins do differently: per-task leases, the group commit) and
``_aio_acks`` (task_done's acknowledgements on the storage thread).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import math
import threading
from queue import Empty, Full
from types import GenericAlias
from typing import TYPE_CHECKING, Any, Callable, Generic, Optional, TypeVar

from . import _checks
from ._policy import describe_exception
from .liteq import LiteQueue
from .queues import (PersistentLifoQueue, PersistentPriorityQueue, PersistentQueue, ShutDown,
                     _FULL_RECHECK)
from ._aio_channels import _Channels, _wait_turn, _wake_one
from ._aio_offload import _Offloader
from ._aio_acks import _Acknowledging
from ._aio_sync import _PutGroups, _seconds_until, _TaskLeases

if TYPE_CHECKING:
    import sys
    from typing import (AsyncIterator, Awaitable, ClassVar, Dict, Iterable, List, ParamSpec,
                        Self, Set, Tuple, Type, Union)

    from .backends import Location
    from .engine import Engine, Message, QueueStats
    from .liteq import MessageId, Payload
    from ._leases import _Lease
    from .serializers import Serializer
    from ._aio_channels import Waiters

    R = TypeVar("R")
    P = ParamSpec("P")
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

#: Threads per process that run the storage calls of every async queue.  Each
#: queue object uses one of them (chosen when it is made), so that its calls
#: run in the order made (they would take turns on the sync queue's lock
#: anyway); queues on different threads run in parallel.  Read when a queue
#: is made and when the threads are first started in a process.
STORAGE_THREADS = 4

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


# -- the asyncio.Queue drop-ins -------------------------------------------------


# The sync queues inside them (their objects pickle as persistqueue_liteq.aio's).
class _SyncQueue(_TaskLeases, PersistentQueue[Any]):
    pass


class _SyncLifoQueue(_TaskLeases, PersistentLifoQueue[Any]):
    pass


class _SyncPriorityQueue(_TaskLeases, PersistentPriorityQueue[Any]):
    pass


class AsyncPersistentQueue(_Acknowledging, Generic[T]):
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
        self._offload = _Offloader(STORAGE_THREADS)
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
        self._offload = _Offloader(STORAGE_THREADS)

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
        await self._run(self._sync.engine.ack, msg.id, msg.lease, msg.queue_name)

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
