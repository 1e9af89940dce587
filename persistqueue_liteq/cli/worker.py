"""``worker`` (a process pool serving a queue of tasks) and ``consume``
(each message to a command's stdin; the loop is in :mod:`._consume`)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, List, Optional

from . import _consume
from ._common import PROG, _configure_logging, _reading, _where, _writing

if TYPE_CHECKING:
    import argparse
    from types import FrameType

    from ..pool import PersistentProcessPoolExecutor

# -- worker -------------------------------------------------------------------------

def _init_worker_process(verbosity: int) -> None:
    """In each worker: leave SIGINT and SIGTERM to the command's process, which
    stops the pool gracefully on the first and kills the workers on the
    second; a Ctrl-C on the terminal reaches every process of the group."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _configure_logging(verbosity)


def _cmd_worker(args: argparse.Namespace) -> int:
    from ..pool import PersistentProcessPoolExecutor  # multiprocessing only when needed

    if os.getcwd() not in sys.path:  # tasks are imported by module name
        sys.path.insert(0, os.getcwd())
    signals: List[int] = []
    signalled = threading.Event()

    def on_signal(signum: int, frame: Optional[FrameType]) -> None:
        signals.append(signum)
        signalled.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        executor = PersistentProcessPoolExecutor(
            args.db, max_workers=args.workers, name=args.queue,
            initializer=_init_worker_process, initargs=(args.verbose,),
            max_retries=args.max_retries, retry_backoff=args.retry_backoff,
            task_timeout=args.task_timeout, lease_seconds=args.lease_seconds,
            max_tasks_per_child=args.max_tasks_per_child,
            timeout_seconds=args.timeout, table_prefix=args.table_prefix,
            hmac_key=args.hmac_key_file,
        )
        print("%s: worker %d started: %d process%s running queue %r of %s" % (
            PROG, os.getpid(), args.workers, "" if args.workers == 1 else "es", args.queue,
            _where(args)), flush=True)
        signalled.wait()  # the handler runs in this thread and wakes it
        return _stop_worker(args, executor, signals)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _stop_worker(args: argparse.Namespace, executor: PersistentProcessPoolExecutor,
                 signals: List[int]) -> int:
    """First signal: let the running tasks finish.  A second one: kill the
    workers; the pool hands their tasks back to the queue (each killed run
    counts as an attempt, as any worker's death does)."""
    print("%s: %s: stopping once the running tasks finish; send it again to stop at once"
          % (PROG, signal.Signals(signals[0]).name), file=sys.stderr, flush=True)
    stopper = threading.Thread(target=executor.shutdown, kwargs={"wait": True}, daemon=True)
    stopper.start()
    while stopper.is_alive() and len(signals) < 2:
        stopper.join(0.1)
    if not stopper.is_alive():
        with _reading(args) as engine:
            left = engine.count(args.queue, "live")
        print("%s: worker %d stopped: %d task%s left in queue %r" % (
            PROG, os.getpid(), left, "" if left == 1 else "s", args.queue), flush=True)
        return 0
    import multiprocessing

    killed = multiprocessing.active_children()  # the pool's workers, wherever forked
    for process in killed:
        process.kill()
    stopper.join(5.0)  # the pool reaps them and releases their tasks
    print("%s: worker %d stopped at once by a second %s: %d worker process%s killed, their "
          "tasks back in queue %r" % (
              PROG, os.getpid(), signal.Signals(signals[1]).name, len(killed),
              "" if len(killed) == 1 else "es", args.queue), flush=True)
    if stopper.is_alive():  # should not happen; do not hang on it
        sys.stderr.flush()
        os._exit(1)
    return 1


# -- consume ------------------------------------------------------------------------

def _cmd_consume(args: argparse.Namespace) -> int:
    if not args.command_line:
        args.parser.error("give the command to run after --, e.g. consume DB -- sh -c 'cat'")
    with _writing(args, create=True) as q:
        done, failed = _consume.consume(q.engine, args, args.command_line)
    print("%s: consumed %d message%s of queue %r: %d done, %d failed" % (
        PROG, done + failed, "" if done + failed == 1 else "s", args.queue, done, failed),
        flush=True)
    return 0
