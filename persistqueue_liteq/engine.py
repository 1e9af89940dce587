"""The engine interface: what every storage backend provides.

Front ends (:class:`~persistqueue_liteq.LiteQueue`, the queue.Queue family and
the pools) check their arguments, serialize, and call these methods; they
never see SQL or connections.  :class:`~persistqueue_liteq.sqlite.engine.
SQLiteEngine` is the implementation on one SQLite file; a PostgreSQL engine
implements the same methods.

Vocabulary.  A *message* belongs to a named *queue* and is, at any moment,
ready, delayed, in flight (leased) or dead (in the dead-letter queue).  A
*lease* hides a message from other consumers until it runs out; it carries a
token, so only its holder can acknowledge, extend or release it.  Every lease
counts as one *attempt* (delivery).

Times (``visible_at``, ``created_at``, ``expires_at``, ...) are seconds on the
engine's clock, :meth:`Engine.now`: a clock that every process using the
database agrees on.  It reads like the wall clock (seconds since the epoch)
but need not follow it: the SQLite engine's clock is not moved by steps of
the wall clock (see :mod:`.sqlite.engine`).  Compare stored times only with
``engine.now()``, and show them to people through ``engine.wall_time()``.

Upkeep of the storage (copying a write-ahead log back, giving free space
back, checking integrity) is optional: :meth:`Engine.maintenance` returns a
:class:`Maintenance`, or None for a backend that has none, and
:func:`maintenance_of` turns that None into
:class:`~persistqueue_liteq.exceptions.Unsupported`.
"""

from __future__ import annotations

import abc
import dataclasses
import threading
import time
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Literal, Mapping,
                    Optional, Protocol, Sequence, Tuple, Type, Union, overload)

from . import _fork, metrics_hooks
from ._policy import seconds_until
from .exceptions import Unsupported

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

__all__ = ["DEFAULT_PREFIX", "SAFETY_INTERVAL", "Engine", "EngineSpec", "Maintenance", "Message",
           "Metrics", "QueueStats", "StorageSizes", "clock", "lease_waiting", "maintenance_of",
           "wait_drained"]

#: The table prefix of every backend unless one is given (names only; each
#: backend checks and quotes it its own way).
DEFAULT_PREFIX = "liteq_"

#: Longest sleep between two looks at a queue when no wake-up arrives: a
#: wake-up can be lost, so every waiter looks again at least this often.
SAFETY_INTERVAL = 1.0

#: The delivery orders of :meth:`Engine.lease`.
Order = Literal["fifo", "lifo", "priority"]
#: The waiters of :meth:`Engine.waiter` and :meth:`Engine.wake`: "put" (a
#: message may have become ready), "done" (one was acknowledged or removed).
WakeKind = Literal["put", "done"]
#: What :meth:`Engine.count` counts.
CountKind = Literal["live", "waiting", "ready", "dead"]
#: The status of each item of :meth:`Engine.put_keyed`.
KeyedStatus = Literal["new", "queued", "done"]
#: ``seal(msg_id, data) -> bytes``: the payload stored for a message (see
#: :meth:`Engine.put`).
Sealer = Callable[[int, bytes], bytes]
#: ``{queue: {name: count}}`` (names of :data:`METRIC_NAMES`).
Counts = Dict[str, Dict[str, int]]
#: An outcome of :meth:`Engine.complete_many`: ``(msg_id, lease, key, ok,
#: data)``, or with ``dead_reason, error`` added.
Outcome = Union[Tuple[int, Optional[int], str, bool, bytes],
                Tuple[int, Optional[int], str, bool, bytes, str, Optional[str]]]

_last_time = 0.0
_clock_lock = threading.Lock()


def clock() -> float:
    """``time.time()``, but never going backwards within this process.

    A message put with no delay must be visible to the next ``pop`` of the
    same process even if the system clock was stepped back in between.  The
    default :meth:`Engine.now`, and the SQLite engine's where the system
    offers nothing better (see :mod:`._clock`).
    """
    global _last_time
    now = time.time()
    if now < _last_time:
        with _clock_lock:
            return max(now, _last_time)
    _last_time = now
    return now


#: What an engine counts, per queue: messages put, deliveries (gets), acks,
#: deliveries of a message delivered before (retries), dead-lettered, and
#: expired undelivered.
METRIC_NAMES = ("puts", "gets", "acks", "retries", "dead_lettered", "expired")
_METRIC_INDEX = {name: i for i, name in enumerate(METRIC_NAMES)}


