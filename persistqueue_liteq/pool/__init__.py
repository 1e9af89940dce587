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

from ._shared import _RemoteTraceback, _apply_chunk, _rebuild_exception
from .process import PersistentProcessPoolExecutor
from .thread import PersistentThreadPoolExecutor


__all__ = ["PersistentProcessPoolExecutor", "PersistentThreadPoolExecutor"]

# Stored tasks (map's chunks) and outcomes (exceptions with their remote
# tracebacks) name these by pickle as persistqueue_liteq.pool's, as before
# the pool was a package: files written by either version read in both.
for _obj in (_RemoteTraceback, _apply_chunk, _rebuild_exception):
    _obj.__module__ = __name__
del _obj
