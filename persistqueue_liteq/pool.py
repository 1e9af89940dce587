"""Durable ``concurrent.futures`` pools: every task lives in the queue file.

Used like ProcessPoolExecutor and ThreadPoolExecutor; what differs:

* A task is stored under a key (the caller's, or a digest of the function
  and its arguments with an occurrence number), so a script killed in the
  middle of a batch and run again runs only what is left: finished tasks
  answer from the stored results, tasks that were in flight or had failed
  run again (at-least-once: their side effects may happen twice).  A run
  that ends cleanly (shutdown(), or a with block ended without an
  exception, every future done and none cancelled) forgets the results of
  its queue's submit() and map() calls, so a later run computes afresh;
  results of submit_keyed() last until forget_results().
* ``submit`` pickles the call and returns; the storer thread writes the
  calls in batches.  No task runs before it is stored; shutdown and the
  interpreter's exit wait until all are (and, as with the stdlib's pools,
  until the pending tasks of a pool that runs workers are done).  A pool
  without workers (run_workers=False) waits for nothing more: a later run
  collects its results by submitting the same calls.
* A task's exception is its outcome at once, as with the stdlib's pools
  (and the task is dead-lettered with its traceback, for ``redrive()``);
  exceptions of the ``retry_on`` classes are retried with backoff, up to
  ``max_retries`` times.  A worker that dies (or is killed by task_timeout)
  costs its task one of its ``max_retries``; the worker is replaced and the
  task retried.  The pool is never broken by a task; it is broken
  (BrokenProcessPool, naming the cause) by an initializer that raises, or
  by workers that die before they start, 3 in a row.
* ``cancel()`` cancels every task that has not started, even one leased by
  a worker of the pool and waiting in its batch.
* With ``hmac_key`` every task row and result row is signed (HMAC-SHA256 of
  the queue, the task's key and the pickle) and one that does not match is
  never unpickled: whoever can write the file cannot run code in the
  workers or in the submitting process.
* A storage fault (a full disk, a lock another program holds, an I/O error)
  is waited out, with backoff, by every thread and worker.  One that lasts
  longer than ``lease_seconds`` (and twice ``timeout_seconds``) fails the
  futures it holds up with StorageFault: the batch the storer could not
  write; once a worker gave up (it is replaced) or the results could not be
  read, the future of every task stored before (the tasks stay in the file,
  for a rerun).  The pool goes on, and works again once the file does.  A
  result the file refuses (too big for SQLite or for the disk) fails its
  task as an exception would: an attempt, then the dead-letter queue.
  Every such event is logged, with a traceback where a thread or worker
  ended, on the "persistqueue_liteq" logger.  Any other exception of the
  pool's own threads is a bug, never waited out: it is logged with its
  traceback and fails the futures it concerns (those waiting for results,
  if the collector meets it; every future, as BrokenProcessPool's cause,
  if the process pool's manager does).
* Workers die with the pool's process, however it dies, so that a rerun of
  the script never runs a task twice at once; they are not daemonic, so a
  task may start processes, as in the standard library's pool.

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
                    (woken by "done"; marks           (one transaction: the batch's
                    RUNNING the futures of            outcomes stored, its tasks
                    the tasks the slots               acked, the next batch leased;
                    show running)                     or, by the worker's overseer
                                                      thread once a task has run
                                                      1 ms: the outcomes so far,
                                                      and the unstarted tasks
                                                      handed back if a worker idles)
                    manager thread
                    - waits on worker sentinels: a dead worker's task is
                      released at once (one attempt) or, past max_retries,
                      completed with WorkerDied; the tasks it had not started
                      are released without an attempt; the worker is replaced
                      (3 in a row that die before they are up break the pool)
                    - extends the leases of held tasks (heartbeat)
                    - kills a worker whose task is over task_timeout

Each worker publishes what it holds in a shared slot (the batch's ids, its
lease, which task runs and since when); a worker claims a task there before
starting it, and the pool cancels a waiting one there, under the slot's lock.
"""

import atexit
import concurrent.futures
import contextlib
import ctypes
import hashlib
import itertools
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
import time
import traceback
import weakref
from concurrent.futures import BrokenExecutor, Future
from concurrent.futures.process import BrokenProcessPool
from concurrent.futures.thread import BrokenThreadPool