class Metrics:
    """What one engine did in this process, per queue, and the part of it
    that the file's lasting counters do not have yet.

    An engine counts with :meth:`add` after each operation commits and, when
    it says so (at most once per ``flush_interval`` seconds), hands
    :meth:`take` to a write of its own; counts written in the operation's
    own transaction (dead-lettered, expired) are added with ``lasting=True``.
    A forked child starts from nothing: its parent flushes its own counts.
    """

    def __init__(self, flush_interval: float = 1.0, location: Optional[str] = None) -> None:
        self.flush_interval = flush_interval
        #: The database, for the metrics hooks (see :mod:`.metrics_hooks`).
        self.location = location
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._generation = _fork.generation
        self._done: Dict[str, List[int]] = {}  # queue -> [count per METRIC_NAMES], since opened
        self._unflushed: Dict[Tuple[str, str], int] = {}  # (queue, name) -> count
        self._next_flush = time.monotonic() + self.flush_interval

    def _forget_if_forked(self) -> None:
        """In a forked child, the parent's counts are the parent's."""
        if self._generation != _fork.generation:
            self._reset()

    def add(self, queue: str, name: str, n: int = 1, lasting: bool = False) -> bool:
        """Count ``n`` of ``name`` for ``queue``, and hand it to the metrics
        hooks (:mod:`.metrics_hooks`); True when a flush is due."""
        with self._lock:
            if self._generation != _fork.generation:  # _forget_if_forked, inlined: per operation
                self._reset()
            row = self._done.get(queue)
            if row is None:
                row = self._done[queue] = [0] * len(METRIC_NAMES)
            row[_METRIC_INDEX[name]] += n
            if not lasting:
                key = (queue, name)
                self._unflushed[key] = self._unflushed.get(key, 0) + n
            due = time.monotonic() >= self._next_flush
        if metrics_hooks._hooks:
            metrics_hooks.emit(self.location, queue, name, n)
        return due

    def take(self) -> Dict[Tuple[str, str], int]:
        """The counts to add to the file: {(queue, name): n}, now cleared."""
        with self._lock:
            self._forget_if_forked()
            pending, self._unflushed = self._unflushed, {}
            self._next_flush = time.monotonic() + self.flush_interval
            return pending

    def unflushed(self) -> bool:
        """True if some counts are not in the file yet."""
        return bool(self._unflushed)

    def give_back(self, pending: Mapping[Tuple[str, str], int]) -> None:
        """A flush of ``take()``'s counts failed: keep them for the next one."""
        with self._lock:
            for key, n in pending.items():
                self._unflushed[key] = self._unflushed.get(key, 0) + n

    def snapshot(self) -> Counts:
        """{queue: {name: count}} of everything counted since opened."""
        with self._lock:
            self._forget_if_forked()
            return {queue: dict(zip(METRIC_NAMES, row)) for queue, row in self._done.items()}


@dataclasses.dataclass
class Message:
    """A message as stored, with what a consumer needs to settle it.

    ``id``, ``data``, ``queue_name``, ``retry_count`` and ``created_at`` are
    Liteq's fields; ``retry_count`` is the number of deliveries before this
    one.  The rest is ours.  Times are on the engine's clock
    (:meth:`Engine.now`; :meth:`Engine.wall_time` for the wall clock's).
    """

    id: int
    data: bytes
    queue_name: str
    retry_count: int
    created_at: float
    #: Deliveries including this one.
    attempts: int = 0
    #: Token of the lease this message was delivered under (None if not leased).
    lease: Optional[int] = None
    #: For a leased message: when its lease runs out.
    visible_at: Optional[float] = None
    expires_at: Optional[float] = None
    last_error: Optional[str] = None
    priority: Optional[bytes] = None
    #: For a dead letter: when and why it was dead-lettered.
    dead_at: Optional[float] = None
    dead_reason: Optional[str] = None
    #: The caller's id of the message (``put(key=...)``, a pool's task), else None.
    key: Optional[str] = None
    #: The ``consumer_id`` of whoever leased it last (its holder while in flight).
    consumer_id: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class QueueStats:
    """One queue's counts at one moment."""

    name: str
    ready: int
    delayed: int
    in_flight: int
    dead: int
    #: created_at of its oldest live (not dead) message, or None.
    oldest_created_at: Optional[float]
    #: When the queue came to exist (created, or its first message put).
    created_at: Optional[float] = None
    #: What ``create_queue`` recorded for it ({} if nothing).
    settings: Optional[Dict[str, Any]] = dataclasses.field(default=None, hash=False)
    #: The codec fingerprint its queue objects recorded, or None.
    codec: Optional[str] = None
    #: The ``consumer_id`` of every holder of a lease of it now, sorted.
    consumers: Tuple[str, ...] = ()

    @property
    def live(self) -> int:
        """Messages not yet acknowledged and not dead."""
        return self.ready + self.delayed + self.in_flight


