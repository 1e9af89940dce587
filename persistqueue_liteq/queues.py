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
import os
import threading
import time
import warnings
import weakref
from queue import Empty, Full
from typing import (TYPE_CHECKING, Any, Callable, Deque, Dict, Generic, Hashable, Iterable,
                    List, Optional, TypeVar, Union)

from . import _checks
from ._policy import describe_exception, seconds_until
from .engine import METRIC_NAMES, Message
from .exceptions import CodecMismatch, DatabaseBusy, UnboundSignatures
from .serializers import Codec, SignatureError, UnboundSignature, order_key, resolve
from .backends import describe, front_end_engine, redact
from .engine import DEFAULT_PREFIX

if TYPE_CHECKING:
    import sys
    from typing import Self

    from .backends import Location
    from .engine import Engine, Order
    from .serializers import BytesLike, SerializerArg, Signer

    _R = TypeVar("_R")

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
#: Longest sleep between two looks at the queue: a wake-up can be lost (a
#: producer running as another user), so look again at least this often.
_RELOOK = 1.0

# Every queue object, so that a forked child can reset their per-process state.
_instances: weakref.WeakSet[_QueueBase[Any]] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for q in list(_instances):
        q._reset_process_state()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


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


def _deadline(block: bool, timeout: Optional[float]) -> Optional[float]:
    """The monotonic deadline of a blocking call (None: no deadline)."""
    if not block or timeout is None:
        return None
    if timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")
    return time.monotonic() + timeout


def _check_maxsize(maxsize: object) -> int:
    if isinstance(maxsize, bool) or not isinstance(maxsize, numbers.Integral):
        raise TypeError("maxsize must be an int (0 or less: unbounded), not %r" % (maxsize,))
    return int(maxsize)


def _remaining(deadline: Optional[float]) -> float:
    return float("inf") if deadline is None else deadline - time.monotonic()


def _one_line(exc: BaseException) -> str:
    return "%s: %s" % (type(exc).__name__, exc) if str(exc) else type(exc).__name__