from . import _checks
from ._policy import describe_exception, out_of_retries, redrive_tasks, seconds_until
from ._spill import SpilledCounts
from .backends import describe, front_end_engine, redact
from .engine import Engine, EngineSpec
from .exceptions import (DatabaseBusy, IncompatibleDatabase, LiteQueueError, PayloadTooLarge,
                         SerializationError, StorageError, StorageFault, TaskTimeout,
                         WorkerDied)
from .serializers import SignatureError, Signer, _check_key
from .engine import DEFAULT_PREFIX

try:
    import cloudpickle
except ImportError:  # optional: lambdas and closures need it
    cloudpickle = None

__all__ = ["PersistentProcessPoolExecutor", "PersistentThreadPoolExecutor"]

logger = logging.getLogger("persistqueue_liteq")

# A worker's state: starting (until its initializer ran and its engine is
# open), its initializer failed, up, or stopped by a bug of its own (not a
# storage fault, not its task's).
_IDLE, _INIT_FAILED, _UP, _BUG = 0, 1, 2, 3
# Workers that die before they are up, in a row, that break a process pool.
_FAILED_STARTS = 3
# Workers stopped by a bug in a row, no result stored meanwhile, that break a
# pool: a bug that stops every worker would otherwise replace them forever.
_BUGS_IN_A_ROW = 3
# The stdlib's pools log an initializer's failure there, with its traceback.
_futures_logger = logging.getLogger("concurrent.futures")
# A task of a worker's batch: leased and waiting, started, or cancelled (or
# handed back) before it started.
_WAITING, _STARTED, _DROPPED = 0, 1, 2
# Most tasks a worker leases at once, and about how long a batch should run.
_BATCH_MAX = 64
_BATCH_SECONDS = 0.002
# How long a finished task's outcome may wait, to be stored with the next
# ones in one transaction, before its worker stores it between two tasks.
_FLUSH_AGE = 0.001
# Most tasks the storer writes in one transaction.
_STORE_BATCH = 1000
# How often a worker's overseer looks at the task it runs (see _Overseer).
_WATCH_EVERY = 0.001
# The GIL's switch interval while a worker's overseer stores outcomes (each
# statement lets go of the GIL and must get it back from the task), and in a
# process worker all the time (the overseer's look at the task needs it).
_PROMPT_SWITCH = 0.00002
_WORKER_SWITCH = 0.0005
# How many distinct calls a pool counts in memory; the counts of any more go
# to a temporary file (see _Occurrences).
_OCCURRENCES_IN_MEMORY = 65536
# The keys submit() and map() give their calls: a digest and a number.
_CALL_KEYS = "[0-9a-f]" * 32 + "#*"
# How often an idle worker looks for a stop request even without a wake-up.
_IDLE_CHECK = 1.0
# What a storage fault raises: the engine's (every error of the driver is one
# of ours: a lock held too long, StorageError and its kinds, a file that is
# no longer a usable queue database, a value too long to store) and the OS's.
# Anything else is a bug, not a fault: never waited out, it is logged and
# fails the futures it concerns.
_STORAGE_ERRORS = (DatabaseBusy, StorageError, IncompatibleDatabase, PayloadTooLarge, OSError)
# Waits between two tries of a failing storage call: doubling, up to the last.
_FAULT_FIRST_RETRY = 0.05
_FAULT_LONGEST_RETRY = 1.0


# -- what crosses the file -----------------------------------------------------

def _dumps(obj, what):
    # Pickling runs the caller's code (__reduce__, __getstate__): any
    # exception of it means "cannot pickle".
    try:
        return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        if cloudpickle is not None:
            try:
                return cloudpickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
            except Exception:  # the caller's code again
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
    except Exception as pickling_error:  # any exception of the task's exception's own code
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

    def __init__(self, spec, queue, timeout, lease_seconds, max_retries,
                 retry_backoff, retry_backoff_max, retry_on=(), hmac_key=None):
        # Read when the pool is made, so that a worker started by spawn or
        # forkserver sees what its pool's process has (tests change it).
        self.batch_seconds = _BATCH_SECONDS
        self.flush_age = _FLUSH_AGE
        self.spec = spec  # the engine's EngineSpec: how a worker opens it
        self.path = redact(spec.location)  # for messages
        self.queue = queue
        self.lease_seconds = lease_seconds
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.retry_backoff_max = retry_backoff_max
        self.retry_on = retry_on
        # How long a storage fault may last before it fails what it holds up:
        # a lease, which the heartbeat could not extend meanwhile, so that a
        # worker's tasks are no longer its own by then; and at least two
        # timeout_seconds, so that one lock held a little too long is waited out.
        self.fault_seconds = max(lease_seconds, 2 * timeout)
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
        return self.spec.open()


