"""Wake-ups through PostgreSQL's LISTEN/NOTIFY.

Every namespace (schema and table prefix) has one channel; a notification's
payload names what changed: ``"<kind>:<digest of the queue's name>"``.  A
writer sends it with ``pg_notify`` in the transaction of its change, so it is
delivered when (and only if) the change commits, to every process::

    waiting thread                         the process's listener thread
    --------------                         ------------------------------
    make a pipe, register it under         one connection of its own per
      (channel, kind, queue)                 database (autocommit), LISTENing
    ask the listener to LISTEN on the        to every channel a waiter asked
      channel; wait until it has     <---- for; LISTEN, then say so
    look at the queue once more
    block in select() on the pipe  <---- a notification arrives: write a
      until woken, or 1 s (a safety          byte to the pipe of each waiter
      look), or the deadline                 of (channel, kind, queue)

Registration and LISTEN come before the last look at the queue, so nothing
committed after that look goes unnoticed.  A waiter of this process is also
woken directly, without the round trip (:meth:`Listener.wake_local`).

The listener reconnects when its connection is lost (with a growing pause),
LISTENs again to every channel, and then wakes every waiter, since what was
sent meanwhile is lost.  While it is down waiters still look at the queue at
least every ``SAFETY_INTERVAL`` seconds.  After a fork the child gets a
listener of its own at its first wait; the parent's connection and thread
are left alone (never closed from the child).

Each waiter holds a pipe, readable when woken: ``fileno()`` and ``drain()``
let an event loop watch it (:mod:`persistqueue_liteq.aio` does).
"""

from __future__ import annotations

import hashlib
import logging
import os
import select
import threading
import time
from typing import TYPE_CHECKING, Any, Dict, List, NoReturn, Optional, Set, Tuple

if TYPE_CHECKING:
    import psycopg
    from psycopg.pq.abc import PGconn

logger = logging.getLogger("persistqueue_liteq")

#: Longest sleep between two looks at the queue when nothing arrives.
SAFETY_INTERVAL = 1.0
#: How long a waiter waits for the listener's LISTEN before looking anyway.
LISTEN_WAIT = 2.0


def digest(text: str, size: int = 8) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=size).hexdigest()


def channel_of(schema: str, prefix: str) -> str:
    """The NOTIFY channel of a namespace (an identifier under 63 bytes)."""
    return "pqlq_" + digest("%s.%s" % (schema, prefix), 10)


def payload_of(kind: str, queue: str) -> str:
    return "%s:%s" % (kind, digest(queue))


_listeners: Dict[str, Listener] = {}  # conninfo -> Listener, of this process
_listeners_lock = threading.Lock()
_listeners_pid = os.getpid()
_parents: List[Dict[str, Listener]] = []  # a forked child's inherited listeners: kept, never closed


def listener_for(conninfo: str, shown: str) -> Listener:
    """This process's listener of the database ``conninfo`` (``shown``:
    the same without its password, for messages)."""
    global _listeners_pid, _listeners
    with _listeners_lock:
        if _listeners_pid != os.getpid():
            _parents.append(_listeners)
            _listeners = {}
            _listeners_pid = os.getpid()
        listener = _listeners.get(conninfo)
        if listener is None:
            listener = _listeners[conninfo] = Listener(conninfo, shown)
        return listener


