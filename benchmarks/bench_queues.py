#!/usr/bin/env python3
"""PersistentQueue beside raw sqlite3, queue.Queue and persist-queue, in one run.

Measurements
------------
1. **Single thread round trip**: ``put(item)``, ``get()``, ``task_done()`` of a
   small picklable item (a dict of 3 ints), items/s, for

   ==========================  ==============================================
   contender                   what one round trip does
   ==========================  ==============================================
   raw sqlite3                 the minimal at-least-once loop (the baseline
                               of every ratio): ``pickle.dumps``; ``INSERT``
                               into a table without AUTOINCREMENT, one index
                               (queue, visible_at, id); ``UPDATE ... WHERE id
                               = (SELECT ... LIMIT 1) RETURNING id, data``;
                               ``pickle.loads``; ``DELETE WHERE id AND
                               lease``; WAL, ``synchronous=NORMAL``,
                               ``isolation_level=None``
   raw sqlite3, the engine's   the same loop running the engine's own
   statements                  ``sql.INSERT``, ``sql.LEASE_FIFO_ONE``,
                               ``sql.ACK_IN_QUEUE`` on the tables (and
                               triggers) of ``sql.render("liteq_")``
   queue.Queue                 in memory: for reference only
   PersistentQueue             ``q.put(item)``; ``q.get()``; ``q.task_done()``
   persist-queue SQLiteAckQueue  ``q.put(item)``; ``q.ack(q.get())``, at
                               ``synchronous=NORMAL`` (as every other
                               contender) and at its default (SQLite's, FULL
                               in this build: an fsync per commit)
   persist-queue SQLiteQueue   ``auto_commit=True``; put, get, task_done;
                               NORMAL and its default likewise
   ==========================  ==============================================

   Floor: PersistentQueue at 0.5x the minimal raw loop or more, and ahead of
   the persist-queue queues (when installed; the NORMAL rows are the fair
   ones).

2. **Threads**: 2 producer and 2 consumer threads on one queue object
   (PersistentQueue; persist-queue SQLiteAckQueue with ``multithreading=True``).
   Each producer puts N items; each consumer claims a slot of the 2N under a
   lock, then ``get``s and acknowledges one item.  Throughput: 2N / time from
   start to the last acknowledgement.  Errors and delivered/produced counts
   are reported, never asserted.

3. **Processes**: 2 producer and 2 consumer processes (``fork``, else
   ``forkserver``), each opening the same file.  Consumers get until the
   producers are done and a ``get(timeout=0.25)`` comes back empty, and
   write the ids they got to a file of their own; the parent counts
   duplicates (ids delivered more than once) and losses (ids never
   delivered).  Throughput: 2N / time from the start barrier to the last
   acknowledgement (the final empty wait is not counted).  persist-queue's
   SQLiteAckQueue is opened in each process likewise.

   Floors for 2 and 3: no error (nor, for 3, duplicate or loss) and total
   throughput not below the single-thread PersistentQueue median.

Every repetition uses fresh files in a fresh temporary directory (set TMPDIR
to choose the file system); queues are opened, and warmed with a few untimed
round trips (single thread), before the clock starts.  Contenders take turns
within every repetition, the order alternating (AB BA AB ...).  Reported: the
median with the min-max over repetitions, and ratios of medians.

Usage::

    python benchmarks/bench_queues.py [--quick] [--repeat R] [--output FILE]

Standard library only (persist-queue is optional: its rows say "skipped"
when it does not import); the package is imported from the repository root.
"""

import dataclasses
import multiprocessing
import os
import pickle
import platform
import queue
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import traceback
from datetime import datetime, timezone
from typing import Dict, List

import _common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from persistqueue_liteq import PersistentQueue  # noqa: E402
from persistqueue_liteq.sqlite import sql as _sql  # noqa: E402

try:
    import persistqueue as _pq  # persist-queue, optional
    from persistqueue import SQLiteAckQueue, SQLiteQueue
    from persistqueue.exceptions import Empty as _PQEmpty
    PQ_VERSION = getattr(_pq, "__version__", "?")
    EMPTY = (queue.Empty, _PQEmpty)