class EngineSpec:
    """How to open an engine again: its backend (``scheme``, such as
    "sqlite"), its database (``location``: a file's absolute path, or a
    URL) and the backend options it was opened with.  Picklable: a child
    process reopens its parent's database with :meth:`open`.  Made by
    :func:`~persistqueue_liteq.backends.describe`, and kept by every engine
    as ``engine.spec``; shown without passwords."""

    __slots__ = ("scheme", "location", "options")

    scheme: str
    location: str
    options: Dict[str, Any]

    def __init__(self, scheme: str, location: str,
                 options: Optional[Mapping[str, Any]] = None) -> None:
        self.scheme = scheme
        self.location = location
        self.options = dict(options or {})

    def open(self) -> Engine:
        """A new engine on this database, with these options."""
        from .backends import backend_of

        return backend_of(self.scheme)(self.location, **self.options)

    def with_options(self, options: Mapping[str, Any]) -> EngineSpec:
        """This spec with ``options`` added to (or replacing) its own."""
        from .backends import _check_options

        _check_options(self.scheme, options)
        return EngineSpec(self.scheme, self.location, dict(self.options, **options))

    def __reduce__(self) -> Tuple[Type[EngineSpec], Tuple[str, str, Dict[str, Any]]]:
        return EngineSpec, (self.scheme, self.location, self.options)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EngineSpec):
            return NotImplemented
        return (self.scheme, self.location, self.options) == (
            other.scheme, other.location, other.options)

    def __hash__(self) -> int:
        return hash((self.scheme, self.location))

    def __repr__(self) -> str:
        from .backends import redact

        options = "".join(", %s=%r" % (name, redact(value) if name.endswith("_url") else value)
                          for name, value in sorted(self.options.items()))
        return "EngineSpec(%r, %r%s)" % (self.scheme, redact(self.location), options)


@dataclasses.dataclass(frozen=True)
class StorageSizes:
    """The bytes a database takes on disk, at one moment (None: that file
    does not exist)."""

    #: The database file.
    database: Optional[int]
    #: Its write-ahead log (SQLite's ``-wal``).
    log: Optional[int]

    @property
    def total(self) -> int:
        """Both together (a missing file counts 0)."""
        return (self.database or 0) + (self.log or 0)


class Waiter(Protocol):
    """What ``with engine.waiter(kind, queue) as waiter`` gives (see
    :meth:`Engine.waiter`).  A backend's waiter may also offer ``fileno()``
    and ``drain()`` (a descriptor for an event loop to watch) or
    ``interval`` (how often an event loop should look again)."""

    def wait(self, timeout: float) -> bool:
        """Sleep until woken or ``timeout`` seconds pass; True if woken."""
        ...


class Transaction(Protocol):
    """What ``with engine.transaction() as tx`` gives (see
    :meth:`Engine.transaction`): :meth:`Engine.put` and
    :meth:`Engine.put_many`, committed when the block ends."""

    def put(self, queue: str, data: bytes, delay: float = 0.0, ttl: Optional[float] = None,
            priority: Optional[bytes] = None, seal: Optional[Sealer] = None) -> int:
        ...

    def put_many(self, queue: str, payloads: Iterable[bytes], delay: float = 0.0,
                 ttl: Optional[float] = None, seal: Optional[Sealer] = None) -> List[int]:
        ...


