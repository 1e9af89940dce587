"""Costs that must not grow with the work: a bounded put, qsize() and the
metrics flush, at 0, 10,000 and 100,000 messages queued (and 1,000,000 with
--large), on one file; put_batch's memory.

    python benchmarks/bench_depth.py [--repeat R] [--large]

Each figure is the median (min-max) of R interleaved rounds of 200 calls
(CPU time of this thread, which other processes on the machine do not move
the way they move wall time): a bounded ``PersistentQueue.put`` (maxsize
above the depth) followed by a ``get`` + ``task_done`` that keeps the depth,
``qsize()``, and ``flush_metrics()`` with an activity table of as many rows
as messages queued (1,000 queues' buckets of the last hour, which it keeps).
Not a test: it asserts nothing.  Standard library only.
"""

import argparse
import os
import resource
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from persistqueue_liteq import LiteQueue, PersistentQueue  # noqa: E402

CALLS = 200


def fill(path, depth):
    q = PersistentQueue(path)
    q.put(1)  # the queue's codec record, and a row to copy
    q.get()
    q.close()
    if depth:  # copies of the row; old activity rows, as many as messages
        with sqlite3.connect(path) as conn:
            conn.execute(
                "INSERT INTO liteq_messages (queue, data, visible_at, created_at) "
                "SELECT queue, data, 0, created_at FROM liteq_messages, "
                "(WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
                "SELECT i FROM n)", (depth - 1,))
            # Within the hour kept (the flush keeps them; a scan walks them
            # all): 1,000 queues, buckets back from 100 s ago.
            now = int(time.time()) // 10 * 10
            conn.executemany("INSERT INTO liteq_activity VALUES (?, 'puts', ?, 1)",
                             ((str(i % 1000), now - 100 - 10 * (i // 1000))
                              for i in range(depth)))


def cpu(fn):
    start = time.thread_time()
    for _ in range(CALLS):
        fn()
    return (time.thread_time() - start) / CALLS * 1e6


def measure(path, depth):
    q = PersistentQueue(path, maxsize=depth + 10_000)
    engine = q.engine

    def round_trip():
        q.put(1)
        q.get()
        q.task_done()

    def flush():
        engine._metrics.add("default", "puts", 1)
        engine.flush_metrics()

    out = {"bounded put + get + task_done": cpu(round_trip), "qsize()": cpu(q.qsize),
           "flush_metrics()": cpu(flush)}
    q.close()
    return out


def put_batch_rss(directory, n):
    q = LiteQueue(os.path.join(directory, "batch.db"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    q.put_batch((b"x" for _ in range(n)))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    q.close()
    return (after - before) / 1024.0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--large", action="store_true", help="also 1,000,000 queued")
    args = parser.parse_args(argv)
    depths = [0, 10_000, 100_000] + ([1_000_000] if args.large else [])
    root = tempfile.mkdtemp(prefix="bench_depth-")
    try:
        paths = {}
        for d in depths:
            paths[d] = os.path.join(root, "d%d.db" % d)
            fill(paths[d], d)
        results = {d: {} for d in depths}
        for r in range(args.repeat):
            for d in depths if r % 2 == 0 else depths[::-1]:
                for k, v in measure(paths[d], d).items():
                    results[d].setdefault(k, []).append(v)
        names = list(results[0])
        print("| operation | " + " | ".join("%s queued" % format(d, ",") for d in depths)
              + " | × at depth 0 (deepest) |")
        print("|---|" + "---:|" * (len(depths) + 1))
        for name in names:
            cells = []
            for d in depths:
                v = results[d][name]
                cells.append("%.0f µs (%.0f–%.0f)" % (statistics.median(v), min(v), max(v)))
            ratio = statistics.median(results[depths[-1]][name]) / statistics.median(results[0][name])
            print("| %s | %s | %.2f |" % (name, " | ".join(cells), ratio))
        print()
        n = 1_000_000 if args.large else 200_000
        print("put_batch of %s items from a generator: +%.1f MB peak RSS" % (
            format(n, ","), put_batch_rss(root, n)))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
