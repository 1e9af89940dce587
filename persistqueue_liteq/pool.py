"""Durable ``concurrent.futures`` pools: every task lives in the queue file.

Used like ProcessPoolExecutor and ThreadPoolExecutor; what differs:

* A task is stored under a key (the caller's, or a digest of the function
  and its arguments with an occurrence number), so a script killed in the
  middle of a batch and run again runs only what is left: finished tasks
  answer from the stored results, tasks that were in flight run again
  (at-least-once: their side effects may happen twice).
* ``submit`` pickles the call and returns; the storer thread writes the
  calls in batches.  No task runs before it is stored; shutdown and the
  interpreter's exit wait until all are.
* A worker that dies costs its task one attempt; the worker is replaced and
  the task retried.  Failing tasks are retried with backoff, then
  dead-lettered with their exception; the pool is never broken by a task.
* ``cancel()`` cancels every task that has not started, even one leased by
  a worker of the pool and waiting in its batch.
* With ``hmac_key`` every task row and result row is signed (HMAC-SHA256 of
  the queue, the task's key and the pickle) and one that does not match is
  never unpickled: whoever can write the file cannot run code in the
  workers or in the submitting process.

Data flow (process pool; a thread pool has threads for workers and the same
tables)::

  caller            main process                    queue file            workers
  ------            ------------                    ----------            -------
  submit(fn, *a) -> pickle, key -> outbox           messages  <- lease --- loop:
     Future <-+     storer thread: put_keyed ---->    |         (a batch:   run fn
              |     (up to 1,000 a transaction)       |         ~2 ms of    |
              |                                       |         work)       |
              |     collector thread                  |                     |
              +---- results_since(seq) <------------- results <- complete --+
                    (woken by "done")                 (one transaction: the batch's
                                                       outcomes stored, its tasks
                                                       acked, the next batch leased)
                    manager thread
                    - waits on worker sentinels: a dead worker's task is
                      released at once (one attempt) or, past max_retries,
                      completed with WorkerDied; the tasks it had not started
                      are released without an attempt; the worker is replaced
                    - extends the leases of held tasks (heartbeat)
                    - kills a worker whose task is over task_timeout

Each worker publishes what it holds in a shared slot (the batch's ids, its
lease, which task runs and since when); a worker claims a task there before
starting it, and the pool cancels a waiting one there, under the slot's lock.
"""

import atexit
import concurrent.futures
import ctypes
import hashlib
import itertools
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import threading
import time
import traceback
import weakref
from concurrent.futures import BrokenExecutor, Future
from concurrent.futures.process import BrokenProcessPool
from concurrent.futures.thread import BrokenThreadPool

from . import _checks
from .exceptions import SerializationError, TaskTimeout, WorkerDied
from .serializers import SignatureError, Signer, _check_key
from .sql import DEFAULT_PREFIX
from .sqlite_engine import SQLiteEngine

try:
    import cloudpickle
except ImportError:  # optional: lambdas and closures need it
    cloudpickle = None

__all__ = ["PersistentProcessPoolExecutor", "PersistentThreadPoolExecutor"]

logger = logging.getLogger("persistqueue_liteq")

_IDLE, _INIT_FAILED = 0, 1
# A task of a worker's batch: leased and waiting, started, or cancelled (or
# handed back) before it started.
_WAITING, _STARTED, _DROPPED = 0, 1, 2
# Most tasks a worker leases at once, and about how long a batch should run.
_BATCH_MAX = 64
_BATCH_SECONDS = 0.002
_SETTLED = object()  # _run_one: the task was settled without running
# Most tasks the storer writes in one transaction.
_STORE_BATCH = 1000
# How often an idle worker looks for a stop request or a dead parent even
# without a wake-up.
_IDLE_CHECK = 1.0


# -- what crosses the file -----------------------------------------------------

