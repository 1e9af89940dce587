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
kind, n = sys.argv[1], int(sys.argv[2])
d = tempfile.mkdtemp()
from persistqueue_liteq import LiteQueue, PersistentQueue, PersistentThreadPoolExecutor

def liteq(count):
    q = LiteQueue(os.path.join(d, "l.db"))
    def run(count):
        for i in range(count):
            q.put(b"payload %d" % i)
            q.ack(q.pop())
    return run

def persistent(count):
    q = PersistentQueue(os.path.join(d, "p.db"))
    def run(count):
        for i in range(count):
            q.put({"i": i, "p": 0})
            q.get()
            q.task_done()
    return run

def put_batch(count):
    q = LiteQueue(os.path.join(d, "b.db"))
    def run(count):
        size = min(count, 1000) // 10 * 10
        for _ in range(count // size):
            q.put_batch([b"m"] * size)
            for _ in range(size // 10):
                for m in q.pop_batch(max_messages=10):
                    q.ack(m)
    return run

def pool(count):
    ex = PersistentThreadPoolExecutor(os.path.join(d, "t.db"), max_workers=2)
    def run(count):
        futures = [ex.submit(abs, -i) for i in range(count)]
        for f in futures:
            f.result(60)
    run.close = lambda: ex.shutdown()
    return run

run = globals()[kind](n)
run(max(n // 10, 100))
start = time.process_time()
run(n)
spent = time.process_time() - start
getattr(run, "close", lambda: None)()
print(spent / n * 1e6)
"""


def measure(tree, kind, n):
    done = subprocess.run([sys.executable, "-c", _CHILD, kind, str(n)], capture_output=True,
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
    args = parser.parse_args(argv)
    loops = args.loops.split(",")
    results = {(tree, kind): [] for tree in "ab" for kind in loops}
    for r in range(args.repeat):
        order = ("a", "b") if r % 2 == 0 else ("b", "a")
        for kind in loops:
            for tree in order:
                results[tree, kind].append(measure(getattr(args, tree), kind, args.n))
    print("CPU µs per iteration, median (min-max) of %d interleaved runs; A = %s, B = %s"
          % (args.repeat, args.a, args.b))
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
