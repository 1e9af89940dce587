"""PersistentProcessPoolExecutor: the durable pool of worker processes."""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Callable, Dict, Iterable, List, Optional

from .. import _checks
from ..exceptions import StorageFault, TaskTimeout, WorkerDied
from ._shared import (_BUG, _describe_exit, _FAILED_STARTS, _FAULT_LONGEST_RETRY, _IDLE,
                      _INIT_FAILED, _STORAGE_ERRORS, _UP, logger)
from ._worker import _exception_line, _Idle, _process_worker, _Slot
from ._atexit import _EXIT_REAP_SECONDS
from ._executor import _beat, _PersistentExecutor

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext
    from multiprocessing.process import BaseProcess
    from typing import Unpack

    from ..backends import Location
    from ._executor import _Options

    class _Worker(BaseProcess):
        """A worker process once started (for type checkers only): it has
        its pid."""

        @property
        def pid(self) -> int: ...


class PersistentProcessPoolExecutor(_PersistentExecutor):
    """A ProcessPoolExecutor whose tasks live in a queue file.

    Args:
        path: the queue file (created if missing), a URL
            (``sqlite:///jobs.db``), an engine already open or its EngineSpec
            (see :mod:`.backends`; with an engine, no other storage option
            may be given).
        max_workers, mp_context, initializer, initargs, max_tasks_per_child:
            as for ProcessPoolExecutor.
        name: the queue of this pool's tasks in the file.
        max_retries: how many times a task whose worker died (or was
            killed by task_timeout), or that raised one of ``retry_on``, runs
            again before it is dead-lettered.
        retry_on: exception classes (or one) worth retrying, such as
            ``(ConnectionError,)``.  Any other exception is the task's
            outcome at once, as with ProcessPoolExecutor; the task is
            dead-lettered with its traceback (see dead_letters, redrive).
        retry_backoff, retry_backoff_max: seconds before the first retry,
            doubled at each further one, up to the maximum.
        task_timeout: seconds a task may run before its worker is killed
            (counted as a failed attempt); None for no limit.
        lease_seconds: how long a task stays reserved for a worker that
            stopped answering (the pool extends it while the worker lives);
            also how long a storage fault is waited out (at least twice
            ``timeout_seconds``) before the futures it holds up fail with
            StorageFault.
        timeout_seconds: how long one statement waits for another
            connection's lock before it counts as failed (and is retried).
        run_workers: False to only store tasks and collect results, while
            workers elsewhere (``python -m persistqueue_liteq worker``, or
            another pool on the same file and name) run them.  Shutting
            such a pool down returns once every call is stored; a later run
            collects the results by submitting the same calls (or keys).
        hmac_key: bytes; every task row is signed with HMAC-SHA256 for its
            queue and key, and every result row for its task, and a row whose
            signature does not match is never unpickled: its task is
            dead-lettered, or its future fails, with SerializationError.
            Whoever can write the file can otherwise run code in the workers
            and in this process.  Every pool and worker on the queue needs
            the same key.
        table_prefix, journal_mode: as for PersistentQueue (an application's
            database is switched to WAL mode only with journal_mode="wal";
            a pool refuses "keep": it needs WAL mode).
    """

    _broken_error = BrokenProcessPool

    def __init__(self, path: Location, max_workers: Optional[int] = None,
                 mp_context: Optional[BaseContext] = None,
                 initializer: Optional[Callable[..., object]] = None,
                 initargs: Iterable[object] = (), max_tasks_per_child: Optional[int] = None, *,
                 task_timeout: Optional[float] = None, **options: Unpack[_Options]) -> None:
        if mp_context is None:
            # The pool has threads when it starts workers, and forking a
            # process with threads can deadlock the child: use forkserver
            # where there is one, as Python 3.14 does.
            methods = multiprocessing.get_all_start_methods()
            mp_context = multiprocessing.get_context(
                "forkserver" if "forkserver" in methods else None)
        self._mp = mp_context
        if max_tasks_per_child is not None:
            max_tasks_per_child = _checks.count(max_tasks_per_child, "max_tasks_per_child", 1)
        self._max_tasks_per_child = max_tasks_per_child
        self._task_timeout = _checks.seconds(task_timeout, "task_timeout", allow_none=True,
                                             positive=True)
        super().__init__(path, max_workers, initializer, initargs, **options)

    @staticmethod
    def _default_workers() -> int:
        return os.cpu_count() or 1

    def _start_workers(self) -> None:
        self._stop = self._mp.Event()
        self._pid = os.getpid()
        self._workers: Dict[_Worker, _Slot] = {}  # process -> slot
        self._killed: Dict[int, str] = {}  # pid -> why the manager killed it
        self._wake_reader, self._wake_writer = multiprocessing.Pipe(duplex=False)
        self._idle = _Idle(self._mp)
        self._failed_starts = 0  # workers in a row that died before they were up
        for _ in range(self._max_workers):
            self._spawn()
        self._manager = threading.Thread(target=self._manage, daemon=True,
                                         name="persistqueue_liteq manager")
        self._manager.start()

    def _spawn(self) -> None:
        slot = _Slot(self._mp)
        proc: _Worker = self._mp.Process(  # type: ignore[attr-defined]  # every context has it
            target=_process_worker,
            args=(self._cfg, slot, self._stop, self._initializer,
                  self._initargs, self._max_tasks_per_child, self._idle),
            # Not daemonic, so that a task may start processes, as in the
            # standard library's pool; _end_workers_at_exit ends them.
            daemon=False,
        )
        proc.start()
        self._workers[proc] = slot

    def _manage(self) -> None:
        """The manager thread: never ends before the pool.  What the OS or
        the file refuses for a moment (starting a process, a storage call
        not waited out) is logged and tried again; anything else is a bug,
        which would fail again and again: it breaks the pool, every future
        failing with BrokenProcessPool, the bug as its cause."""
        while True:
            try:
                self._manage_workers()
                return
            except _STORAGE_ERRORS:
                logger.error("the manager of the pool on %s failed; it goes on",
                             self._engine.location, exc_info=True)
                self._stop.wait(_FAULT_LONGEST_RETRY)
            except Exception as exc:
                logger.error("the manager of the pool on %s failed (a bug): the pool is "
                             "broken", self._engine.location, exc_info=True)
                self._break("its manager thread failed: %s" % _exception_line(exc), cause=exc)
                time.sleep(_FAULT_LONGEST_RETRY)  # then reaps the workers it stopped

    def _manage_workers(self) -> None:
        heartbeat_every = self._cfg.lease_seconds / 3
        next_heartbeat = time.monotonic() + heartbeat_every
        while True:
            timeout = max(0.0, next_heartbeat - time.monotonic())
            if self._task_timeout is not None:
                timeout = min(timeout, 0.05)
            sentinels = {proc.sentinel: proc for proc in self._workers}
            ready = multiprocessing.connection.wait(list(sentinels) + [self._wake_reader], timeout)
            for handle in ready:
                if handle is self._wake_reader:
                    self._wake_reader.recv()
                else:
                    self._reap(sentinels[handle])  # type: ignore[index]  # a sentinel
            if self._stop.is_set() and not self._workers:
                return
            if self._broken is None and not self._stop.is_set():
                while len(self._workers) < self._max_workers:
                    self._spawn()
            now = time.monotonic()
            if now >= next_heartbeat:
                self._heartbeat()
                next_heartbeat = now + heartbeat_every
            if self._task_timeout is not None:
                self._enforce_timeout()

    def _reap(self, proc: _Worker) -> None:
        slot = self._workers.pop(proc)
        proc.join()
        if slot.counted_idle:  # killed while it waited for work
            slot.count_idle(self._idle, False)
        if slot.state == _INIT_FAILED:
            return self._break("A child process terminated abruptly: its initializer raised "
                               "%s (its traceback is logged on the 'concurrent.futures' "
                               "logger)" % slot.failure)
        if slot.state == _IDLE and not self._stop.is_set():
            self._failed_starts += 1
            why: Optional[str] = "worker process %d died with %s before it could start" % (
                proc.pid, _describe_exit(proc.exitcode))
            if self._failed_starts >= _FAILED_STARTS:
                return self._break("%d worker processes in a row could not start; the last: "
                                   "%s (see its stderr)" % (self._failed_starts, why))
            logger.warning("%s; starting another", why)
        elif slot.state in (_UP, _BUG):
            self._failed_starts = 0
        why = self._killed.pop(proc.pid, None)
        reason = why or "worker process %d died with %s" % (proc.pid, _describe_exit(proc.exitcode))
        self._hand_back(slot, reason, TaskTimeout if why else WorkerDied)
        if slot.state == _BUG and not why and not self._stop.is_set():
            if self._worker_stopped_by_bug("worker process %d" % proc.pid, slot.failure):
                return
        if slot.gave_up_at:
            self._storage_lost(StorageFault(
                "%s: worker process %d could not use the file for more than %gs "
                "(lease_seconds, or twice timeout_seconds); its log says why"
                % (self._engine.location, proc.pid, self._cfg.fault_seconds)), slot.gave_up_at)

    def _break(self, reason: str, cause: Optional[BaseException] = None) -> None:
        """Workers cannot run: fail every future, stop the others."""
        self._mark_broken(reason, cause)
        self._stop.set()
        for other in list(self._workers):
            other.terminate()

    def _slots_of_workers(self) -> List[_Slot]:
        return list(self._workers.values()) if self._run_workers else []

    def _heartbeat(self) -> None:
        _beat(self, self._slots_of_workers())

    def _enforce_timeout(self) -> None:
        now = time.monotonic()  # as slot.running(): see there
        for proc, slot in self._workers.items():
            started = slot.started
            if (slot.task_id and started and now - started > self._task_timeout
                    and proc.pid not in self._killed):
                self._killed[proc.pid] = "task exceeded task_timeout=%gs; its worker was killed" % (
                    self._task_timeout)  # type: ignore[str-format]  # set: see _manage_workers
                os.kill(proc.pid, signal.SIGKILL)

    def _stop_workers(self) -> None:
        self._stop.set()
        self._engine.wake("put", self._cfg.queue)
        self._wake_writer.send(None)
        self._manager.join()

    def _end_workers_at_exit(self) -> None:
        # A worker forked from this process inherits this pool, and its
        # exit runs the same handlers: only the pool's own process may act.
        if self._run_workers and os.getpid() == self._pid:
            self._stop.set()  # the manager starts no more
            for proc in list(self._workers):
                proc.terminate()
            # The manager reaps them and hands their tasks back.  It is a
            # daemon thread: the interpreter would freeze it wherever it is
            # when it finalizes, say between a reaped slot's sem_unlink and
            # telling the resource tracker, which then warns of a "leaked
            # semaphore".  Bounded: a file locked by another tool must not
            # hold the exit for long (the tasks come back after their lease).
            self._manager.join(_EXIT_REAP_SECONDS)