def _dumps(obj, what):
    try:
        return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        if cloudpickle is not None:
            try:
                return cloudpickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
            except Exception:
                pass
        hint = ""
        if cloudpickle is None and ("lambda" in str(exc) or "local object" in str(exc)):
            hint = (" (lambdas and closures need cloudpickle: pip install "
                    "'persistqueue_liteq[cloudpickle]', or define the function at module level)")
        raise SerializationError("cannot pickle the %s: %s%s" % (what, exc, hint)) from exc


class _RemoteTraceback(Exception):
    def __init__(self, tb):
        self.tb = tb

    def __str__(self):
        return self.tb


def _rebuild_exception(exc, tb):
    exc.__cause__ = _RemoteTraceback(tb)
    return exc


class _ExceptionWithTraceback:
    """Pickles an exception with its traceback text, which comes back as the
    exception's ``__cause__`` (as CPython's process pool does)."""

    def __init__(self, exc):
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.exc, self.tb = exc, '\n"""\n%s"""' % tb

    def __reduce__(self):
        return _rebuild_exception, (self.exc, self.tb)


def _failure_payload(exc):
    """Pickled exception with its traceback; if the exception itself cannot be
    pickled, a SerializationError that says so and carries its text."""
    try:
        return pickle.dumps(_ExceptionWithTraceback(exc), pickle.HIGHEST_PROTOCOL)
    except Exception as pickling_error:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return pickle.dumps(SerializationError(
            "the task raised %s, which cannot be pickled (%s):\n%s"
            % (type(exc).__name__, pickling_error, text)))


def _apply_chunk(fn, chunk):
    return [fn(*args) for args in chunk]


def _describe_exit(exitcode):
    if exitcode is not None and exitcode < 0:
        try:
            return "signal %s" % signal.Signals(-exitcode).name
        except ValueError:
            return "signal %d" % -exitcode
    return "exit code %s" % exitcode


# -- the worker ----------------------------------------------------------------------

class _Config:
    """What a worker needs to know; picklable, for spawn."""

    def __init__(self, path, queue, engine_options, lease_seconds, max_retries,
                 retry_backoff, retry_backoff_max, hmac_key=None):
        # Read when the pool is made, so that a worker started by spawn or
        # forkserver sees what its pool's process has (tests change it).
        self.batch_seconds = _BATCH_SECONDS
        self.path = path
        self.queue = queue
        self.engine_options = engine_options
        self.lease_seconds = lease_seconds
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.retry_backoff_max = retry_backoff_max
        self.signer = None if hmac_key is None else Signer(hmac_key)

    # With hmac_key, task rows are signed for their queue and key and result
    # rows for their queue, key and ok flag (Signer): a row that does not
    # match is never unpickled.  Without, the pickles are stored as they are.

    def seal_task(self, key, data):
        if self.signer is None:
            return data
        return self.signer.seal(Signer.task_context(self.queue, key), data)

    def open_task(self, msg):
        """The pickled call of a leased task; SerializationError if its
        signature does not match."""
        if self.signer is None:
            return msg.data
        try:
            return self.signer.open(Signer.task_context(self.queue, msg.key), msg.data)
        except SignatureError:
            raise SerializationError(
                "task %s of queue %r refused: its signature does not match the pool's "
                "hmac_key, queue and task key (written without the key, or altered); it "
                "was not unpickled" % (msg.key, self.queue)) from None

    def seal_result(self, key, ok, data):
        if self.signer is None:
            return data
        return self.signer.seal(Signer.result_context(self.queue, key, ok), data)

    def open_result(self, key, ok, data):
        if self.signer is None:
            return data
        try:
            return self.signer.open(Signer.result_context(self.queue, key, ok), data)
        except SignatureError:
            raise SerializationError(
                "the stored %s of task %s of queue %r refused: its signature does not "
                "match the pool's hmac_key, queue and task key (written without the key, "
                "or altered); it was not unpickled"
                % ("result" if ok else "exception", key, self.queue)) from None

    def backoff(self, attempts):
        if not self.retry_backoff:
            return 0.0
        return min(self.retry_backoff * 2 ** (attempts - 1), self.retry_backoff_max)

    def open_engine(self):
        return SQLiteEngine(self.path, **self.engine_options)


