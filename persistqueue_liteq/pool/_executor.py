"""What both durable pools are made of: the calls stored, their futures, the
collector that resolves them and the heartbeat (see _PersistentExecutor)."""

from __future__ import annotations

import atexit
import concurrent.futures
import hashlib
import itertools
import os
import pickle
import threading
import time
import weakref
from concurrent.futures import BrokenExecutor, Future
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Optional, Set,
                    Tuple, TypeVar)

from .. import _checks
from .._policy import redrive_tasks
from .._spill import SpilledCounts
from ..backends import describe, front_end_engine
from ..engine import DEFAULT_PREFIX, Engine, EngineSpec
from ..exceptions import SerializationError, StorageFault
from ..serializers import _check_key
from ._shared import (_apply_chunk, _BUGS_IN_A_ROW, _CALL_KEYS, _Config, _dumps,
                      _FAULT_LONGEST_RETRY, _IDLE_CHECK, _OCCURRENCES_IN_MEMORY, _Patient,
                      _STORAGE_ERRORS, _STORE_BATCH, logger)
from ._worker import _settle_failure

_T = TypeVar("_T")

if TYPE_CHECKING:
    from types import TracebackType
    from typing import Literal, ParamSpec, Sequence, Type, TypedDict, Union

    from ..backends import Location
    from ..engine import Message
    from ..serializers import BytesLike
    from ._worker import _Slot

    _P = ParamSpec("_P")

    #: What ``retry_on`` takes: an exception class, or an iterable of them.
    _RetryOn = Union[Type[BaseException], Iterable[Type[BaseException]]]

    class _Options(TypedDict, total=False):
        """The keyword-only options of both pools (see _PersistentExecutor)."""

        name: str
        max_retries: int
        retry_on: _RetryOn
        retry_backoff: float
        retry_backoff_max: float
        lease_seconds: float
        timeout_seconds: float
        synchronous: str
        table_prefix: str
        run_workers: bool
        hmac_key: Optional[BytesLike]
        journal_mode: Optional[str]

    # A call as the storer takes it: the caller's key (None: a digest), the
    # function, its arguments.
    _Call = Tuple[Optional[str], Callable[..., _T], Tuple[Any, ...], Dict[str, Any]]


def _extend_leases(engine: Engine, cfg: _Config, slots: Iterable[_Slot]) -> None:
    """The heartbeat: extend the leases of every task a live worker holds.

    A beat that finds the file failing stops there: the next one, a third
    of a lease later, tries again; if the fault outlasts the leases, the
    tasks come back to whichever worker can run them.  Raises only what is
    not a storage fault (a bug)."""
    for slot in slots:
        lease, held = slot.held()
        for task_id, _ in held:
            try:
                engine.set_visibility(task_id, lease, cfg.lease_seconds)
            except _STORAGE_ERRORS as exc:
                logger.warning("%s: could not extend the lease of task %d: %s",
                               cfg.path, task_id, exc)
                return


def _beat(executor: _PersistentExecutor, slots: Sequence[_Slot]) -> None:
    """One heartbeat of ``executor``.  A bug in it (storage faults are left
    to the next beat) is logged and fails the futures of the tasks whose
    leases it could not extend: they may be delivered again while they run."""
    try:
        _extend_leases(executor._engine, executor._cfg, slots)
    except Exception as exc:
        logger.error("the heartbeat of the pool on %s failed; the futures of the tasks its "
                     "workers hold fail with it", executor._engine.location, exc_info=True)
        executor._fail_tasks([task_id for slot in slots for task_id, _ in slot.held()[1]], exc)


def _exception_types(retry_on: _RetryOn) -> Tuple[Type[BaseException], ...]:
    """``retry_on`` as a tuple of exception classes (one class, or an iterable)."""
    try:
        types = (retry_on,) if isinstance(retry_on, type) else tuple(retry_on)
    except TypeError:
        raise TypeError("retry_on takes exception classes, not %r" % (retry_on,)) from None
    for t in types:
        if not (isinstance(t, type) and issubclass(t, BaseException)):
            raise TypeError("retry_on takes exception classes, not %r" % (t,))
    return types


