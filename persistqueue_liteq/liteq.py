"""LiteQueue: Liteq's API on the SQLite engine, working as Liteq's README says.

A Liteq user switches by changing one import; the names and defaults are
Liteq's.  What differs is that every promise holds: ``process_failed`` records
the failure and retries or dead-letters, a busy database raises
:class:`~persistqueue_liteq.exceptions.DatabaseBusy` instead of looking empty,
``pop(wait_seconds=...)`` sleeps until woken instead of polling, and a
message is never delivered to two consumers while its lease holds.

Liteq's whole signature is accepted: ``retries_on_conflict`` and
``pause_on_conflict`` retry a put that found the file locked (ids never
collide here), ``pause_on_empty_fetch`` bounds the sleep between two looks of
a waiting pop.  Ids are the file's integers; their ``str()`` is accepted
wherever an id is, so code that keeps Liteq's string ids works.  ``empty()``
is Liteq's: no message visible now; ``qsize()`` counts every live message.

Beyond Liteq, for sqqueue and LeanMQ users: caller-chosen message ids that
de-duplicate puts, ``consumer_id`` recorded with leases, dead-lettering and
acknowledging by the batch of ids, ``recover_leases`` and ``expire_now``,
queues that exist while empty (:meth:`LiteQueue.create_queue`), and
:class:`QueueHandle` objects bound to one queue and its dead letters.

    >>> import tempfile, os
    >>> q = LiteQueue(os.path.join(tempfile.mkdtemp(), "jobs.db"))
    >>> q.put(b"hello")
    1
    >>> with q.consume(wait_seconds=0) as msg:
    ...     msg.data
    b'hello'
    >>> q.empty()
    True
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from . import _checks
from ._policy import describe_exception, last_line, out_of_retries
from .engine import lease_waiting, maintenance_of, wait_drained
from .exceptions import DatabaseBusy
from .backends import front_end_engine
from .engine import DEFAULT_PREFIX

if TYPE_CHECKING:
    from contextlib import AbstractContextManager
    from typing import Self, TypeVar, Union

    from .backends import Location
    from .engine import Counts, Engine, Message, QueueStats, Transaction

    _T = TypeVar("_T")
    #: A message's data: bytes, or a bytearray or memoryview (stored as bytes).
    Payload = Union[bytes, bytearray, memoryview]
    #: A message id: the int, its ``str()`` (Liteq's ids are str), or the Message.
    MessageId = Union[int, str, Message]

__all__ = ["LiteQueue", "QueueHandle", "DeadLetterQueue"]

logger = logging.getLogger("persistqueue_liteq")


class LiteQueue:
    """An SQS-style queue of bytes messages, many named queues to a file.

    Args:
        filename: where the queues live: the SQLite file (created if
            missing), a URL (``sqlite:///jobs.db``), an engine already open
            (see :mod:`.backends`; then no other storage option may be given)
            or None, which reads the location from $PERSISTQUEUE_LITEQ_DB.
        max_retries: how many times a message is delivered again after its
            first delivery failed; after ``1 + max_retries`` failed deliveries
            it goes to the dead-letter queue.
        timeout_seconds: how long to wait for another connection's lock
            before raising DatabaseBusy.
        synchronous: "NORMAL" (default: a committed message survives any crash
            of the process) or "FULL" (it also survives a power loss).
        table_prefix: prefix of this queue's tables, so that it can live in an
            application's own database.
        journal_mode: None (default) puts the file in WAL mode but refuses
            to switch an application's database (tables that are not ours)
            from another mode; "wal" switches it; "keep" keeps its mode.
        consumer_id: the name recorded with every lease this object takes
            (unless a pop names another): shown as ``Message.consumer_id``
            by get/peek and in dead letters, and in ``queues()``' consumers.
    """

    def __init__(
        self,
        filename: Location = None,
        max_retries: int = 5,
        timeout_seconds: float = 5,
        *,
        synchronous: str = "NORMAL",
        table_prefix: str = DEFAULT_PREFIX,
        journal_mode: Optional[str] = None,
        consumer_id: Optional[str] = None,
    ) -> None:
        self.consumer_id = _consumer_id(consumer_id)
        self.max_retries = _checks.count(max_retries, "max_retries")
        self.timeout_seconds = _checks.seconds(timeout_seconds, "timeout_seconds")
        self._engine, self._owns_engine = front_end_engine(
            filename, timeout=self.timeout_seconds, synchronous=synchronous,
            table_prefix=table_prefix, journal_mode=journal_mode,
        )
        self.filename = self._engine.location

    @property
    def engine(self) -> Engine:
        """The storage engine underneath (for the queue family and the pools)."""
        return self._engine

    def __repr__(self) -> str:
        return "<%s %r>" % (type(self).__name__, self.filename)

    # -- producing ------------------------------------------------------------

    def put(self, data: Payload, qname: str = "default", visible_after_seconds: float = 0,
            retries_on_conflict: int = 0, pause_on_conflict: float = 0.05, *,
            ttl_seconds: Optional[float] = None, message_id: Optional[str] = None) -> int:
        """Store one message; return its id.

        ``visible_after_seconds`` delays its first delivery; after
        ``ttl_seconds`` it is dropped undelivered (counted as expired).

        ``message_id`` is the caller's id of the message (a non-empty str, a
        de-duplication key): if ``qname`` holds a message with that id,
        live or dead, the put is ignored and returns that message's id, so
        a producer that repeats a put after a crash stores it once.  It is
        free again once the message is acknowledged or purged.  It is kept
        as ``Message.key``; the id returned (and ``Message.id``) stays the
        file's integer, which signatures are bound to.

        ``retries_on_conflict`` and ``pause_on_conflict`` are Liteq's: there
        they retry a put whose random id collided.  Ids here never collide
        (the file hands them out), so the conflict they retry is the one
        left: a file that stayed locked by another connection for the whole
        ``timeout_seconds``.  The put is tried again up to
        ``retries_on_conflict`` times, ``pause_on_conflict`` seconds apart,
        before DatabaseBusy is raised; 0 (the default, unlike Liteq's 5)
        raises at the first timeout.
        """
        data = _checks.payload(data)
        qname = _checks.queue_name(qname)
        delay = _checks.seconds(visible_after_seconds, "visible_after_seconds")
        ttl = _checks.seconds(ttl_seconds, "ttl_seconds", allow_none=True)
        retries, pause = _conflict_policy(retries_on_conflict, pause_on_conflict)
        key = _caller_id(message_id)
        if not retries:  # the default: DatabaseBusy raised at once
            return self._engine.put(qname, data, delay, ttl, key=key)
        return self._on_conflict(lambda: self._engine.put(qname, data, delay, ttl, key=key),
                                 retries, pause)

    def put_batch(self, messages: Iterable[Payload], qname: str = "default",
                  visible_after_seconds: float = 0, retries_on_conflict: int = 0,
                  pause_on_conflict: float = 0.05, *,
                  ttl_seconds: Optional[float] = None) -> List[int]:
        """Store many messages atomically (all or none); return their ids in
        order.  ``messages`` may be any iterable of bytes, of any length
        (Liteq takes 50 at most).  The conflict keywords are :meth:`put`'s; a
        retried batch is stored once, whole."""
        qname = _checks.queue_name(qname)
        delay = _checks.seconds(visible_after_seconds, "visible_after_seconds")
        ttl = _checks.seconds(ttl_seconds, "ttl_seconds", allow_none=True)
        retries, pause = _conflict_policy(retries_on_conflict, pause_on_conflict)
        if isinstance(messages, (bytes, bytearray, str)):
            raise TypeError("put_batch takes an iterable of messages, not a single %s"
                            % type(messages).__name__)
        payloads: Iterable[bytes]
        if retries:
            payloads = [_checks.payload(m) for m in messages]  # to be read again
        else:
            payloads = map(_checks.payload, messages)
        return self._on_conflict(lambda: self._engine.put_many(qname, payloads, delay, ttl),
                                 retries, pause)

    # (Ignored "missing return": the loop over itertools.count() ends only by
    # return or raise.)
    def _on_conflict(self, work: Callable[[], _T], retries: int,  # type: ignore[return]
                     pause: float) -> _T:
        """``work()``, tried again ``retries`` times while the file is busy.
        DatabaseBusy means that nothing was written, so a retry stores once."""
        for attempt in itertools.count(1):
            try:
                return work()
            except DatabaseBusy as exc:
                if attempt > retries:
                    raise
                logger.warning("%s; retrying (%d of retries_on_conflict=%d) in %g s",
                               exc, attempt, retries, pause)
                time.sleep(pause)

    def put_in(self, conn: object, data: Payload, qname: str = "default",
               visible_after_seconds: float = 0, *, ttl_seconds: Optional[float] = None) -> int:
        """Store one message in the application's own transaction: through
        ``conn``, the application's sqlite3 connection to this file, so that
        it is committed or rolled back with the application's writes (the
        transactional outbox).  Returns its id::

            with conn:  # the application's transaction
                conn.execute("INSERT INTO orders ...")
                q.put_in(conn, b"order placed", "emails")

        Until ``conn`` commits nobody sees the message, and the write lock
        that its transaction holds makes every other writer of the file
        (consumers leasing included) wait, up to their timeout: keep the
        transaction short.  Once it commits, waiting
        consumers see it at their next look (within a second), or at once
        after ``q.engine.wake("put", qname)``.  Not counted in
        :meth:`metrics`.  ValueError for a connection to another file.
        """
        data = _checks.payload(data)
        qname = _checks.queue_name(qname)
        delay = _checks.seconds(visible_after_seconds, "visible_after_seconds")
        ttl = _checks.seconds(ttl_seconds, "ttl_seconds", allow_none=True)
        return self._engine.put_on(conn, qname, data, delay, ttl)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[_CheckedTransaction]:
        """Puts to one or more queues committed together, or not at all::

            with q.transaction() as tx:
                tx.put(b"debit", qname="ledger")
                tx.put(b"credit", qname="ledger-audit")
        """
        with self._engine.transaction() as tx:
            yield _CheckedTransaction(tx)

    # -- consuming ------------------------------------------------------------

    def pop(self, qname: str = "default", invisible_seconds: float = 60,
            wait_seconds: float = 0, pause_on_empty_fetch: Optional[float] = None, *,
            consumer_id: Optional[str] = None) -> Optional[Message]:
        """Lease the oldest ready message for ``invisible_seconds``.

        Returns None if none is ready within ``wait_seconds`` (0: don't wait).
        The message must then be acknowledged (:meth:`ack` or
        :meth:`delete`), or it is delivered again when the lease runs out.

        A waiting pop sleeps until a producer's wake-up (or the next delayed
        message's time) instead of polling as Liteq does.
        ``pause_on_empty_fetch``, Liteq's polling interval, is the longest
        it sleeps between two looks at the file: give it where wake-ups
        cannot arrive (a writer on another machine, or one that writes the
        table itself).  None (the default; Liteq's is 0.05) looks again at
        least every second.
        """
        messages = self.pop_batch(qname, 1, invisible_seconds, wait_seconds,
                                  pause_on_empty_fetch=pause_on_empty_fetch,
                                  consumer_id=consumer_id)
        return messages[0] if messages else None

    def pop_batch(self, qname: str = "default", max_messages: int = 10,
                  invisible_seconds: float = 60, wait_seconds: float = 0, *,
                  pause_on_empty_fetch: Optional[float] = None,
                  consumer_id: Optional[str] = None) -> List[Message]:
        """Lease up to ``max_messages`` ready messages in one transaction,
        oldest first; [] if none is ready within ``wait_seconds``.
        ``consumer_id`` (default: the queue object's) is recorded with the
        lease."""
        qname = _checks.queue_name(qname)
        n = _checks.count(max_messages, "max_messages", minimum=1)
        lease = _checks.seconds(invisible_seconds, "invisible_seconds")
        wait = _checks.seconds(wait_seconds, "wait_seconds")
        poll = _checks.seconds(pause_on_empty_fetch, "pause_on_empty_fetch", allow_none=True,
                               positive=True)
        holder = self.consumer_id if consumer_id is None else _consumer_id(consumer_id)
        return lease_waiting(self._engine, qname, n, lease, "fifo", self.max_retries + 1, wait,
                             poll=poll, holder=holder)

    @contextlib.contextmanager
    def consume(self, qname: str = "default", invisible_on_receive: float = 60,
                wait_seconds: float = 20, *,
                consumer_id: Optional[str] = None) -> Iterator[Optional[Message]]:
        """Lease a message for the ``with`` block; yields None if none came.

        On success the message is acknowledged.  If the block raises, the
        failure is recorded (see :meth:`process_failed`) and the exception
        propagates; on KeyboardInterrupt or SystemExit the message is released
        for another consumer.
        """
        msg = self.pop(qname, invisible_on_receive, wait_seconds, consumer_id=consumer_id)
        if msg is None:
            yield None
            return
        try:
            yield msg
        except Exception as exc:
            self.process_failed(msg, describe_exception(exc))
            raise
        except BaseException:
            self._engine.release(msg.id, msg.lease)
            raise
        self._engine.ack(msg.id, msg.lease, getattr(msg, "queue_name", None))

    def process_failed(self, msg: Message, reason: object, *, delay_seconds: float = 0,
                       send_to_dlq: bool = False) -> bool:
        """Record that processing ``msg`` failed with ``reason``.

        The message becomes ready again after ``delay_seconds``, or, if it has
        had its ``1 + max_retries`` deliveries or ``send_to_dlq`` is true
        (sqqueue's ``fail_message(send_to_dlq=True)``: a failure that no
        retry will mend), goes to the dead-letter queue with the reason.
        Returns False if the lease was no longer held (it ran out and the
        message went to another consumer).
        """
        self._check_leased(msg, "process_failed")
        reason = str(reason)
        delay = _checks.seconds(delay_seconds, "delay_seconds")
        if send_to_dlq:
            return self._engine.dead_letter(msg.id, msg.lease,
                                            last_line(reason) or "dead-lettered", error=reason)
        if msg.attempts > self.max_retries:
            summary = out_of_retries(msg.attempts, self.max_retries, last_line(reason))
            return self._engine.dead_letter(msg.id, msg.lease, summary, error=reason)
        return self._engine.release(msg.id, msg.lease, delay, error=reason)

    def ack(self, msg: Message) -> bool:
        """Acknowledge a leased message (delete it); False if the lease no
        longer holds."""
        self._check_leased(msg, "ack")
        return self._engine.ack(msg.id, msg.lease, getattr(msg, "queue_name", None))

    def delete(self, msg_id: MessageId) -> bool:
        """Delete a message by id (or Message), whatever its state; False if
        there was none.  Liteq's acknowledgement."""
        return self._engine.delete(_message_id(msg_id))

    def ack_batch(self, msgs: Iterable[Message]) -> int:
        """Acknowledge many leased messages in one transaction; return how
        many still held their lease (those were deleted)."""
        msgs = list(msgs)
        for msg in msgs:
            self._check_leased(msg, "ack_batch")
        return self._engine.ack_many([(msg.id, msg.lease) for msg in msgs])

    def delete_batch(self, msg_ids: Iterable[MessageId]) -> int:
        """Delete many messages by id (ints, their str(), or Messages),
        whatever their state, in one transaction; return how many there
        were.  LeanMQ's ``acknowledge_messages(ids)``."""
        return self._engine.ack_many([(i, None) for i in _message_ids(msg_ids)])

    def move_to_dlq(self, msg_ids: Union[MessageId, Iterable[MessageId]], reason: str,
                    qname: Optional[str] = None) -> int:
        """Dead-letter live messages now, leased or not, with ``reason``:
        one id (an int, its str(), or a Message) or an iterable of them, of
        ``qname`` only if given.  Returns how many moved (a message that is
        gone or dead already is skipped).  Their holders' leases end."""
        if qname is not None:
            qname = _checks.queue_name(qname)
        if isinstance(reason, bytes) or not isinstance(reason, str):
            raise TypeError("reason must be a str, not %r" % (reason,))
        return self._engine.dead_letter_ids(_message_ids(msg_ids), reason, qname)

    def recover_leases(self, qname: Optional[str] = None) -> int:
        """End every lease that has run out, of ``qname`` (None: of every
        queue), now; return how many (sqqueue's
        ``recover_processing_messages``).  Their messages are ready
        already (a lease that runs out makes it so by itself); after this
        their late holders can no longer ack, release or extend them."""
        if qname is not None:
            qname = _checks.queue_name(qname)
        return self._engine.recover_leases(qname)

    recover_processing_messages = recover_leases

    def change_visibility(self, msg: Message, seconds: float) -> bool:
        """Make ``msg``'s lease run out ``seconds`` from now: a heartbeat for
        long work, or 0 to hand it back at once.  False if no longer held."""
        self._check_leased(msg, "change_visibility")
        seconds = _checks.seconds(seconds, "seconds")
        if self._engine.set_visibility(msg.id, msg.lease, seconds):
            msg.visible_at = None
            return True
        return False

    def release(self, msg: Message, delay_seconds: float = 0) -> bool:
        """End ``msg``'s lease now; it is ready again after ``delay_seconds``.
        The delivery still counts as an attempt."""
        self._check_leased(msg, "release")
        delay = _checks.seconds(delay_seconds, "delay_seconds")
        return self._engine.release(msg.id, msg.lease, delay)

    @staticmethod
    def _check_leased(msg: object, method: str) -> None:
        if getattr(msg, "lease", None) is None:
            raise ValueError(
                "%s() needs a message delivered by pop() or consume(), got %r "
                "(to delete by id, use delete())" % (method, msg)
            )

    # -- inspecting -------------------------------------------------------------

    def peek(self, qname: str = "default") -> Optional[Message]:
        """The message ``pop`` would deliver next, without leasing it."""
        return self._engine.peek(_checks.queue_name(qname))

    def get(self, msg_id: MessageId) -> Optional[Message]:
        """The message with this id, in whatever state, or None."""
        return self._engine.get(_message_id(msg_id))

    def qsize(self, qname: str = "default") -> int:
        """Messages not yet acknowledged, not dead and not expired: ready,
        delayed and in flight (as Liteq counts them)."""
        return self._engine.count(_checks.queue_name(qname), "live")

    def empty(self, qname: str = "default") -> bool:
        """True if no message of ``qname`` is visible (ready to pop) now, as
        Liteq documents it: a queue holding only delayed or in-flight
        messages is empty, though its :meth:`qsize` is not 0 (the queue
        family's ``empty()`` is the stdlib's: ``qsize() == 0``).  To wait
        until every message is done, use :meth:`join`."""
        return not self._engine.has_ready(_checks.queue_name(qname))

    def join(self, qname: str = "default", timeout: Optional[float] = None) -> bool:
        """Wait until every message of ``qname`` is acknowledged or dead.

        Returns True, or False if ``timeout`` seconds passed first.
        """
        qname = _checks.queue_name(qname)
        timeout = _checks.seconds(timeout, "timeout", allow_none=True)
        return wait_drained(self._engine, qname, timeout)

    def expire_now(self, qname: Optional[str] = None) -> int:
        """Delete the expired messages of ``qname`` (None: of every queue)
        now rather than when a pop meets them; return how many.  They are
        counted as "expired" in :meth:`metrics` and :meth:`counters`.  An
        expired message is already counted nowhere; this gives its space
        back."""
        if qname is not None:
            qname = _checks.queue_name(qname)
        return self._engine.expire(qname)

    #: LeanMQ's name (for every queue, or one).
    process_expired_messages = expire_now

    def queues(self) -> List[QueueStats]:
        """A QueueStats for every queue that exists, emptied ones included:
        ready, delayed, in flight, dead, when it was created, its settings,
        its codec and the consumers that hold leases now."""
        return self._engine.queues()

    def stats(self, qname: str = "default") -> Optional[QueueStats]:
        """The QueueStats of ``qname``, or None if it does not exist."""
        qname = _checks.queue_name(qname)
        for stats in self._engine.queues():
            if stats.name == qname:
                return stats
        return None

    # -- queues as things -------------------------------------------------------

    def create_queue(self, qname: str, settings: Optional[Dict[str, Any]] = None) -> bool:
        """Make ``qname`` exist, listed by :meth:`queues` while empty, until
        :meth:`delete_queue`.  ``settings``, a dict of JSON values, is
        recorded with it (replacing any) and shown as
        ``QueueStats.settings``; the library does not act on it.  Returns
        True if the queue did not exist.  (A put creates a queue too.)"""
        qname = _checks.queue_name(qname)
        if settings is not None:
            if not isinstance(settings, dict):
                raise TypeError("settings must be a dict, not %s" % type(settings).__name__)
            try:
                json.dumps(settings)
            except (TypeError, ValueError) as exc:
                raise TypeError("settings of queue %r must be JSON values: %s"
                                % (qname, exc)) from None
        return self._engine.create_queue(qname, settings)

    def queue(self, qname: str = "default", create: bool = True) -> QueueHandle:
        """A :class:`QueueHandle` bound to ``qname`` and its dead letters;
        with ``create``, the queue is made to exist now.  LeanMQ's
        ``get_queue`` is ``queue(name, create=False)`` where it exists."""
        qname = _checks.queue_name(qname)
        if create:
            self._engine.create_queue(qname)
        return QueueHandle(self, qname)

    def create_queue_pair(self, qname: str) -> Tuple[QueueHandle, DeadLetterQueue]:
        """LeanMQ's: the queue's handle and its dead-letter queue's."""
        handle = self.queue(qname)
        return handle, handle.dead_letter_queue

    def get_queue(self, qname: str) -> Optional[QueueHandle]:
        """LeanMQ's: the handle of an existing queue, or None."""
        if self.stats(qname) is None:
            return None
        return QueueHandle(self, qname)

    def get_dead_letter_queue(self, qname: str) -> Optional[DeadLetterQueue]:
        """LeanMQ's: the dead-letter queue of an existing queue, or None."""
        handle = self.get_queue(qname)
        return None if handle is None else handle.dead_letter_queue

    def list_queues(self) -> List[QueueStats]:
        """LeanMQ's: :meth:`queues`."""
        return self.queues()

    def counters(self) -> Counts:
        """The lasting totals of every process that used the file, per queue:
        {"jobs": {"puts": 9, "gets": 8, "acks": 7, "retries": 1,
        "dead_lettered": 0, "expired": 1}}.  A process adds its counts at
        most a second after it made them, when it is idle, and when it
        closes the queue (or exits); one that is killed loses only those.
        ``gets`` counts deliveries and ``retries`` deliveries of a message
        that was delivered before."""
        return self._engine.counters()

    def metrics(self) -> Counts:
        """What this process did on the file since it opened this queue,
        per queue, with the names of :meth:`counters`."""
        return self._engine.metrics()

    # -- dead letters -------------------------------------------------------------

    def dead_letters(self, qname: str = "default", limit: Optional[int] = None
                     ) -> List[Message]:
        """The dead letters of ``qname``, oldest first, each with
        ``dead_reason``, ``dead_at``, ``attempts`` and ``last_error``."""
        qname = _checks.queue_name(qname)
        if limit is not None:
            limit = _checks.count(limit, "limit")
        return self._engine.dead_letters(qname, limit)

    def redrive(self, qname: str = "default", ids: Optional[Iterable[MessageId]] = None
                ) -> int:
        """Return dead letters (all, or those ids) to the queue with their
        original ids and a fresh count of attempts; return how many."""
        qname = _checks.queue_name(qname)
        wanted = None if ids is None else [_message_id(i) for i in ids]
        return self._engine.redrive(qname, wanted)

    # -- operating ----------------------------------------------------------------

    def clear(self, qname: str = "default", dlq: bool = False) -> int:
        """Delete the live messages of ``qname`` (or, with ``dlq``, its dead
        letters); return how many went."""
        return self._engine.purge(_checks.queue_name(qname), dead=bool(dlq))

    purge = clear

    def delete_queue(self, qname: str) -> int:
        """Delete the queue ``qname``: every message of it, dead letters
        included, its counters and its entry in :meth:`queues`; return how
        many messages went."""
        return self._engine.delete_queue(_checks.queue_name(qname))

    # Upkeep, through the engine's optional maintenance interface: each
    # raises Unsupported on a backend without one.

    def checkpoint(self, mode: str = "TRUNCATE") -> Tuple[int, int, int]:
        """Copy the write-ahead log into the database file and cut it back;
        return ``(busy, pages in the log, pages copied)`` (see
        :meth:`.engine.Maintenance.checkpoint`)."""
        return maintenance_of(self._engine, "checkpoint").checkpoint(mode)

    def vacuum(self) -> None:
        """Give the file's free pages back to the file system."""
        maintenance_of(self._engine, "vacuum").vacuum()

    def integrity_check(self) -> List[str]:
        """``["ok"]`` when the file is sound, else its problems (one str each)."""
        return maintenance_of(self._engine, "integrity_check").integrity_check()

    def close(self) -> None:
        """Close this process's connections (the data stays); an engine
        given to the constructor stays open (its owner closes it)."""
        if self._owns_engine:
            self._engine.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _CheckedTransaction:
    """The object of ``with LiteQueue.transaction() as tx``."""

    def __init__(self, tx: Transaction) -> None:
        self._tx = tx

    def put(self, data: Payload, qname: str = "default", visible_after_seconds: float = 0, *,
            ttl_seconds: Optional[float] = None) -> int:
        return self._tx.put(
            _checks.queue_name(qname),
            _checks.payload(data),
            _checks.seconds(visible_after_seconds, "visible_after_seconds"),
            _checks.seconds(ttl_seconds, "ttl_seconds", allow_none=True),
        )

    def put_batch(self, messages: Iterable[Payload], qname: str = "default",
                  visible_after_seconds: float = 0, *,
                  ttl_seconds: Optional[float] = None) -> List[int]:
        return self._tx.put_many(
            _checks.queue_name(qname),
            map(_checks.payload, messages),
            _checks.seconds(visible_after_seconds, "visible_after_seconds"),
            _checks.seconds(ttl_seconds, "ttl_seconds", allow_none=True),
        )


def _consumer_id(value: object) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise TypeError("consumer_id must be a non-empty str, not %r" % (value,))
    return value


def _caller_id(value: object) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise TypeError("message_id must be a non-empty str (the caller's id of a message), "
                        "not %r" % (value,))
    return value


def _message_ids(values: Union[MessageId, Iterable[MessageId]]) -> List[int]:
    """One id or an iterable of them, as a list of ints (all checked first)."""
    if isinstance(values, (int, str)) or hasattr(values, "id"):
        values = [values]  # type: ignore[list-item]  # one id: an int, a str or a Message
    return [_checks.message_id(v) for v in values]


def _conflict_policy(retries: object, pause: object) -> Tuple[int, float]:
    return (_checks.count(retries, "retries_on_conflict"),
            _checks.seconds(pause, "pause_on_conflict"))


_message_id = _checks.message_id


class QueueHandle:
    """One queue of a :class:`LiteQueue` file, bound by name: what LeanMQ's
    ``create_queue_pair``/``get_queue`` hand out.  Every method is the
    LiteQueue method of the same name with ``qname`` filled in; LeanMQ's
    names are aliases.  Its dead letters are :attr:`dead_letter_queue`.

        >>> emails = q.queue("emails")                  # doctest: +SKIP
        >>> emails.put(b"hello", message_id="welcome-42")  # doctest: +SKIP
    """

    def __init__(self, liteq: LiteQueue, name: str) -> None:
        self.liteq = liteq
        self.name = name

    def __repr__(self) -> str:
        return "<QueueHandle %r of %r>" % (self.name, self.liteq.filename)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, QueueHandle) and other.name == self.name
                and other.liteq is self.liteq)

    def __hash__(self) -> int:  # equal handles, one entry in a set or dict
        return hash((self.name, id(self.liteq)))

    @property
    def dead_letter_queue(self) -> DeadLetterQueue:
        """The dead letters of this queue, as a queue-like object."""
        return DeadLetterQueue(self)

    def put(self, data: Payload, visible_after_seconds: float = 0, *,
            ttl_seconds: Optional[float] = None, message_id: Optional[str] = None) -> int:
        return self.liteq.put(data, self.name, visible_after_seconds, ttl_seconds=ttl_seconds,
                              message_id=message_id)

    def put_batch(self, messages: Iterable[Payload], visible_after_seconds: float = 0, *,
                  ttl_seconds: Optional[float] = None) -> List[int]:
        return self.liteq.put_batch(messages, self.name, visible_after_seconds,
                                    ttl_seconds=ttl_seconds)

    def pop(self, invisible_seconds: float = 60, wait_seconds: float = 0, *,
            consumer_id: Optional[str] = None) -> Optional[Message]:
        return self.liteq.pop(self.name, invisible_seconds, wait_seconds, consumer_id=consumer_id)

    def pop_batch(self, max_messages: int = 10, invisible_seconds: float = 60,
                  wait_seconds: float = 0, *,
                  consumer_id: Optional[str] = None) -> List[Message]:
        return self.liteq.pop_batch(self.name, max_messages, invisible_seconds, wait_seconds,
                                    consumer_id=consumer_id)

    def consume(self, invisible_on_receive: float = 60, wait_seconds: float = 20, *,
                consumer_id: Optional[str] = None
                ) -> AbstractContextManager[Optional[Message]]:
        return self.liteq.consume(self.name, invisible_on_receive, wait_seconds,
                                  consumer_id=consumer_id)

    def peek(self) -> Optional[Message]:
        return self.liteq.peek(self.name)

    def get(self, msg_id: MessageId) -> Optional[Message]:
        """The message with this id if it is one of this queue's, else None."""
        msg = self.liteq.get(msg_id)
        return msg if msg is not None and msg.queue_name == self.name else None

    def ack(self, msg: Message) -> bool:
        return self.liteq.ack(msg)

    def ack_batch(self, msgs: Iterable[Message]) -> int:
        return self.liteq.ack_batch(msgs)

    def delete_batch(self, msg_ids: Iterable[MessageId]) -> int:
        """Delete these of this queue's messages (ids of other queues are
        skipped); return how many."""
        mine = [i for i in _message_ids(msg_ids) if self.get(i) is not None]
        return self.liteq.delete_batch(mine)

    def process_failed(self, msg: Message, reason: object, *, delay_seconds: float = 0,
                       send_to_dlq: bool = False) -> bool:
        return self.liteq.process_failed(msg, reason, delay_seconds=delay_seconds,
                                         send_to_dlq=send_to_dlq)

    def move_to_dlq(self, msg_ids: Union[MessageId, Iterable[MessageId]], reason: str,
                    dlq: Optional[DeadLetterQueue] = None) -> int:
        """Dead-letter these of this queue's messages now with ``reason``.
        ``dlq`` (LeanMQ's) may only be this queue's own."""
        if dlq is not None and (not isinstance(dlq, DeadLetterQueue) or dlq.queue != self):
            raise ValueError("the dead letters of queue %r stay with it; got dlq=%r"
                             % (self.name, dlq))
        return self.liteq.move_to_dlq(msg_ids, reason, self.name)

    def expire_now(self) -> int:
        return self.liteq.expire_now(self.name)

    def recover_leases(self) -> int:
        return self.liteq.recover_leases(self.name)

    def qsize(self) -> int:
        return self.liteq.qsize(self.name)

    def empty(self) -> bool:
        return self.liteq.empty(self.name)

    def join(self, timeout: Optional[float] = None) -> bool:
        return self.liteq.join(self.name, timeout)

    def stats(self) -> Optional[QueueStats]:
        return self.liteq.stats(self.name)

    def clear(self) -> int:
        """Delete the live messages (the queue and its dead letters stay)."""
        return self.liteq.clear(self.name)

    def delete(self) -> int:
        """Delete the queue, dead letters included (see LiteQueue.delete_queue)."""
        return self.liteq.delete_queue(self.name)

    # LeanMQ's names.  Its payloads are dicts (JSON), ours bytes.
    def send_message(self, data: Payload, ttl_seconds: Optional[float] = None, *,
                     message_id: Optional[str] = None) -> int:
        return self.put(data, ttl_seconds=ttl_seconds, message_id=message_id)

    def get_messages(self, count: int = 1, block_for_seconds: Optional[float] = None,
                     consumer_id: Optional[str] = None) -> List[Message]:
        return self.pop_batch(count, wait_seconds=block_for_seconds or 0,
                              consumer_id=consumer_id)

    acknowledge_messages = delete_batch
    delete_messages = delete_batch
    process_expired_messages = expire_now
    recover_processing_messages = recover_leases
    purge = clear
    get_info = stats


class DeadLetterQueue:
    """The dead letters of one queue (LeanMQ's DLQ object).  They stay in
    their queue, in the dead state: requeueing one keeps its id."""

    def __init__(self, queue: QueueHandle) -> None:
        self.queue = queue

    def __repr__(self) -> str:
        return "<DeadLetterQueue of %r>" % (self.queue.name,)

    def messages(self, limit: Optional[int] = None) -> List[Message]:
        """The dead letters, oldest first, with reasons and consumer ids."""
        return self.queue.liteq.dead_letters(self.queue.name, limit)

    def get_messages(self, count: int = 1, block_for_seconds: Optional[float] = None,
                     consumer_id: Optional[str] = None) -> List[Message]:
        """LeanMQ's: the oldest ``count`` dead letters (not leased: a dead
        letter is looked at, then requeued or purged)."""
        return self.messages(count)

    def qsize(self) -> int:
        return self.queue.liteq.engine.count(self.queue.name, "dead")

    def requeue_messages(self, msg_ids: Union[MessageId, Iterable[MessageId], None] = None,
                         destination_queue: Optional[QueueHandle] = None) -> int:
        """Make dead letters (these, or all) ready again in their own queue,
        with their ids; return how many."""
        if destination_queue is not None and destination_queue != self.queue:
            raise ValueError("dead letters of queue %r are requeued into it, not into %r"
                             % (self.queue.name, destination_queue))
        return self.queue.liteq.redrive(self.queue.name,
                                        None if msg_ids is None else _message_ids(msg_ids))

    redrive = requeue_messages

    def purge(self) -> int:
        """Delete the dead letters; return how many."""
        return self.queue.liteq.clear(self.queue.name, dlq=True)