class Maintenance(abc.ABC):
    """The upkeep of one engine's storage, for operators (what the command
    line's ``checkpoint``, ``vacuum`` and ``check`` run): optional, see
    :meth:`Engine.maintenance`.  Every method may block writers of the
    database while it runs (a vacuum rewrites the whole file)."""

    #: The modes of :meth:`checkpoint`, mildest first.
    CHECKPOINT_MODES = ("PASSIVE", "FULL", "RESTART", "TRUNCATE")

    @abc.abstractmethod
    def checkpoint(self, mode: str = "TRUNCATE") -> Tuple[int, int, int]:
        """Copy the write-ahead log into the database (one of
        :data:`CHECKPOINT_MODES`; "TRUNCATE" also cuts the log back to
        nothing); return ``(busy, pages in the log, pages copied)``, busy
        true when a reader kept part of the log.  ValueError for another
        mode; Unsupported where the server manages its log itself
        (PostgreSQL)."""

    @abc.abstractmethod
    def vacuum(self) -> None:
        """Rebuild the database to give its free space back to the file
        system."""

    @abc.abstractmethod
    def integrity_check(self) -> List[str]:
        """Check the whole database: ``["ok"]`` when it is sound, else one
        str per problem found."""

    @abc.abstractmethod
    def sizes(self) -> StorageSizes:
        """A :class:`StorageSizes` of now.  Reads no data, so it may be
        called once the engine is closed too (to see what closing left)."""

    @property
    @abc.abstractmethod
    def sizes_at_open(self) -> StorageSizes:
        """A :class:`StorageSizes` of the moment before the engine opened
        the database (opening one, even read-only, may create an empty
        write-ahead log)."""

    @property
    @abc.abstractmethod
    def auto_vacuum_free_pages(self) -> Optional[int]:
        """The database's threshold of free pages for an automatic vacuum,
        or None (never)."""

    @abc.abstractmethod
    def set_auto_vacuum(self, free_pages: Optional[int]) -> None:
        """Store in the database that an engine finding more than
        ``free_pages`` free pages vacuums it; None turns it off.
        Unsupported where the server vacuums by itself (PostgreSQL)."""

    def health(self) -> List[Tuple[str, str]]:
        """What an operator should know of the storage beside its integrity
        (the command line's ``check`` prints it): ``(label, text)`` pairs,
        none by default."""
        return []


def maintenance_of(engine: Engine, operation: str) -> Maintenance:
    """``engine.maintenance()``, or
    :class:`~persistqueue_liteq.exceptions.Unsupported` naming the backend
    and ``operation`` (what the caller was about to do) if it has none."""
    upkeep = engine.maintenance()
    if upkeep is None:
        raise Unsupported(
            "%s (the %s backend) has no maintenance interface: %s is not supported there"
            % (getattr(engine, "location", "the database"), type(engine).__name__, operation))
    return upkeep


