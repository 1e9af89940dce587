#!/usr/bin/env python3
"""The PostgreSQL engine's round trip (put, FIFO lease, ack of one message)
while a transaction elsewhere in the database holds a snapshot open, so
that no vacuum can remove the versions of the messages taken.

Two contenders take turns, each in a schema of its own, in one run:

    floor   the engine as it is: a FIFO lease scans from the visible_at of
            the last message it leased (and from the start once a second)
    start   the same engine with FIFO_FULL_SCAN = 0: every lease scans the
            queue from its start, as every lease did before the floor

For each, a REPEATABLE READ transaction on another connection takes its
snapshot, then one process runs N round trips; the report gives the mean
milliseconds of each operation over every fifth of them (the cost that
grows is the lease's).  It never asserts: it is not a test.

Usage::

    python benchmarks/bench_postgres_long_transaction.py [-n 20000]
        [--url postgresql://root@127.0.0.1:5432/test]
"""

import argparse
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT_URL = os.environ.get("PERSISTQUEUE_LITEQ_TEST_POSTGRES",
                             "postgresql://root@127.0.0.1:5432/test")


def run(url, n, full_scan):
    import psycopg

    from persistqueue_liteq.backends import open_engine
    from persistqueue_liteq.postgres import lease as pg_lease

    schema = "bench_lt_%s" % uuid.uuid4().hex[:8]
    kept = pg_lease.FIFO_FULL_SCAN
    pg_lease.FIFO_FULL_SCAN = full_scan
    engine = open_engine(url + ("&" if "?" in url else "?") + "schema=" + schema)
    holder = psycopg.connect(url)
    rows = []
    try:
        holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        holder.execute("SELECT 1").fetchall()
        step = n // 5
        totals = [0.0, 0.0, 0.0]
        for i in range(n):
            a = time.perf_counter()
            engine.put("jobs", b"x" * 100)
            b = time.perf_counter()
            [m] = engine.lease("jobs", 1, 30)
            c = time.perf_counter()
            engine.ack(m.id, m.lease, "jobs")
            d = time.perf_counter()
            totals[0] += b - a
            totals[1] += c - b
            totals[2] += d - c
            if (i + 1) % step == 0:
                rows.append((i + 1,) + tuple(t / step * 1e3 for t in totals))
                totals = [0.0, 0.0, 0.0]
    finally:
        holder.rollback()
        holder.close()
        engine.close()
        pg_lease.FIFO_FULL_SCAN = kept
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute('DROP SCHEMA IF EXISTS "%s" CASCADE' % schema)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20000, help="round trips (20000)")
    parser.add_argument("--url", default=DEFAULT_URL)
    args = parser.parse_args(argv)
    results = {}
    for name, full_scan in (("floor", 1.0), ("start", 0.0)):
        results[name] = run(args.url, args.n, full_scan)
    print("ms per operation while a REPEATABLE READ transaction stays open "
          "(mean over each fifth of %d round trips)" % args.n)
    print()
    print("| after | put (floor) | lease (floor) | ack (floor) "
          "| put (start) | lease (start) | ack (start) |")
    print("|---|---|---|---|---|---|---|")
    for f, s in zip(results["floor"], results["start"]):
        print("| %d | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |" % (f + s[1:]))


if __name__ == "__main__":
    main()