def _patiently(cfg, what, fn, *args, **kwargs):
    """Return ``fn(*args, **kwargs)``, a storage call, trying it again after
    a backoff while it fails, for at most ``cfg.fault_seconds``; then raise
    StorageFault, which names the file, what failed and why.  Safe for any
    engine method: each is one transaction, which a failure rolls back."""
    began, delay, failures = time.monotonic(), _FAULT_FIRST_RETRY, 0
    while True:
        try:
            value = fn(*args, **kwargs)
        except StorageFault:
            raise
        except _STORAGE_ERRORS as exc:
            failures += 1
            waited = time.monotonic() - began
            if waited >= cfg.fault_seconds:
                raise StorageFault(
                    "%s: %s failed for more than %gs (lease_seconds, or twice timeout_seconds): %s"
                    % (cfg.path, what, cfg.fault_seconds, exc)) from exc
            if failures == 1:
                logger.warning("%s: %s failed, retrying for up to %gs: %s",
                               cfg.path, what, cfg.fault_seconds, exc)
            time.sleep(min(delay, cfg.fault_seconds - waited))
            delay = min(delay * 2, _FAULT_LONGEST_RETRY)
            continue
        if failures:
            logger.info("%s: %s works again, after %d failure%s in %.1fs", cfg.path, what,
                        failures, "" if failures == 1 else "s", time.monotonic() - began)
        return value


class _Patient:
    """An engine whose every call waits out a passing storage fault
    (:func:`_patiently`); ``raw`` is the engine itself."""

    def __init__(self, engine, cfg):
        self.raw, self._cfg = engine, cfg

    def __getattr__(self, name):
        method = getattr(self.raw, name)
        if not callable(method) or name in ("waiter", "wake"):  # not storage
            return method
        return lambda *args, **kwargs: _patiently(self._cfg, name, method, *args, **kwargs)


def _complete_batch(engine, cfg, batch, outcomes, want):
    """Store the ``outcomes`` of ``batch`` and lease up to ``want`` more
    tasks, in one transaction, waiting out a passing fault (``engine`` is a
    _Patient).  If the file refuses the transaction for another reason than
    a lock, the results are stored one at a time, and one that the file
    refuses (too big for SQLite, or for the disk) fails its task instead:
    counted as an attempt, as if the task had raised StorageFault, so it is
    retried up to max_retries, then dead-lettered, never run forever."""
    attempts = {msg.id: msg.attempts for msg in batch}
    raw = engine.raw

    def attempt():
        try:
            return raw.complete_many(cfg.queue, outcomes, want, cfg.lease_seconds)
        except DatabaseBusy:
            raise
        except _STORAGE_ERRORS:
            if not outcomes:
                raise
        while outcomes:  # stored ones leave the list: a retry stores no result twice
            _store_result(raw, cfg, outcomes[0], attempts[outcomes[0][0]])
            del outcomes[0]
        return raw.complete_many(cfg.queue, [], want, cfg.lease_seconds)

    return _patiently(cfg, "storing results", attempt)


def _store_result(engine, cfg, outcome, attempts):
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


def _settle_failure(engine, cfg, task_id, lease, key, attempts, exc, reason):
    """A worker died or timed out on a task: retry it later, or store the
    failure for good."""
    if attempts > cfg.max_retries:
        summary = out_of_retries(attempts, cfg.max_retries, reason)
        engine.complete(task_id, lease, key, False,
                        cfg.seal_result(key, False, _failure_payload(exc)), dead_reason=summary)
    else:
        engine.release(task_id, lease, cfg.backoff(attempts), error=reason)


def _failed(cfg, msg, error, reason, text=None):
    """The outcome of a task that failed for good: its exception, stored
    with the task dead-lettered for ``reason``, ``text`` its last error."""
    return (msg.id, msg.lease, msg.key, False,
            cfg.seal_result(msg.key, False, _failure_payload(error)), reason,
            reason if text is None else text)


def _raised(engine, cfg, msg, exc):
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