def _settle_failure(engine, cfg, task_id, lease, key, attempts, exc, reason):
    """A task's attempt failed: retry it later, or store the failure for good."""
    if attempts > cfg.max_retries:
        summary = "failed %d time%s (max_retries=%d): %s" % (
            attempts, "" if attempts == 1 else "s", cfg.max_retries, reason)
        engine.complete(task_id, lease, key, False,
                        cfg.seal_result(key, False, _failure_payload(exc)), dead_reason=summary)
    else:
        engine.release(task_id, lease, cfg.backoff(attempts), error=reason)


def _run_one(engine, cfg, msg, slot):
    """Run one leased task; store a failure (None), or return the pickled
    result for the caller to store with others; _SETTLED if the task was
    not run (delivered too often already).  Never raises."""
    if msg.attempts > cfg.max_retries + 1:  # its last holders died unnoticed
        reason = "not finished after %d deliveries (max_retries=%d); last error: %s" % (
            msg.attempts - 1, cfg.max_retries, msg.last_error)
        engine.complete(msg.id, msg.lease, msg.key, False,
                        cfg.seal_result(msg.key, False, pickle.dumps(WorkerDied(reason))),
                        dead_reason=reason)
        return _SETTLED
    try:
        fn, args, kwargs = pickle.loads(cfg.open_task(msg))
    except BaseException as exc:  # a task that cannot be loaded will never run
        error = exc if isinstance(exc, SerializationError) else SerializationError(
            "task %s cannot be unpickled in the worker: %r" % (msg.key, exc))
        engine.complete(msg.id, msg.lease, msg.key, False,
                        cfg.seal_result(msg.key, False, pickle.dumps(error)),
                        dead_reason=str(error))
        return None
    slot.running()  # task_timeout counts from here, not from the unpickling
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        reason = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        _settle_failure(engine, cfg, msg.id, msg.lease, msg.key, msg.attempts, exc, reason)
        return None
    try:
        return cfg.seal_result(msg.key, True, pickle.dumps(result, pickle.HIGHEST_PROTOCOL))
    except Exception as exc:
        error = SerializationError("the result of task %s cannot be pickled: %s" % (msg.key, exc))
        engine.complete(msg.id, msg.lease, msg.key, False,
                        cfg.seal_result(msg.key, False, pickle.dumps(error)),
                        dead_reason=str(error))
        return None


def _worker_loop(engine, cfg, slot, should_stop, max_tasks=None):
    """Lease tasks, run them and store their outcomes, until told to stop.

    A worker leases as many ready tasks at once as it runs in about
    ``cfg.batch_seconds`` (one at a time for slower tasks, at most _BATCH_MAX) and
    stores their results in the transaction that leases the next ones.  It
    publishes in ``slot`` what it holds, so that the pool can cancel a task
    that has not started, extend the leases, and hand them back if the
    worker dies."""
    done = 0
    size = 1
    batch, outcomes = [], []
    with engine.waiter("put", cfg.queue) as waiter:
        while True:
            stopping = should_stop() or (max_tasks is not None and done >= max_tasks)
            want = 0 if stopping else size if max_tasks is None else min(size, max_tasks - done)
            if outcomes or want:
                batch = engine.complete_many(cfg.queue, outcomes, want, cfg.lease_seconds)
                outcomes = []
                slot.publish(batch)
            if stopping:
                return
            if not batch:
                # Until a put wakes us, or a retry's backoff or a lease ends.
                due = engine.next_visible_at(cfg.queue)
                waiter.wait(_IDLE_CHECK if due is None else
                            min(_IDLE_CHECK, max(due - engine.now(), 0.001)))
                continue
            began, ran = time.monotonic(), 0
            for i, msg in enumerate(batch):
                if should_stop() or (max_tasks is not None and done >= max_tasks):
                    for j in range(i, len(batch)):  # leased, never started: hand back
                        if slot.take_back(j):
                            engine.release(batch[j].id, batch[j].lease, attempted=False)
                    break
                if not slot.claim(i):
                    continue  # cancelled by the pool
                try:
                    data = _run_one(engine, cfg, msg, slot)
                finally:
                    slot.finish()
                ran += 1
                if data is not _SETTLED:
                    done += 1
                if data is not None and data is not _SETTLED:
                    outcomes.append((msg.id, msg.lease, msg.key, True, data))
            if ran:
                per_task = (time.monotonic() - began) / ran
                size = max(1, min(_BATCH_MAX, int(cfg.batch_seconds / per_task) if per_task else
                                  _BATCH_MAX))