class Engine(abc.ABC):
    """Storage of messages for many named queues in one database.

    Every method is atomic: it happens entirely or not at all, whatever
    crashes.  Methods that take a ``lease`` token change nothing (and return
    False) when the lease is no longer the message's current one (a lease
    of None, an unleased message's ``Message.lease``, holds none).
    """

    #: Where the data lives, for messages (a path or a URL, without its
    #: password).
    location: str
    #: How to open this engine again (in another process): an EngineSpec.
    spec: EngineSpec

    # -- time -----------------------------------------------------------------

    def now(self) -> float:
        """The engine's clock: what every stored time is compared with.

        Agreed on by every process that uses the database; seconds, reading
        like the wall clock.  This default is the wall clock
        (:func:`clock`); an engine whose clock is not moved by steps of the
        wall clock overrides it.
        """
        return clock()

    @overload
    def wall_time(self, t: float) -> float: ...
    @overload
    def wall_time(self, t: None) -> None: ...
    @overload
    def wall_time(self, t: Optional[float]) -> Optional[float]: ...

    def wall_time(self, t: Optional[float]) -> Optional[float]:
        """A time of the engine's clock as wall-clock seconds since the
        epoch, for showing to people (None stays None)."""
        return t

    # -- upkeep ---------------------------------------------------------------

    def maintenance(self) -> Optional[Maintenance]:
        """This engine's :class:`Maintenance`, or None (this default) when
        its backend offers none; front ends ask :func:`maintenance_of`, which
        raises :class:`~persistqueue_liteq.exceptions.Unsupported` then."""
        return None

    # -- producing ----------------------------------------------------------

    @abc.abstractmethod
    def put(self, queue: str, data: bytes, delay: float = 0.0, ttl: Optional[float] = None,
            priority: Optional[bytes] = None, seal: Optional[Sealer] = None,
            key: Optional[str] = None) -> int:
        """Store one message; return its id.

        ``key``: the caller's id of the message (a str).  If ``queue``
        already stores a message with that key (live or dead), nothing is
        stored and that message's id is returned: a producer that repeats a
        put after a crash stores it once.  Once the message is acknowledged
        the key is free again.

        ``delay``: seconds before it may be delivered.  ``ttl``: seconds after
        which it is dropped undelivered (and counted as expired).
        ``priority``: an order key (bytes); messages with one are delivered by
        ``lease(order="priority")`` in key order.  ``seal``: for a stored
        payload that depends on the message's id (a signature that binds
        it): a function ``seal(msg_id, data) -> bytes``, called in the
        transaction that stores the message, whose result is stored instead
        of ``data``.
        """

    @abc.abstractmethod
    def put_many(self, queue: str, payloads: Iterable[bytes], delay: float = 0.0,
                 ttl: Optional[float] = None, seal: Optional[Sealer] = None) -> List[int]:
        """Store every payload of an iterable in one transaction; return the
        ids in order.  If the iterable (or ``seal``) raises, nothing is
        stored."""

    @overload
    def put_on(self, conn: object, queue: str, data: bytes, delay: float = ...,
               ttl: Optional[float] = ..., seal: Optional[Sealer] = ..., codec: None = ...,
               priority: Optional[bytes] = ...) -> int: ...
    @overload
    def put_on(self, conn: object, queue: str, data: bytes, delay: float = ...,
               ttl: Optional[float] = ..., seal: Optional[Sealer] = ..., *, codec: str,
               priority: Optional[bytes] = ...) -> Tuple[Optional[int], str]: ...

    @abc.abstractmethod
    def put_on(self, conn: object, queue: str, data: bytes, delay: float = 0.0,
               ttl: Optional[float] = None, seal: Optional[Sealer] = None,
               codec: Optional[str] = None, priority: Optional[bytes] = None
               ) -> Union[int, Tuple[Optional[int], str]]:
        """Store one message through the application's own connection
        ``conn`` (to this database), inside the application's transaction:
        it is committed or rolled back with the application's writes (the
        transactional outbox).  Returns its id.  Nothing is committed here,
        nothing runs on the engine's own connections (which would wait for
        the lock ``conn`` holds), so no waiter is woken: consumers see the
        message at their next look once ``conn`` commits (call
        :meth:`wake` after the commit to wake them at once), and the put is
        not counted in :meth:`metrics`.  ``codec``: a codec fingerprint to
        claim for ``queue`` in the same transaction (see
        :meth:`claim_codec`); the one that holds is returned as
        ``(id, codec)`` then (id None: nothing stored, another codec holds)."""

    @abc.abstractmethod
    def transaction(self) -> AbstractContextManager[Transaction]:
        """A context manager yielding an object with ``put`` and ``put_many``
        (as above) whose messages, to any queues, are committed together when
        the block ends, or not at all if it raises."""

    # -- what a queue was written with -----------------------------------------

    @abc.abstractmethod
    def codec_of(self, queue: str) -> Optional[str]:
        """The codec fingerprint recorded for ``queue`` (a str), or None."""

    @abc.abstractmethod
    def claim_codec(self, queue: str, fingerprint: str) -> str:
        """Record ``fingerprint`` as the codec of ``queue``, unless another one
        is recorded and the queue holds messages (live or dead); return the
        one that holds, in one transaction (so concurrent first writers
        agree)."""

    @abc.abstractmethod
    def replace_data(self, msg_id: int, old: bytes, new: bytes) -> bool:
        """Store ``new`` as the payload of a message whose payload is
        ``old`` (and nothing otherwise); True if it did."""

    @abc.abstractmethod
    def put_keyed(self, queue: str, items: Iterable[Tuple[str, bytes]]
                  ) -> List[Tuple[KeyedStatus, Optional[int]]]:
        """Store keyed messages, each once: ``items`` is an iterable of
        (key, data).  In one transaction, for each key: if a result is stored
        under it, nothing is stored and its status is "done"; if a live
        message with that key is there, "queued"; otherwise the message is
        stored, "new" (a dead one with that key, whose outcome was
        forgotten, is brought back with ``data`` and no attempts).  Returns
        [(status, id or None)]."""

    # -- results of keyed messages -------------------------------------------

    @abc.abstractmethod
    def complete(self, msg_id: int, lease: Optional[int], key: str, ok: bool, data: bytes,
                 dead_reason: Optional[str] = None) -> bool:
        """Store the outcome of a leased keyed message and settle it, in one
        transaction: deleted, or dead-lettered with ``dead_reason``.  The
        outcome is stored even if the lease was lost; returns whether it
        still held."""

    @abc.abstractmethod
    def complete_many(self, queue: str, outcomes: Sequence[Outcome], lease: int = 0,
                      seconds: float = 0.0) -> List[Message]:
        """:meth:`complete` for each ``(msg_id, lease, key, ok, data)`` of
        ``outcomes`` (messages of ``queue``; an outcome may add
        ``dead_reason, error``: the message is dead-lettered with that reason
        and ``error`` as its last error), in order, and in the same transaction
        lease up to ``lease`` ready messages of ``queue`` for ``seconds``
        (one token for all): a worker's one write per batch of tasks.
        Returns the messages leased, oldest first.  For keyed queues only: no
        TTL or attempt limit is applied."""

    @abc.abstractmethod
    def result(self, queue: str, key: str) -> Optional[Tuple[bool, bytes]]:
        """(ok, data) stored under ``key``, or None."""

    @abc.abstractmethod
    def results_since(self, queue: str, seq: int, limit: int = 1000
                      ) -> List[Tuple[int, str, bool, bytes]]:
        """Outcomes stored after ``seq``: [(seq, key, ok, data)], in order."""

    @abc.abstractmethod
    def last_result_seq(self) -> int:
        """The ``seq`` of the newest outcome of any queue (0 if none)."""

    @abc.abstractmethod
    def forget_results(self, queue: str, key: Optional[str] = None) -> int:
        """Delete the stored outcome under ``key`` (or all of ``queue``'s);
        return how many."""

    @abc.abstractmethod
    def forget_results_matching(self, queue: str, pattern: str, up_to_seq: Optional[int] = None,
                                failed_only: bool = False) -> int:
        """Delete the outcomes of ``queue`` whose keys match the GLOB
        ``pattern``, stored up to ``up_to_seq`` (None: all), only the
        failures if ``failed_only``; return how many."""

    # -- consuming ----------------------------------------------------------

    @abc.abstractmethod
    def lease(self, queue: str, n: int, seconds: float, order: Order = "fifo",
              max_attempts: Optional[int] = None, holder: Optional[str] = None
              ) -> List[Message]:
        """Lease up to ``n`` ready messages for ``seconds``; return them.

        ``holder``: the consumer_id recorded with the lease (shown by
        :meth:`get`, :meth:`peek`, :meth:`queues` and in dead letters).

        ``order``: "fifo" (earliest ready first), "lifo" or "priority".
        Messages past their TTL are dropped instead of delivered; a message
        that would exceed ``max_attempts`` deliveries goes to the dead-letter
        queue instead.  Returns [] when nothing is ready: it never blocks.
        """

    @abc.abstractmethod
    def lease_id(self, queue: str, msg_id: int, seconds: float) -> Optional[Message]:
        """Lease the message ``msg_id`` of ``queue`` for ``seconds`` if it is
        ready (not delayed, in flight, dead or past its TTL); return it, or
        None.  Counted as a delivery, as :meth:`lease` is."""

    @abc.abstractmethod
    def next_visible_at(self, queue: str) -> Optional[float]:
        """When the earliest delayed or leased message of ``queue`` becomes
        ready, or None if there is none."""

    @abc.abstractmethod
    def ack(self, msg_id: int, lease: Optional[int], queue: Optional[str] = None) -> bool:
        """Delete a leased message: its processing is done.  ``queue``, if
        the caller knows it, is the message's queue (saves looking it up;
        a message of another queue is not deleted)."""

    @abc.abstractmethod
    def delete(self, msg_id: int) -> bool:
        """Delete a message whatever its state; True if it existed."""

    @abc.abstractmethod
    def delete_unleased(self, msg_id: int) -> bool:
        """Delete a message unless somebody holds it (cancel a task that has
        not started); True if it was deleted."""

    @abc.abstractmethod
    def set_visibility(self, msg_id: int, lease: Optional[int], seconds: float) -> bool:
        """Make the lease run out ``seconds`` from now (longer or shorter)."""

    @abc.abstractmethod
    def release(self, msg_id: int, lease: Optional[int], delay: float = 0.0,
                error: Optional[str] = None, attempted: bool = True) -> bool:
        """End the lease: ready again after ``delay`` seconds; ``error`` (if
        given) is recorded as the message's last error.  ``attempted=False``
        for a message its holder never started on: its delivery is not
        counted as an attempt."""

    @abc.abstractmethod
    def dead_letter(self, msg_id: int, lease: Optional[int], reason: str,
                    error: Optional[str] = None) -> bool:
        """Move a leased message to the dead-letter queue with ``reason``."""

    @abc.abstractmethod
    def dead_letter_ids(self, ids: Iterable[int], reason: str,
                        queue: Optional[str] = None) -> int:
        """Move the live messages with these ids (of ``queue`` only, if
        given), leased or not, to the dead-letter queue with ``reason``, in
        one transaction; return how many moved."""

    @abc.abstractmethod
    def ack_many(self, items: Iterable[Tuple[int, Optional[int]]]) -> int:
        """Delete many messages in one transaction: ``items`` are
        ``(msg_id, lease)``, a lease of None deleting the message whatever
        its state (as :meth:`delete`).  Returns how many were deleted."""

    @abc.abstractmethod
    def recover_leases(self, queue: Optional[str] = None) -> int:
        """End every lease of ``queue`` (None: of every queue) that has run
        out, now; return how many.  Such a message is ready already; this
        makes its late holder's ack, release or renewal fail."""

    # -- inspecting -----------------------------------------------------------

    @abc.abstractmethod
    def peek(self, queue: str) -> Optional[Message]:
        """The message ``lease(queue, 1)`` would deliver next, without
        leasing it, or None."""

    @abc.abstractmethod
    def peek_many(self, queue: str, n: int) -> List[Message]:
        """The next ``n`` messages in delivery order, without leasing them."""

    @abc.abstractmethod
    def messages(self, queue: str, after_id: int = 0, limit: int = 1000) -> List[Message]:
        """Live messages (ready, delayed, in flight) with an id above
        ``after_id``, in id order, at most ``limit``, none leased: for paging
        through a queue."""

    @abc.abstractmethod
    def get(self, msg_id: int) -> Optional[Message]:
        """The message with this id in whatever state, or None."""

    @abc.abstractmethod
    def count(self, queue: str, what: CountKind = "live") -> int:
        """How many messages: "live" (not dead: ready, delayed or in flight),
        "waiting" (live and not leased), "ready" or "dead".  Expired
        messages (past their TTL and not held by a lease) are counted in
        none: neither here nor in :meth:`has_live`, :meth:`queues` or
        :meth:`messages`."""

    @abc.abstractmethod
    def has_live(self, queue: str) -> bool:
        """Whether ``queue`` has a live message (cheaper than counting)."""

    @abc.abstractmethod
    def next_expiry(self, queue: str) -> Optional[float]:
        """When the first live message of ``queue`` that has not expired
        yet will expire, or None (for waiting until a queue drains)."""

    @abc.abstractmethod
    def expire(self, queue: Optional[str] = None) -> int:
        """Delete the expired messages of ``queue`` (None: of every queue)
        now, counting them as "expired"; return how many."""

    @abc.abstractmethod
    def has_ready(self, queue: str) -> bool:
        """Whether ``queue`` has a message that ``lease`` would deliver now
        (ready and not expired): Liteq's ``not empty()``."""

    @abc.abstractmethod
    def queues(self) -> List[QueueStats]:
        """A :class:`QueueStats` for every queue that exists: created by
        :meth:`create_queue` or by its first message, until
        :meth:`delete_queue`, with or without messages."""

    @abc.abstractmethod
    def create_queue(self, queue: str, settings: Optional[Mapping[str, Any]] = None) -> bool:
        """Make ``queue`` exist while empty; ``settings`` (a JSON-able dict,
        if given) is recorded with it, replacing what was.  True if it did not
        exist."""

    @abc.abstractmethod
    def counters(self) -> Counts:
        """{queue: {name: value}} of the lasting counters of every process
        (the names of :data:`METRIC_NAMES`), as flushed so far."""

    @abc.abstractmethod
    def metrics(self) -> Counts:
        """{queue: {name: count}} of what this engine did in this process
        since it was opened (see :class:`Metrics`)."""

    @abc.abstractmethod
    def activity(self, seconds: float = 60.0) -> Tuple[float, Counts]:
        """``(window, {queue: {name: count}})``: the counts flushed by every
        process over the last ``window`` seconds (``seconds`` or a little
        more: counts are kept in 10-second buckets).  Divide to get rates."""

    @abc.abstractmethod
    def flush_metrics(self) -> None:
        """Add this process's unflushed counts to the lasting counters now
        (also done while working, when idle, and at close)."""

    @abc.abstractmethod
    def dead_letters(self, queue: str, limit: Optional[int] = None) -> List[Message]:
        """The dead letters of ``queue``, oldest first, with reasons."""

    # -- moving messages between databases ---------------------------------------

    @abc.abstractmethod
    def snapshot(self, queue: str, after_id: int = 0, limit: int = 1000) -> List[Message]:
        """Every message of ``queue`` with an id above ``after_id``, live and
        dead, in id order, at most ``limit``, each with its state: ``lease``
        is the token of an in-flight message (None otherwise), ``visible_at``
        None for a dead letter.  What an export writes."""

    @abc.abstractmethod
    def restore(self, queue: str, messages: Iterable[Message]) -> List[int]:
        """Store :class:`Message` objects taken from another database (or a
        snapshot of this one) into ``queue``, with their state, in one
        transaction; return their new ids in order.

        Kept: ``data``, ``attempts``, ``created_at``, ``expires_at``,
        ``visible_at`` (a delay), ``last_error``, ``priority``, ``key``, and a
        dead letter's ``dead_at`` and ``dead_reason`` (a message with
        ``dead_at`` set is stored dead).  A message that was in flight
        (``lease`` set) is stored ready: its holder is not here.  Ids are new.
        Not counted as puts.  ValueError (nothing stored) if a ``key`` is
        already live in ``queue``."""

    # -- operating ------------------------------------------------------------

    @abc.abstractmethod
    def redrive(self, queue: str, ids: Optional[Iterable[int]] = None) -> int:
        """Make dead letters (all, or those ids) ready again, with their
        original ids and attempts reset; return how many."""

    @abc.abstractmethod
    def purge(self, queue: str, dead: bool = False) -> int:
        """Delete the live messages (or, with ``dead``, the dead letters) of
        ``queue``; return how many."""

    @abc.abstractmethod
    def delete_queue(self, queue: str) -> int:
        """Delete ``queue``: every message of it, dead ones included, and its
        entry in :meth:`queues`; return how many messages."""

    @abc.abstractmethod
    def waiter(self, kind: WakeKind, queue: str) -> AbstractContextManager[Waiter]:
        """A context manager whose ``wait(timeout)`` returns when ``queue``
        may have changed ("put": a message may have become ready; "done": a
        message was acknowledged or removed) or after ``timeout`` seconds.

        Enter it before the last look at the queue, so that nothing that
        happens after that look can be missed."""

    @abc.abstractmethod
    def wake(self, kind: WakeKind, queue: str) -> None:
        """Wake every waiter of (kind, queue), in every process, so that it
        looks again: for a change the file does not show (a shutdown)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release this process's connections; the data stays."""


