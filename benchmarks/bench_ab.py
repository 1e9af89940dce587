#!/usr/bin/env python3
"""Two copies of the package side by side, through the public API only:
the CPU time of the same loops on each, in interleaved runs.

    git archive OLD persistqueue_liteq | tar -x -C /tmp/old
    python benchmarks/bench_ab.py /tmp/old . [--repeat 5] [-n 3000]

Each repetition runs, for each tree in turn (the order alternating), one
child process per loop with ``PYTHONPATH`` set to that tree, and reads the
CPU time (``time.process_time``: this process's own, which other processes
on a shared machine move less than wall time) of N iterations after a
warm-up:

    liteq        LiteQueue: put(bytes); m = pop(); ack(m)
    persistent   PersistentQueue: put(dict); get(); task_done()
    put_batch    LiteQueue.put_batch of up to 1000 small messages, then
                 pop_batch of them in tens, each acknowledged (per message)
    pool         PersistentThreadPoolExecutor(max_workers=2): submit + result
                 of N trivial tasks (mostly the collector and the worker loop)

It reports the median microseconds per iteration of each tree with the
min-max, and the ratio of the medians (B / A).  It asserts nothing.

``--location URL`` runs the loops on PostgreSQL instead of SQLite files
(each child in a schema of its own, dropped at its end); with a server
doing most of the work, ``--clock wall`` measures elapsed time instead of
this process's CPU time::

    python benchmarks/bench_ab.py /tmp/old . --clock wall \
        --location postgresql://root@127.0.0.1:5432/test
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

LOOPS = ("liteq", "persistent", "put_batch", "pool")

_CHILD = r"""
import os, sys, tempfile, time
kind, n, clock, url = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
clock = time.perf_counter if clock == "wall" else time.process_time
d = tempfile.mkdtemp()
schema = "bench_ab_%d" % os.getpid()

def where(name):
    if not url:
        return os.path.join(d, name + ".db")
    return "%s%sschema=%s&table_prefix=%s_" % (url, "&" if "?" in url else "?", schema, name)

from persistqueue_liteq import LiteQueue, PersistentQueue, PersistentThreadPoolExecutor

def liteq(count):
    q = LiteQueue(where("l"))
    def run(count):
        for i in range(count):
            q.put(b"payload %d" % i)
            q.ack(q.pop())
    return run

def persistent(count):
    q = PersistentQueue(where("p"))
    def run(count):
        for i in range(count):
            q.put({"i": i, "p": 0})
            q.get()
            q.task_done()
    return run

def put_batch(count):
    q = LiteQueue(where("b"))
    def run(count):
        size = min(count, 1000) // 10 * 10
        for _ in range(count // size):
            q.put_batch([b"m"] * size)
            for _ in range(size // 10):
                for m in q.pop_batch(max_messages=10):
                    q.ack(m)
    return run

def pool(count):
    ex = PersistentThreadPoolExecutor(where("t"), max_workers=2)
    def run(count):
        futures = [ex.submit(abs, -i) for i in range(count)]
        for f in futures:
            f.result(60)
    run.close = lambda: ex.shutdown()
    return run

run = globals()[kind](n)
run(max(n // 10, 100))
start = clock()
run(n)
spent = clock() - start
getattr(run, "close", lambda: None)()
if url:
    import psycopg
    with psycopg.connect(url.split("?")[0], autocommit=True) as conn:
        conn.execute("DROP SCHEMA %s CASCADE" % schema)
print(spent / n * 1e6)
"""


def measure(tree, kind, n, clock="cpu", location=""):
    done = subprocess.run([sys.executable, "-c", _CHILD, kind, str(n), clock, location],
                          capture_output=True,
                          text=True, timeout=600, cwd=tempfile.gettempdir(),
                          env=dict(os.environ, PYTHONPATH=os.path.abspath(tree)))
    if done.returncode != 0:
        raise SystemExit("%s on %s failed:\n%s" % (kind, tree, done.stderr))
    return float(done.stdout.split()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="the tree holding persistqueue_liteq/ to compare with")
    parser.add_argument("b", help="the tree holding persistqueue_liteq/ to measure")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("-n", type=int, default=3000, help="iterations per loop (3000)")
    parser.add_argument("--loops", default=",".join(LOOPS))
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="this process's CPU time (the default) or elapsed time")
    parser.add_argument("--location", default="", metavar="URL",
                        help="a PostgreSQL URL to run the loops on (default: SQLite files)")
    args = parser.parse_args(argv)
    loops = args.loops.split(",")
    results = {(tree, kind): [] for tree in "ab" for kind in loops}
    for r in range(args.repeat):
        order = ("a", "b") if r % 2 == 0 else ("b", "a")
        for kind in loops:
            for tree in order:
                results[tree, kind].append(measure(getattr(args, tree), kind, args.n,
                                                   args.clock, args.location))
    print("%s µs per iteration, median (min-max) of %d interleaved runs; A = %s, B = %s%s"
          % ("CPU" if args.clock == "cpu" else "Elapsed", args.repeat, args.a, args.b,
             "; on " + args.location if args.location else ""))
    print()
    print("| loop | A | B | B / A |")
    print("|---|---:|---:|---:|")
    for kind in loops:
        a, b = results["a", kind], results["b", kind]
        print("| %s | %.1f (%.1f-%.1f) | %.1f (%.1f-%.1f) | %.2f |" % (
            kind, statistics.median(a), min(a), max(a), statistics.median(b), min(b), max(b),
            statistics.median(b) / statistics.median(a)))


if __name__ == "__main__":
    main()
