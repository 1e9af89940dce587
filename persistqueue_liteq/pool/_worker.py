"""A worker of either pool: it leases tasks, runs them and stores their
outcomes (see _worker_loop), with an overseer thread beside it."""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from typing import (TYPE_CHECKING, Callable, Iterator, List, Optional, Sequence, Tuple, TypeVar,
                    Union)

from .._policy import describe_exception, out_of_retries, seconds_until
from ..exceptions import DatabaseBusy, LiteQueueError, SerializationError, StorageFault, WorkerDied
from ._shared import (_BATCH_MAX, _BUG, _DROPPED, _failure_payload, _futures_logger, _IDLE,
                      _IDLE_CHECK, _INIT_FAILED, _Patient, _patiently, _PROMPT_SWITCH, _STARTED,
                      _STORAGE_ERRORS, _UP, _WAITING, _WATCH_EVERY, _WORKER_SWITCH, logger)

if TYPE_CHECKING:
    import ctypes as _ctypes
    import multiprocessing.context
    import multiprocessing.synchronize
    from typing import Any, Protocol

    from ..engine import Engine, Outcome
    from ._shared import _Config, _Task

    _T = TypeVar("_T")

    class _Cells(Protocol[_T]):
        """A list, or a ctypes array in shared memory: _Slot's fields."""

        def __getitem__(self, i: int, /) -> _T: ...

        def __setitem__(self, i: int, value: _T, /) -> None: ...


def _complete_batch(engine: Engine, cfg: _Config, batch: List[_Task],
                    outcomes: List[Outcome], want: int) -> List[_Task]:
    """Store the ``outcomes`` of ``batch`` and lease up to ``want`` more
    tasks, in one transaction, waiting out a passing fault (``engine`` is a
    _Patient).  If the file refuses the transaction for another reason than
    a lock, the results are stored one at a time, and one that the file
    refuses (too big for SQLite, or for the disk) fails its task instead:
    counted as an attempt, as if the task had raised StorageFault, so it is
    retried up to max_retries, then dead-lettered, never run forever."""
    attempts = {msg.id: msg.attempts for msg in batch}
    raw: Engine = engine.raw  # type: ignore[attr-defined]  # a _Patient, as said above

    def attempt():  # type: () -> List[_Task]
        # (A type comment: an annotation would be made at every call.)
        try:
            # A pool's queue holds tasks only.
            return raw.complete_many(  # type: ignore[return-value]
                cfg.queue, outcomes, want, cfg.lease_seconds)
        except DatabaseBusy:
            raise
        except _STORAGE_ERRORS:
            if not outcomes:
                raise
        while outcomes:  # stored ones leave the list: a retry stores no result twice
            _store_result(raw, cfg, outcomes[0], attempts[outcomes[0][0]])
            del outcomes[0]
        return raw.complete_many(  # type: ignore[return-value]  # tasks, as above
            cfg.queue, [], want, cfg.lease_seconds)

    return _patiently(cfg, "storing results", attempt)


def _store_result(engine: Engine, cfg: _Config, outcome: Outcome, attempts: int) -> None:
    msg_id, lease, key, ok, data = outcome[:5]
    try:
        engine.complete_many(cfg.queue, [outcome])  # a success, or a failure for good
    except DatabaseBusy:
        raise
    except _STORAGE_ERRORS as exc:
        # Our storage errors name the file already; the driver's and the OS's
        # may not.
        where = "" if isinstance(exc, LiteQueueError) else " in %s" % cfg.path
        error = StorageFault("the result of task %s (%d bytes pickled) cannot be stored%s: %s"
                             % (key, len(data), where, exc))
        error.__cause__ = exc
        # If the file refuses this small write too, the fault is not the
        # result's: the caller tries again.
        _settle_failure(engine, cfg, msg_id, lease, key, attempts, error, str(error))


