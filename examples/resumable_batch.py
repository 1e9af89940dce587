"""A batch script that resumes where it was killed.

    python examples/resumable_batch.py [batch.db] --delay 0.2
    # stop it mid-batch: Ctrl-C, or kill -9 the script and its workers
    # (kill -9 -- -PGID), then run the same command again

It squares 200 numbers in a durable process pool, one task per number under
its own key (submit_keyed).  Every task is stored before it runs and every
result is stored with its task's acknowledgement, so a second run of the same
command finds the finished tasks' results in the file without running them;
tasks that were running when the script died run again (a killed run's
leases run out after LEASE_SECONDS); the rest run once.  Ctrl-C reaches the
workers too: the tasks it interrupts count as a failed attempt and run again.

Each execution of a task appends "<pid of the batch run> <item>" to
``batch.db.executions`` (or --log), so you can count what ran in which run.
"""

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import as_completed

from persistqueue_liteq import PersistentProcessPoolExecutor

ITEMS = 200
LEASE_SECONDS = 2  # how soon a killed run's running tasks are taken over

_log_path = None
_delay = 0.0


def setup_worker(log_path, delay):
    """Pool initializer: what every task needs but is not part of its identity
    (so that a rerun with another --delay still finds the same tasks)."""
    global _log_path, _delay
    _log_path, _delay = log_path, delay


def square(item):
    line = "%d %d\n" % (multiprocessing.parent_process().pid, item)
    fd = os.open(_log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one write with O_APPEND: lines never mix
    finally:
        os.close(fd)
    time.sleep(_delay)
    return item * item


def run_batch(pool):
    futures = {pool.submit_keyed("square-%d" % i, square, i): i for i in range(ITEMS)}
    print("submitted %d tasks" % ITEMS, flush=True)
    results = {}
    for n, future in enumerate(as_completed(futures), 1):
        item = futures[future]
        results[item] = future.result()
        print("done %d (%d/%d)" % (item, n, ITEMS), flush=True)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db", nargs="?",
                        default=os.path.join(tempfile.gettempdir(), "resumable_batch.db"),
                        help="the batch's queue file; run again with the same one to resume "
                             "(default: %(default)s)")
    parser.add_argument("--delay", type=float, default=0.0,
                        help="seconds each task sleeps, to give you time to kill the script")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--log", help="where executions are recorded (default: DB.executions)")
    args = parser.parse_args()
    log_path = os.path.abspath(args.log or args.db + ".executions")

    with PersistentProcessPoolExecutor(
        args.db, max_workers=args.workers, lease_seconds=LEASE_SECONDS,
        initializer=setup_worker, initargs=(log_path, args.delay),
    ) as pool:
        try:
            results = run_batch(pool)
        except KeyboardInterrupt:
            # Leaving the with block would wait for every pending task, as the
            # standard library's pools do.  Cancel those not started instead:
            # they leave the file, and the next run submits them again.
            print("interrupted: run the same command again to resume", flush=True)
            pool.shutdown(cancel_futures=True)
            sys.exit(130)

    wrong = [i for i in range(ITEMS) if results.get(i) != i * i]
    print("finished: %d results, %d wrong, sum %d"
          % (len(results), len(wrong), sum(results.values())))
    with open(log_path) as f:
        ran = sum(line.split()[0] == str(os.getpid()) for line in f)
    print("this run executed %d tasks; the other results came from the file" % ran)
    # The tasks have keys of their own (submit_keyed), so their results last
    # beyond this run: a real script would now call pool.forget_results() (or
    # delete the file) once they are safely elsewhere.  Calls made with
    # submit() or map() are forgotten when the pool shuts down cleanly.


if __name__ == "__main__":
    main()