except Exception:  # not installed, or broken
    _pq = SQLiteAckQueue = SQLiteQueue = None
    PQ_VERSION = None
    EMPTY = (queue.Empty,)

SQL = _sql.render("liteq_")
QUEUE = "default"
LEASE_SECONDS = 60.0
WAL_LIMIT = 16 << 20
ST_FLOOR = 0.5  # PersistentQueue / raw sqlite3, single thread
WARMUP = 50  # untimed round trips before each single-thread run
DRAIN_WAIT = 0.25  # consumer processes: get timeout once producers are done


@dataclasses.dataclass
class Settings:
    st_ops: int = 2000  # single-thread round trips per repetition
    mt_items: int = 2000  # items per producer thread
    mp_items: int = 2000  # items per producer process
    # persist-queue's SQLiteAckQueue across processes runs at ~60 items/s
    # here: fewer items, so that the run stays within minutes.
    mp_items_pq: int = 300
    repeat: int = 5


QUICK = Settings(st_ops=300, mt_items=300, mp_items=300, mp_items_pq=100, repeat=2)


def log(text):
    print(text, file=sys.stderr, flush=True)


def make_item(producer, i):
    """A small picklable item: a dict of 3 ints; "id" is unique in a run."""
    return {"id": producer * 10_000_000 + i, "p": producer, "i": i}


def _fresh(root):
    return tempfile.mkdtemp(dir=root)


# -- 1. single thread ------------------------------------------------------------


def open_raw(path):
    """A connection set up as the engine sets up its own, on a new file."""
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA journal_size_limit=%d" % WAL_LIMIT)
    conn.execute("BEGIN IMMEDIATE")
    for statement in SQL.CREATE_TABLES:
        conn.execute(statement)
    conn.execute("COMMIT")
    return conn


def st_raw(directory, n):
    conn = open_raw(os.path.join(directory, "raw.sqlite"))

    def run(count):
        execute, insert, lease, ack = conn.execute, SQL.INSERT, SQL.LEASE_FIFO_ONE, SQL.ACK_IN_QUEUE
        dumps, loads, proto = pickle.dumps, pickle.loads, pickle.HIGHEST_PROTOCOL
        clock, getrandbits = time.time, random.getrandbits
        for i in range(count):
            now = clock()
            execute(insert, (QUEUE, dumps(make_item(0, i), proto), None, now, now, None))
            now = clock()
            token = getrandbits(62) + 1
            row = execute(lease, {"queue": QUEUE, "now": now, "until": now + LEASE_SECONDS,
                                  "lease": token, "holder": None}).fetchall()[0]
            loads(row[1])
            execute(ack, (row[0], token, QUEUE))

    return run, conn.close


# The least a correct at-least-once queue on SQLite does: no AUTOINCREMENT,
# the one index the lease walks, a lease of one row by "id = (SELECT ...
# LIMIT 1)", an ack that takes the lease token and returns nothing.  What
# the engine's statements (st_raw) and the queues are compared with.
MINIMAL_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS q (
        id INTEGER PRIMARY KEY, queue TEXT NOT NULL, data BLOB NOT NULL,
        visible_at REAL NOT NULL, lease INTEGER)""",
    "CREATE INDEX IF NOT EXISTS q_ready ON q (queue, visible_at, id)",
)
MINIMAL_INSERT = "INSERT INTO q (queue, data, visible_at) VALUES (?, ?, ?)"
MINIMAL_LEASE = """
UPDATE q SET visible_at = ?, lease = ?
 WHERE id = (SELECT id FROM q WHERE queue = ? AND visible_at <= ?
              ORDER BY visible_at, id LIMIT 1)