def _settle_failure(engine: Engine, cfg: _Config, task_id: int, lease: Optional[int], key: str,
                    attempts: int, exc: BaseException, reason: str) -> None:
    """A worker died or timed out on a task: retry it later, or store the
    failure for good."""
    if attempts > cfg.max_retries:
        summary = out_of_retries(attempts, cfg.max_retries, reason)
        engine.complete(task_id, lease, key, False,
                        cfg.seal_result(key, False, _failure_payload(exc)), dead_reason=summary)
    else:
        engine.release(task_id, lease, cfg.backoff(attempts), error=reason)


def _failed(cfg: _Config, msg: _Task, error: BaseException, reason: str,
            text: Optional[str] = None) -> Outcome:
    """The outcome of a task that failed for good: its exception, stored
    with the task dead-lettered for ``reason``, ``text`` its last error."""
    return (msg.id, msg.lease, msg.key, False,
            cfg.seal_result(msg.key, False, _failure_payload(error)), reason,
            reason if text is None else text)


def _raised(engine: Engine, cfg: _Config, msg: _Task, exc: BaseException) -> Optional[Outcome]:
    """The task raised ``exc``: its outcome, as with the stdlib's pools,
    unless it is one of ``retry_on`` and retries are left (then it is
    released for a later attempt and there is no outcome yet: None)."""
    text = describe_exception(exc)
    reason = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    retryable = isinstance(exc, cfg.retry_on)
    if retryable and msg.attempts <= cfg.max_retries:
        engine.release(msg.id, msg.lease, cfg.backoff(msg.attempts), error=text)
        return None
    if retryable:
        reason = out_of_retries(msg.attempts, cfg.max_retries, reason)
    else:
        reason = "raised %s" % reason
    return _failed(cfg, msg, exc, reason, text)


def _run_one(engine: Engine, cfg: _Config, msg: _Task,
             slot: _Slot) -> Tuple[bool, Optional[Outcome]]:
    """Run one leased task; return ``(ran, outcome)``: the outcome to store
    (a result or a failure for good), or None if the task was released for a
    retry.  ``ran`` is False if the task was not run (delivered too often
    already).  Never raises."""
    if msg.attempts > cfg.max_retries + 1:  # its last holders died unnoticed
        reason = "not finished after %d deliveries (max_retries=%d); last error: %s" % (
            msg.attempts - 1, cfg.max_retries, msg.last_error)
        return False, _failed(cfg, msg, WorkerDied(reason), reason)
    try:
        fn, args, kwargs = pickle.loads(cfg.open_task(msg))
    except BaseException as exc:  # a task that cannot be loaded will never run
        error = exc if isinstance(exc, SerializationError) else SerializationError(
            "task %s cannot be unpickled in the worker: %r" % (msg.key, exc))
        return True, _failed(cfg, msg, error, str(error))
    slot.running()  # task_timeout counts from here, not from the unpickling
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        return True, _raised(engine, cfg, msg, exc)
    try:
        return True, (msg.id, msg.lease, msg.key, True,
                      cfg.seal_result(msg.key, True, pickle.dumps(result, pickle.HIGHEST_PROTOCOL)))
    except Exception as exc:  # any exception of the result's own code (its __reduce__)
        error = SerializationError("the result of task %s cannot be pickled: %s" % (msg.key, exc))
        return True, _failed(cfg, msg, error, str(error))


class _Idle:
    """How many workers of a pool wait for work: shared by its workers (in
    shared memory for process workers, ``ctx``), so that a worker holding
    unstarted tasks behind a slow one hands them back when another is idle."""

    def __init__(self, ctx: Optional[multiprocessing.context.BaseContext] = None) -> None:
        self._value = None if ctx is None else ctx.Value(ctypes.c_int, 0)
        self._lock = threading.Lock() if ctx is None else None
        self._count = 0

    def add(self, n: int) -> None:
        if self._value is None:
            with self._lock:  # type: ignore[union-attr]  # made when _value is None
                self._count += n
        else:
            with self._value.get_lock():
                self._value.value += n

    def __bool__(self) -> bool:
        return (self._count if self._value is None else self._value.value) > 0


