"""Drop-ins for queue.Queue, LifoQueue, PriorityQueue and SimpleQueue (and
multiprocessing's Queue and JoinableQueue) whose items survive a crash.

Change one line and every item of a threaded or multi-process program is kept
in an SQLite file until it is done::

    q = queue.Queue()                        # before
    q = PersistentQueue("jobs.db")           # after

    >>> import os, tempfile
    >>> q = PersistentQueue(os.path.join(tempfile.mkdtemp(), "jobs.db"))
    >>> q.put({"job": 1})
    >>> q.get()
    {'job': 1}
    >>> q.task_done()
    >>> q.join()
    >>> q.close()

What differs from the standard library is what persistence needs, and is
documented on :class:`PersistentQueue`: ``get`` leases an item and
``task_done`` acknowledges it; counts, ``join`` and ``empty`` look at the
file, so they hold across processes; ``shutdown(immediate=True)`` keeps the
stored items (``clear()`` discards them).

Data flow (one file, any number of threads and processes; the tables are the
engine's, see :mod:`.sqlite.engine`)::

    put(item)                                  get()
      _put: serializer.dumps                     _get: engine.lease: the next
      engine.put: INSERT  ---> messages --->       ready row, hidden for
        (+ HMAC of queue, id and payload,          visibility_timeout
        once the id is chosen)                     HMAC checked, then
      engine wakes "put" waiters ------------>     serializer.loads; a payload
                                                   that fails goes to the dead
                                                   letters and _get moves on
      first put: engine.claim_codec ->  meta  <- first get: engine.codec_of;
        (serializer, key check)                    another codec: CodecMismatch,
                                                   nothing leased or dead-lettered
      waits while full: not_full                 heartbeat thread: every
      (this process's gets notify it),             visibility_timeout/3,
      re-counting every _FULL_RECHECK s            engine.set_visibility on
      (other processes' gets send none)            every lease held
                                               task_done()
    join(): waits on "done" wake-ups  <-------   engine.ack: DELETE, wakes
      until no live row of the queue             "done" waiters

A consumer that dies stops its heartbeat: its leases run out and its items are
delivered again, each delivery counted as an attempt, until after
``1 + max_retries`` deliveries the next goes to the dead-letter queue.
"""

from __future__ import annotations

import collections
import numbers
import threading
import time
from queue import Empty, Full
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, TypeVar

from ._queue_base import _RELOOK, _deadline, _QueueBase
from .serializers import order_key
from .engine import DEFAULT_PREFIX

if TYPE_CHECKING:
    import sys

    from .backends import Location
    from .serializers import BytesLike, SerializerArg

    # What the try below makes, as type checkers see it.
    if sys.version_info >= (3, 13):
        from queue import ShutDown as ShutDown
    else:
        class ShutDown(Exception):
            """Python 3.13's ``queue.ShutDown``, for the Pythons before it."""
else:
    try:
        from queue import ShutDown
    except ImportError:  # Python < 3.13

        class ShutDown(Exception):
            """Raised by ``put`` and ``get`` of a queue that was shut down:
            Python 3.13's ``queue.ShutDown``, for the Pythons before it (on 3.13
            and later this name *is* ``queue.ShutDown``)."""


__all__ = [
    "PersistentQueue",
    "PersistentLifoQueue",
    "PersistentPriorityQueue",
    "PersistentSimpleQueue",
    "ShutDown",
]

T = TypeVar("T")

#: How often a put() blocked on a full queue counts again: a get() of another
#: process frees a slot without any wake-up (see the module's data flow).
_FULL_RECHECK = 0.05


def _check_maxsize(maxsize: object) -> int:
    if isinstance(maxsize, bool) or not isinstance(maxsize, numbers.Integral):
        raise TypeError("maxsize must be an int (0 or less: unbounded), not %r" % (maxsize,))
    return int(maxsize)


