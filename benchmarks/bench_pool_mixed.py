#!/usr/bin/env python3
"""Mixed-duration workloads: PersistentProcessPoolExecutor beside
ProcessPoolExecutor (and loky, pebble), 2 and 4 workers.

bench_pool.py measures the cost of the pool on trivial tasks; this script
measures what a user sees when tasks differ in length: whether a short task
waits behind a long one, and how soon a finished task's future is done.

==========  ===================================================================
workload    tasks (busy-waiting the given time: CPU-bound work; --sleep: asleep)
==========  ===================================================================
95/5        400 tasks: 95% of 0.1 ms, 5% of 50 ms (in a seeded random order)
exp-1ms     1,000 tasks of exponentially distributed length, mean 1 ms
200x10ms    200 tasks of 10 ms
burst       64 tasks of 50 ms, all submitted at once
quick+slow  300 tasks of 0.1 ms, then 4 of 200 ms
==========  ===================================================================

For each workload and worker count, every contender gets a warm pool
(forkserver context, workers started and answering) and runs the workload:
all tasks submitted, then every result taken.  Measured:

* makespan: first submit to last result; reported as the median over the
  repetitions with the min-max, and as a ratio to ProcessPoolExecutor's
  median (the floor for the persistent pool: at most 1.10x);
* task end -> future done: for every task, the time from the moment its
  function returned in the worker (``time.monotonic()``, one clock for all
  processes on Linux) to the moment its future was done (a done callback);
  the p99 over all tasks of all repetitions (floor: at most 10 ms).

Also: 20,000 trivial tasks through submit, then result() on each, tasks/s
(floor: at least 1.2x ProcessPoolExecutor).

The contenders take turns within each repetition, the order reversed every
other round.  The script prints PASS/FAIL against the floors; it never
asserts.

Usage::

    python benchmarks/bench_pool_mixed.py [--quick] [--repeat R] [--output FILE]

The default run (3 repetitions) takes about 4 minutes on a 2-CPU machine.
"""

import dataclasses
import importlib.util
import multiprocessing
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import _common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path and not os.environ.get("PYTHONPATH"):
    sys.path.insert(0, ROOT)

from persistqueue_liteq import PersistentProcessPoolExecutor  # noqa: E402

BASELINE = "ProcessPoolExecutor"
PERSISTENT = "PersistentProcessPoolExecutor"
MAKESPAN_FLOOR, LATENCY_FLOOR, TRIVIAL_FLOOR = 1.10, 0.010, 1.2


@dataclasses.dataclass(frozen=True)
class Settings:
    repeat: int = 3
    scale: float = 1.0  # fraction of each workload's tasks
    trivial: int = 20_000


QUICK = Settings(repeat=1, scale=0.25, trivial=2_000)


# -- tasks (module level: the workers import them) --------------------------------------

def work(seconds):
    """Busy for ``seconds``; returns when it ended, on the shared clock."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return time.monotonic()


def nap(seconds):
    """Asleep for ``seconds`` (I/O-like work, which lets the worker's other
    threads run); returns when it ended, on the shared clock."""
    time.sleep(seconds)
    return time.monotonic()


def noop(x):
    return x


def _pid(_):
    return os.getpid()


# -- workloads: lists of task lengths, in submission order -------------------------------

def workloads(scale):
    rng = random.Random(11)

    def n(count):
        return max(4, int(count * scale))

    return [
        ("95/5", [0.05 if rng.random() < 0.05 else 0.0001 for _ in range(n(400))]),
        ("exp-1ms", [rng.expovariate(1000.0) for _ in range(n(1000))]),
        ("200x10ms", [0.010] * n(200)),
        ("burst", [0.050] * n(64)),
        ("quick+slow", [0.0001] * n(300) + [0.2] * 4),
    ]


# -- contenders ---------------------------------------------------------------------------

def _forkserver():
    return multiprocessing.get_context("forkserver")


class Pool:
    """One contender's pool: submit(fn, arg) -> a concurrent.futures.Future."""

    def __init__(self, submit, close):
        self.submit, self.close = submit, close

    def warm_up(self, workers):
        pids = set()
        deadline = time.monotonic() + 60
        while len(pids) < workers and time.monotonic() < deadline:
            pids.update(f.result() for f in [self.submit(_pid, i) for i in range(4 * workers)])
        for f in [self.submit(noop, i) for i in range(50)]:
            f.result()


def open_ppe(workers, directory):
    ex = ProcessPoolExecutor(workers, mp_context=_forkserver())
    return Pool(ex.submit, ex.shutdown)


def open_persistent(workers, directory):
    ex = PersistentProcessPoolExecutor(os.path.join(directory, "tasks.db"), workers,
                                       mp_context=_forkserver())
    return Pool(ex.submit, ex.shutdown)


def open_loky(workers, directory):
    import loky

    ex = loky.ProcessPoolExecutor(workers, context=_forkserver())
    return Pool(ex.submit, ex.shutdown)


def open_pebble(workers, directory):
    import pebble

    pool = pebble.ProcessPool(workers, context=_forkserver())

    def close():
        pool.close()
        pool.join()

    return Pool(lambda fn, *args: pool.schedule(fn, args), close)


def contenders():
    found = [(BASELINE, open_ppe), (PERSISTENT, open_persistent)]
    skipped = []
    for name, opener in (("loky", open_loky), ("pebble", open_pebble)):
        if importlib.util.find_spec(name) is None:
            skipped.append("%s (not installed: pip install %s)" % (name, name))
        else:
            found.append((name, opener))
    return found, skipped


# -- one measurement ------------------------------------------------------------------------