@contextlib.contextmanager
def _prompt_switching() -> Iterator[None]:
    """While the overseer works: a task that runs Python code holds the GIL,
    and would give it back only every switch interval (5 ms) each time the
    overseer's storing lets go of it; ask for it back sooner meanwhile."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(min(interval, _PROMPT_SWITCH))
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


class _Overseer:
    """A worker's second thread, which looks every _WATCH_EVERY seconds at
    the task the worker runs.  Once a task has run that long it

    * stores the outcomes of the tasks the worker finished before it (so no
      future waits for a slow task of the same batch: the worker itself
      stores them only between two tasks, see :meth:`store_old`);
    * tells the pool that the task runs (its future enters RUNNING);
    * hands the batch's unstarted tasks back if another worker is idle.

    Quick tasks never wait for it: their outcomes are stored with the next
    lease, or once the oldest has waited ``cfg.flush_age``, many to a
    transaction.

    ``lock`` guards ``outcomes`` and is held while they are written, by
    either thread, so that outcomes reach the file in the order the tasks
    finished.

    A storage fault is left to the worker, which waits it out when it
    stores the outcomes with its next lease, and a task not handed back is
    delivered again once its lease runs out.  Any other exception is a bug:
    logged once, with its traceback, and the overseer stores and hands back
    nothing more (the worker does it all, or meets the bug itself and ends)."""

    def __init__(self, engine: Engine, cfg: _Config, slot: _Slot, idle: _Idle) -> None:
        self.engine, self.cfg, self.slot, self.idle = engine, cfg, slot, idle
        self.lock = threading.Lock()
        self.outcomes: List[Outcome] = []
        self.oldest = 0.0  # when the oldest outcome not stored was added
        self.started = 0  # how many tasks the worker started: a new one changes it
        self.busy = threading.Event()  # the worker holds a batch
        self.done = False
        self.failure: Optional[Exception] = None  # the bug it met, if it met one
        self._thread = threading.Thread(target=self._watch, daemon=True,
                                        name="persistqueue_liteq overseer")
        self._thread.start()

    def add(self, outcome: Outcome) -> None:
        with self.lock:
            if not self.outcomes:
                self.oldest = time.monotonic()
            self.outcomes.append(outcome)

    def store_old(self) -> None:
        """Between two tasks, in the worker's thread: store the outcomes if
        the oldest has waited ``cfg.flush_age``."""
        if (self.outcomes and self.failure is None
                and time.monotonic() - self.oldest >= self.cfg.flush_age):
            self._store()

    def take(self) -> List[Outcome]:
        """The outcomes to store (call with ``lock`` held)."""
        outcomes, self.outcomes = self.outcomes, []
        return outcomes

    def stop(self) -> None:
        self.done = True
        self.busy.set()
        self._thread.join()

    def _watch(self) -> None:
        told: Optional[int] = None  # the task the pool was told about
        while True:
            self.busy.wait()
            if self.done:
                return
            seen = self.started
            time.sleep(_WATCH_EVERY)
            if self.done:
                return
            slow = self.started == seen and self.slot.task_id and self.busy.is_set()
            sound = self.failure is None
            store = sound and self.outcomes and (
                slow or time.monotonic() - self.oldest > 2 * _WATCH_EVERY)
            tell = slow and told != seen
            hand_back = sound and slow and self.idle and self.slot.has_waiting()
            if not (store or tell or hand_back):
                continue
            with _prompt_switching():
                if store:
                    self._store()
                if tell:
                    told = seen
                    self.engine.wake("done", self.cfg.queue)  # the pool looks at the slots
                if hand_back:
                    self._hand_back()

    def _store(self) -> None:
        try:
            with self.lock:
                if self.outcomes:
                    self.engine.complete_many(self.cfg.queue, self.outcomes)
                    self.outcomes = []
        except _STORAGE_ERRORS:  # busy for a moment: the worker stores them with its next lease
            pass
        except Exception as exc:
            self._failed("storing the outcomes of finished tasks", exc)

    def _hand_back(self) -> None:
        lease, ids = self.slot.take_back_waiting()
        for task_id in ids:
            try:
                self.engine.release(task_id, lease, attempted=False)
            except _STORAGE_ERRORS:
                pass  # busy: its lease runs out and it is delivered again
            except Exception as exc:
                self._failed("handing back task %d" % task_id, exc)
                return  # the others' leases run out: they are delivered again

    def _failed(self, what: str, exc: Exception) -> None:
        self.failure = exc
        logger.error("%s: the overseer of a worker failed %s (a bug, not a storage fault); "
                     "the worker does without it", self.cfg.path, what, exc_info=True)


def _worker_loop(engine: Engine, cfg: _Config, slot: _Slot, should_stop: Callable[[], bool],
                 max_tasks: Optional[int] = None, idle: Optional[_Idle] = None) -> None:
    """Lease tasks, run them and store their outcomes, until told to stop.

    A worker leases as many ready tasks at once as it runs in about
    ``cfg.batch_seconds`` (one at a time for slower tasks, at most _BATCH_MAX) and
    stores their outcomes in the transaction that leases the next ones; its
    overseer stores them sooner, and hands back the tasks not started, when
    a task turns out slow (see _Overseer).  It publishes in ``slot`` what it
    holds, so that the pool can cancel a task that has not started, extend
    the leases, and hand them back if the worker dies."""
    idle = _Idle() if idle is None else idle
    overseer = _Overseer(engine, cfg, slot, idle)  # never waits out a fault: leaves it to us
    # A fault that lasts raises StorageFault: the worker ends.  (A _Patient
    # has the engine's methods, so it is typed as one here.)
    engine = _Patient(engine, cfg)  # type: ignore[assignment]
    is_idle = False
    try:
        with engine.waiter("put", cfg.queue) as waiter:
            batch: List[_Task]
            done, size, batch = 0, 1, []
            while True:
                stopping = should_stop() or (max_tasks is not None and done >= max_tasks)
                want = 0 if stopping else size if max_tasks is None else min(size, max_tasks - done)
                with overseer.lock:
                    outcomes = overseer.take()
                    if outcomes or want:
                        batch = _complete_batch(engine, cfg, batch, outcomes, want)
                        slot.publish(batch)
                if stopping:
                    return
                if batch and is_idle:
                    slot.count_idle(idle, False)
                    is_idle = False
                if not batch:
                    overseer.busy.clear()
                    if not is_idle:
                        slot.count_idle(idle, True)
                        is_idle = True
                    # Until a put wakes us, or a retry's backoff or a lease ends.
                    waiter.wait(seconds_until(engine, engine.next_visible_at(cfg.queue),
                                              _IDLE_CHECK))
                    continue
                overseer.busy.set()
                ran, done = _run_batch(engine, cfg, slot, batch, overseer, should_stop,
                                       max_tasks, done)
                if ran:
                    per_task = ran[1] / ran[0]
                    size = max(1, min(_BATCH_MAX, int(cfg.batch_seconds / per_task)
                                      if per_task else _BATCH_MAX))
    finally:
        if is_idle:
            slot.count_idle(idle, False)
        overseer.stop()


def _run_batch(engine: Engine, cfg: _Config, slot: _Slot, batch: List[_Task],
               overseer: _Overseer, should_stop: Callable[[], bool], max_tasks: Optional[int],
               done: int) -> Tuple[Optional[Tuple[int, float]], int]:
    """Run the tasks of ``batch`` that were not cancelled or handed back;
    return ((how many ran, seconds), tasks done in all) or (None, done)."""
    began, ran = time.monotonic(), 0
    for i, msg in enumerate(batch):
        if should_stop() or (max_tasks is not None and done >= max_tasks):
            for j in range(i, len(batch)):  # leased, never started: hand back
                if slot.take_back(j):
                    engine.release(batch[j].id, batch[j].lease, attempted=False)
            break
        if not slot.claim(i):
            continue  # cancelled by the pool, or handed back by the overseer
        overseer.started += 1
        try:
            counted, outcome = _run_one(engine, cfg, msg, slot)
        finally:
            slot.finish()
        ran += 1
        done += counted
        if outcome is not None:
            overseer.add(outcome)
        if i + 1 < len(batch):  # else stored at once, with the next lease
            overseer.store_old()
    return ((ran, time.monotonic() - began) if ran else None), done


def _process_worker(cfg: _Config, slot: _Slot, stop: multiprocessing.synchronize.Event,
                    initializer: Optional[Callable[..., object]], initargs: Tuple[Any, ...],
                    max_tasks: Optional[int], idle: _Idle) -> None:
    _follow_parent()
    # The task holds the GIL while it runs Python code; the overseer, which
    # stores the outcomes that wait behind it, would get the GIL only every
    # 5 ms (the default).  The pool's own process keeps its interval.
    sys.setswitchinterval(min(sys.getswitchinterval(), _WORKER_SWITCH))
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as exc:
            _futures_logger.critical("Exception in initializer:", exc_info=True)
            slot.fail_init(_exception_line(exc))
            return
    try:
        # Patiently: a worker that failed at once would be replaced at once.
        engine = _patiently(cfg, "opening the queue file", cfg.open_engine)
        slot.up()
        _worker_loop(engine, cfg, slot, stop.is_set, max_tasks, idle)
    except BaseException as exc:
        # Said on stderr (the last resort of logging, if nothing else
        # handles it); the pool hands back what this worker held and
        # starts another, unless bugs stop worker after worker.
        logger.error("worker process %d stopped", os.getpid(), exc_info=True)
        if isinstance(exc, StorageFault):
            slot.give_up()
        elif isinstance(exc, Exception):
            slot.fail_bug(_exception_line(exc))
        sys.exit(1)


def _exception_line(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def _follow_parent() -> None:
    """Die at once, with the task running, when the pool's process dies.

    Its tasks come back after their lease, and a rerun of the script takes
    them over: a worker that went on running one would run it twice at once
    with the rerun.  The forkserver and the resource tracker stay up while
    any worker holds their pipes, so they go too.  The pool's process is
    ``parent_process()``, not the OS parent (think forkserver): its sentinel
    is a pipe whose other end only that process holds, which reads as ended
    when it dies, however it dies (PR_SET_PDEATHSIG would watch the
    forkserver instead)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True, name="persistqueue_liteq parent watch").start()


