"""The synchronous queues inside the asyncio.Queue drop-ins, and their group commit.

The sync queue of an :class:`~persistqueue_liteq.aio.AsyncPersistentQueue`
(``aio._SyncQueue`` and its Lifo and Priority variants) is a
:class:`~persistqueue_liteq.PersistentQueue` with :class:`_TaskLeases` mixed
in: its leases are held by asyncio tasks, and it has what runs on a storage
thread (a get's look, handing back what a cancelled get leased, a group's
commit).
:class:`_PutGroups` gathers the puts awaited meanwhile into that next commit.
Used by :mod:`persistqueue_liteq.aio`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from queue import Empty, Full
from typing import TYPE_CHECKING, Any, Callable, Optional

from .exceptions import CodecMismatch
from ._policy import seconds_until
from .queues import PersistentQueue, ShutDown
from ._aio_offload import _Offloader, _uncancellable

if TYPE_CHECKING:
    from typing import Hashable, List, Tuple

    from .engine import Engine
    from ._leases import _Lease

    #: A put waiting for its group's commit: (item, outcome, over).
    PendingPut = Tuple[object, asyncio.Future[None], asyncio.Future[None]]
    #: What a look of a get leased: (item, its lease; None with auto_ack).
    Taken = Tuple[Any, Optional[_Lease]]


def _seconds_until(engine: Engine, due: Optional[float]) -> Optional[float]:
    """_policy.seconds_until, but None (wait for a wake-up) if nothing is
    due.  The one place the asyncio front ends read the engine's clock."""
    return None if due is None else seconds_until(engine, due)


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
