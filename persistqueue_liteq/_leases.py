"""The lease book of a persistent queue: which items this process got and
has not finished, who (thread or task) got each, and the heartbeat thread
that keeps their leases alive.

:class:`_LeaseBook` is mixed into :class:`~persistqueue_liteq._queue_base._QueueBase`
(its state is reset in a forked child, see ``_reset_process_state``); the
asyncio front end's ``_TaskLeases`` overrides ``_owner`` and
``_extend_leases``.
"""

from __future__ import annotations

import collections
import os
import threading
import warnings
import weakref
from typing import TYPE_CHECKING, Deque, Dict, Hashable, Optional

from .exceptions import DatabaseBusy

if TYPE_CHECKING:
    from .engine import Engine, Message


class _Lease:
    """A lease this process holds on an item that a thread of it got."""

    __slots__ = ("id", "token", "thread", "lost", "settling")

    id: int
    token: int
    #: Who got it: a thread's ident (the asyncio front end's: the task).
    thread: Hashable
    lost: bool
    settling: bool

    def __init__(self, msg_id: int, token: int, thread: Hashable) -> None:
        self.id = msg_id
        self.token = token
        self.thread = thread
        self.lost = False  # the heartbeat found it gone (another took the item)
        self.settling = False  # a task_done() is acknowledging it


def _heartbeat(queue_ref: weakref.ref[_LeaseBook], stop: threading.Event,
               interval: float) -> None:
    """Body of the heartbeat thread: extend every held lease each interval.

    It holds the queue only through a weak reference, so that a queue that is
    dropped without close() is collected (its leases then run out).
    """
    while not stop.wait(interval):
        q = queue_ref()
        if q is None:
            return
        try:
            q._extend_leases()
        except DatabaseBusy:
            pass  # the leases still have 2/3 of their time: try at the next beat
        except Exception:
            if stop.is_set():
                return  # closed while we were extending
            raise
        finally:
            q = None


class _LeaseBook:
    """The leases this process holds, the heartbeat that renews them, and
    the task_done() that settles them (see :class:`_Lease`)."""

    # Set by the queue (see _QueueBase._configure and _open_engine).
    _engine: Engine
    name: str
    path: str
    visibility_timeout: float

    def _reset_process_state(self) -> None:
        """Forget what this process holds: called at creation and, in a forked
        child, at once after the fork (the parent's leases stay the parent's)."""
        # _leases_lock guards _held, _held_by_thread, _auto_unfinished and
        # _heartbeat.  It is held only for this bookkeeping: never while
        # calling the engine, user code, or waiting.
        self._leases_lock = threading.Lock()
        # token -> _Lease, oldest first: the items got and not yet done.
        self._held: Dict[int, _Lease] = {}
        # thread ident -> deque of its _Leases, oldest first.
        self._held_by_thread: Dict[Hashable, Deque[_Lease]] = {}
        # Items got with auto_ack and not yet task_done(): only counted.
        self._auto_unfinished = 0
        self._heartbeat: Optional[threading.Thread] = None
        self._heartbeat_stop = threading.Event()

    def _owner(self) -> Hashable:
        """Who holds the leases got now: the calling thread (the asyncio
        front end says the task)."""
        return threading.get_ident()

    def _hold(self, msg: Message) -> None:
        lease = _Lease(msg.id, msg.lease, self._owner())  # type: ignore[arg-type]  # leased
        with self._leases_lock:
            self._held[lease.token] = lease
            mine = self._held_by_thread.get(lease.thread)
            if mine is None:
                mine = self._held_by_thread[lease.thread] = collections.deque()
            mine.append(lease)
            if self._heartbeat is None:
                self._start_heartbeat()

    def _start_heartbeat(self) -> None:
        stop = self._heartbeat_stop
        thread = threading.Thread(
            target=_heartbeat,
            args=(weakref.ref(self), stop, self.visibility_timeout / 3),
            name="persistqueue_liteq heartbeat %s:%s" % (os.path.basename(self.path), self.name),
            daemon=True,
        )
        thread.start()
        self._heartbeat = thread
        weakref.finalize(self, stop.set)

    def _extend_leases(self) -> None:
        """One heartbeat: push back the end of every lease held."""
        with self._leases_lock:
            leases = [lease for lease in self._held.values() if not lease.lost]
        for lease in leases:
            if not self._engine.set_visibility(lease.id, lease.token, self.visibility_timeout):
                lease.lost = True

    def _unfinished_here(self) -> int:
        """Items got by this process and not yet task_done()."""
        return len(self._held) + self._auto_unfinished

    def _finish_one(self) -> None:
        """Acknowledge the oldest item the calling thread got and has not
        done, or else this process's oldest; ValueError if there is none."""
        lease = self._pick_finished()
        if lease is not None:
            self._acknowledge(lease)

    def _pick_finished(self) -> Optional[_Lease]:
        """The lease that a task_done() settles, marked as settling; None
        for an item got with auto_ack (only counted)."""
        with self._leases_lock:
            lease = self._oldest_held()
            if lease is None:
                if not self._auto_unfinished:
                    raise ValueError('task_done() called too many times')
                self._auto_unfinished -= 1
                return None
            lease.settling = True
            return lease

    def _acknowledge(self, lease: _Lease) -> None:
        """Acknowledge a lease that _pick_finished() gave, and forget it."""
        try:
            acknowledged = self._engine.ack(lease.id, lease.token, self.name)
        except BaseException:
            lease.settling = False  # still held: task_done() may be called again
            raise
        with self._leases_lock:
            self._forget(lease)
        if not acknowledged and self._engine.get(lease.id) is not None:
            warnings.warn(
                "task_done(): the lease on item %d of queue %r in %s had run out "
                "before it was acknowledged (this process stalled for longer than "
                "visibility_timeout=%g s?); the item may be delivered again"
                % (lease.id, self.name, self.path, self.visibility_timeout),
                RuntimeWarning, stacklevel=4,
            )

    def _oldest_held(self) -> Optional[_Lease]:
        for lease in self._held_by_thread.get(self._owner(), ()):
            if not lease.settling:
                return lease
        for lease in self._held.values():
            if not lease.settling:
                return lease
        return None

    def _forget(self, lease: _Lease) -> None:
        del self._held[lease.token]
        mine = self._held_by_thread[lease.thread]
        mine.remove(lease)
        if not mine:
            del self._held_by_thread[lease.thread]