class _Slot:
    """What one worker holds, shared with the pool: the tasks of its last
    lease (ids, one lease token), each waiting, started or dropped; the task
    it runs now (0: none) and since when its function runs (time.monotonic();
    0.0 while it is being unpickled).  In shared memory for a process worker (``ctx``).

    The worker claims a task before it starts it and the pool cancels one
    only while it waits, both under the slot's lock, so a task is either
    run or cancelled, never both.
    """

    _lock: Union[threading.Lock, multiprocessing.synchronize.Lock]
    _ids: _Cells[int]
    _states: _Cells[int]
    _ints: _Cells[int]
    _started: _Cells[float]
    _failure: Union[List[bytes], _ctypes.Array[_ctypes.c_char]]

    def __init__(self, ctx: Optional[multiprocessing.context.BaseContext] = None) -> None:
        if ctx is None:
            self._lock = threading.Lock()
            self._ids, self._states = [0] * _BATCH_MAX, [_WAITING] * _BATCH_MAX
            # task id, lease, state, counted among the idle workers (0/1)
            self._ints, self._started = [0, 0, _IDLE, 0], [0.0, 0.0]
            self._failure = [b""]
        else:
            self._lock = ctx.Lock()
            self._ids = ctx.RawArray(ctypes.c_longlong, _BATCH_MAX)
            self._states = ctx.RawArray(ctypes.c_byte, _BATCH_MAX)
            self._ints = ctx.RawArray(ctypes.c_longlong, 4)
            self._started = ctx.RawArray(ctypes.c_double, 2)  # and when it gave up
            self._failure = ctx.RawArray(ctypes.c_char, 256)

    def publish(self, messages: Sequence[_Task]) -> None:
        """The worker leased ``messages`` (one lease): they wait their turn."""
        with self._lock:
            for i in range(_BATCH_MAX):
                self._ids[i] = messages[i].id if i < len(messages) else 0
                self._states[i] = _WAITING
            self._ints[1] = messages[0].lease if messages else 0

    def claim(self, i: int) -> bool:
        """The worker is about to start task ``i``: False if it was cancelled."""
        with self._lock:
            if self._states[i] != _WAITING:
                return False
            self._states[i] = _STARTED
            self._started[0] = 0.0
            self._ints[0] = self._ids[i]
            return True

    def take_back(self, i: int) -> bool:
        """The worker hands back task ``i`` unstarted: False if it was cancelled."""
        with self._lock:
            if self._states[i] != _WAITING:
                return False
            self._states[i] = _DROPPED
            return True

    def has_waiting(self) -> bool:
        """Whether a task of the batch still waits its turn."""
        with self._lock:
            return any(self._ids[i] and self._states[i] == _WAITING for i in range(_BATCH_MAX))

    def take_back_waiting(self) -> Tuple[int, List[int]]:
        """The worker hands back every task still waiting: (lease, their ids)."""
        with self._lock:
            ids: List[int] = []
            for i in range(_BATCH_MAX):
                if self._ids[i] and self._states[i] == _WAITING:
                    self._states[i] = _DROPPED
                    ids.append(self._ids[i])
            return self._ints[1], ids

    def cancel(self, task_id: int) -> bool:
        """The pool cancels ``task_id`` if it waits here; True if it did."""
        with self._lock:
            for i in range(_BATCH_MAX):
                if self._ids[i] == task_id:
                    if self._states[i] != _WAITING:
                        return False
                    self._states[i] = _DROPPED
                    return True
        return False

    def held(self) -> Tuple[int, List[Tuple[int, bool]]]:
        """(lease, [(task id, started?)]) of the tasks not dropped."""
        with self._lock:
            return self._ints[1], [(self._ids[i], self._states[i] == _STARTED)
                                   for i in range(_BATCH_MAX)
                                   if self._ids[i] and self._states[i] != _DROPPED]

    def running(self) -> None:
        # Monotonic, so that a step of the wall clock neither kills a healthy
        # task nor spares a hung one.  The pool's process compares it with its
        # own time.monotonic(): on Linux, macOS and Windows that clock is one
        # for the whole machine (CLOCK_MONOTONIC, mach_absolute_time,
        # QueryPerformanceCounter), not one per process.
        self._started[0] = time.monotonic()

    def finish(self) -> None:
        self._ints[0] = 0

    def up(self) -> None:
        self._ints[2] = _UP

    def fail_init(self, text: str) -> None:
        """The initializer raised: ``text`` says what, for the pool's message."""
        self._fail(text, _INIT_FAILED)

    def fail_bug(self, text: str) -> None:
        """A bug stopped the worker: ``text`` says what."""
        self._fail(text, _BUG)

    def _fail(self, text: str, state: int) -> None:
        data = text.encode("utf-8", "replace")[:255]
        if isinstance(self._failure, list):
            self._failure[0] = data
        else:
            self._failure.value = data
        self._ints[2] = state

    @property
    def failure(self) -> str:
        data = self._failure[0] if isinstance(self._failure, list) else self._failure.value
        return data.decode("utf-8", "replace")

    def count_idle(self, idle: _Idle, flag: bool) -> None:
        """The worker waits for work (``flag``) or has some: count it in
        ``idle`` (an _Idle), and note it here for the pool if it dies so."""
        idle.add(1 if flag else -1)
        self._ints[3] = int(flag)

    task_id = property(lambda self: self._ints[0])
    counted_idle = property(lambda self: bool(self._ints[3]))
    lease = property(lambda self: self._ints[1])
    state = property(lambda self: self._ints[2])
    started = property(lambda self: self._started[0])
    gave_up_at = property(lambda self: self._started[1])

    def give_up(self) -> None:
        """The worker ends on a storage fault that lasted (time.monotonic(),
        which the pool's process shares)."""
        self._started[1] = time.monotonic()