class PersistentQueue(_QueueBase[T]):
    """A FIFO queue.Queue (and multiprocessing.JoinableQueue) whose items live
    in an SQLite file until they are done.

    Args:
        path: the SQLite file (created if missing; its directory must exist),
            a URL (``sqlite:///jobs.db``), an engine already open or its
            EngineSpec (see :mod:`.backends`; with an engine, no other
            storage option may be given).
            Any number of threads and processes may open it at once.
        maxsize: as queue.Queue: ``put`` blocks while ``qsize() >= maxsize``
            (counted across processes); 0 or less is unbounded.
        name: the queue's name; several queues can share a file.
        visibility_timeout: seconds for which a got item is hidden from other
            consumers.  While this process lives its leases are renewed every
            visibility_timeout/3, however long the work takes; after it dies
            its unfinished items are delivered again this long after its last
            renewal.
        max_retries: deliveries allowed after the first; an item not done after
            ``1 + max_retries`` deliveries goes to the dead-letter queue
            (:meth:`dead_letters`, :meth:`redrive`).
        serializer: pickle (default), "json", "bytes", or any object with
            ``dumps``/``loads``.  Unpickling a file from an untrusted source
            runs code chosen by its author: see ``hmac_key``.
        hmac_key: bytes; every payload is signed with HMAC-SHA256, bound to
            the queue and the message's id, and a payload that fails the
            check (written without the key, altered, copied or moved) is
            never deserialized: it goes to the dead letters.  The queue
            records its serializer and a check value of its key (never the
            key) at its first put; a queue object with another serializer or
            key raises CodecMismatch at its first put or get, storing,
            leasing and dead-lettering nothing.  An empty queue takes the
            codec of its next writer (how a key is changed).
        auto_ack: acknowledge each item when ``get`` returns it (at most once
            delivery), for code that never calls ``task_done``.
        timeout_seconds: how long to wait for another connection's lock before
            raising :class:`~persistqueue_liteq.DatabaseBusy`.
        synchronous: "NORMAL" (survives any crash of the process) or "FULL"
            (also a power loss).
        table_prefix: prefix of the tables, to share an application's database.
        journal_mode: None (default) puts the file in WAL mode but refuses
            to switch an application's database (tables that are not ours)
            from another mode; "wal" switches it; "keep" keeps its mode.

    How it differs from queue.Queue, as persistence requires:

    * ``get`` leases the item and ``task_done`` acknowledges (deletes) it.
      ``task_done`` acknowledges the oldest unfinished item that the calling
      thread got; from a thread that got none, the process's oldest.  An item
      got and never done is delivered again after the process ends (or at
      once after :meth:`close`), each delivery counted as an attempt; it
      queues again as if put at that moment.  Code that never calls
      ``task_done`` (written for multiprocessing.Queue, say) should pass
      ``auto_ack=True``, or every item it got comes back after it exits.
    * ``qsize``, ``empty``, ``full`` and ``join`` read the file, so they hold
      across processes: ``qsize`` counts the items stored and not being worked
      on, and ``join`` returns when every item put by any process is done (or
      dead-lettered).  ``unfinished_tasks`` is read from the file too.
    * ``shutdown(immediate=True)`` makes this object's getters raise at once
      but keeps the stored items, for the next run; :meth:`clear` discards
      them.  After it, ``join`` waits only for the items this process got.
      Shutting down is this object's state: it is not stored in the file.
    * There is no ``queue`` attribute; a subclass customises storage through
      ``_init``, ``_qsize``, ``_put`` and ``_get`` as with queue.Queue, where
      ``_get`` raises queue.Empty when nothing is ready to lease.
    * It pickles (path and options), so it can be passed to
      multiprocessing.Process, Pool initializers and concurrent.futures
      workers under any start method; after a fork, the child holds none of
      the parent's leases.  ``close``, ``join_thread`` and
      ``cancel_join_thread`` are those of multiprocessing.Queue.
    """

    def __init__(
        self,
        path: Location,
        maxsize: int = 0,
        *,
        name: str = "default",
        visibility_timeout: float = 60.0,
        max_retries: int = 5,
        serializer: SerializerArg = None,
        hmac_key: Optional[BytesLike] = None,
        auto_ack: bool = False,
        timeout_seconds: float = 5,
        synchronous: str = "NORMAL",
        table_prefix: str = DEFAULT_PREFIX,
        journal_mode: Optional[str] = None,
    ) -> None:
        self._journal_mode = journal_mode
        self._configure(path, name, visibility_timeout, max_retries, serializer,
                        hmac_key, auto_ack, timeout_seconds, synchronous, table_prefix)
        self.maxsize = _check_maxsize(maxsize)
        self._init(maxsize)
        # Queue shutdown state: is_shutdown as in queue.Queue; immediate keeps
        # the items but makes gets raise at once.
        self.is_shutdown = False
        self._shutdown_immediate = False

    def _reset_process_state(self) -> None:
        super()._reset_process_state()
        # mutex must be held whenever the queue is mutating, as in
        # queue.Queue: around _put, _get and _qsize, and around every other
        # statement this object runs (so that close() never cuts one short);
        # never while sleeping.  It is shared by the three conditions.  Only
        # this process's threads wait on those: not_empty is notified for
        # compatibility (a blocked get sleeps on the engine's wake-ups, which
        # also come from other processes), not_full wakes putters blocked on a
        # full queue, all_tasks_done wakes join() after shutdown(immediate=True).
        self.mutex = threading.Lock()
        self.not_empty = threading.Condition(self.mutex)
        self.not_full = threading.Condition(self.mutex)
        self.all_tasks_done = threading.Condition(self.mutex)
        self._statement_lock = self.mutex

    def __setstate__(self, state: Dict[str, Any]) -> None:
        PersistentQueue.__init__(self, **state)

    def __getstate__(self) -> Dict[str, Any]:
        return dict(super().__getstate__(), maxsize=self.maxsize)

    def __repr__(self) -> str:
        return "<%s %r name=%r maxsize=%d>" % (type(self).__name__, self.path, self.name,
                                               self.maxsize)

    @property
    def unfinished_tasks(self) -> int:
        """Items put by any process and not yet done (nor dead-lettered)."""
        with self.mutex:
            return self._engine.count(self.name, "live")

    def task_done(self) -> None:
        """Indicate that an item got from this queue is done: acknowledge it.

        It is the oldest unfinished item the calling thread got, or, from a
        thread that got none, the oldest this process got.  Raises
        ValueError('task_done() called too many times') if this process has
        no unfinished item.
        """
        with self.all_tasks_done:
            self._finish_one()
            if not self._unfinished_here():
                self.all_tasks_done.notify_all()

    def join(self) -> None:
        """Block until every item put by any process has been got and done
        (or dead-lettered).  Returns as soon as the last one is acknowledged.

        After ``shutdown(immediate=True)`` it waits only until every item that
        this process got is done, as the items still stored count as done for
        this object (queue.Queue discards them).
        """
        with self._engine.waiter("done", self.name) as waiter:
            while not self._shutdown_immediate:
                with self.mutex:
                    if not self._engine.has_live(self.name):
                        return
                waiter.wait(_RELOOK)  # shutdown() wakes it too
        with self.all_tasks_done:
            while self._unfinished_here():
                self.all_tasks_done.wait()

    def qsize(self) -> int:
        """The number of items stored and not being worked on, counted in the
        file: across processes."""
        with self.mutex:
            return self._qsize()

    def empty(self) -> bool:
        """True if no item is waiting to be got (across processes)."""
        with self.mutex:
            return not self._qsize()

    def full(self) -> bool:
        """True if ``qsize() >= maxsize > 0``."""
        with self.mutex:
            return 0 < self.maxsize <= self._qsize()

    def put(self, item: T, block: bool = True, timeout: Optional[float] = None) -> None:
        """Put an item into the queue: it is committed to the file when this
        returns.

        If 'block' is true and 'timeout' is None (the default), block if
        necessary until a free slot is available.  If 'timeout' is a
        non-negative number, block at most 'timeout' seconds and raise
        queue.Full if no slot was free in that time.  Otherwise ('block' is
        false), raise queue.Full at once if the queue is full.

        Raises ShutDown if the queue has been shut down, and whatever the
        serializer raises for an item it cannot serialize (nothing is stored).
        """
        with self.not_full:
            if self.is_shutdown:
                raise ShutDown
            if self.maxsize > 0:
                if not block:
                    if self._qsize() >= self.maxsize:
                        raise Full
                elif timeout is None:
                    while self._qsize() >= self.maxsize:
                        self.not_full.wait(_FULL_RECHECK)
                        if self.is_shutdown:
                            raise ShutDown
                elif timeout < 0:
                    raise ValueError("'timeout' must be a non-negative number")
                else:
                    endtime = time.monotonic() + timeout
                    while self._qsize() >= self.maxsize:
                        remaining = endtime - time.monotonic()
                        if remaining <= 0.0:
                            raise Full
                        self.not_full.wait(min(remaining, _FULL_RECHECK))
                        if self.is_shutdown:
                            raise ShutDown
            self._put(item)
            self.not_empty.notify()

    def get(self, block: bool = True, timeout: Optional[float] = None) -> T:
        """Remove and return an item from the queue: lease it until
        task_done() (or, with auto_ack, acknowledge it now).

        If 'block' is true and 'timeout' is None (the default), block if
        necessary until an item is available, put by any thread or process.
        If 'timeout' is a non-negative number, block at most 'timeout' seconds
        and raise queue.Empty if no item came in that time.  Otherwise
        ('block' is false), raise queue.Empty at once if none is ready.

        Raises ShutDown if the queue has been shut down and is empty, or
        shut down immediately.
        """
        return self._wait_for(self._get_ready, block, _deadline(block, timeout))

    def _get_ready(self) -> T:
        """One look: an item, or queue.Empty, or ShutDown."""
        with self.not_empty:
            if self._shutdown_immediate:
                raise ShutDown
            try:
                item = self._get()
            except Empty:
                if self.is_shutdown and not self._qsize():
                    raise ShutDown from None
                raise
            self.not_full.notify()
            return item

    def put_nowait(self, item: T) -> None:
        """Put an item into the queue without blocking; queue.Full if full."""
        return self.put(item, block=False)

    def get_nowait(self) -> T:
        """Remove and return an item if one is ready; else queue.Empty."""
        return self.get(block=False)

    def shutdown(self, immediate: bool = False) -> None:
        """Shut down this queue object: its puts raise ShutDown, and its gets
        raise ShutDown once the queue is empty, or at once if 'immediate'.

        Blocked callers of put() and get() are released.  Unlike queue.Queue,
        'immediate' does not discard the stored items: they stay for the next
        run (call :meth:`clear` to discard them); join() then waits only for
        the items this process got.
        """
        with self.mutex:
            self.is_shutdown = True
            if immediate:
                self._shutdown_immediate = True
                self.all_tasks_done.notify_all()
            self.not_empty.notify_all()
            self.not_full.notify_all()
        # Getters and joiners sleep on the engine's wake-ups, not on these
        # conditions: wake them there too (other processes' look once, idly).
        self._engine.wake("put", self.name)
        self._engine.wake("done", self.name)

    def close(self) -> None:
        super().close()
        with self.all_tasks_done:  # a join() after shutdown(immediate=True)
            self.all_tasks_done.notify_all()

    close.__doc__ = _QueueBase.close.__doc__

    # Override these methods to implement other queue organizations, as with
    # queue.Queue.  They are called with the mutex held.

    def _init(self, maxsize: int) -> None:
        self._open_engine()

    def _qsize(self) -> int:
        return self._waiting_count()

    def _put(self, item: T) -> None:
        self._store(item)

    def _get(self) -> T:
        return self._take()