def lease_waiting(engine: Engine, queue: str, n: int, seconds: float, order: Order,
                  max_attempts: Optional[int], timeout: Optional[float], *,
                  poll: Optional[float] = None, holder: Optional[str] = None) -> List[Message]:
    """``engine.lease`` that waits up to ``timeout`` seconds (None: forever)
    for something to lease.  Returns [] if nothing came in time.

    Sleeps until a producer's wake-up, or until the earliest delayed or leased
    message becomes ready, or (if given) ``poll`` seconds, whichever comes
    first.
    """
    messages = engine.lease(queue, n, seconds, order, max_attempts, holder)
    if messages or (timeout is not None and timeout <= 0):
        return messages
    deadline = None if timeout is None else time.monotonic() + timeout
    with engine.waiter("put", queue) as waiter:
        while True:
            messages = engine.lease(queue, n, seconds, order, max_attempts, holder)
            if messages:
                return messages
            remaining = _remaining(deadline)
            if remaining <= 0:
                return []
            remaining = seconds_until(engine, engine.next_visible_at(queue), remaining)
            if poll is not None:
                remaining = min(remaining, poll)
            waiter.wait(remaining)


def wait_drained(engine: Engine, queue: str, timeout: Optional[float]) -> bool:
    """Wait until ``queue`` has no live message (none ready, delayed or in
    flight); True if it did within ``timeout`` seconds (None: forever)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with engine.waiter("done", queue) as waiter:
        while engine.has_live(queue):
            remaining = _remaining(deadline)
            if remaining <= 0:
                return False
            # An expiry wakes nobody.
            waiter.wait(seconds_until(engine, engine.next_expiry(queue), remaining))
    return True


def _remaining(deadline: Optional[float]) -> float:
    return float("inf") if deadline is None else deadline - time.monotonic()