def _process_worker(cfg, slot, stop, initializer, initargs, max_tasks):
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException:
            traceback.print_exc()
            slot.fail_init()
            return
    engine = cfg.open_engine()
    # The pool's process (not always our OS parent: think forkserver).  If it
    # was killed, stop after the current task: a rerun will take over.  Asking
    # builds a selector each time, so ask once a second at most.
    pool = multiprocessing.parent_process()
    checked = [0.0, False]  # when last asked, and whether it was gone

    def orphaned():
        now = time.monotonic()
        if pool is not None and now - checked[0] >= _IDLE_CHECK:
            checked[0], checked[1] = now, not pool.is_alive()
        return checked[1]

    def should_stop():
        return stop.is_set() or orphaned()

    _worker_loop(engine, cfg, slot, should_stop, max_tasks)


def _extend_leases(engine, cfg, slots):
    """The heartbeat: extend the leases of every task a live worker holds."""
    for slot in slots:
        lease, held = slot.held()
        for task_id, _ in held:
            try:
                engine.set_visibility(task_id, lease, cfg.lease_seconds)
            except Exception:
                pass  # busy: the next beat comes well before the lease ends


# -- the executors ------------------------------------------------------------------

# Pools not shut down when the interpreter exits still store what was submitted.
_live_executors = weakref.WeakSet()


@atexit.register
def _store_at_exit():
    for executor in list(_live_executors):
        executor._flush()


class _TaskFuture(Future):
    """A Future whose ``cancel()`` also removes its task from the file, which
    succeeds while no worker has leased it."""

    def __init__(self, executor, key):
        super().__init__()
        self._executor, self._key = executor, key
        self._task_id = None  # set once stored

    def cancel(self):
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
        # No worker will ever dequeue it, which is where the stdlib's pools
        # notify wait() and as_completed(): do it now.
        self.set_running_or_notify_cancel()
        return True