class PersistentLifoQueue(PersistentQueue[T]):
    """A queue.LifoQueue whose items live in an SQLite file: the most recently
    put item that is ready comes first.  See :class:`PersistentQueue`."""

    _order = "lifo"


class PersistentPriorityQueue(PersistentQueue[T]):
    """A queue.PriorityQueue whose items live in an SQLite file: the lowest
    item comes first, between equal ones the earliest put.

    Items are ordered as Python orders them, through a key stored with each:
    numbers (int, float, bool, mixed, of any size; ints compare exactly), str,
    bytes, tuples and lists of these, and ``@dataclass(order=True)`` items
    (the ``queue`` module's recipe, ``PrioritizedItem(priority, item)`` with
    ``item`` a ``field(compare=False)``), ordered as the tuple of their
    compared fields, as the class itself compares them.  A tuple such as
    ``(priority, task)`` whose later element has no stored order (``task`` is
    some object) is ordered by the part before it, and equal parts by arrival,
    so that tasks need not be comparable.  Anything else raises TypeError at
    ``put``: pass ``key=``, a function that maps an item to an orderable
    value, e.g. ``key=lambda task: task.priority``.  (It must be a module-level
    function for the queue to be passed to a spawned process.)

    Other arguments are those of :class:`PersistentQueue`.

        >>> import os, tempfile
        >>> q = PersistentPriorityQueue(os.path.join(tempfile.mkdtemp(), "p.db"))
        >>> for item in [(2, "b"), (1.5, object), (1, "a"), (10 ** 20, "z")]:
        ...     q.put(item)
        >>> [q.get()[0] for _ in range(4)]
        [1, 1.5, 2, 100000000000000000000]
        >>> q.close()
    """

    _order = "priority"

    def __init__(self, path: Location, maxsize: int = 0, *,
                 key: Optional[Callable[[T], object]] = None, **options: Any) -> None:
        if key is not None and not callable(key):
            raise TypeError("key must be a function of an item, not %r" % (key,))
        self.key = key
        super().__init__(path, maxsize, **options)

    def __setstate__(self, state: Dict[str, Any]) -> None:
        PersistentPriorityQueue.__init__(self, **state)

    def _init(self, maxsize: int) -> None:
        super()._init(maxsize)

    def __getstate__(self) -> Dict[str, Any]:
        return dict(super().__getstate__(), key=self.key)

    def _put(self, item: T) -> None:
        self._store(item, priority=self._order_key(item))

    def _order_key(self, item: T) -> bytes:
        if self.key is None:
            return order_key(item)
        value = self.key(item)
        try:
            return order_key(value)
        except TypeError:
            raise TypeError(
                "key(%r) returned %r, which has no stored order: key must return a "
                "number (int, float, bool), str, bytes or a tuple of them"
                % (item, value)
            ) from None