class Listener:
    """One LISTEN connection of one process to one database, and the waiters
    it wakes.  ``_lock`` guards ``_waiters``, ``_wanted`` and ``_listening``;
    it is never held while talking to the server."""

    def __init__(self, conninfo: str, shown: str) -> None:
        self._conninfo = conninfo
        self._shown = shown
        self._lock = threading.Condition(threading.Lock())
        # (channel, payload) -> set of _Waiter
        self._waiters: Dict[Tuple[str, str], Set[_Waiter]] = {}
        self._wanted: Set[str] = set()  # channels some waiter asked for
        self._listening: Set[str] = set()  # channels LISTENed on the current connection
        self._thread: Optional[threading.Thread] = None
        #: Whether the last connection attempt failed: waiters then do not
        #: wait for a LISTEN that cannot come (their safety looks stand in).
        self._down = False
        self._poke_r, self._poke_w = os.pipe()
        os.set_blocking(self._poke_w, False)
        os.set_blocking(self._poke_r, False)
        self._pid = os.getpid()

    # -- waiters' side ------------------------------------------------------------

    def waiter(self, channel: str, kind: str, queue: str) -> _Waiter:
        return _Waiter(self, channel, payload_of(kind, queue))

    def _add(self, waiter: _Waiter) -> None:
        with self._lock:
            self._waiters.setdefault(waiter.key, set()).add(waiter)
            if waiter.key[0] in self._listening:
                return
            self._wanted.add(waiter.key[0])
            self._start()
            if self._down:
                return
        self._poke()
        deadline = time.monotonic() + LISTEN_WAIT
        with self._lock:
            while waiter.key[0] not in self._listening and not self._down:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return  # down: the waiter's safety looks stand in
                self._lock.wait(remaining)

    def _remove_locked(self, waiter: _Waiter) -> None:
        group = self._waiters.get(waiter.key)
        if group is not None:
            group.discard(waiter)
            if not group:
                del self._waiters[waiter.key]

    def wake_local(self, channel: str, kind: str, queue: str) -> None:
        """Wake this process's waiters of (channel, kind, queue) now."""
        self._wake_key((channel, payload_of(kind, queue)))

    # Pokes are written with the lock held: a waiter leaves (and closes its
    # pipe) only under it, so no byte goes to a descriptor reused meanwhile.

    def _wake_key(self, key: Tuple[str, str]) -> None:
        with self._lock:
            for waiter in self._waiters.get(key, ()):
                waiter.poke()

    def _wake_all(self) -> None:
        with self._lock:
            for group in self._waiters.values():
                for waiter in group:
                    waiter.poke()

    # -- the listening thread -------------------------------------------------------

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name="persistqueue_liteq listener %s" % self._shown)
            self._thread.start()

    def _poke(self) -> None:
        try:
            os.write(self._poke_w, b"\0")
        except (BlockingIOError, InterruptedError):
            pass

    def _run(self) -> None:
        import psycopg

        from .connections import with_tcp_defaults

        pause = 0.1
        while True:
            conn: Optional[psycopg.Connection[Any]] = None
            try:
                conn = psycopg.connect(with_tcp_defaults(self._conninfo), autocommit=True,
                                       application_name="persistqueue_liteq listener")
                reconnected = self._thread_started_before
                self._thread_started_before = True
                self._down = False
                pause = 0.1
                self._serve(conn, reconnected)
            except Exception as exc:  # lost: listen again after a pause
                with self._lock:
                    self._down = True
                    self._lock.notify_all()  # waiters waiting for a LISTEN go on
                logger.warning("wake-ups from %s interrupted (%s); reconnecting in %.1f s "
                               "(waiters look at their queues every %g s meanwhile)",
                               self._shown, exc, pause, SAFETY_INTERVAL)
            finally:
                with self._lock:
                    self._listening.clear()
                if conn is not None and os.getpid() == self._pid:
                    try:
                        conn.close()
                    except Exception:
                        pass
            if os.getpid() != self._pid:
                return
            time.sleep(pause)
            pause = min(pause * 2, 5.0)

    _thread_started_before = False

    def _serve(self, conn: psycopg.Connection[Any], reconnected: bool) -> NoReturn:
        fd = conn.fileno()
        pgconn = conn.pgconn
        if reconnected:
            with self._lock:
                self._wanted |= {key[0] for key in self._waiters}
        first = True
        while True:
            with self._lock:
                todo = self._wanted - self._listening
            for channel in sorted(todo):
                conn.execute('LISTEN "%s"' % channel)
            if todo:
                with self._lock:
                    self._listening |= todo
                    self._lock.notify_all()
            if reconnected and first:
                self._wake_all()  # what was sent while we were away is lost
            first = False
            self._dispatch(pgconn)  # any received while executing
            readable, _, _ = select.select([fd, self._poke_r], [], [], 30.0)
            if self._poke_r in readable:
                try:
                    while os.read(self._poke_r, 512):
                        pass
                except (BlockingIOError, InterruptedError):
                    pass
            if fd in readable:
                pgconn.consume_input()
                if pgconn.status != 0:  # CONNECTION_OK
                    raise ConnectionError("the connection was closed")
                self._dispatch(pgconn)
            elif not readable:
                conn.execute("SELECT 1")  # notice a dead connection

    def _dispatch(self, pgconn: PGconn) -> None:
        while True:
            n = pgconn.notifies()
            if n is None:
                return
            channel, payload = n.relname.decode(), n.extra.decode()
            self._wake_key((channel, payload))


class _Waiter:
    """Registered (and its channel LISTENed) while entered."""

    # The pipe's ends, while entered.
    _r: Optional[int]
    _w: Optional[int]

    def __init__(self, listener: Listener, channel: str, payload: str) -> None:
        self._listener = listener
        self.key = (channel, payload)
        self._r = self._w = None

    def __enter__(self) -> _Waiter:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        try:
            self._listener._add(self)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def poke(self) -> None:
        w = self._w
        if w is None:
            return
        try:
            os.write(w, b"\0")
        except (BlockingIOError, InterruptedError, OSError):
            pass

    def wait(self, timeout: float) -> bool:
        """Sleep until woken or ``timeout`` seconds pass; True if woken."""
        timeout = max(min(timeout, SAFETY_INTERVAL), 0)
        try:
            # Entered: a descriptor.
            readable, _, _ = select.select([self._r], [], [], timeout)  # type: ignore[type-var]
        except InterruptedError:
            return False
        if not readable:
            return False
        self.drain()
        return True

    def fileno(self) -> int:
        """The pipe's descriptor, readable when woken (for an event loop);
        call drain() when it is."""
        return self._r  # type: ignore[return-value]  # entered: a descriptor

    #: An event loop watching fileno() looks again at least this often.
    interval = SAFETY_INTERVAL

    def drain(self) -> None:
        try:
            while os.read(self._r, 512):  # type: ignore[arg-type]  # entered: a descriptor
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _close(self) -> None:
        for fd in (self._r, self._w):
            if fd is not None:
                os.close(fd)
        self._r = self._w = None

    def __exit__(self, *exc_info: object) -> None:
        with self._listener._lock:
            self._listener._remove_locked(self)
            self._close()
