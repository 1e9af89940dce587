#!/usr/bin/env python3
"""PersistentProcessPoolExecutor beside ProcessPoolExecutor (and loky, pebble).

Every contender runs the same workload on the same machine in one run:

* ``ProcessPoolExecutor (forkserver)`` -- the baseline of every ratio;
* ``PersistentProcessPoolExecutor (forkserver)`` -- the pool measured;
* ``ProcessPoolExecutor (default: <method>)`` -- the stdlib pool with its own
  default start method (fork on Linux before Python 3.14), measured once (in
  the first round of each row) as a reference point;
* ``loky`` and ``pebble`` with the forkserver context, if importable (``pip
  install loky pebble``); a peer that is missing is reported as skipped.

All pools have ``max_workers=2`` and, except the reference row, ``mp_context=
multiprocessing.get_context("forkserver")`` for a like-for-like comparison.
The task is a module-level ``noop(x): return x``, so what is measured is the
cost of the pool itself.

==========  ===========================================================  ============================
row         workload (timed)                                             floor for the persistent pool
==========  ===========================================================  ============================
submit      N trivial tasks through ``submit``, then ``.result()`` on     >= 1.0x ProcessPoolExecutor
            each (default N = 20,000) -- tasks/s
map         ``for _ in ex.map(noop, range(N), chunksize=100)``            >= 0.5x ProcessPoolExecutor
            (default N = 200,000) -- items/s
latency     one task at a time, ``submit(noop, i).result()``, 200 in a   median <= 2 ms
            row on a warm pool -- median and p90 of each repetition
memory      peak RSS (``ru_maxrss``) of a fresh Python process that      (reported only)
            creates the pool and iterates ``ex.map(noop,
            range(1,000,000), chunksize=100)``; loky and pebble only
            with ``--peer-memory`` (they add ~40 s to the run)
==========  ===========================================================  ============================

Method.  A repetition of a row gives every contender a new pool (and the
persistent pool a new queue file in a new temporary directory), warms it up
untimed until every worker has answered, then times the workload; pool start
and shutdown are outside the clock.  The contenders take turns within each
repetition, the order reversed every other round (AB BA AB ...), so that
noise from the machine hits them alike.  Reported: the median over R
repetitions (``--repeat``, default 5) with the min-max, and the ratio of
medians to ``ProcessPoolExecutor (forkserver)`` with, in brackets, the
min-max of the ratios within each round.  The memory row runs each contender
once in its own subprocess (``ru_maxrss`` is a high-water mark, so peaks of
different pools must not share a process; and since Linux carries it across
exec, the subprocess forks a clean child to do the work); it is
deterministic to within a few MiB.

The script prints PASS/FAIL against each floor; it never asserts.

Usage::

    python benchmarks/bench_pool.py [--quick] [--repeat R] [--output FILE] [--peer-memory]

The default run takes about 4-5 minutes on a 2-CPU machine, most of it in row
1 (20,000 tasks through each pool, 5 times); ``--quick`` about 25 s.

Standard library only, apart from the optional peers.  The package is
imported from the repository root, unless PYTHONPATH points at another copy
of ``persistqueue_liteq`` (handy to measure an experiment).
"""

import argparse
import dataclasses
import importlib.metadata
import importlib.util
import json
import multiprocessing
import os
import platform
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _add_root():
    """Put the repository root before the standard library and site-packages,
    but after PYTHONPATH entries (so that an experiment's copy can win)."""
    if ROOT in sys.path:
        return
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    index = 1
    while index < len(sys.path) and sys.path[index] in extra:
        index += 1
    sys.path.insert(index, ROOT)


_add_root()

import persistqueue_liteq  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402

import _common  # noqa: E402  (benchmarks/_common.py, beside this script)
from persistqueue_liteq.pool import PersistentProcessPoolExecutor  # noqa: E402

# The peers are imported only by the pool that needs them, so that the memory
# row of one contender does not carry another's modules.

WORKERS = 2
CHUNKSIZE = 100
BASELINE = "ProcessPoolExecutor (forkserver)"
PERSISTENT = "PersistentProcessPoolExecutor (forkserver)"


def noop(x):
    return x


def _warm_task(_):
    time.sleep(0.01)
    return os.getpid()


@dataclasses.dataclass
class Settings:
    tasks: int = 20_000  # row 1: submit + result
    map_items: int = 200_000  # row 2: map(chunksize=100)
    latency_tasks: int = 200  # row 3: sequential submit-to-result
    memory_items: int = 1_000_000  # row 4: map in a fresh process
    repeat: int = 5


QUICK = Settings(tasks=1_000, map_items=20_000, latency_tasks=50, memory_items=50_000, repeat=3)


_STARTED = time.monotonic()