class PersistentSimpleQueue(_QueueBase[T]):
    """A queue.SimpleQueue (and multiprocessing.SimpleQueue) whose items live
    in an SQLite file: unbounded, FIFO, no task tracking.

    As SimpleQueue has no task_done(), ``auto_ack`` defaults to True here:
    an item is acknowledged when ``get`` returns it, so it is delivered at
    most once, and one that a crash interrupts is lost.  With
    ``auto_ack=False`` items are leased as by :class:`PersistentQueue` and
    :meth:`task_done` acknowledges them.

    ``put`` may be called from a ``__del__`` or a signal handler while
    another put of the same thread is under way (as with queue.SimpleQueue).
    Other arguments are those of :class:`PersistentQueue`.
    """

    def __init__(
        self,
        path: Location,
        *,
        name: str = "default",
        visibility_timeout: float = 60.0,
        max_retries: int = 5,
        serializer: SerializerArg = None,
        hmac_key: Optional[BytesLike] = None,
        auto_ack: bool = True,
        timeout_seconds: float = 5,
        synchronous: str = "NORMAL",
        table_prefix: str = DEFAULT_PREFIX,
        journal_mode: Optional[str] = None,
    ) -> None:
        self._journal_mode = journal_mode
        self._configure(path, name, visibility_timeout, max_retries, serializer,
                        hmac_key, auto_ack, timeout_seconds, synchronous, table_prefix)
        self._open_engine()

    def _reset_process_state(self) -> None:
        super()._reset_process_state()
        # _lock is held around each statement that this object's threads run
        # (never while waiting): SQLite lets one writer at a time use the file
        # anyway, and taking turns here is cheaper than contending for the
        # file's lock.  It is reentrant, so that a put() from a __del__ or a
        # signal handler, in the middle of a put() of the same thread, goes
        # through.
        self._lock = self._statement_lock = threading.RLock()
        # Per thread: the items of the put() under way and of the puts that
        # reentered it, in call order (None: no put under way).
        self._putting = threading.local()

    def __setstate__(self, state: Dict[str, Any]) -> None:
        PersistentSimpleQueue.__init__(self, **state)

    def put(self, item: T, block: bool = True, timeout: Optional[float] = None) -> None:
        """Put the item on the queue (committed when this returns).  'block'
        and 'timeout' are ignored, as this never blocks.

        Reentrant, as the stdlib's SimpleQueue is: a put() from a __del__ or
        a signal handler that runs in the middle of a put() of the same
        thread is stored right after the item of the put it interrupted, so
        items keep the order of the calls (a put does enough work for the
        garbage collector to run inside it).  Should such an item not
        serialize, the interrupted put raises its error, after storing the
        others."""
        putting = self._putting
        pending = getattr(putting, "pending", None)
        if pending is not None:  # reentered: the put below us stores it next
            pending.append(item)
            return
        putting.pending = pending = collections.deque([item])
        error: Optional[Exception] = None
        try:
            with self._lock:
                while pending:
                    try:
                        self._store(pending[0])
                    except Exception as exc:  # the others are stored all the same
                        error = exc if error is None else error
                    pending.popleft()
        finally:
            putting.pending = None
        if error is not None:
            raise error

    def put_nowait(self, item: T) -> None:
        """The same as put(item)."""
        return self.put(item, block=False)

    def get(self, block: bool = True, timeout: Optional[float] = None) -> T:
        """Remove and return an item from the queue.

        If 'block' is true and 'timeout' is None (the default), block until an
        item is available, put by any thread or process.  If 'timeout' is a
        non-negative number, block at most 'timeout' seconds and raise
        queue.Empty if no item came.  Otherwise raise queue.Empty at once if
        none is ready.
        """
        return self._wait_for(self._take_one, block, _deadline(block, timeout))

    def _take_one(self) -> T:
        with self._lock:
            return self._take()

    def get_nowait(self) -> T:
        """Remove and return an item if one is ready; else queue.Empty."""
        return self.get(block=False)

    def empty(self) -> bool:
        """True if no item is waiting to be got (across processes)."""
        return not self.qsize()

    def qsize(self) -> int:
        """The number of items stored and not being worked on."""
        with self._lock:
            return self._waiting_count()

    def task_done(self) -> None:
        """With ``auto_ack=False``: acknowledge the oldest unfinished item the
        calling thread got (else this process's oldest), as
        :meth:`PersistentQueue.task_done` does."""
        with self._lock:
            self._finish_one()
