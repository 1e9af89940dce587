"""The pools' exit handlers, and the state they share with the pools: the
pools still open (their submitted calls are stored, and the pending tasks of
those that run workers run, before their workers are ended), the threads of
pools told shutdown(wait=False), and whether the interpreter is exiting (no
more submissions)."""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from typing import TYPE_CHECKING, Callable, Set

if TYPE_CHECKING:
    from ._executor import _PersistentExecutor

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