def log(text):
    print("[%5.0f s] %s" % (time.monotonic() - _STARTED, text), file=sys.stderr, flush=True)


# -- contenders -------------------------------------------------------------------------


def _default_method():
    return multiprocessing.get_start_method(allow_none=True) or \
        multiprocessing.get_context()._name


class Pool:
    """One open pool behind one interface: submit, map, close."""

    def __init__(self, executor, submit=None, map_iter=None, close=None):
        self.executor = executor
        self.submit = submit or executor.submit
        self._map = map_iter
        self._close = close or executor.shutdown

    def map(self, fn, iterable, chunksize):
        if self._map is not None:
            return self._map(fn, iterable, chunksize)
        return self.executor.map(fn, iterable, chunksize=chunksize)

    def close(self):
        self._close()

    def warm_up(self, timeout=30.0):
        """Run short tasks until every worker has answered (untimed)."""
        deadline = time.monotonic() + timeout
        pids = set()
        while len(pids) < WORKERS and time.monotonic() < deadline:
            futures = [self.submit(_warm_task, i) for i in range(2 * WORKERS)]
            pids.update(f.result() for f in futures)
        for f in [self.submit(noop, i) for i in range(20)]:
            f.result()


def _forkserver():
    return multiprocessing.get_context("forkserver")


def open_ppe(directory, ctx="forkserver"):
    mp_context = _forkserver() if ctx == "forkserver" else None
    return Pool(ProcessPoolExecutor(WORKERS, mp_context=mp_context))


def open_persistent(directory):
    executor = PersistentProcessPoolExecutor(
        os.path.join(directory, "tasks.sqlite"), WORKERS, mp_context=_forkserver())

    def close():
        executor.shutdown()
        engine = getattr(executor, "_engine", None)
        if engine is not None:
            engine.close()

    return Pool(executor, close=close)


def open_loky(directory):
    import loky

    return Pool(loky.ProcessPoolExecutor(WORKERS, context=_forkserver()))


def open_pebble(directory):
    import pebble

    pool = pebble.ProcessPool(WORKERS, context=_forkserver())

    def close():
        pool.close()
        pool.join()

    return Pool(pool, submit=lambda fn, *args: pool.submit(fn, None, *args),
                map_iter=lambda fn, it, chunksize: pool.map(fn, it, chunksize=chunksize).result(),
                close=close)


@dataclasses.dataclass
class Contender:
    label: str
    open: callable  # directory -> Pool
    version: str = ""
    once: bool = False  # measured in the first round only (a reference point)
    peer: bool = False  # loky, pebble: left out of the memory row unless asked


def contenders():
    """(available contenders, [skipped peers with the reason])."""
    found = [
        Contender(BASELINE, open_ppe, "stdlib"),
        Contender(PERSISTENT, open_persistent, persistqueue_liteq.__version__),
        Contender("ProcessPoolExecutor (default: %s)" % _default_method(),
                  lambda d: open_ppe(d, ctx=None), "stdlib", once=True),
    ]
    skipped = []
    for name, opener in (("loky", open_loky), ("pebble", open_pebble)):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            skipped.append("%s (not installed: pip install %s)" % (name, name))
            continue
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = "?"
        found.append(Contender("%s (forkserver)" % name, opener, version, peer=True))
    return found, skipped


# -- workloads (each: Pool, settings -> value of one repetition) --------------------------


def run_submit(pool, s):
    """Tasks per second: N submits, then .result() on each."""
    submit = pool.submit
    start = time.perf_counter()
    futures = [submit(noop, i) for i in range(s.tasks)]
    for f in futures:
        f.result()
    return s.tasks / (time.perf_counter() - start)


def run_map(pool, s):
    """Items per second of map(noop, range(N), chunksize=100)."""
    start = time.perf_counter()
    n = 0
    for _ in pool.map(noop, range(s.map_items), CHUNKSIZE):
        n += 1
    elapsed = time.perf_counter() - start
    if n != s.map_items:
        raise RuntimeError("map yielded %d items, expected %d" % (n, s.map_items))
    return s.map_items / elapsed


def run_latency(pool, s):
    """(median, p90) seconds from submit to result, one task at a time."""
    submit, clock = pool.submit, time.perf_counter
    latencies = []
    for i in range(s.latency_tasks):
        start = clock()
        submit(noop, i).result()
        latencies.append(clock() - start)
    latencies.sort()
    return statistics.median(latencies), _quantile(latencies, 0.9)


def _quantile(data, q):
    data = sorted(data)
    return data[min(len(data) - 1, int(round(q * (len(data) - 1))))]


