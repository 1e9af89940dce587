"""What both durable pools are made of: _PersistentExecutor, the base of
PersistentProcessPoolExecutor and PersistentThreadPoolExecutor (its options,
the heartbeat, the workers that end, breaking, shutting down), built on the
storer (_storer.py: submitting, the calls' futures), the collector
(_collector.py: reading outcomes back, resolving futures) and the exit
handlers (_atexit.py)."""

from __future__ import annotations

import concurrent.futures
import os
import threading
from concurrent.futures import BrokenExecutor
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Tuple

from .. import _checks
from .._policy import redrive_tasks
from ..backends import describe, front_end_engine
from ..engine import DEFAULT_PREFIX, Engine, EngineSpec
from ..exceptions import StorageFault
from ..serializers import _check_key
from ._shared import _BUGS_IN_A_ROW, _CALL_KEYS, _Config, _Patient, _STORAGE_ERRORS, logger
from ._worker import _settle_failure
from ._atexit import _live_executors, _shutting_down
from ._collector import _Collector
from ._storer import _Occurrences, _Storer, _TaskFuture

if TYPE_CHECKING:
    from types import TracebackType
    from typing import Literal, Sequence, Type, TypedDict, Union

    from ..backends import Location
    from ..engine import Message
    from ..serializers import BytesLike
    from ._worker import _Slot


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


class _PersistentExecutor(_Storer, _Collector, concurrent.futures.Executor):
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
    # -- workers that end, and breaking ------------------------------------------

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

    def redrive(self, ids: Optional[Iterable[int]] = None) -> int:
        """Run dead tasks again (their stored failures are forgotten)."""
        return redrive_tasks(self._engine, self._cfg.queue, ids)