class _Occurrences:
    """How many identical calls (by digest) a pool was given so far, so that
    the n-th identical call gets the same key in every run of a script.  The
    first _OCCURRENCES_IN_MEMORY digests are counted in a dict, any more in
    a private temporary SQLite database (on disk, deleted when closed), so
    that the pool's memory does not grow with the number of distinct calls.
    Used under the pool's lock."""

    def __init__(self) -> None:
        self._counts: Dict[str, int] = {}
        self._spill: Optional[SpilledCounts] = None
        self._cap = _OCCURRENCES_IN_MEMORY

    def next(self, digest: str) -> int:
        """How many calls with ``digest`` came before this one."""
        n = self._counts.get(digest)
        if n is not None:
            self._counts[digest] = n + 1
            return n
        if len(self._counts) < self._cap:
            self._counts[digest] = 1
            return 0
        if self._spill is None:
            self._spill = SpilledCounts()
        return self._spill.next(digest)

    def close(self) -> None:
        if self._spill is not None:
            self._spill.close()
            self._spill = None

# -- the executors ------------------------------------------------------------------

# Pools not shut down when the interpreter exits still store what was submitted.
_live_executors: weakref.WeakSet[_PersistentExecutor] = weakref.WeakSet()


@atexit.register
def _store_at_exit() -> None:
    for executor in list(_live_executors):
        if os.getpid() == executor._owner_pid:  # not in a forked worker
            executor._flush()


def _end_workers_at_exit() -> None:
    """Before the interpreter joins its threads and children: terminate the
    workers of pools not shut down, as it did when they were daemonic (the
    tasks they ran come back after their lease)."""
    for executor in list(_live_executors):
        executor._end_workers_at_exit()


def _before_threads_join(fn: Callable[[], object]) -> None:
    """Run fn at exit before the interpreter joins its threads, and so before
    multiprocessing's own exit handler, which would wait for the
    (non-daemonic) workers forever; the standard library's pools register
    the same way."""
    if hasattr(threading, "_register_atexit"):
        threading._register_atexit(fn)
    else:  # pragma: no cover (not CPython)
        atexit.register(fn)


_before_threads_join(_end_workers_at_exit)

# How long an exiting interpreter waits for a pool's manager to reap the workers
# it ended.
_EXIT_REAP_SECONDS = 5.0

# The threads of pools told shutdown(wait=False).
_shutting_down: Set[threading.Thread] = set()
# The interpreter is exiting: no more submissions.
_exiting = False


def _finish_at_exit() -> None:
    """As the stdlib's pools do when the interpreter exits: no more
    submissions, and the pending tasks of the pools still open (or shut down
    without waiting) run first.  Runs before _end_workers_at_exit (these run
    last registered first)."""
    global _exiting
    _exiting = True
    for thread in list(_shutting_down):
        if thread.is_alive():  # not a forked worker's copy of the pool's thread
            thread.join()
    for executor in list(_live_executors):
        executor._finish_pending()


_before_threads_join(_finish_at_exit)


class _TaskFuture(Future[_T]):
    """A Future whose ``cancel()`` also removes its task from the file, which
    succeeds while no worker has leased it."""

    def __init__(self, executor: _PersistentExecutor, key: str) -> None:
        super().__init__()
        self._executor, self._key = executor, key
        self._task_id: Optional[int] = None  # set once stored
        self._stored_at: Optional[float] = None  # and when (time.monotonic())

    def _start(self) -> bool:
        """Enter RUNNING (if not there yet); False if it was cancelled (the
        stdlib's set_running_or_notify_cancel, which may be called twice)."""
        with self._condition:
            if self._state == "RUNNING":
                return True
        return self.set_running_or_notify_cancel()

    def cancel(self) -> bool:
        with self._condition:
            if self._state != "PENDING":
                return super().cancel()
        executor = self._executor
        with executor._storing:  # not while its batch is being written
            with executor._lock:
                unstored = executor._outbox.pop(self, None) is not None
                if not executor._outbox:
                    executor._stored.notify_all()
            if not unstored and not executor._cancel_stored(self._task_id):
                return False
        executor._forget(self._key, self)
        if not super().cancel():
            return False
        executor._cancelled = True  # the run is not complete: keep its results
        # No worker will ever dequeue it, which is where the stdlib's pools
        # notify wait() and as_completed(): do it now.
        self.set_running_or_notify_cancel()
        return True


