"""A durable process pool, used like concurrent.futures.ProcessPoolExecutor.

    python examples/durable_pool.py [tasks.db]

submit, map and as_completed work as with the standard library's pool.
What the file adds, shown here: a task that raises one of ``retry_on`` (a
network hiccup) is retried after a backoff, up to max_retries times; any
other exception is the task's outcome at once, as with the standard library,
and the task lands in the dead-letter queue with its traceback.  Every task
and result is in the file until the pool shuts down cleanly, so a run that
is killed and run again does only what was left.
"""

import os
import sys
import tempfile
from concurrent.futures import as_completed

from persistqueue_liteq import PersistentProcessPoolExecutor


def square(n):
    return n * n


def parse(text):
    return int(text)


def flaky_fetch(name, attempts_file):
    """Fails on its first attempt (a network hiccup), succeeds on the next."""
    with open(attempts_file, "a+") as f:
        f.write("x")
        f.seek(0)
        attempt = len(f.read())
    if attempt == 1:
        raise ConnectionError("%s: connection reset (attempt 1)" % name)
    return "%s fetched on attempt %d" % (name, attempt)


def main(path):
    with tempfile.TemporaryDirectory() as scratch, PersistentProcessPoolExecutor(
        path, max_workers=2, max_retries=2, retry_on=(ConnectionError,), retry_backoff=0.1
    ) as pool:
        future = pool.submit(square, 12)
        print("submit: square(12) = %d" % future.result())

        print("map: %s" % list(pool.map(square, range(10), chunksize=5)))

        futures = {pool.submit(parse, text): text for text in ("7", "42", "1000")}
        for future in as_completed(futures):
            print("as_completed: parse(%r) = %d" % (futures[future], future.result()))

        future = pool.submit(flaky_fetch, "report.csv", os.path.join(scratch, "attempts"))
        print("retried: %s" % future.result())

        future = pool.submit(parse, "twelve")  # a bug, not a hiccup: not retried
        try:
            future.result()
        except ValueError as exc:
            print("failed for good: %s: %s" % (type(exc).__name__, exc))
        for task in pool.dead_letters():
            print("dead letter: task %d, %d attempts, %s"
                  % (task.id, task.attempts, task.dead_reason))


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(os.path.join(tmp, "tasks.db"))