def _run_one(engine, cfg, msg, slot):
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

    def __init__(self, ctx=None):
        self._value = None if ctx is None else ctx.Value(ctypes.c_int, 0)
        self._lock = threading.Lock() if ctx is None else None
        self._count = 0

    def add(self, n):
        if self._value is None:
            with self._lock:
                self._count += n
        else:
            with self._value.get_lock():
                self._value.value += n

    def __bool__(self):
        return (self._count if self._value is None else self._value.value) > 0


@contextlib.contextmanager
def _prompt_switching():
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

    def __init__(self, engine, cfg, slot, idle):
        self.engine, self.cfg, self.slot, self.idle = engine, cfg, slot, idle
        self.lock = threading.Lock()
        self.outcomes = []
        self.oldest = 0.0  # when the oldest outcome not stored was added
        self.started = 0  # how many tasks the worker started: a new one changes it
        self.busy = threading.Event()  # the worker holds a batch
        self.done = False
        self.failure = None  # the bug it met, if it met one
        self._thread = threading.Thread(target=self._watch, daemon=True,
                                        name="persistqueue_liteq overseer")
        self._thread.start()

    def add(self, outcome):
        with self.lock:
            if not self.outcomes:
                self.oldest = time.monotonic()
            self.outcomes.append(outcome)

    def store_old(self):
        """Between two tasks, in the worker's thread: store the outcomes if
        the oldest has waited ``cfg.flush_age``."""
        if (self.outcomes and self.failure is None
                and time.monotonic() - self.oldest >= self.cfg.flush_age):
            self._store()

    def take(self):
        """The outcomes to store (call with ``lock`` held)."""
        outcomes, self.outcomes = self.outcomes, []
        return outcomes

    def stop(self):
        self.done = True
        self.busy.set()
        self._thread.join()

    def _watch(self):
        told = None  # the task the pool was told about
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

    def _store(self):
        try:
            with self.lock:
                if self.outcomes:
                    self.engine.complete_many(self.cfg.queue, self.outcomes)
                    self.outcomes = []
        except _STORAGE_ERRORS:  # busy for a moment: the worker stores them with its next lease
            pass
        except Exception as exc:
            self._failed("storing the outcomes of finished tasks", exc)

    def _hand_back(self):
        lease, ids = self.slot.take_back_waiting()
        for task_id in ids:
            try:
                self.engine.release(task_id, lease, attempted=False)
            except _STORAGE_ERRORS:
                pass  # busy: its lease runs out and it is delivered again
            except Exception as exc:
                self._failed("handing back task %d" % task_id, exc)
                return  # the others' leases run out: they are delivered again

    def _failed(self, what, exc):
        self.failure = exc
        logger.error("%s: the overseer of a worker failed %s (a bug, not a storage fault); "
                     "the worker does without it", self.cfg.path, what, exc_info=True)


def _worker_loop(engine, cfg, slot, should_stop, max_tasks=None, idle=None):
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
    engine = _Patient(engine, cfg)  # a fault that lasts raises StorageFault: the worker ends
    is_idle = False
    try:
        with engine.waiter("put", cfg.queue) as waiter:
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


def _run_batch(engine, cfg, slot, batch, overseer, should_stop, max_tasks, done):
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


def _process_worker(cfg, slot, stop, initializer, initargs, max_tasks, idle):
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


def _exception_line(exc):
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def _follow_parent():
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

    def watch():
        multiprocessing.connection.wait([parent.sentinel])
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True, name="persistqueue_liteq parent watch").start()


def _extend_leases(engine, cfg, slots):
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


def _beat(executor, slots):
    """One heartbeat of ``executor``.  A bug in it (storage faults are left
    to the next beat) is logged and fails the futures of the tasks whose
    leases it could not extend: they may be delivered again while they run."""
    try:
        _extend_leases(executor._engine, executor._cfg, slots)
    except Exception as exc:
        logger.error("the heartbeat of the pool on %s failed; the futures of the tasks its "
                     "workers hold fail with it", executor._engine.location, exc_info=True)
        executor._fail_tasks([task_id for slot in slots for task_id, _ in slot.held()[1]], exc)


def _exception_types(retry_on):
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

    def __init__(self):
        self._counts = {}
        self._spill = None
        self._cap = _OCCURRENCES_IN_MEMORY

    def next(self, digest):
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

    def close(self):
        if self._spill is not None:
            self._spill.close()
            self._spill = None


# -- the executors ------------------------------------------------------------------