def run_workload(pool, lengths, work=work):
    """(makespan, [task end -> future done, per task])."""
    done_at = [0.0] * len(lengths)

    def on_done(i):
        return lambda _: done_at.__setitem__(i, time.monotonic())

    start = time.monotonic()
    futures = []
    for i, seconds in enumerate(lengths):
        future = pool.submit(work, seconds)
        future.add_done_callback(on_done(i))
        futures.append(future)
    ended = [f.result() for f in futures]
    makespan = time.monotonic() - start
    # A done callback runs right after the result is set; result() may return
    # a moment before it ran.
    deadline = time.monotonic() + 5
    while not all(done_at) and time.monotonic() < deadline:
        time.sleep(0.001)
    return makespan, [max(0.0, d - e) for d, e in zip(done_at, ended)]


def run_trivial(pool, n):
    start = time.perf_counter()
    futures = [pool.submit(noop, i) for i in range(n)]
    for f in futures:
        f.result()
    return n / (time.perf_counter() - start)


def measure(opener, workers, job):
    directory = tempfile.mkdtemp(prefix="bench_pool_mixed-")
    pool = opener(workers, directory)
    try:
        pool.warm_up(workers)
        return job(pool)
    finally:
        pool.close()
        shutil.rmtree(directory, ignore_errors=True)


# -- the report ---------------------------------------------------------------------------

def p99(values):
    values = sorted(values)
    return values[min(len(values) - 1, int(0.99 * len(values)))]


def spread(values, fmt):
    return "%s (%s-%s)" % (fmt % statistics.median(values), fmt % min(values), fmt % max(values))


def main(argv=None):
    parser = _common.arguments(__doc__, "small sizes, one repetition: a smoke test",
                               "repetitions (default 3)")
    parser.add_argument("--output", metavar="FILE", help="also write the report to FILE")
    parser.add_argument("--only", metavar="WORKLOAD", action="append",
                        help="run this workload only (repeatable); 'trivial' for the last row")
    parser.add_argument("--sleep", action="store_true",
                        help="tasks sleep instead of busy-waiting (I/O-like tasks)")
    args = parser.parse_args(argv)
    s = _common.settings(parser, args, Settings(), QUICK)
    task = nap if args.sleep else work
    found, skipped = contenders()
    began = time.monotonic()
    lines = ["# Mixed-duration workloads", "", _common.machine(),
             "- Python %s; forkserver context for every pool; %d repetition%s; tasks %s"
             % (sys.version.split()[0], s.repeat, "" if s.repeat == 1 else "s",
                "sleep (--sleep)" if args.sleep else "busy-wait (CPU-bound)")]
    lines += ["- Skipped: %s" % ", ".join(skipped)] if skipped else []
    lines += ["", "| workload | workers | pool | makespan, s: median (min-max) | ratio "
              "| task end -> future done: p50 / p99, ms |",
              "|---|---|---|---|---|---|"]
    verdicts = []
    for name, lengths in workloads(s.scale):
        if args.only and name not in args.only:
            continue
        for workers in (2, 4):
            makespans = {label: [] for label, _ in found}
            gaps = {label: [] for label, _ in found}
            for r in range(s.repeat):
                order = found if r % 2 == 0 else found[::-1]
                for label, opener in order:
                    makespan, gap = measure(opener, workers,
                                            lambda pool: run_workload(pool, lengths, task))
                    makespans[label].append(makespan)
                    gaps[label].extend(gap)
            base = statistics.median(makespans[BASELINE])
            for label, _ in found:
                ratio = statistics.median(makespans[label]) / base
                lines.append("| %s | %d | %s | %s | %.2fx | %.1f / %.1f |" % (
                    name, workers, label, spread(makespans[label], "%.3f"), ratio,
                    1000 * statistics.median(gaps[label]), 1000 * p99(gaps[label])))
                if label == PERSISTENT:
                    verdicts.append(("%s, %d workers: makespan %.2fx (floor %.2fx)"
                                     % (name, workers, ratio, MAKESPAN_FLOOR),
                                     ratio <= MAKESPAN_FLOOR))
                    verdicts.append(("%s, %d workers: p99 task end -> future done %.1f ms "
                                     "(floor %.0f ms; ProcessPoolExecutor: %.1f ms)"
                                     % (name, workers, 1000 * p99(gaps[label]),
                                        1000 * LATENCY_FLOOR, 1000 * p99(gaps[BASELINE])),
                                     p99(gaps[label]) <= LATENCY_FLOOR))
            print("\n".join(lines[-len(found):]), flush=True)
    rates = {label: [] for label, _ in found}
    for r in range(s.repeat if not args.only or "trivial" in args.only else 0):
        for label, opener in (found if r % 2 == 0 else found[::-1]):
            rates[label].append(measure(opener, 2, lambda pool: run_trivial(pool, s.trivial)))
    lines += ["", "| %s trivial tasks, submit + result, 2 workers | tasks/s: median (min-max) "
              "| ratio |" % "{:,}".format(s.trivial), "|---|---|---|"]
    for label, _ in found if rates[BASELINE] else ():
        ratio = statistics.median(rates[label]) / statistics.median(rates[BASELINE])
        lines.append("| %s | %s | %.2fx |" % (label, _common.rate(rates[label]), ratio))
        if label == PERSISTENT:
            verdicts.append(("trivial submit+result: %.2fx (floor %.1fx)" % (ratio, TRIVIAL_FLOOR),
                             ratio >= TRIVIAL_FLOOR))
    lines += ["", "## Verdicts (persistent pool)", ""]
    lines += ["- %s: %s" % ("PASS" if ok else "FAIL", text) for text, ok in verdicts]
    lines += ["", "_Total benchmark time: %.0f s._" % (time.monotonic() - began)]
    _common.emit("\n".join(lines) + "\n", args.output)


if __name__ == "__main__":
    main()