def interleave(root, found, workload, s):
    """{label: [value per repetition]}, a fresh pool per contender and
    repetition, the order reversed every other round."""
    values = {c.label: [] for c in found}
    for r in range(s.repeat):
        order = found if r % 2 == 0 else found[::-1]
        for contender in order:
            if contender.once and r > 0:
                continue
            directory = tempfile.mkdtemp(dir=root)
            try:
                pool = contender.open(directory)
                try:
                    pool.warm_up()
                    values[contender.label].append(workload(pool, s))
                finally:
                    pool.close()
            finally:
                shutil.rmtree(directory, ignore_errors=True)
        log("  round %d/%d done" % (r + 1, s.repeat))
    return values


# -- memory: one fresh process per contender ----------------------------------------------


def _maxrss_bytes():
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux: KiB


def memory_child(label, items):
    """Runs in its own process: open the pool, map, print JSON to stdout.

    On Linux a process inherits ``ru_maxrss`` across exec from the process
    that started it (here: the benchmark, already large), so the work is done
    in a child forked first thing, whose high-water mark starts from this
    small process's."""
    if hasattr(os, "fork"):
        pid = os.fork()
        if pid:
            _, status = os.waitpid(pid, 0)
            sys.stdout.flush()
            os._exit(os.waitstatus_to_exitcode(status))
        try:
            _memory_work(label, items)
            sys.stdout.flush()
        except BaseException:
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)
        os._exit(0)
    _memory_work(label, items)


def _memory_work(label, items):
    start_rss = _maxrss_bytes()
    found, _ = contenders()
    contender = next(c for c in found if c.label == label)
    directory = tempfile.mkdtemp()
    try:
        pool = contender.open(directory)
        try:
            pool.warm_up()
            before = _maxrss_bytes()
            start = time.perf_counter()
            for _ in pool.map(noop, range(items), CHUNKSIZE):
                pass
            elapsed = time.perf_counter() - start
            peak = _maxrss_bytes()
        finally:
            pool.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(json.dumps({"start": start_rss, "before": before, "peak": peak, "seconds": elapsed}))


def measure_memory(found, s, peers):
    results = {}
    for contender in found:
        if contender.peer and not peers:
            continue
        log("  memory: %s ..." % contender.label)
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--memory-child", contender.label,
             "--memory-items", str(s.memory_items)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)
        if proc.returncode != 0:
            log(proc.stderr)
            results[contender.label] = None
            continue
        results[contender.label] = json.loads(proc.stdout.strip().splitlines()[-1])
    return results


# -- report ----------------------------------------------------------------------------------


def _git_state():
    """' (git abc1234)' for the repository's own package, '+ changes' if the
    working tree differs; '' for a copy elsewhere or without git."""
    package = os.path.dirname(os.path.abspath(persistqueue_liteq.__file__))
    if package != os.path.join(ROOT, "persistqueue_liteq"):
        return " (a copy outside the repository)"
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", package],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    if not head:
        return ""
    return " (git %s%s)" % (head, " + uncommitted changes" if dirty else "")