def _heartbeat(queue_ref: weakref.ref[_QueueBase[Any]], stop: threading.Event,
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


class _QueueBase(Generic[T]):
    """What every persistent queue shares: options, the engine, leasing and
    acknowledging, the heartbeat, dead letters, pickling, close."""

    #: Delivery order: the engine's lease(order=...).
    _order: Order = "fifo"

    # Set by the subclasses (see _reset_process_state) and _open_engine.
    _statement_lock: Union[threading.Lock, threading.RLock]
    _journal_mode: Optional[str]
    _engine: Engine
    _owns_engine: bool

    def _configure(self, path: Location, name: str, visibility_timeout: float,
                   max_retries: int, serializer: SerializerArg, hmac_key: Optional[BytesLike],
                   auto_ack: bool, timeout_seconds: float, synchronous: str,
                   table_prefix: str) -> None:
        # A path, URL, engine or EngineSpec (see backends); self.path is the
        # database's absolute path (or URL), for messages.
        self._location = path
        self.path = redact(describe(path).location)
        self.name = _checks.queue_name(name, "name")
        self.visibility_timeout = _checks.seconds(
            visibility_timeout, "visibility_timeout", positive=True)
        self.max_retries = _checks.count(max_retries, "max_retries")
        self.serializer = resolve(serializer)
        self._codec = Codec(self.serializer, hmac_key, queue=self.name)
        self._hmac_key = None if hmac_key is None else bytes(hmac_key)
        # What the file records of the codec of the queue's writers is
        # compared once per object: at its first put, or at the first get
        # that finds a message (see _claim_codec and _check_codec).  (One
        # attribute only: past 30, CPython stops sharing the keys of the
        # instances' dicts, and every attribute read gets slower.)
        self._codec_ok = False
        self.auto_ack = bool(auto_ack)
        self.timeout_seconds = _checks.seconds(timeout_seconds, "timeout_seconds")
        self._synchronous = synchronous
        self._table_prefix = table_prefix
        self._closed = False
        self._reset_process_state()
        _instances.add(self)

    def _open_engine(self) -> None:
        self._engine, self._owns_engine = front_end_engine(
            self._location, timeout=self.timeout_seconds,
            synchronous=self._synchronous, table_prefix=self._table_prefix,
            journal_mode=self._journal_mode,
        )

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
        # A subclass sets _statement_lock: held around every statement that
        # this object's methods run (not the heartbeat's), so that close()
        # never closes a connection in the middle of one.

    @property
    def engine(self) -> Engine:
        """The storage engine underneath (one per queue object)."""
        return self._engine

    def __repr__(self) -> str:
        return "<%s %r name=%r>" % (type(self).__name__, self.path, self.name)

    # -- storing and taking ----------------------------------------------------

    def _store(self, item: T, priority: Optional[bytes] = None) -> None:
        """Serialize ``item`` and store it; nothing is stored if it does not
        serialize, or if the queue was written with another codec
        (CodecMismatch)."""
        codec = self._codec
        data = codec.dumps(item)
        if not self._codec_ok:
            self._claim_codec()
        if codec.sealer is None:
            self._engine.put(self.name, data, priority=priority)
        else:  # the signature binds the id, which the engine chooses
            self._engine.put(self.name, data, priority=priority, seal=codec.sealer)

    def _take(self) -> T:
        """Lease the next deliverable item and return it deserialized; raise
        queue.Empty if none is ready.

        A payload that does not deserialize (its class is gone, its signature
        is wrong) goes to the dead-letter queue with the reason, and the next
        item is taken instead.  But if this object's serializer or key is not
        the one the queue records, or the payload is signed in the format of
        0.1.0, the message is handed back untouched and CodecMismatch or
        UnboundSignatures raised: one consumer with the wrong key must not
        dead-letter the queue.
        """
        while True:
            unchecked = not self._codec_ok and not self._check_codec()
            messages = self._engine.lease(
                self.name, 1, self.visibility_timeout, self._order, self.max_retries + 1)
            if not messages:
                raise Empty
            msg = messages[0]
            if unchecked:  # none recorded when we looked: look again
                self._check_codec(msg)
            try:
                item: T = self._codec.load_message(msg)
            except UnboundSignature:
                self._engine.release(msg.id, msg.lease, attempted=False)
                raise UnboundSignatures(
                    "message %d of queue %r in %s is signed in the format of "
                    "persistqueue_liteq 0.1.0, which does not bind a message to its id "
                    "and queue (a copied row would pass), so it was refused and handed "
                    "back untouched; re-sign the queue's messages once with "
                    "upgrade_signatures() (with the key, by a process you trust) and get "
                    "again" % (msg.id, self.name, self.path)) from None
            except Exception as exc:
                self._engine.dead_letter(
                    msg.id, msg.lease, "cannot be deserialized: %s" % _one_line(exc),
                    error=describe_exception(exc))
                continue
            except BaseException:  # KeyboardInterrupt: hand it back at once
                self._engine.release(msg.id, msg.lease)
                raise
            if self.auto_ack:
                self._engine.ack(msg.id, msg.lease, self.name)
                with self._leases_lock:
                    self._auto_unfinished += 1
            else:
                self._hold(msg)
            return item

    def put_in(self, conn: object, item: T) -> int:
        """Put ``item`` in the application's own transaction: through
        ``conn``, the application's sqlite3 connection to this file, so that
        it is committed or rolled back with the application's writes (the
        transactional outbox); returns its id.  ``maxsize`` is not applied;
        the item is visible once ``conn`` commits (see
        :meth:`LiteQueue.put_in <persistqueue_liteq.LiteQueue.put_in>`).
        CodecMismatch, storing nothing, if the queue records another codec.
        """
        codec = self._codec
        data = codec.dumps(item)
        order_key = getattr(self, "_order_key", None)
        priority = None if order_key is None else order_key(item)
        ours = codec.fingerprint()
        with self._statement_lock:
            msg_id, held = self._engine.put_on(conn, self.name, data, seal=codec.sealer,
                                               codec=ours, priority=priority)
        if held != ours:
            raise CodecMismatch(self._mismatch(held, "nothing was stored"))
        return msg_id  # type: ignore[return-value]  # stored (not None): our codec held

    # -- what the queue was written with ----------------------------------------

    def _claim_codec(self) -> None:
        """Before the first put (with the statement lock held): record this
        object's codec for its queue, or raise CodecMismatch if the queue
        holds messages of another."""
        ours = self._codec.fingerprint()
        stored = self._engine.claim_codec(self.name, ours)
        if stored != ours:
            raise CodecMismatch(self._mismatch(stored, "nothing was stored"))
        self._codec_ok = True

    def _check_codec(self, msg: Optional[Message] = None) -> bool:
        """Before a get leases (and after, if the queue recorded no codec
        then): compare the codec that the queue records with ours; on a
        mismatch hand ``msg`` back untouched and raise CodecMismatch.  A queue
        that records none (written by 0.1.0, or only around the queue
        objects), or another but has no live message (a reader of a new key
        that starts before its writers), is compared again at the next get.
        True once the codec is ours."""
        stored = self._engine.codec_of(self.name)
        if stored is None:
            return False
        if stored != self._codec.fingerprint():
            if msg is None and not self._engine.has_live(self.name):
                return False  # nothing to misread: the next writer may change the codec
            if msg is not None:
                self._engine.release(msg.id, msg.lease, attempted=False)
            raise CodecMismatch(self._mismatch(
                stored, "nothing was read, nothing was dead-lettered"))
        self._codec_ok = True
        return True

    def _mismatch(self, stored: str, outcome: str) -> str:
        theirs = dict(part.split("=", 1) for part in stored.split(";") if "=" in part)
        ours = dict(part.split("=", 1) for part in self._codec.fingerprint().split(";"))
        differences = []
        if theirs.get("serializer") != ours["serializer"]:
            differences.append("it was written with serializer %s, this %s has %s" % (
                theirs.get("serializer", "?"), type(self).__name__, ours["serializer"]))
        if theirs.get("key") != ours["key"]:
            if theirs.get("key") == "none":
                differences.append("it was written without hmac_key, this %s has one"
                                   % type(self).__name__)
            elif ours["key"] == "none":
                differences.append("it was written with an hmac_key, this %s has none"
                                   % type(self).__name__)
            else:
                differences.append("it was written with another hmac_key than this %s's"
                                   % type(self).__name__)
        return "queue %r in %s: %s; %s" % (
            self.name, self.path, " and ".join(differences) or "its codec is %s" % stored,
            outcome)

    def upgrade_signatures(self) -> int:
        """Re-sign, once, the messages of this queue (dead letters included)
        that persistqueue_liteq 0.1.0 signed with this object's key, in the
        format that binds each to its id and queue; return how many.

        Run it from a process you trust, on a file you trust as it is now: a
        copied row of 0.1.0 is re-signed as genuine too, which is why
        such rows are refused until then.  Messages whose signature does not
        match at all are left as they are (refused at delivery).
        """
        if not self._codec.signed:
            raise ValueError("upgrade_signatures() needs the queue's hmac_key")
        signer: Signer
        signer, upgraded = self._codec.signer, 0  # type: ignore[assignment]  # signed: not None
        with self._statement_lock:
            if not self._codec_ok:
                self._claim_codec()
            after = 0
            while True:
                page = self._engine.messages(self.name, after, 1000)
                if not page:
                    break
                after = page[-1].id
                upgraded += self._upgrade(signer, page)
            upgraded += self._upgrade(signer, self._engine.dead_letters(self.name))
        return upgraded

    def _upgrade(self, signer: Signer, messages: Iterable[Message]) -> int:
        upgraded = 0
        for msg in messages:
            try:
                self._codec.unseal(self.name, msg.id, msg.data)
                continue  # bound already
            except UnboundSignature:
                payload = msg.data[signer.SIGNATURE_SIZE:]
            except SignatureError:
                continue  # not ours at all: refused when delivered
            if self._engine.replace_data(msg.id, msg.data,
                                         self._codec.seal(self.name, msg.id, payload)):
                upgraded += 1
        return upgraded

    def _wait_for(self, attempt: Callable[[], _R], block: bool,
                  deadline: Optional[float]) -> _R:
        """Return ``attempt()``, waiting while it raises queue.Empty.

        This is :func:`~persistqueue_liteq.engine.lease_waiting`'s loop around
        an attempt that may be a subclass's ``_get``: it sleeps until a
        producer's wake-up, the earliest lease running out, the deadline, or a
        shutdown (which wakes it through the engine), whichever comes first.
        """
        try:
            return attempt()
        except Empty:
            if not block or _remaining(deadline) <= 0:
                raise
        # Entered before the next look, so that no put after it is missed.
        with self._engine.waiter("put", self.name) as waiter:
            while True:
                try:
                    return attempt()
                except Empty:
                    pass
                remaining = _remaining(deadline)
                if remaining <= 0:
                    raise Empty
                with self._statement_lock:
                    due = self._engine.next_visible_at(self.name)
                # A shutdown() wakes this waiter too, through the engine.
                waiter.wait(seconds_until(self._engine, due, min(remaining, _RELOOK)))

    def _waiting_count(self) -> int:
        """Items stored and not leased: ready (a lease that ran out included)
        and delayed."""
        return self._engine.count(self.name, "waiting")

    # -- leases and acknowledgements -------------------------------------------

    def _owner(self) -> Hashable:
        """Who holds the leases got now: the calling thread (the asyncio
        front end says the task)."""
        return threading.get_ident()

    def _hold(self, msg: Message) -> None:
        lease = _Lease(msg.id, msg.lease, self._owner())  # type: ignore[arg-type]  # leased
        with self._leases_lock:
            self._held[lease.token] = lease
            self._held_by_thread.setdefault(lease.thread, collections.deque()).append(lease)
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

    # -- dead letters and discarding -------------------------------------------

    def dead_letters(self, limit: Optional[int] = None) -> List[Message]:
        """The items that could not be delivered, oldest first.

        Each is a :class:`~persistqueue_liteq.Message` with ``dead_reason``
        (too many deliveries; a payload that did not deserialize),
        ``attempts``, ``last_error`` and the stored payload in ``data``.
        """
        if limit is not None:
            limit = _checks.count(limit, "limit")
        with self._statement_lock:
            return self._engine.dead_letters(self.name, limit)

    def metrics(self) -> Dict[str, int]:
        """What this process did with this queue since it opened it: puts,
        gets (deliveries), acks, retries (deliveries of an item delivered
        before), dead_lettered and expired.  ``LiteQueue(path).counters()``
        has the lasting totals of every process."""
        return self._engine.metrics().get(self.name, dict.fromkeys(METRIC_NAMES, 0))

    def redrive(self, ids: Optional[Iterable[Union[int, Message]]] = None) -> int:
        """Return dead letters (all, or those ids) to the queue, with a fresh
        count of attempts; return how many."""
        wanted = None if ids is None else [
            _checks.count(getattr(i, "id", i), "id", minimum=1) for i in ids]
        with self._statement_lock:
            return self._engine.redrive(self.name, wanted)

    def clear(self) -> int:
        """Delete every item of the queue not yet acknowledged, including those
        that consumers (of any process) are working on; return how many.

        This is the explicit way to discard what ``shutdown(immediate=True)``
        keeps.  Dead letters stay.
        """
        with self._statement_lock:
            return self._engine.purge(self.name)

    # -- closing ------------------------------------------------------------------

    def close(self) -> None:
        """Stop the heartbeat, hand back the items this process got and did
        not finish (they are delivered again at once), and close this
        process's connections.  The data stays; other processes are not
        affected.  multiprocessing.Queue's ``close``."""
        with self._leases_lock:
            if self._closed:
                return
            self._closed = True
        self._heartbeat_stop.set()
        heartbeat = self._heartbeat
        if heartbeat is not None and heartbeat is not threading.current_thread():
            heartbeat.join()  # let it finish a renewal before its connection closes
        # No statement of this object is running while the lock is held.
        with self._statement_lock:
            with self._leases_lock:
                leases = list(self._held.values())
                self._held.clear()
                self._held_by_thread.clear()
                self._auto_unfinished = 0
            try:
                for lease in leases:
                    self._engine.release(lease.id, lease.token)
            except DatabaseBusy:
                pass  # the remaining leases run out by themselves
            finally:
                if self._owns_engine:
                    self._engine.close()

    def join_thread(self) -> None:
        """Wait for the heartbeat thread to end; only after close().
        multiprocessing.Queue's ``join_thread``."""
        if not self._closed:
            raise ValueError("join_thread() may only be called after close()")
        if self._heartbeat is not None:
            self._heartbeat.join()

    def cancel_join_thread(self) -> None:
        """Nothing to do: every put is committed before it returns, so no data
        waits in a buffer.  multiprocessing.Queue's ``cancel_join_thread``."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- pickling -------------------------------------------------------------------

    def __getstate__(self) -> Dict[str, Any]:
        """The engine's spec and the options: a process that unpickles the
        queue opens the database again (it holds none of the leases of the
        process that sent it)."""
        return {
            "path": self._engine.spec,
            "name": self.name,
            "visibility_timeout": self.visibility_timeout,
            "max_retries": self.max_retries,
            "serializer": self.serializer,
            "hmac_key": self._hmac_key,
            "auto_ack": self.auto_ack,
            "timeout_seconds": self.timeout_seconds,
        }


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
