"""What every persistent queue of :mod:`.queues` shares: :class:`_QueueBase`
(options, the engine, storing and taking, waiting, dead letters, pickling,
close, with the lease book of :mod:`._leases` and the codec checks of
:mod:`._codec_checks` mixed in), the registry that resets a forked child's
queues, and the helpers of blocking calls.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from queue import Empty
from typing import (TYPE_CHECKING, Any, Callable, Dict, Generic, Iterable, List, Optional,
                    TypeVar, Union)

from . import _checks
from ._codec_checks import _CodecChecks
from ._leases import _LeaseBook
from ._policy import describe_exception, seconds_until
from .engine import METRIC_NAMES, Message
from .exceptions import CodecMismatch, DatabaseBusy, UnboundSignatures
from .serializers import Codec, UnboundSignature, resolve
from .backends import describe, front_end_engine, redact

if TYPE_CHECKING:
    from typing import Self

    from .backends import Location
    from .engine import Engine, Order
    from .serializers import BytesLike, SerializerArg

    _R = TypeVar("_R")

T = TypeVar("T")

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


def _deadline(block: bool, timeout: Optional[float]) -> Optional[float]:
    """The monotonic deadline of a blocking call (None: no deadline)."""
    if not block or timeout is None:
        return None
    if timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")
    return time.monotonic() + timeout


def _remaining(deadline: Optional[float]) -> float:
    return float("inf") if deadline is None else deadline - time.monotonic()


def _one_line(exc: BaseException) -> str:
    return "%s: %s" % (type(exc).__name__, exc) if str(exc) else type(exc).__name__


class _QueueBase(_LeaseBook, _CodecChecks, Generic[T]):
    """What every persistent queue shares: options, the engine, leasing and
    acknowledging, the heartbeat, dead letters, pickling, close."""

    #: Delivery order: the engine's lease(order=...).
    _order: Order = "fifo"

    # Set by the subclasses (see _reset_process_state) and _open_engine.
    # _statement_lock is held around every statement that this object's
    # methods run (not the heartbeat's), so that close() never closes a
    # connection in the middle of one.
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

    # -- waiting and counting --------------------------------------------------

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