def machine_header(root, s, found, skipped):
    fs = _common.filesystem(root)
    lines = [
        "# PersistentProcessPoolExecutor beside ProcessPoolExecutor",
        "",
        _common.machine(),
        "- Python %s (%s); SQLite %s" % (
            platform.python_version(), platform.python_implementation(), sqlite3.sqlite_version),
        "- persistqueue_liteq %s from %s%s" % (
            persistqueue_liteq.__version__, os.path.dirname(persistqueue_liteq.__file__),
            _git_state()),
        "- Contenders: %s" % "; ".join("%s [%s]" % (c.label, c.version) for c in found),
        "- Skipped: %s" % ("; ".join(skipped) if skipped else "none"),
        "- Queue files in %s%s; run %s" % (
            tempfile.gettempdir(), " (%s)" % fs if fs else "",
            datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        "- max_workers=%d; %d repetitions, contenders interleaved; N: submit %s, map %s "
        "(chunksize %d), latency %s tasks, memory %s items" % (
            WORKERS, s.repeat, f"{s.tasks:,}", f"{s.map_items:,}", CHUNKSIZE,
            f"{s.latency_tasks:,}", f"{s.memory_items:,}"),
    ]
    return lines


def _fmt(value, unit):
    if unit == "ms":
        return "%.3f" % (value * 1e3)
    return "{:,.0f}".format(value)


def _spread(values, unit):
    if len(values) == 1:
        return "1 run"
    return "%s–%s" % (_fmt(min(values), unit), _fmt(max(values), unit))


def table_rows(name, unit, values, found, floor=None, higher_is_better=True):
    """Markdown rows of one measurement; floor: (ratio or absolute, text, test)."""
    base = values[BASELINE]
    base_median = statistics.median(base)
    lines, verdicts = [], []
    for contender in found:
        mine = values[contender.label]
        median = statistics.median(mine)
        ratio = median / base_median
        paired = [a / b for a, b in zip(mine, base)]
        verdict = ""
        if contender.label == PERSISTENT and floor is not None:
            text, passed = floor(median, ratio)
            verdict = "%s (%s)" % ("**PASS**" if passed else "**FAIL**", text)
            verdicts.append((name, verdict))
        if contender.label == BASELINE:
            ratio_text = "—"
        elif len(paired) == 1:
            ratio_text = "%.2fx" % ratio
        else:
            ratio_text = "%.2fx (%.2f–%.2f)" % (ratio, min(paired), max(paired))
        lines.append("| %s | %s | %s | %s | %s | %s |" % (
            name, contender.label, _fmt(median, unit), _spread(mine, unit), ratio_text, verdict))
    return lines, verdicts


def report(header, results, memory, found, s, elapsed):
    lines = header + [
        "",
        "## Results",
        "",
        "| row | executor | median | min–max | ratio to PPE (forkserver), per-round min–max "
        "| floor / notes |",
        "|---|---|---:|---:|---:|---|",
    ]
    verdicts = []
    rows = [
        ("1. submit + result, tasks/s", "/s", results["submit"],
         lambda m, r: ("≥ 1.0x PPE: %.2fx" % r, r >= 1.0)),
        ("2. map chunksize=%d, items/s" % CHUNKSIZE, "/s", results["map"],
         lambda m, r: ("≥ 0.5x PPE: %.2fx" % r, r >= 0.5)),
        ("3. latency median, ms", "ms", {k: [v[0] for v in vs] for k, vs in results["latency"].items()},
         lambda m, r: ("≤ 2 ms: %.3f ms" % (m * 1e3), m <= 0.002)),
        ("3. latency p90, ms", "ms", {k: [v[1] for v in vs] for k, vs in results["latency"].items()},
         None),
    ]
    for name, unit, values, floor in rows:
        row_lines, row_verdicts = table_rows(name, unit, values, found, floor)
        lines += row_lines
        verdicts += row_verdicts
    base_mem = memory.get(BASELINE)
    for contender in found:
        if contender.label not in memory:
            continue
        m = memory[contender.label]
        if m is None:
            lines.append("| 4. peak RSS, MiB | %s | failed | | | |" % contender.label)
            continue
        ratio = "—" if contender.label == BASELINE or not base_mem else "%.2fx" % (
            m["peak"] / base_mem["peak"])
        lines.append("| 4. peak RSS, MiB | %s | %.1f | 1 run | %s | %.1f MiB before the map, "
                     "%+.1f during it (%.1f s) |" % (
                         contender.label, m["peak"] / 2**20, ratio, m["before"] / 2**20,
                         (m["peak"] - m["before"]) / 2**20, m["seconds"]))
    lines += [
        "",
        "Ratios are median / median of the baseline (for latency and memory a ratio above 1 "
        "is worse); in brackets the range of the ratios within each round.  %s ran in the "
        "first round only (a reference point).  Memory: one fresh process per pool%s." % (
            ", ".join(c.label for c in found if c.once),
            "" if any(c.peer and c.label in memory for c in found)
            else "; loky and pebble left out (--peer-memory adds them)"),
        "",
        "## Verdicts (persistent pool)",
        "",
    ]
    lines += ["- %s: %s" % v for v in verdicts]
    lines += ["", "_Total benchmark time: %.0f s._" % elapsed]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = _common.arguments(__doc__, "small sizes: a smoke test (< 30 s)",
                               "repetitions per row (default 5)")
    parser.add_argument("--output", metavar="FILE", help="also write the report to FILE")
    parser.add_argument("--peer-memory", action="store_true",
                        help="also measure loky's and pebble's memory (adds ~40 s)")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--memory-items", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child, args.memory_items)
        return
    s = _common.settings(parser, args, Settings(), QUICK)

    started = time.monotonic()
    found, skipped = contenders()
    for peer in skipped:
        log("skipped: %s" % peer)
    root = tempfile.mkdtemp(prefix="bench_pool-")
    try:
        header = machine_header(root, s, found, skipped)
        results = {}
        log("1. submit + result of %s tasks ..." % f"{s.tasks:,}")
        results["submit"] = interleave(root, found, run_submit, s)
        log("2. map of %s items ..." % f"{s.map_items:,}")
        results["map"] = interleave(root, found, run_map, s)
        log("3. latency of %d sequential tasks ..." % s.latency_tasks)
        results["latency"] = interleave(root, found, run_latency, s)
        log("4. peak memory of map over %s items ..." % f"{s.memory_items:,}")
        memory = measure_memory(found, s, args.peer_memory)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    text = report(header, results, memory, found, s, time.monotonic() - started)
    _common.emit(text, args.output)


if __name__ == "__main__":
    main()