RETURNING id, data"""
MINIMAL_ACK = "DELETE FROM q WHERE id = ? AND lease = ?"


def open_minimal(path, synchronous="NORMAL"):
    """A connection with the minimal queue table, on a new file."""
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=%s" % synchronous)
    conn.execute("PRAGMA journal_size_limit=%d" % WAL_LIMIT)
    for statement in MINIMAL_SCHEMA:
        conn.execute(statement)
    return conn


def minimal_round_trips(conn):
    """The minimal loop: pickle.dumps, INSERT, lease one, pickle.loads, ack."""

    def run(count):
        execute, insert, lease, ack = conn.execute, MINIMAL_INSERT, MINIMAL_LEASE, MINIMAL_ACK
        dumps, loads, proto = pickle.dumps, pickle.loads, pickle.HIGHEST_PROTOCOL
        clock, getrandbits = time.time, random.getrandbits
        for i in range(count):
            execute(insert, (QUEUE, dumps(make_item(0, i), proto), clock()))
            now = clock()
            token = getrandbits(62) + 1
            row = execute(lease, (now + LEASE_SECONDS, token, QUEUE, now)).fetchone()
            loads(row[1])
            execute(ack, (row[0], token))

    return run


def st_raw_minimal(directory, n):
    conn = open_minimal(os.path.join(directory, "minimal.sqlite"))
    return minimal_round_trips(conn), conn.close


def _round_trips(q):
    """The single-thread run of a queue.Queue-like ``q``: the same loop for
    every contender that has put, get and task_done."""

    def run(count):
        put, get, done = q.put, q.get, q.task_done
        for i in range(count):
            put(make_item(0, i))
            get()
            done()

    return run


def st_memory(directory, n):
    return _round_trips(queue.Queue()), lambda: None


def st_liteq(directory, n):
    q = PersistentQueue(os.path.join(directory, "liteq.sqlite"))
    return _round_trips(q), q.close


def st_pq_ack(directory, n):
    q = SQLiteAckQueue(os.path.join(directory, "pq-ack"))

    def run(count):
        put, get, ack = q.put, q.get, q.ack
        for i in range(count):
            put(make_item(0, i))
            ack(get())

    return run, lambda: None


def st_pq_plain(directory, n):
    q = SQLiteQueue(os.path.join(directory, "pq"), auto_commit=True)
    return _round_trips(q), lambda: None


def pq_normal(q):
    """persist-queue's queue ``q`` at synchronous=NORMAL, as every other SQLite
    contender runs.  Its own default is SQLite's (FULL in most builds: a
    commit waits for an fsync of the WAL); it opens one connection when not
    ``multithreading``, which is what is set here."""
    q._conn.execute("PRAGMA synchronous=NORMAL")
    return q


def st_pq_ack_normal(directory, n):
    q = pq_normal(SQLiteAckQueue(os.path.join(directory, "pq-ack")))

    def run(count):
        put, get, ack = q.put, q.get, q.ack
        for i in range(count):
            put(make_item(0, i))
            ack(get())

    return run, lambda: None


def st_pq_plain_normal(directory, n):
    q = pq_normal(SQLiteQueue(os.path.join(directory, "pq"), auto_commit=True))
    return _round_trips(q), lambda: None


PQ_ACK_FULL = "persist-queue SQLiteAckQueue, FULL (its default)"
PQ_ACK_NORMAL = "persist-queue SQLiteAckQueue, NORMAL"
PQ_PLAIN_FULL = "persist-queue SQLiteQueue, FULL (its default)"
PQ_PLAIN_NORMAL = "persist-queue SQLiteQueue, NORMAL"
RAW_MINIMAL = "raw sqlite3"  # the baseline every ratio divides by
RAW_ENGINE = "raw sqlite3, the engine's statements"

ST_CONTENDERS = [
    (RAW_MINIMAL, st_raw_minimal, True),
    (RAW_ENGINE, st_raw, True),
    ("queue.Queue (memory)", st_memory, True),
    ("PersistentQueue", st_liteq, True),
    (PQ_ACK_NORMAL, st_pq_ack_normal, SQLiteAckQueue is not None),
    (PQ_ACK_FULL, st_pq_ack, SQLiteAckQueue is not None),
    (PQ_PLAIN_NORMAL, st_pq_plain_normal, SQLiteQueue is not None),
    (PQ_PLAIN_FULL, st_pq_plain, SQLiteQueue is not None),
]


def measure_single(root, s, active=None, title="single thread"):
    """{label: [round trips/s per repetition]} of ``active`` [(label, make)]
    (default: the installed ST_CONTENDERS); run_all.py passes its own."""
    if active is None:
        active = [(label, make) for label, make, ok in ST_CONTENDERS if ok]
    rates = {label: [] for label, _ in active}
    for r in range(s.repeat):
        log("%s, repetition %d/%d ..." % (title, r + 1, s.repeat))
        for label, make in active if r % 2 == 0 else active[::-1]:
            directory = _fresh(root)
            try:
                run, close = make(directory, s.st_ops)
                try:
                    run(WARMUP)
                    start = time.perf_counter()
                    run(s.st_ops)
                    rates[label].append(s.st_ops / (time.perf_counter() - start))
                finally:
                    close()
            finally:
                shutil.rmtree(directory, ignore_errors=True)
    return rates


# -- 2. threads ---------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    """One repetition of a concurrent measurement."""

    rate: float
    produced: int
    delivered: int  # deliveries counted by the consumers (duplicates included)
    unique: int
    errors: List[str]

    @property
    def duplicates(self):
        return self.delivered - self.unique

    @property
    def lost(self):
        return self.produced - self.unique


def _mt_ops(kind, directory):
    """(put, get(timeout) -> item, done(item), close) of one shared object."""
    if kind == "PersistentQueue":
        q = PersistentQueue(os.path.join(directory, "liteq.sqlite"))

        def done(item):
            q.task_done()

        return q.put, lambda timeout: q.get(timeout=timeout), done, q.close
    q = SQLiteAckQueue(os.path.join(directory, "pq-ack"), multithreading=True)
    return q.put, lambda timeout: q.get(timeout=timeout), q.ack, lambda: None


def mt_run(kind, directory, n, producers=2, consumers=2):
    """``producers`` threads put ``n`` items each, ``consumers`` threads get
    and acknowledge them (run_all.py varies the counts)."""
    put, get, done, close = _mt_ops(kind, directory)
    total = producers * n
    lock = threading.Lock()
    claimed = [0]
    seen: List[int] = []
    errors: List[str] = []
    last = [0.0]
    barrier = threading.Barrier(producers + consumers + 1)

    def producer(p):
        try:
            barrier.wait()
            for i in range(n):
                put(make_item(p, i))
        except Exception as exc:
            errors.append("producer %d: %s" % (p, traceback.format_exception_only(type(exc), exc)[-1].strip()))

    def consumer(c):
        mine = []
        try:
            barrier.wait()
            while True:
                with lock:
                    if claimed[0] >= total:
                        break
                    claimed[0] += 1
                item = get(30.0)
                done(item)
                mine.append(item["id"])
        except Exception as exc:
            errors.append("consumer %d: %s" % (c, traceback.format_exception_only(type(exc), exc)[-1].strip()))
        finally:
            now = time.perf_counter()
            with lock:
                seen.extend(mine)
                last[0] = max(last[0], now)

    threads = [threading.Thread(target=producer, args=(p,)) for p in range(1, producers + 1)]
    threads += [threading.Thread(target=consumer, args=(c,)) for c in range(1, consumers + 1)]
    try:
        for t in threads:
            t.start()
        barrier.wait()
        start = time.perf_counter()
        for t in threads:
            t.join()
    finally:
        close()
    return Outcome(total / (last[0] - start), total, len(seen), len(set(seen)), errors)


# -- 3. processes -----------------------------------------------------------------


PQ_POLLED = "persist-queue SQLiteAckQueue, polled get"
POLL_INTERVAL = 0.001  # seconds between two looks of PolledAckQueue.get


class PolledAckQueue:
    """persist-queue's SQLiteAckQueue, ``get(timeout=...)`` polling
    ``get(block=False)`` every POLL_INTERVAL (used by run_all.py).

    SQLiteAckQueue's own blocking get waits on a threading.Event that only a
    put in the same process sets; for a put in another process it looks
    again only every 10 s (its TICK_FOR_WAIT).  This is what a user of it
    across processes would write instead."""

    def __init__(self, path):
        self._q = SQLiteAckQueue(path)
        self.put, self.ack = self._q.put, self._q.ack

    def get(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._q.get(block=False)
            except EMPTY:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(POLL_INTERVAL)


def _mp_open(kind, directory):
    if kind == "PersistentQueue":
        return PersistentQueue(os.path.join(directory, "liteq.sqlite"))
    if kind == PQ_POLLED:
        return PolledAckQueue(os.path.join(directory, "pq-ack"))
    return SQLiteAckQueue(os.path.join(directory, "pq-ack"))


def _mp_producer(kind, directory, p, n, barrier, errfile):
    try:
        q = _mp_open(kind, directory)
        barrier.wait()
        for i in range(n):
            q.put(make_item(p, i))
        if kind == "PersistentQueue":
            q.close()
    except BaseException as exc:
        with open(errfile, "w") as out:
            out.write("producer %d: %s" % (p, traceback.format_exception_only(type(exc), exc)[-1].strip()))


def _mp_consumer(kind, directory, c, barrier, producers_done, idfile, errfile):
    ids = []
    last = time.monotonic()
    error = None
    try:
        q = _mp_open(kind, directory)
        liteq = kind == "PersistentQueue"
        barrier.wait()
        while True:
            finished = producers_done.is_set()
            try:
                item = q.get(timeout=DRAIN_WAIT if finished else 30.0)
            except EMPTY:
                if finished:
                    break
                continue
            if liteq:
                q.task_done()
            else:
                q.ack(item)
            last = time.monotonic()
            ids.append(item["id"])
        if liteq:
            q.close()
    except BaseException as exc:
        error = "consumer %d: %s" % (c, traceback.format_exception_only(type(exc), exc)[-1].strip())
    with open(idfile, "w") as out:
        out.write("%r\n" % last)
        out.write("\n".join(map(str, ids)))
    if error:
        with open(errfile, "w") as out:
            out.write(error)


def _mp_context():
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "forkserver")


def mp_run(kind, directory, n, producers=2, consumers=2):
    """``producers`` processes put ``n`` items each, ``consumers`` processes
    get and acknowledge them (run_all.py varies the counts)."""
    ctx = _mp_context()
    # Create the file (tables) before the workers open it.
    q = _mp_open(kind, directory)
    if kind == "PersistentQueue":
        q.close()
    del q
    barrier = ctx.Barrier(producers + consumers + 1)
    producers_done = ctx.Event()
    err = lambda name: os.path.join(directory, "err-%s" % name)  # noqa: E731
    idfiles = [os.path.join(directory, "ids-%d" % c) for c in range(1, consumers + 1)]
    producer_procs = [ctx.Process(target=_mp_producer,
                                  args=(kind, directory, p, n, barrier, err("p%d" % p)))
                      for p in range(1, producers + 1)]
    consumer_procs = [ctx.Process(target=_mp_consumer,
                                  args=(kind, directory, c, barrier, producers_done,
                                        idfiles[c - 1], err("c%d" % c)))
                      for c in range(1, consumers + 1)]
    errors = []
    for proc in producer_procs + consumer_procs:
        proc.start()
    try:
        barrier.wait(timeout=60)
        start = time.monotonic()
    except threading.BrokenBarrierError:
        start = time.monotonic()
        errors.append("a worker never reached the start barrier")
    for proc in producer_procs:
        proc.join(600)
    producers_done.set()
    for proc in consumer_procs:
        proc.join(600)
    for proc in producer_procs + consumer_procs:
        if proc.is_alive():
            proc.kill()
            errors.append("%s still alive: killed" % proc.name)
        elif proc.exitcode:
            errors.append("%s exit code %s" % (proc.name, proc.exitcode))
    for name in os.listdir(directory):
        if name.startswith("err-"):
            with open(os.path.join(directory, name)) as f:
                errors.append(f.read())
    seen, last = [], start
    for path in idfiles:
        try:
            with open(path) as f:
                lines = f.read().split("\n")
        except OSError:
            errors.append("no id file %s" % os.path.basename(path))
            continue
        last = max(last, float(lines[0]))
        seen.extend(int(x) for x in lines[1:] if x)
    total = producers * n
    expected = {make_item(p, i)["id"] for p in range(1, producers + 1) for i in range(n)}
    unique = set(seen)
    strays = unique - expected
    if strays:
        errors.append("%d ids never put" % len(strays))
    elapsed = max(last - start, 1e-9)
    return Outcome(len(unique & expected) / elapsed, total, len(seen), len(unique & expected),
                   errors)


def measure_concurrent(root, s, runner, n, what, n_pq=None):
    kinds = ["PersistentQueue"] + (["persist-queue SQLiteAckQueue"] if SQLiteAckQueue else [])
    results: Dict[str, List[Outcome]] = {k: [] for k in kinds}
    for r in range(s.repeat):
        log("%s, repetition %d/%d ..." % (what, r + 1, s.repeat))
        for kind in kinds if r % 2 == 0 else kinds[::-1]:
            directory = _fresh(root)
            try:
                items = n if kind == "PersistentQueue" or n_pq is None else n_pq
                results[kind].append(runner(kind, directory, items))
            except Exception as exc:
                results[kind].append(Outcome(0.0, 2 * items, 0, 0, ["run failed: %r" % (exc,)]))
            finally:
                shutil.rmtree(directory, ignore_errors=True)
    return results


# -- report -------------------------------------------------------------------------


def machine_header(root, s):
    fs = _common.filesystem(root)
    return [
        "# persistqueue_liteq: PersistentQueue beside raw sqlite3, queue.Queue and persist-queue",
        "",
        _common.machine(),
        "- Python %s (%s); SQLite %s; persist-queue %s"
        % (platform.python_version(), platform.python_implementation(), sqlite3.sqlite_version,
           PQ_VERSION or "not installed (its rows: skipped)"),
        "- Files in %s%s; processes started with %s; run %s"
        % (tempfile.gettempdir(), " (%s)" % fs if fs else "", _mp_context().get_start_method(),
           datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        "- Per repetition: %d single-thread round trips (after %d untimed); 2 x %d items "
        "(threads); 2 x %d items (processes; persist-queue: 2 x %d); %d repetitions, "
        "contenders interleaved"
        % (s.st_ops, WARMUP, s.mt_items, s.mp_items, s.mp_items_pq, s.repeat),
    ]


def single_table(rates):
    base = statistics.median(rates["raw sqlite3"])
    liteq = statistics.median(rates["PersistentQueue"])
    lines = [
        "| contender | round trips/s, median (min–max) | ratio to raw sqlite3 "
        "| PersistentQueue / this | µs per round trip |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, _, _ in ST_CONTENDERS:
        if label not in rates:
            lines.append("| %s | skipped (persist-queue not installed) | — | — | — |" % label)
            continue
        med = statistics.median(rates[label])
        lines.append("| %s | %s | %.3f | %.2f | %.1f |" % (
            label, _common.rate(rates[label]), med / base, liteq / med, 1e6 / med))
    return lines


def concurrent_table(results, single_rate):
    lines = [
        "| queue | items/s, median (min–max) | vs single-thread PersistentQueue "
        "| produced | delivered | duplicates | lost | errors | floor |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    verdicts = {}
    for kind, outcomes in results.items():
        rates = [o.rate for o in outcomes]
        med = statistics.median(rates)
        produced = sum(o.produced for o in outcomes)
        delivered = sum(o.delivered for o in outcomes)
        dups = sum(o.duplicates for o in outcomes)
        lost = sum(o.lost for o in outcomes)
        errs = sum(len(o.errors) for o in outcomes)
        ok = not errs and not dups and not lost and med >= single_rate
        verdicts[kind] = (ok, med, errs, dups, lost)
        lines.append("| %s | %s | %.2fx | %d | %d | %d | %d | %d | %s |" % (
            kind, _common.rate(rates), med / single_rate, produced, delivered, dups, lost, errs,
            "PASS" if ok else "FAIL"))
    if SQLiteAckQueue is None:
        lines.append("| persist-queue SQLiteAckQueue | skipped (not installed) "
                     "| — | — | — | — | — | — | — |")
    notes = []
    for kind, outcomes in results.items():
        seen = []
        for o in outcomes:
            for e in o.errors:
                if e not in seen:
                    seen.append(e)
        for e in seen[:3]:
            notes.append("- %s error: %s" % (kind, e.replace("\n", " ")[:300]))
        if len(seen) > 3:
            notes.append("- %s: %d more distinct errors" % (kind, len(seen) - 3))
    return lines, notes, verdicts


def main(argv=None):
    parser = _common.arguments(__doc__, "small sizes: a smoke test",
                               "repetitions per measurement (default 5)")
    parser.add_argument("--output", metavar="FILE", help="also write the report to FILE")
    args = parser.parse_args(argv)
    s = _common.settings(parser, args, Settings(), QUICK)

    started = time.monotonic()
    root = tempfile.mkdtemp(prefix="bench_queues-")
    try:
        header = machine_header(root, s)
        single = measure_single(root, s)
        threads = measure_concurrent(root, s, mt_run, s.mt_items, "2+2 threads")
        processes = measure_concurrent(root, s, mp_run, s.mp_items, "2+2 processes",
                                       s.mp_items_pq)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    liteq = statistics.median(single["PersistentQueue"])
    raw = statistics.median(single["raw sqlite3"])
    floors = []
    ratio = liteq / raw
    floors.append("- Floor 1a, single thread, PersistentQueue >= %.1fx raw sqlite3: %s (%.3fx)"
                  % (ST_FLOOR, "PASS" if ratio >= ST_FLOOR else "FAIL", ratio))
    for label in (PQ_ACK_NORMAL, PQ_ACK_FULL, PQ_PLAIN_NORMAL, PQ_PLAIN_FULL):
        if label in single:
            other = statistics.median(single[label])
            floors.append("- Floor 1b, single thread, PersistentQueue ahead of %s: %s (%.2fx)"
                          % (label, "PASS" if liteq > other else "FAIL", liteq / other))
        else:
            floors.append("- Floor 1b, single thread, PersistentQueue ahead of %s: skipped"
                          % label)
    t_lines, t_notes, t_verdicts = concurrent_table(threads, liteq)
    p_lines, p_notes, p_verdicts = concurrent_table(processes, liteq)
    for name, verdicts in (("2, 2+2 threads", t_verdicts), ("3, 2+2 processes", p_verdicts)):
        for kind, (ok, med, errs, dups, lost) in verdicts.items():
            floors.append(
                "- Floor %s, %s (no error, duplicate or loss; >= %s items/s): %s "
                "(%s items/s = %.2fx; %d errors, %d duplicates, %d lost)"
                % (name, kind, "{:,.0f}".format(liteq), "PASS" if ok else "FAIL",
                   "{:,.0f}".format(med), med / liteq, errs, dups, lost))

    report = header + [
        "",
        "## 1. Single thread: put + get + task_done of a dict of 3 ints",
        "",
        *single_table(single),
        "",
        "## 2. Two producer and two consumer threads, one queue object",
        "",
        *t_lines,
        *([""] + t_notes if t_notes else []),
        "",
        "## 3. Two producer and two consumer processes, one file",
        "",
        *p_lines,
        *([""] + p_notes if p_notes else []),
        "",
        "Produced, delivered, duplicates, lost and errors are summed over the "
        "repetitions.  Items/s: items put and consumed (each once) per second of "
        "wall time from the start barrier to the last acknowledgement.",
        "",
        "## Floors",
        "",
        *floors,
        "",
        "_Total benchmark time: %.0f s._" % (time.monotonic() - started),
    ]
    text = "\n".join(report) + "\n"
    _common.emit(text, args.output)


if __name__ == "__main__":
    main()
