"""PersistentThreadPoolExecutor: the durable pool of worker threads."""

from __future__ import annotations

import itertools
import os
import threading
import time
from concurrent.futures.thread import BrokenThreadPool
from typing import List, Optional

from ..exceptions import StorageFault, WorkerDied
from ._shared import _futures_logger, logger
from ._worker import _exception_line, _Idle, _Slot, _worker_loop
from ._executor import _beat, _PersistentExecutor


class PersistentThreadPoolExecutor(_PersistentExecutor):
    """A ThreadPoolExecutor whose tasks live in a queue file: the same
    durability as the process pool, for I/O-bound work (same arguments,
    ``hmac_key`` included, less mp_context, max_tasks_per_child and
    task_timeout, which a thread cannot honour)."""

    _broken_error = BrokenThreadPool

    @staticmethod
    def _default_workers() -> int:
        return min(32, (os.cpu_count() or 1) + 4)

    def _start_workers(self) -> None:
        self._stop_event = threading.Event()
        self._slots = [_Slot() for _ in range(self._max_workers)]
        self._idle = _Idle()
        # _threads_lock guards _threads and the setting of _stop_event: no
        # thread is added once it is set, so that _stop_workers joins them all.
        self._threads_lock = threading.Lock()
        self._threads: List[threading.Thread] = []
        self._thread_names = itertools.count()
        for slot in self._slots:
            self._start_thread(slot)
        self._heart = threading.Thread(target=self._heartbeat_loop, daemon=True)
        self._heart.start()

    def _start_thread(self, slot: _Slot) -> None:
        with self._threads_lock:
            if self._stop_event.is_set():
                return
            thread = threading.Thread(target=self._thread_worker, args=(slot,),
                                      daemon=True, name="persistqueue_liteq worker %d"
                                      % next(self._thread_names))
            self._threads.append(thread)
            thread.start()

    def _thread_worker(self, slot: _Slot) -> None:
        if self._initializer is not None:
            try:
                self._initializer(*self._initargs)
            except BaseException as exc:
                _futures_logger.critical("Exception in initializer:", exc_info=True)
                self._break("A thread initializer failed, the thread pool is not usable "
                            "anymore: %s" % _exception_line(exc))
                return
        try:
            _worker_loop(self._engine, self._cfg, slot, self._stop_event.is_set,
                         idle=self._idle)
        except BaseException as exc:
            # A fault that lasted (StorageFault) or a bug: the thread's tasks
            # go back and another thread takes its place (which runs the
            # initializer, as every thread of the pool does).
            name = threading.current_thread().name
            logger.error("%s stopped", name, exc_info=True)
            broken = False
            try:
                self._hand_back(slot, "%s stopped: %r" % (name, exc), WorkerDied)
                if isinstance(exc, StorageFault):
                    self._storage_lost(exc, time.monotonic())
                elif isinstance(exc, Exception):
                    broken = self._worker_stopped_by_bug(name, _exception_line(exc), exc)
            finally:
                slot.publish([])  # the heartbeat extends its leases no more
                if not broken:
                    logger.info("a new thread replaces %s", name)
                    self._start_thread(slot)

    def _break(self, reason: str, cause: Optional[BaseException] = None) -> None:
        """Workers cannot run: fail every future, stop the threads."""
        self._mark_broken(reason, cause)
        self._stop_event.set()

    def _slots_of_workers(self) -> List[_Slot]:
        return self._slots if self._run_workers else []

    def _heartbeat_loop(self) -> None:
        while not self._stop_event.wait(self._cfg.lease_seconds / 3):
            _beat(self, self._slots)

    def _end_workers_at_exit(self) -> None:
        pass  # daemon threads

    def _stop_workers(self) -> None:
        with self._threads_lock:
            self._stop_event.set()
        self._engine.wake("put", self._cfg.queue)
        for thread in self._threads:
            thread.join()
        self._heart.join()