# Pools not shut down when the interpreter exits still store what was submitted.
_live_executors = weakref.WeakSet()


@atexit.register
def _store_at_exit():
    for executor in list(_live_executors):
        if os.getpid() == executor._owner_pid:  # not in a forked worker
            executor._flush()


def _end_workers_at_exit():
    """Before the interpreter joins its threads and children: terminate the
    workers of pools not shut down, as it did when they were daemonic (the
    tasks they ran come back after their lease)."""
    for executor in list(_live_executors):
        executor._end_workers_at_exit()


# Run before multiprocessing's own exit handler, which would wait for the
# (non-daemonic) workers forever; the standard library's pools register the same way.
if hasattr(threading, "_register_atexit"):
    threading._register_atexit(_end_workers_at_exit)
else:  # pragma: no cover (not CPython)
    atexit.register(_end_workers_at_exit)

# How long an exiting interpreter waits for a pool's manager to reap the workers
# it ended.
_EXIT_REAP_SECONDS = 5.0

# The threads of pools told shutdown(wait=False).
_shutting_down = set()
# The interpreter is exiting: no more submissions.
_exiting = False


def _finish_at_exit():
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


if hasattr(threading, "_register_atexit"):
    threading._register_atexit(_finish_at_exit)
else:  # pragma: no cover (not CPython)
    atexit.register(_finish_at_exit)


class _TaskFuture(Future):
    """A Future whose ``cancel()`` also removes its task from the file, which
    succeeds while no worker has leased it."""

    def __init__(self, executor, key):
        super().__init__()
        self._executor, self._key = executor, key
        self._task_id = None  # set once stored
        self._stored_at = None  # and when (time.monotonic())

    def _start(self):
        """Enter RUNNING (if not there yet); False if it was cancelled (the
        stdlib's set_running_or_notify_cancel, which may be called twice)."""
        with self._condition:
            if self._state == "RUNNING":
                return True
        return self.set_running_or_notify_cancel()

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
        executor._cancelled = True  # the run is not complete: keep its results
        # No worker will ever dequeue it, which is where the stdlib's pools
        # notify wait() and as_completed(): do it now.
        self.set_running_or_notify_cancel()
        return True