class _PersistentExecutor(concurrent.futures.Executor):
    _broken_error = BrokenExecutor

    def __init__(self, path, max_workers=None, initializer=None, initargs=(), *,
                 name="tasks", max_retries=3, retry_backoff=0.5, retry_backoff_max=60.0,
                 lease_seconds=30.0, timeout_seconds=5.0, synchronous="NORMAL",
                 table_prefix=DEFAULT_PREFIX, run_workers=True, hmac_key=None,
                 journal_mode=None):
        if max_workers is None:
            max_workers = self._default_workers()
        if isinstance(max_workers, bool) or not isinstance(max_workers, int):
            raise TypeError("max_workers must be an int, not %r" % (max_workers,))
        if max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        path = _checks.db_path(path)
        if hmac_key is not None:
            hmac_key = _check_key(hmac_key)
        if journal_mode == "keep":
            # Its workers and result followers read while others commit:
            # outside WAL mode every reader blocks every commit.
            raise ValueError("a pool needs its file in WAL mode: journal_mode='keep' is for "
                             "LiteQueue and the queue family; pass journal_mode='wal'")
        engine_options = dict(timeout=_checks.seconds(timeout_seconds, "timeout_seconds"),
                              synchronous=synchronous, table_prefix=table_prefix,
                              journal_mode=journal_mode)
        self._engine = SQLiteEngine(path, **engine_options)
        self._cfg = _Config(
            self._engine.location, _checks.queue_name(name, "name"), engine_options,
            _checks.seconds(lease_seconds, "lease_seconds", positive=True),
            _checks.count(max_retries, "max_retries"),
            _checks.seconds(retry_backoff, "retry_backoff"),
            _checks.seconds(retry_backoff_max, "retry_backoff_max"),
            hmac_key,
        )
        self._max_workers = max_workers
        self._initializer, self._initargs = initializer, tuple(initargs)
        # _lock guards _pending, _outbox, _occurrences, _shutdown and _broken.
        self._lock = threading.Lock()
        self._pending = {}  # key -> [futures]
        self._outbox = {}  # future -> (key, pickled call): submitted, not yet stored
        self._outbox_filled = threading.Condition(self._lock)
        self._stored = threading.Condition(self._lock)  # outbox empty, nothing in flight
        self._storing = threading.Lock()  # held while the storer writes a batch
        self._in_flight = False  # the storer took a batch it has not written yet
        self._occurrences = {}  # digest -> how many submitted so far
        self._shutdown = False
        self._broken = None
        self._seq = self._engine.last_result_seq()
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

    def submit(self, fn, /, *args, **kwargs):
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

    def submit_keyed(self, key, fn, /, *args, **kwargs):
        """Like :meth:`submit`, with the task's identity given by the caller:
        a task whose key already has a stored result is not run again."""
        if not isinstance(key, str) or not key:
            raise TypeError("a task key must be a non-empty str, not %r" % (key,))
        return self._submit_many([(key, fn, args, kwargs)])[0]

    def _submit_many(self, calls):
        items = []
        for key, fn, args, kwargs in calls:
            if not callable(fn):
                raise TypeError("%r is not callable" % (fn,))
            data = _dumps((fn, args, kwargs), "task %s" % getattr(fn, "__qualname__", fn))
            items.append([key, data])
        with self._lock:
            if self._broken:
                raise self._broken_error(self._broken)
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            futures = []
            for key, data in items:
                if key is None:
                    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
                    n = self._occurrences.get(digest, 0)
                    self._occurrences[digest] = n + 1
                    key = "%s#%d" % (digest, n)
                future = _TaskFuture(self, key)
                futures.append(future)
                self._pending.setdefault(key, []).append(future)
                self._outbox[future] = (key, self._cfg.seal_task(key, data))
            self._outbox_filled.notify()
        return futures

    def _store(self):
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

    def _store_batch(self, batch):
        engine, queue = self._engine, self._cfg.queue
        if not batch:
            return  # cancelled meanwhile
        try:
            statuses = engine.put_keyed(queue, [call for _, call in batch])
            answers = {key: engine.result(queue, key)
                       for (_, (key, _)), (status, _) in zip(batch, statuses)
                       if status == "done"}
        except Exception as exc:  # the file refused them: say so to their callers
            logger.error("could not store %d tasks in %s: %s", len(batch), engine.location, exc)
            for future, (key, _) in batch:
                if self._forget(key, future) and future.set_running_or_notify_cancel():
                    future.set_exception(exc)
            return
        for (future, (key, _)), (_, task_id) in zip(batch, statuses):
            future._task_id = task_id
            answer = answers.get(key)
            if answer is not None and self._forget(key, future):
                self._resolve_future(future, *answer)

    def _flush(self):
        """Wait until everything submitted so far is stored (or cancelled)."""
        with self._lock:
            while self._outbox or self._in_flight:
                self._stored.wait()

    def map(self, fn, *iterables, timeout=None, chunksize=1, buffersize=None):
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
        window = []

        def refill():
            batch = list(itertools.islice(chunks, buffersize - len(window)))
            if batch:
                window.extend(zip(self._submit_many(
                    [(None, _apply_chunk, (fn, chunk), {}) for chunk in batch]), batch))

        def results():
            try:
                while window:
                    future, _ = window.pop(0)
                    remaining = None if deadline is None else deadline - time.monotonic()
                    chunk_results = future.result(remaining)
                    if len(window) <= buffersize // 2:  # one transaction per half window
                        refill()
                    yield from chunk_results
            finally:
                for future, _ in window:
                    future.cancel()

        refill()  # the first window is stored now, as the stdlib submits at once
        return results()

    # -- results ----------------------------------------------------------------

    def _collect(self):
        """Follow the results table and resolve the futures waiting for them."""
        engine, queue = self._engine, self._cfg.queue
        with engine.waiter("done", queue) as waiter:
            while True:
                try:
                    rows = engine.results_since(queue, self._seq)
                except Exception:
                    rows = []  # busy for a moment: look again after a wait
                for seq, key, ok, data in rows:
                    self._seq = seq
                    with self._lock:
                        futures = self._pending.pop(key, ())
                    for future in futures:
                        self._resolve_future(future, ok, data)
                if rows:
                    continue
                with self._lock:
                    if self._shutdown and not self._pending:
                        return
                waiter.wait(_IDLE_CHECK)

    def _resolve_future(self, future, ok, data):
        try:
            value = pickle.loads(self._cfg.open_result(future._key, ok, data))
        except SerializationError as exc:  # a signature that does not match
            value, ok = exc, False
        except BaseException as exc:
            value, ok = SerializationError("the task's %s cannot be unpickled: %r" % (
                "result" if ok else "exception", exc)), False
        if not future.set_running_or_notify_cancel():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def _cancel_stored(self, task_id):
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

    def _forget(self, key, future):
        """Stop waiting for ``future``'s result; False if nobody was."""
        with self._lock:
            futures = self._pending.get(key, [])
            found = future in futures
            if found:
                futures.remove(future)
            if not futures:
                self._pending.pop(key, None)
            return found

    def _mark_broken(self, reason):
        logger.error("pool on %s is broken: %s", self._engine.location, reason)
        with self._lock:
            self._broken = reason
            pending, self._pending = self._pending, {}
            self._outbox.clear()
            self._stored.notify_all()
        error = self._broken_error(reason)
        for futures in pending.values():
            for future in futures:
                if future.set_running_or_notify_cancel():
                    future.set_exception(error)

    # -- shutting down -------------------------------------------------------------

    def shutdown(self, wait=True, *, cancel_futures=False):
        if not wait:  # pending tasks still run, as with the stdlib's pools
            threading.Thread(target=self.shutdown, kwargs={"cancel_futures": cancel_futures},
                             daemon=True).start()
            return
        with self._lock:
            self._shutdown = True
            pending = [f for futures in self._pending.values() for f in futures]
            self._outbox_filled.notify()
        if cancel_futures:
            for future in pending:
                future.cancel()
        self._storer.join()
        _live_executors.discard(self)
        concurrent.futures.wait(pending)
        if self._run_workers:
            self._stop_workers()
        self._engine.wake("done", self._cfg.queue)
        self._collector.join()

    # -- information -----------------------------------------------------------------

    def dead_letters(self, limit=None):
        """Tasks that failed for good, with reasons (see LiteQueue.dead_letters)."""
        return self._engine.dead_letters(self._cfg.queue, limit)

    def forget_results(self, key=None):
        """Delete the stored results (of one key, or all of this pool's
        queue) once a batch is over; return how many."""
        return self._engine.forget_results(self._cfg.queue, key)

    def redrive(self, ids=None):
        """Run dead tasks again (their stored failures are forgotten)."""
        dead = self._engine.dead_letters(self._cfg.queue)
        wanted = None if ids is None else set(ids)
        for msg in dead:
            if wanted is None or msg.id in wanted:
                self._engine.forget_results(self._cfg.queue, msg.key)
        return self._engine.redrive(self._cfg.queue, ids)