class _PersistentExecutor(concurrent.futures.Executor):
    _broken_error = BrokenExecutor

    if TYPE_CHECKING:
        # What each pool defines (see process.py and thread.py).
        @staticmethod
        def _default_workers() -> int: ...

        def _start_workers(self) -> None: ...

        def _slots_of_workers(self) -> List[_Slot]: ...

        def _break(self, reason: str, cause: Optional[BaseException] = None) -> None: ...

        def _end_workers_at_exit(self) -> None: ...

        def _stop_workers(self) -> None: ...

    def __init__(self, path: Location, max_workers: Optional[int] = None,
                 initializer: Optional[Callable[..., object]] = None,
                 initargs: Iterable[object] = (), *,
                 name: str = "tasks", max_retries: int = 3, retry_on: _RetryOn = (),
                 retry_backoff: float = 0.5, retry_backoff_max: float = 60.0,
                 lease_seconds: float = 30.0, timeout_seconds: float = 5.0,
                 synchronous: str = "NORMAL", table_prefix: str = DEFAULT_PREFIX,
                 run_workers: bool = True, hmac_key: Optional[BytesLike] = None,
                 journal_mode: Optional[str] = None) -> None:
        if max_workers is None:
            max_workers = self._default_workers()
        if isinstance(max_workers, bool) or not isinstance(max_workers, int):
            raise TypeError("max_workers must be an int, not %r" % (max_workers,))
        if max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if hmac_key is not None:
            hmac_key = _check_key(hmac_key)
        timeout = _checks.seconds(timeout_seconds, "timeout_seconds")
        given = describe(path) if isinstance(path, (Engine, EngineSpec)) else None
        if (journal_mode if given is None else given.options.get("journal_mode")) == "keep":
            # Its workers and result followers read while others commit:
            # outside WAL mode every reader blocks every commit.
            raise ValueError("a pool needs its file in WAL mode: journal_mode='keep' is for "
                             "LiteQueue and the queue family; pass journal_mode='wal'")
        self._engine, _ = front_end_engine(path, timeout=timeout, synchronous=synchronous,
                                           table_prefix=table_prefix, journal_mode=journal_mode)
        self._cfg = _Config(
            self._engine.spec, _checks.queue_name(name, "name"),
            self._engine.spec.options.get("timeout", timeout),
            _checks.seconds(lease_seconds, "lease_seconds", positive=True),
            _checks.count(max_retries, "max_retries"),
            _checks.seconds(retry_backoff, "retry_backoff"),
            _checks.seconds(retry_backoff_max, "retry_backoff_max"),
            _exception_types(retry_on),
            hmac_key,
        )
        # For the pool's own threads.  (A _Patient has the engine's methods, so
        # it is typed as one.)
        self._patient: Engine = _Patient(self._engine, self._cfg)  # type: ignore[assignment]
        self._max_workers = max_workers
        self._initializer, self._initargs = initializer, tuple(initargs)
        # _lock guards _pending, _outbox, _occurrences, _shutdown and _broken.
        self._lock = threading.Lock()
        self._pending: Dict[str, List[_TaskFuture[Any]]] = {}  # key -> [futures]
        # task id -> key, of the stored tasks with futures pending
        self._keys: Dict[int, str] = {}
        # future -> (key, pickled call): submitted, not yet stored
        self._outbox: Dict[_TaskFuture[Any], Tuple[str, bytes]] = {}
        self._outbox_filled = threading.Condition(self._lock)
        self._stored = threading.Condition(self._lock)  # outbox empty, nothing in flight
        self._storing = threading.Lock()  # held while the storer writes a batch
        self._in_flight = False  # the storer took a batch it has not written yet
        self._owner_pid = os.getpid()
        self._occurrences = _Occurrences()
        self._shutdown = False
        self._broken: Optional[str] = None
        self._bugs_in_a_row = 0  # workers stopped by a bug since a result came
        # Whether this run submitted calls under digests, had a future
        # cancelled, and forgot the failures of earlier runs' calls.
        self._made_call_keys = self._cancelled = self._failures_forgotten = False
        self._seq = self._start_seq = self._engine.last_result_seq()
        # Workers first: with mp_context=fork, a child forked while another
        # thread of this process is inside SQLite can inherit SQLite's
        # process-wide mutex locked, and hang at its first statement.
        self._run_workers = bool(run_workers)
        if self._run_workers:
            self._start_workers()
        self._storer = threading.Thread(target=self._store, daemon=True,
                                        name="persistqueue_liteq storer")
        self._storer.start()
        _live_executors.add(self)
        self._collector = threading.Thread(target=self._collect, daemon=True,
                                           name="persistqueue_liteq collector")
        self._collector.start()

    # -- submitting -------------------------------------------------------------

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args,
               **kwargs: _P.kwargs) -> Future[_T]:
        """Schedule the call ``fn(*args, **kwargs)`` and return its Future.

        The call is pickled now and stored by a background thread, many
        calls to a transaction, within milliseconds; no worker can run it
        before it is stored, and ``shutdown()`` (or the end of a ``with``
        block, or of the interpreter) returns only once every call is.  Its
        key is a digest of the pickled call plus how many identical calls
        this executor saw before, so the same script run again finds the same
        keys.  Raises SerializationError, storing nothing, if the call cannot
        be pickled."""
        return self._submit_many([(None, fn, args, kwargs)])[0]

    def submit_keyed(self, key: str, fn: Callable[_P, _T], /, *args: _P.args,
                     **kwargs: _P.kwargs) -> Future[_T]:
        """Like :meth:`submit`, with the task's identity given by the caller:
        a task whose key already has a stored result is not run again."""
        if not isinstance(key, str) or not key:
            raise TypeError("a task key must be a non-empty str, not %r" % (key,))
        return self._submit_many([(key, fn, args, kwargs)])[0]

    def _submit_many(self, calls: Iterable[_Call[_T]]) -> List[_TaskFuture[_T]]:
        items: List[Tuple[Optional[str], bytes]] = []
        for key, fn, args, kwargs in calls:
            if not callable(fn):
                raise TypeError("%r is not callable" % (fn,))
            data = _dumps((fn, args, kwargs), "task %s" % getattr(fn, "__qualname__", fn))
            items.append([key, data])  # type: ignore[arg-type]  # (a list: read as a pair)
        with self._lock:
            if self._broken:
                raise self._broken_error(self._broken)
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if _exiting:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            futures: List[_TaskFuture[_T]] = []
            for key, data in items:
                if key is None:
                    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
                    key = "%s#%d" % (digest, self._occurrences.next(digest))
                    self._made_call_keys = True
                future: _TaskFuture[_T] = _TaskFuture(self, key)
                futures.append(future)
                self._pending.setdefault(key, []).append(future)
                self._outbox[future] = (key, self._cfg.seal_task(key, data))
            self._outbox_filled.notify()
        return futures

    def _store(self) -> None:
        """The storer thread: write what was submitted, in batches, and answer
        at once the calls whose results the file already has."""
        while True:
            with self._lock:
                while not self._outbox and not self._shutdown:
                    self._outbox_filled.wait()
                if not self._outbox:
                    return  # shut down, and everything is stored
            with self._storing:
                with self._lock:
                    batch = list(itertools.islice(self._outbox.items(), _STORE_BATCH))
                    for future, _ in batch:
                        del self._outbox[future]
                    self._in_flight = bool(batch)
                try:
                    self._store_batch(batch)
                finally:
                    with self._lock:
                        self._in_flight = False
                        if not self._outbox:
                            self._stored.notify_all()

    def _store_batch(self, batch: List[Tuple[_TaskFuture[Any], Tuple[str, bytes]]]) -> None:
        engine, queue = self._engine, self._cfg.queue
        if not batch:
            return  # cancelled meanwhile
        try:
            if self._made_call_keys and not self._failures_forgotten:
                # A run that did not end cleanly left these: run them again.
                self._patient.forget_results_matching(queue, _CALL_KEYS, self._start_seq,
                                               failed_only=True)
                self._failures_forgotten = True
            statuses = self._patient.put_keyed(queue, [call for _, call in batch])
            answers = {key: self._patient.result(queue, key)
                       for (_, (key, _)), (status, _) in zip(batch, statuses)
                       if status == "done"}
        except Exception as exc:
            # A storage fault that lasted (StorageFault) or a bug: either way
            # these calls are not stored, and their callers are told.
            logger.error("could not store %d tasks in %s: %s", len(batch), engine.location, exc,
                         exc_info=not isinstance(exc, StorageFault))
            for future, (key, _) in batch:
                if self._forget(key, future) and future._start():
                    future.set_exception(exc)
            return
        for (future, (key, _)), (_, task_id) in zip(batch, statuses):
            future._task_id, future._stored_at = task_id, time.monotonic()
            answer = answers.get(key)
            if answer is not None:
                if self._forget(key, future):
                    self._resolve_future(future, *answer)
            elif task_id is not None:
                with self._lock:
                    if key in self._pending:
                        self._keys[task_id] = key

    def _finish_pending(self) -> None:
        """Store what was submitted; if our workers run it, wait for it.
        Only in the pool's own process: a worker forked from it inherits
        the pool, but none of its threads."""
        if os.getpid() != self._owner_pid:
            return
        self._flush()
        if self._run_workers:
            with self._lock:
                pending = [f for futures in self._pending.values() for f in futures]
            concurrent.futures.wait(pending)

    def _flush(self) -> None:
        """Wait until everything submitted so far is stored (or cancelled)."""
        with self._lock:
            while self._outbox or self._in_flight:
                self._stored.wait()

    def map(self, fn: Callable[..., _T], *iterables: Iterable[Any],
            timeout: Optional[float] = None, chunksize: int = 1,
            buffersize: Optional[int] = None) -> Iterator[_T]:
        """Like Executor.map; at most ``buffersize`` tasks (chunks) are stored
        ahead of the caller's iteration (default: 4 per worker, at least 64),
        so a map over millions of inputs keeps memory bounded."""
        chunksize = _checks.count(chunksize, "chunksize", minimum=1)
        if buffersize is None:
            buffersize = max(64, 4 * self._max_workers)
        buffersize = _checks.count(buffersize, "buffersize", minimum=1)
        deadline = None if timeout is None else time.monotonic() + timeout
        calls = zip(*iterables)
        chunks = iter(lambda: list(itertools.islice(calls, chunksize)), [])
        window: List[Tuple[_TaskFuture[List[_T]], List[Tuple[Any, ...]]]] = []

        def refill() -> None:
            batch = list(itertools.islice(chunks, buffersize - len(window)))
            if batch:
                window.extend(zip(self._submit_many(
                    [(None, _apply_chunk, (fn, chunk), {}) for chunk in batch]), batch))

        def results() -> Iterator[_T]:
            try:
                while window:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    chunk_results = window[0][0].result(remaining)
                    del window[0]
                    if len(window) <= buffersize // 2:  # one transaction per half window
                        refill()
                    # Popped as yielded: no result stays alive here (nor in
                    # the future, which holds the same list) once yielded.
                    chunk_results.reverse()
                    while chunk_results:
                        yield chunk_results.pop()
            finally:
                for future, _ in window:
                    future.cancel()

        refill()  # the first window is stored now, as the stdlib submits at once
        return results()

    # -- results ----------------------------------------------------------------

    def _collect(self) -> None:
        """The collector thread: never ends before the pool, whatever fails.

        :meth:`_collect_results` waits storage faults out; what it raises is
        a bug, which fails the futures of every stored task (the collector
        was to resolve them) and is logged; then the collector starts
        again, and fails the futures stored meanwhile if it fails again."""
        while True:
            try:
                self._collect_results()
                return
            except Exception as exc:
                logger.error("the collector of the pool on %s failed; the futures of the "
                             "tasks stored so far fail with it, and it goes on",
                             self._engine.location, exc_info=True)
                self._fail_stored(exc)
                with self._lock:
                    if self._shutdown and not self._pending and not self._outbox:
                        return
                time.sleep(_FAULT_LONGEST_RETRY)

    def _collect_results(self) -> None:
        """Follow the results table and resolve the futures waiting for them.

        While the table cannot be read, look again after a wait; if that
        lasts longer than the pool waits out a storage fault, fail every
        future of a stored task with StorageFault (and so on, each time it
        lasts that long again)."""
        engine, queue = self._engine, self._cfg.queue
        failing_since: Optional[float] = None
        with engine.waiter("done", queue) as waiter:
            while True:
                try:
                    rows = engine.results_since(queue, self._seq)
                except _STORAGE_ERRORS as exc:
                    rows = []
                    failing_since = self._collect_failed(exc, failing_since)
                else:
                    if failing_since is not None:
                        logger.info("%s: results can be read again", engine.location)
                        failing_since = None
                if rows:
                    self._bugs_in_a_row = 0  # the workers make progress
                for seq, key, ok, data in rows:
                    self._seq = seq
                    with self._lock:
                        futures = self._pending.pop(key, ())
                        for future in futures:
                            # (No id, None, until stored, or if answered at once.)
                            self._keys.pop(future._task_id, None)  # type: ignore[arg-type]
                    for future in futures:
                        self._resolve_future(future, ok, data)
                if rows:
                    continue
                self._mark_running()
                with self._lock:
                    if self._shutdown and not self._pending and not self._outbox:
                        return
                waiter.wait(_IDLE_CHECK)

    def _mark_running(self) -> None:
        """The futures of the tasks our workers run enter RUNNING (their
        overseers wake us once a task has run for a moment)."""
        for slot in self._slots_of_workers():
            task_id = slot.task_id
            if task_id and slot.started:
                with self._lock:
                    futures = list(self._pending.get(  # no key (None) finds none
                        self._keys.get(task_id), ()))  # type: ignore[arg-type]
                for future in futures:
                    future._start()

    def _collect_failed(self, exc: BaseException, failing_since: Optional[float]) -> float:
        """The collector could not read the results: say so, and fail the
        futures waiting for them once it lasts; return when the failures
        that count began."""
        now = time.monotonic()
        if failing_since is None:
            logger.warning("%s: cannot read the results of the pool's tasks; retrying: %s",
                           self._engine.location, exc, exc_info=True)
            return now
        if now - failing_since < self._cfg.fault_seconds:
            return failing_since
        error = StorageFault(
            "%s: the results of the pool's tasks could not be read for more than %gs "
            "(lease_seconds, or twice timeout_seconds): %s"
            % (self._engine.location, self._cfg.fault_seconds, exc))
        error.__cause__ = exc
        self._storage_lost(error, now)
        return now

    def _storage_lost(self, error: StorageFault, when: float) -> None:
        """A storage fault lasted until ``when`` (``error``, a StorageFault):
        fail the future of every task stored before, which would otherwise
        wait for as long as the fault lasts.  The tasks stay in the file and
        run once it works again; their results answer a rerun of the script.
        (Those stored since waited out no fault.)"""
        logger.error("%s; the futures of the tasks stored before fail with it", error)
        with self._lock:
            stored = [f for futures in self._pending.values() for f in futures
                      if f._stored_at is not None and f._stored_at < when]
        self._fail_futures(stored, error)

    def _fail_stored(self, error: BaseException) -> None:
        """Fail the future of every stored task with ``error``."""
        with self._lock:
            stored = [f for fs in self._pending.values() for f in fs if f._stored_at is not None]
        self._fail_futures(stored, error)

    def _fail_tasks(self, task_ids: Iterable[int], error: BaseException) -> None:
        """Fail the futures of these stored tasks with ``error``."""
        ids = set(task_ids)
        with self._lock:
            futures = [f for fs in self._pending.values() for f in fs if f._task_id in ids]
        self._fail_futures(futures, error)

    def _fail_futures(self, futures: Iterable[_TaskFuture[Any]], error: BaseException) -> None:
        for future in futures:
            if self._forget(future._key, future) and future._start():
                future.set_exception(error)

    def _hand_back(self, slot: _Slot, reason: str, error_type: Callable[[str], Exception]) -> None:
        """A worker ended (``reason``): hand back the tasks it held; the one
        it was running (if any) costs an attempt and, past max_retries, fails
        with ``error_type``.  If the file cannot be written for longer than
        the pool waits out a fault, fail their futures with StorageFault
        instead: their leases, no longer extended, run out, and the tasks
        run again later, for another run of the script."""
        task_id, (lease, held) = slot.task_id, slot.held()
        try:
            for other, _ in held:  # waiting, or done but not stored: no attempt lost
                if other != task_id:
                    self._patient.release(other, lease, attempted=False)
            if not task_id:
                return  # it stopped between tasks (max_tasks_per_child, shutdown, a fault)
            logger.warning("%s while running task %d; replacing it", reason, task_id)
            msg = self._patient.get(task_id)
            if msg is None or msg.visible_at is None:
                return
            exc_text = "%s (attempt %d of %d)" % (reason, msg.attempts, self._cfg.max_retries + 1)
            _settle_failure(self._patient, self._cfg, task_id, lease,
                            msg.key,  # type: ignore[arg-type]  # a task's key is never None
                            msg.attempts, error_type(exc_text), exc_text)
        except StorageFault as exc:
            logger.error("cannot hand back the tasks of a worker that ended: %s", exc)
            self._fail_tasks([task_id] + [other for other, _ in held], exc)
        except Exception as exc:  # not a storage fault (those are waited out): a bug
            logger.error("cannot hand back the tasks of a worker that ended; their futures "
                         "fail with the error", exc_info=True)
            self._fail_tasks([task_id] + [other for other, _ in held], exc)

    def _resolve_future(self, future: _TaskFuture[Any], ok: bool, data: bytes) -> None:
        try:
            value = pickle.loads(self._cfg.open_result(future._key, ok, data))
        except SerializationError as exc:  # a signature that does not match
            value, ok = exc, False
        except BaseException as exc:
            value, ok = SerializationError("the task's %s cannot be unpickled: %r" % (
                "result" if ok else "exception", exc)), False
        if not future._start():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def _cancel_stored(self, task_id: Optional[int]) -> bool:
        """Delete a stored task that has not started: unleased, or waiting
        in the batch of one of this pool's workers.  False if it started (or
        another pool's worker holds it)."""
        if task_id is None:  # answered from the stored results
            return False
        if self._engine.delete_unleased(task_id):
            return True
        if any(slot.cancel(task_id) for slot in self._slots_of_workers()):
            self._engine.delete(task_id)
            return True
        return False

    def _forget(self, key: str, future: _TaskFuture[Any]) -> bool:
        """Stop waiting for ``future``'s result; False if nobody was."""
        with self._lock:
            futures = self._pending.get(key, [])
            found = future in futures
            if found:
                futures.remove(future)
            if not futures:
                self._pending.pop(key, None)
                # (No id, None, until stored, or if answered at once.)
                self._keys.pop(future._task_id, None)  # type: ignore[arg-type]
            return found

    def _worker_stopped_by_bug(self, who: str, bug: str,
                               cause: Optional[BaseException] = None) -> bool:
        """``who`` (a worker) was stopped by ``bug`` (a line): True if that
        breaks the pool, _BUGS_IN_A_ROW of them with no result meanwhile."""
        with self._lock:
            self._bugs_in_a_row += 1
            count = self._bugs_in_a_row
        if count < _BUGS_IN_A_ROW:
            return False
        self._break("%d workers in a row were stopped by a bug, with no result stored "
                    "meanwhile; the last, %s: %s (its traceback is logged)"
                    % (count, who, bug), cause=cause)
        return True

    def _mark_broken(self, reason: str, cause: Optional[BaseException] = None) -> None:
        logger.error("pool on %s is broken: %s", self._engine.location, reason)
        with self._lock:
            self._broken = reason
            pending, self._pending = self._pending, {}
            self._outbox.clear()
            self._stored.notify_all()
        error = self._broken_error(reason)
        error.__cause__ = cause
        for futures in pending.values():
            for future in futures:
                if future._start():
                    future.set_exception(error)

    # -- shutting down -------------------------------------------------------------

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc_val: Optional[BaseException],
                 exc_tb: Optional[TracebackType]) -> Literal[False]:
        # A with block that ends with an exception did not end cleanly: the
        # results stay, for a rerun to resume.
        self._shutdown_and_forget(exc_type is None)
        return False

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """As Executor.shutdown.  A pool without workers (run_workers=False)
        does not wait for its results: it returns once every call is
        stored, and its futures are resolved if results come meanwhile.

        A run that ends cleanly -- shut down (or its with block ended
        without an exception) with every future done, none cancelled --
        forgets the stored results of its queue's submit() and map() calls,
        so that none answers a call of a later run; submit_keyed results
        stay until forget_results()."""
        if not wait:  # pending tasks still run, as with the stdlib's pools
            thread = threading.Thread(target=self._shutdown_in_background,
                                      args=(cancel_futures,), daemon=True)
            _shutting_down.add(thread)
            thread.start()
            return
        self._shutdown_and_forget(True, cancel_futures)

    def _shutdown_in_background(self, cancel_futures: bool) -> None:
        try:
            self._shutdown_and_forget(True, cancel_futures)
        finally:
            _shutting_down.discard(threading.current_thread())

    def _shutdown_and_forget(self, clean: bool, cancel_futures: bool = False) -> None:
        with self._lock:
            already = self._shutdown
            self._shutdown = True
            pending = [f for futures in self._pending.values() for f in futures]
            self._outbox_filled.notify()
        if cancel_futures:
            for future in pending:
                future.cancel()
        self._storer.join()
        _live_executors.discard(self)
        if self._run_workers:
            concurrent.futures.wait(pending)
            self._stop_workers()
        with self._lock:
            complete = not self._pending and not self._cancelled and self._broken is None
            forget, self._made_call_keys = clean and complete and self._made_call_keys, False
        if forget and not already:
            try:
                self._engine.forget_results_matching(self._cfg.queue, _CALL_KEYS)
            except _STORAGE_ERRORS as exc:  # shutdown still ends
                logger.warning("%s: could not forget the results of this run's calls (a "
                               "later run may find them): %s", self._engine.location, exc)
        self._engine.wake("done", self._cfg.queue)
        if self._run_workers:
            self._collector.join()
        with self._lock:
            self._occurrences.close()

    # -- information -----------------------------------------------------------------

    def dead_letters(self, limit: Optional[int] = None) -> List[Message]:
        """Tasks that failed for good, with reasons (see LiteQueue.dead_letters)."""
        return self._engine.dead_letters(self._cfg.queue, limit)

    def forget_results(self, key: Optional[str] = None) -> int:
        """Delete the stored results (of one key, or all of this pool's
        queue) once a batch is over; return how many."""
        return self._engine.forget_results(self._cfg.queue, key)

    def redrive(self, ids: Optional[Sequence[int]] = None) -> int:
        """Run dead tasks again (their stored failures are forgotten)."""
        return redrive_tasks(self._engine, self._cfg.queue, ids)