class _PersistentExecutor(concurrent.futures.Executor):
    _broken_error = BrokenExecutor

    def __init__(self, path, max_workers=None, initializer=None, initargs=(), *,
                 name="tasks", max_retries=3, retry_on=(), retry_backoff=0.5,
                 retry_backoff_max=60.0, lease_seconds=30.0, timeout_seconds=5.0,
                 synchronous="NORMAL", table_prefix=DEFAULT_PREFIX, run_workers=True,
                 hmac_key=None, journal_mode=None):
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
        self._patient = _Patient(self._engine, self._cfg)  # for the pool's own threads
        self._max_workers = max_workers
        self._initializer, self._initargs = initializer, tuple(initargs)
        # _lock guards _pending, _outbox, _occurrences, _shutdown and _broken.
        self._lock = threading.Lock()
        self._pending = {}  # key -> [futures]
        self._keys = {}  # task id -> key, of the stored tasks with futures pending
        self._outbox = {}  # future -> (key, pickled call): submitted, not yet stored
        self._outbox_filled = threading.Condition(self._lock)
        self._stored = threading.Condition(self._lock)  # outbox empty, nothing in flight
        self._storing = threading.Lock()  # held while the storer writes a batch
        self._in_flight = False  # the storer took a batch it has not written yet
        self._owner_pid = os.getpid()
        self._occurrences = _Occurrences()
        self._shutdown = False
        self._broken = None
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
            if _exiting:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            futures = []
            for key, data in items:
                if key is None:
                    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
                    key = "%s#%d" % (digest, self._occurrences.next(digest))
                    self._made_call_keys = True
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

    def _finish_pending(self):
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

    def _collect(self):
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

    def _collect_results(self):
        """Follow the results table and resolve the futures waiting for them.

        While the table cannot be read, look again after a wait; if that
        lasts longer than the pool waits out a storage fault, fail every
        future of a stored task with StorageFault (and so on, each time it
        lasts that long again)."""
        engine, queue = self._engine, self._cfg.queue
        failing_since = None
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
                            self._keys.pop(future._task_id, None)
                    for future in futures:
                        self._resolve_future(future, ok, data)
                if rows:
                    continue
                self._mark_running()
                with self._lock:
                    if self._shutdown and not self._pending and not self._outbox:
                        return
                waiter.wait(_IDLE_CHECK)

    def _mark_running(self):
        """The futures of the tasks our workers run enter RUNNING (their
        overseers wake us once a task has run for a moment)."""
        for slot in self._slots_of_workers():
            task_id = slot.task_id
            if task_id and slot.started:
                with self._lock:
                    futures = list(self._pending.get(self._keys.get(task_id), ()))
                for future in futures:
                    future._start()

    def _collect_failed(self, exc, failing_since):
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

    def _storage_lost(self, error, when):
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

    def _fail_stored(self, error):
        """Fail the future of every stored task with ``error``."""
        with self._lock:
            stored = [f for fs in self._pending.values() for f in fs if f._stored_at is not None]
        self._fail_futures(stored, error)

    def _fail_tasks(self, task_ids, error):
        """Fail the futures of these stored tasks with ``error``."""
        ids = set(task_ids)
        with self._lock:
            futures = [f for fs in self._pending.values() for f in fs if f._task_id in ids]
        self._fail_futures(futures, error)

    def _fail_futures(self, futures, error):
        for future in futures:
            if self._forget(future._key, future) and future._start():
                future.set_exception(error)

    def _hand_back(self, slot, reason, error_type):
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
            _settle_failure(self._patient, self._cfg, task_id, lease, msg.key, msg.attempts,
                            error_type(exc_text), exc_text)
        except StorageFault as exc:
            logger.error("cannot hand back the tasks of a worker that ended: %s", exc)
            self._fail_tasks([task_id] + [other for other, _ in held], exc)
        except Exception as exc:  # not a storage fault (those are waited out): a bug
            logger.error("cannot hand back the tasks of a worker that ended; their futures "
                         "fail with the error", exc_info=True)
            self._fail_tasks([task_id] + [other for other, _ in held], exc)

    def _resolve_future(self, future, ok, data):
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
                self._keys.pop(future._task_id, None)
            return found

    def _worker_stopped_by_bug(self, who, bug, cause=None):
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

    def _mark_broken(self, reason, cause=None):
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

    def __exit__(self, exc_type, exc_val, exc_tb):
        # A with block that ends with an exception did not end cleanly: the
        # results stay, for a rerun to resume.
        self._shutdown_and_forget(exc_type is None)
        return False

    def shutdown(self, wait=True, *, cancel_futures=False):
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

    def _shutdown_in_background(self, cancel_futures):
        try:
            self._shutdown_and_forget(True, cancel_futures)
        finally:
            _shutting_down.discard(threading.current_thread())

    def _shutdown_and_forget(self, clean, cancel_futures=False):
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

    def dead_letters(self, limit=None):
        """Tasks that failed for good, with reasons (see LiteQueue.dead_letters)."""
        return self._engine.dead_letters(self._cfg.queue, limit)

    def forget_results(self, key=None):
        """Delete the stored results (of one key, or all of this pool's
        queue) once a batch is over; return how many."""
        return self._engine.forget_results(self._cfg.queue, key)

    def redrive(self, ids=None):
        """Run dead tasks again (their stored failures are forgotten)."""
        return redrive_tasks(self._engine, self._cfg.queue, ids)


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
        self._pid = os.getpid()
        self._workers = {}  # process -> slot
        self._killed = {}  # pid -> why the manager killed it
        self._wake_reader, self._wake_writer = multiprocessing.Pipe(duplex=False)
        self._idle = _Idle(self._mp)
        self._failed_starts = 0  # workers in a row that died before they were up
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
                  self._initargs, self._max_tasks_per_child, self._idle),
            # Not daemonic, so that a task may start processes, as in the
            # standard library's pool; _end_workers_at_exit ends them.
            daemon=False,
        )
        proc.start()
        self._workers[proc] = slot

    def _manage(self):
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

    def _manage_workers(self):
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
        if slot.counted_idle:  # killed while it waited for work
            slot.count_idle(self._idle, False)
        if slot.state == _INIT_FAILED:
            return self._break("A child process terminated abruptly: its initializer raised "
                               "%s (its traceback is logged on the 'concurrent.futures' "
                               "logger)" % slot.failure)
        if slot.state == _IDLE and not self._stop.is_set():
            self._failed_starts += 1
            why = "worker process %d died with %s before it could start" % (
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

    def _break(self, reason, cause=None):
        """Workers cannot run: fail every future, stop the others."""
        self._mark_broken(reason, cause)
        self._stop.set()
        for other in list(self._workers):
            other.terminate()

    def _slots_of_workers(self):
        return list(self._workers.values()) if self._run_workers else []

    def _heartbeat(self):
        _beat(self, self._slots_of_workers())

    def _enforce_timeout(self):
        now = time.monotonic()  # as slot.running(): see there
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

    def _end_workers_at_exit(self):
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


class _Slot:
    """What one worker holds, shared with the pool: the tasks of its last
    lease (ids, one lease token), each waiting, started or dropped; the task
    it runs now (0: none) and since when its function runs (time.monotonic();
    0.0 while it is being unpickled).  In shared memory for a process worker (``ctx``).

    The worker claims a task before it starts it and the pool cancels one
    only while it waits, both under the slot's lock, so a task is either
    run or cancelled, never both.
    """

    def __init__(self, ctx=None):
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

    def has_waiting(self):
        """Whether a task of the batch still waits its turn."""
        with self._lock:
            return any(self._ids[i] and self._states[i] == _WAITING for i in range(_BATCH_MAX))

    def take_back_waiting(self):
        """The worker hands back every task still waiting: (lease, their ids)."""
        with self._lock:
            ids = []
            for i in range(_BATCH_MAX):
                if self._ids[i] and self._states[i] == _WAITING:
                    self._states[i] = _DROPPED
                    ids.append(self._ids[i])
            return self._ints[1], ids

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
        # Monotonic, so that a step of the wall clock neither kills a healthy
        # task nor spares a hung one.  The pool's process compares it with its
        # own time.monotonic(): on Linux, macOS and Windows that clock is one
        # for the whole machine (CLOCK_MONOTONIC, mach_absolute_time,
        # QueryPerformanceCounter), not one per process.
        self._started[0] = time.monotonic()

    def finish(self):
        self._ints[0] = 0

    def up(self):
        self._ints[2] = _UP

    def fail_init(self, text):
        """The initializer raised: ``text`` says what, for the pool's message."""
        self._fail(text, _INIT_FAILED)

    def fail_bug(self, text):
        """A bug stopped the worker: ``text`` says what."""
        self._fail(text, _BUG)

    def _fail(self, text, state):
        data = text.encode("utf-8", "replace")[:255]
        if isinstance(self._failure, list):
            self._failure[0] = data
        else:
            self._failure.value = data
        self._ints[2] = state

    @property
    def failure(self):
        data = self._failure[0] if isinstance(self._failure, list) else self._failure.value
        return data.decode("utf-8", "replace")

    def count_idle(self, idle, flag):
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

    def give_up(self):
        """The worker ends on a storage fault that lasted (time.monotonic(),
        which the pool's process shares)."""
        self._started[1] = time.monotonic()


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
        self._idle = _Idle()
        # _threads_lock guards _threads and the setting of _stop_event: no
        # thread is added once it is set, so that _stop_workers joins them all.
        self._threads_lock = threading.Lock()
        self._threads = []
        self._thread_names = itertools.count()
        for slot in self._slots:
            self._start_thread(slot)
        self._heart = threading.Thread(target=self._heartbeat_loop, daemon=True)
        self._heart.start()

    def _start_thread(self, slot):
        with self._threads_lock:
            if self._stop_event.is_set():
                return
            thread = threading.Thread(target=self._thread_worker, args=(slot,),
                                      daemon=True, name="persistqueue_liteq worker %d"
                                      % next(self._thread_names))
            self._threads.append(thread)
            thread.start()

    def _thread_worker(self, slot):
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

    def _break(self, reason, cause=None):
        """Workers cannot run: fail every future, stop the threads."""
        self._mark_broken(reason, cause)
        self._stop_event.set()

    def _slots_of_workers(self):
        return self._slots if self._run_workers else []

    def _heartbeat_loop(self):
        while not self._stop_event.wait(self._cfg.lease_seconds / 3):
            _beat(self, self._slots)

    def _end_workers_at_exit(self):
        pass  # daemon threads

    def _stop_workers(self):
        with self._threads_lock:
            self._stop_event.set()
        self._engine.wake("put", self._cfg.queue)
        for thread in self._threads:
            thread.join()
        self._heart.join()