class PersistentProcessPoolExecutor(_PersistentExecutor):
    """A ProcessPoolExecutor whose tasks live in a queue file.

    Args:
        path: the queue file (created if missing).
        max_workers, mp_context, initializer, initargs, max_tasks_per_child:
            as for ProcessPoolExecutor.
        name: the queue of this pool's tasks in the file.
        max_retries: how many times a failed task (an exception, a dead
            worker, a timeout) runs again before it is dead-lettered.
        retry_backoff, retry_backoff_max: seconds before the first retry,
            doubled at each further one, up to the maximum.
        task_timeout: seconds a task may run before its worker is killed
            (counted as a failed attempt); None for no limit.
        lease_seconds: how long a task stays reserved for a worker that
            stopped answering (the pool extends it while the worker lives).
        run_workers: False to only store tasks and collect results, while
            workers elsewhere (``python -m persistqueue_liteq worker``, or
            another pool on the same file and name) run them.
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

    def __init__(self, path, max_workers=None, mp_context=None, initializer=None,
                 initargs=(), max_tasks_per_child=None, *, task_timeout=None, **options):
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
    def _default_workers():
        return os.cpu_count() or 1

    def _start_workers(self):
        self._stop = self._mp.Event()
        self._workers = {}  # process -> slot
        self._killed = {}  # pid -> why the manager killed it
        self._wake_reader, self._wake_writer = multiprocessing.Pipe(duplex=False)
        for _ in range(self._max_workers):
            self._spawn()
        self._manager = threading.Thread(target=self._manage, daemon=True,
                                         name="persistqueue_liteq manager")
        self._manager.start()

    def _spawn(self):
        slot = _Slot(self._mp)
        proc = self._mp.Process(
            target=_process_worker,
            args=(self._cfg, slot, self._stop, self._initializer,
                  self._initargs, self._max_tasks_per_child),
            daemon=True,
        )
        proc.start()
        self._workers[proc] = slot

    def _manage(self):
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
                    self._reap(sentinels[handle])
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

    def _reap(self, proc):
        slot = self._workers.pop(proc)
        proc.join()
        if slot.state == _INIT_FAILED:
            self._mark_broken("A child process terminated abruptly: its initializer raised "
                              "(see the traceback it printed)")
            self._stop.set()
            for other in list(self._workers):
                other.terminate()
            return
        task_id, (lease, held) = slot.task_id, slot.held()
        for other, _ in held:  # waiting, or done but not stored: no attempt lost
            if other != task_id:
                self._engine.release(other, lease, attempted=False)
        if not task_id:
            return  # it stopped between tasks (max_tasks_per_child, shutdown)
        why = self._killed.pop(proc.pid, None)
        reason = why or "worker process %d died with %s" % (proc.pid, _describe_exit(proc.exitcode))
        logger.warning("%s while running task %d; replacing it", reason, task_id)
        msg = self._engine.get(task_id)
        if msg is None or msg.visible_at is None:
            return
        exc = TaskTimeout(reason) if why else WorkerDied(reason)
        exc_text = "%s (attempt %d of %d)" % (reason, msg.attempts, self._cfg.max_retries + 1)
        _settle_failure(self._engine, self._cfg, task_id, lease, msg.key, msg.attempts,
                        type(exc)(exc_text), exc_text)

    def _slots_of_workers(self):
        return list(self._workers.values()) if self._run_workers else []

    def _heartbeat(self):
        _extend_leases(self._engine, self._cfg, self._slots_of_workers())

    def _enforce_timeout(self):
        now = time.time()
        for proc, slot in self._workers.items():
            started = slot.started
            if (slot.task_id and started and now - started > self._task_timeout
                    and proc.pid not in self._killed):
                self._killed[proc.pid] = "task exceeded task_timeout=%gs; its worker was killed" % (
                    self._task_timeout)
                os.kill(proc.pid, signal.SIGKILL)

    def _stop_workers(self):
        self._stop.set()
        self._engine.wake("put", self._cfg.queue)
        self._wake_writer.send(None)
        self._manager.join()


class _Slot:
    """What one worker holds, shared with the pool: the tasks of its last
    lease (ids, one lease token), each waiting, started or dropped; the task
    it runs now (0: none) and since when its function runs (0.0 while it is
    being unpickled).  In shared memory for a process worker (``ctx``).

    The worker claims a task before it starts it and the pool cancels one
    only while it waits, both under the slot's lock, so a task is either
    run or cancelled, never both.
    """

    def __init__(self, ctx=None):
        if ctx is None:
            self._lock = threading.Lock()
            self._ids, self._states = [0] * _BATCH_MAX, [_WAITING] * _BATCH_MAX
            self._ints, self._started = [0, 0, _IDLE], [0.0]  # task id, lease, state
        else:
            self._lock = ctx.Lock()
            self._ids = ctx.RawArray(ctypes.c_longlong, _BATCH_MAX)
            self._states = ctx.RawArray(ctypes.c_byte, _BATCH_MAX)
            self._ints = ctx.RawArray(ctypes.c_longlong, 3)
            self._started = ctx.RawArray(ctypes.c_double, 1)

    def publish(self, messages):
        """The worker leased ``messages`` (one lease): they wait their turn."""
        with self._lock:
            for i in range(_BATCH_MAX):
                self._ids[i] = messages[i].id if i < len(messages) else 0
                self._states[i] = _WAITING
            self._ints[1] = messages[0].lease if messages else 0

    def claim(self, i):
        """The worker is about to start task ``i``: False if it was cancelled."""
        with self._lock:
            if self._states[i] != _WAITING:
                return False
            self._states[i] = _STARTED
            self._started[0] = 0.0
            self._ints[0] = self._ids[i]
            return True

    def take_back(self, i):
        """The worker hands back task ``i`` unstarted: False if it was cancelled."""
        with self._lock:
            if self._states[i] != _WAITING:
                return False
            self._states[i] = _DROPPED
            return True

    def cancel(self, task_id):
        """The pool cancels ``task_id`` if it waits here; True if it did."""
        with self._lock:
            for i in range(_BATCH_MAX):
                if self._ids[i] == task_id:
                    if self._states[i] != _WAITING:
                        return False
                    self._states[i] = _DROPPED
                    return True
        return False

    def held(self):
        """(lease, [(task id, started?)]) of the tasks not dropped."""
        with self._lock:
            return self._ints[1], [(self._ids[i], self._states[i] == _STARTED)
                                   for i in range(_BATCH_MAX)
                                   if self._ids[i] and self._states[i] != _DROPPED]

    def running(self):
        self._started[0] = time.time()

    def finish(self):
        self._ints[0] = 0

    def fail_init(self):
        self._ints[2] = _INIT_FAILED

    task_id = property(lambda self: self._ints[0])
    lease = property(lambda self: self._ints[1])
    state = property(lambda self: self._ints[2])
    started = property(lambda self: self._started[0])


class PersistentThreadPoolExecutor(_PersistentExecutor):
    """A ThreadPoolExecutor whose tasks live in a queue file: the same
    durability as the process pool, for I/O-bound work (same arguments,
    ``hmac_key`` included, less mp_context, max_tasks_per_child and
    task_timeout, which a thread cannot honour)."""

    _broken_error = BrokenThreadPool

    @staticmethod
    def _default_workers():
        return min(32, (os.cpu_count() or 1) + 4)

    def _start_workers(self):
        self._stop_event = threading.Event()
        self._slots = [_Slot() for _ in range(self._max_workers)]
        self._threads = [
            threading.Thread(target=self._thread_worker, args=(slot,), daemon=True,
                             name="persistqueue_liteq worker %d" % i)
            for i, slot in enumerate(self._slots)
        ]
        for thread in self._threads:
            thread.start()
        self._heart = threading.Thread(target=self._heartbeat_loop, daemon=True)
        self._heart.start()

    def _thread_worker(self, slot):
        if self._initializer is not None:
            try:
                self._initializer(*self._initargs)
            except BaseException:
                traceback.print_exc()
                self._mark_broken("A thread initializer failed, the thread pool is not usable anymore")
                self._stop_event.set()
                return
        _worker_loop(self._engine, self._cfg, slot, self._stop_event.is_set)

    def _slots_of_workers(self):
        return self._slots if self._run_workers else []

    def _heartbeat_loop(self):
        while not self._stop_event.wait(self._cfg.lease_seconds / 3):
            _extend_leases(self._engine, self._cfg, self._slots)

    def _stop_workers(self):
        self._stop_event.set()
        self._engine.wake("put", self._cfg.queue)
        for thread in self._threads:
            thread.join()
        self._heart.join()
