"""The submitting side of both durable pools: the calls submitted, their
futures (_TaskFuture), the occurrence counts that key identical calls, and
the storer thread that writes the calls in batches (_Storer, a mixin of
_PersistentExecutor)."""

from __future__ import annotations

import concurrent.futures
import hashlib
import itertools
import os
import threading
import time
from concurrent.futures import Future
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Optional,
                    Tuple, TypeVar)

from .. import _checks
from .._spill import SpilledCounts
from ..exceptions import StorageFault
from . import _atexit
from ._shared import (_apply_chunk, _CALL_KEYS, _dumps, _OCCURRENCES_IN_MEMORY, _STORE_BATCH,
                      logger)

_T = TypeVar("_T")

if TYPE_CHECKING:
    from concurrent.futures import BrokenExecutor
    from typing import ParamSpec, Type

    from ..engine import Engine
    from ._shared import _Config
    from ._worker import _Slot

    _P = ParamSpec("_P")

    # A call as the storer takes it: the caller's key (None: a digest), the
    # function, its arguments.
    _Call = Tuple[Optional[str], Callable[..., _T], Tuple[Any, ...], Dict[str, Any]]


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


class _TaskFuture(Future[_T]):
    """A Future whose ``cancel()`` also removes its task from the file, which
    succeeds while no worker has leased it."""

    def __init__(self, executor: _Storer, key: str) -> None:
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


class _Storer:
    """What _PersistentExecutor does with the calls it is given: submit,
    submit_keyed and map pickle them into its outbox, the storer thread
    writes the outbox in batches, and a future cancelled before its task
    started removes it from the file."""

    if TYPE_CHECKING:
        # What _PersistentExecutor sets up (see its __init__) and defines.
        _broken_error: Type[BrokenExecutor]
        _engine: Engine
        _patient: Engine
        _cfg: _Config
        _max_workers: int
        _lock: threading.Lock
        _pending: Dict[str, List[_TaskFuture[Any]]]
        _keys: Dict[int, str]
        _outbox: Dict[_TaskFuture[Any], Tuple[str, bytes]]
        _outbox_filled: threading.Condition
        _stored: threading.Condition
        _storing: threading.Lock
        _in_flight: bool
        _owner_pid: int
        _occurrences: _Occurrences
        _shutdown: bool
        _broken: Optional[str]
        _made_call_keys: bool
        _cancelled: bool
        _failures_forgotten: bool
        _start_seq: int
        _run_workers: bool

        def _slots_of_workers(self) -> List[_Slot]: ...

        def _forget(self, key: str, future: _TaskFuture[Any]) -> bool: ...

        def _resolve_future(self, future: _TaskFuture[Any], ok: bool, data: bytes) -> None: ...

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
            if _atexit._exiting:
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
