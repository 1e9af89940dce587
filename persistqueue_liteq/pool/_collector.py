"""The reading side of both durable pools: the collector thread, which follows
the results table and resolves the futures waiting for them, and the ways a
future fails when its result cannot come (_Collector, a mixin of
_PersistentExecutor)."""

from __future__ import annotations

import pickle
import threading
import time
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Tuple

from ..exceptions import SerializationError, StorageFault
from ._shared import _FAULT_LONGEST_RETRY, _IDLE_CHECK, _STORAGE_ERRORS, logger

if TYPE_CHECKING:
    from ..engine import Engine
    from ._shared import _Config
    from ._storer import _TaskFuture
    from ._worker import _Slot


class _Collector:
    """How _PersistentExecutor resolves its futures: the collector thread
    reads the outcomes back; a lasting storage fault or a bug fails the
    futures concerned (as the heartbeat and a worker that ended do, with
    _fail_tasks)."""

    if TYPE_CHECKING:
        # What _PersistentExecutor sets up (see its __init__) and defines.
        _engine: Engine
        _cfg: _Config
        _lock: threading.Lock
        _pending: Dict[str, List[_TaskFuture[Any]]]
        _keys: Dict[int, str]
        _outbox: Dict[_TaskFuture[Any], Tuple[str, bytes]]
        _shutdown: bool
        _seq: int
        _bugs_in_a_row: int

        def _slots_of_workers(self) -> List[_Slot]: ...

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
