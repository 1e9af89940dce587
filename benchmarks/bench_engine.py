#!/usr/bin/env python3
"""LiteQueue beside raw sqlite3 doing the same work, measured in one run.

Throughput
----------
Every LiteQueue operation is timed beside the statements a competent user
would write by hand with the standard ``sqlite3`` module for the same
semantics, on the same kind of file:

==================  ==========================================  =======================
row                 raw sqlite3 (the baseline)                  LiteQueue
==================  ==========================================  =======================
put                 one ``sql.INSERT`` in autocommit,           ``q.put(payload)``
                    ``time.time()`` per call
pop + delete        ``sql.LEASE_FIFO_ONE`` (``UPDATE ...       ``m = q.pop()``;
                    RETURNING``, named parameters), then       ``q.delete(m.id)``
                    ``sql.ACK_IN_QUEUE`` (``DELETE ... WHERE
                    id=? AND lease=? AND queue=?``)
pop + ack           the same raw baseline                       ``q.ack(q.pop())``
put_batch(1000)     ``BEGIN IMMEDIATE``; ``executemany(INSERT,  ``q.put_batch(list)``
                    1000 rows)``; ``COMMIT``
put, FULL           the raw put, ``synchronous=FULL``           ``LiteQueue(path,
                                                                synchronous="FULL")``
put, FULL vs NORMAL LiteQueue put with the default NORMAL       as above
==================  ==========================================  =======================

The raw file is set up as the engine sets up its own: WAL journal,
``synchronous=NORMAL``, ``journal_size_limit`` 16 MiB, ``isolation_level=None``
(autocommit) and the tables and indexes of ``sql.render("liteq_")
.CREATE_TABLES``.  Every message is 100 bytes, in queue "default".

Each measurement gets fresh database files in a temporary directory (set
TMPDIR to choose the file system), one untimed warm-up run of every
contender, then R repetitions (``--repeat``, default 7).  A repetition times
N operations of each contender: 5000 puts or pops, 20 batches of 1000, 1000
puts for the FULL rows (each of their commits waits for an fsync).  Before
its clock starts, untimed, a repetition stores what it needs (the messages a
pop takes) and checkpoints the WAL (``wal_checkpoint(TRUNCATE)``), so that
every repetition starts from an empty log.  The contenders of a measurement
take turns within every repetition, the order alternating (AB BA AB ...), so
that noise from the machine hits them alike.

Reported per row: the median rate with the min-max over repetitions, the
ratio of the medians LiteQueue/baseline (with the min-max of the ratios of
adjacent repetitions), the extra microseconds LiteQueue spends per operation,
and PASS/FAIL against the floors (put, pop + delete and put_batch at 60% or
more of raw sqlite3's rate).  The script reports; it never asserts.

Latency and idle cost
---------------------
* Wake-up from another process: a child process blocked in
  ``q.pop(wait_seconds=30)``, the parent calls ``q.put()``; latency is the
  child's ``time.time()`` when pop returns minus the parent's just before
  put.  Each round starts when the child says (through a Pipe) that it is
  about to wait, plus a settle of 3 ms so that it is asleep in pop.  50
  rounds are counted, after 3 that are not.
* Wake-up from another thread: the same with a thread of the same process
  sharing the LiteQueue object.
* Idle cost: the CPU seconds (``time.process_time()``) a child process uses
  while waiting 5 s in ``pop(wait_seconds=5)`` on an empty queue.
* Waiter set-up: microseconds to enter and leave ``engine.waiter("put",
  name)`` (what a blocking pop does once when it finds the queue empty: make
  the channel's directory if needed, bind a socket, unlink it), 2000 times on
  one queue name and 2000 times on distinct names; and how many directories
  the distinct names left in the wake-up directory.

Usage::

    python benchmarks/bench_engine.py [--quick] [--repeat R] [--output FILE]
    python benchmarks/bench_engine.py --wakeups   # only latency and idle cost

Standard library only; the package is imported from the repository root.
"""

import contextlib
import dataclasses
import multiprocessing
import os
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
from datetime import datetime, timezone
from typing import Callable, List, Optional

import _common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from persistqueue_liteq import LiteQueue  # noqa: E402
from persistqueue_liteq.sqlite import sql as _sql  # noqa: E402

SQL = _sql.render("liteq_")
QUEUE = "default"
PAYLOAD = bytes(range(100))  # every message: 100 bytes
BATCH = 1000
FLOOR = 0.60
LEASE_SECONDS = 60.0
WAL_LIMIT = 16 << 20  # the engine's journal_size_limit
SETTLE = 0.003  # seconds between "about to wait" and the put


@dataclasses.dataclass
class Settings:
    ops: int = 5000  # puts or pops per repetition
    batches: int = 20  # put_batch(1000) calls per repetition
    ops_full: int = 1000  # puts per repetition with synchronous=FULL
    repeat: int = 7
    wake_rounds: int = 50
    idle_seconds: float = 5.0
    setup_rounds: int = 2000


QUICK = Settings(ops=300, batches=2, ops_full=100, repeat=3, wake_rounds=10, setup_rounds=200)


def log(text):
    print(text, file=sys.stderr, flush=True)


# -- contenders ---------------------------------------------------------------


@dataclasses.dataclass
class Contender:
    """One side of a measurement: ``run()`` does ``ops`` operations (timed).

    Before each run, untimed: ``prepare()`` (e.g. store the messages to pop),
    then ``checkpoint()`` (empty the WAL, so that every run starts alike).
    """

    label: str
    ops: int
    run: Callable[[], None]
    checkpoint: Callable[[], object]
    close: Callable[[], None]
    prepare: Callable[[], None] = lambda: None


def open_raw(path, synchronous="NORMAL"):
    """A connection set up as the engine sets up its own, on a new file."""
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=%s" % synchronous)
    conn.execute("PRAGMA journal_size_limit=%d" % WAL_LIMIT)
    conn.execute("BEGIN IMMEDIATE")
    for statement in SQL.CREATE_TABLES:
        conn.execute(statement)
    conn.execute("COMMIT")
    return conn


def _raw_checkpoint(conn):
    return lambda: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


def raw_put(path, n, synchronous="NORMAL"):
    conn = open_raw(path, synchronous)

    def run():
        execute, insert, clock = conn.execute, SQL.INSERT, time.time
        for _ in range(n):
            now = clock()
            execute(insert, (QUEUE, PAYLOAD, None, now, now, None)).lastrowid

    return Contender("raw sqlite3", n, run, _raw_checkpoint(conn), conn.close)


def liteq_put(path, n, synchronous="NORMAL"):
    q = LiteQueue(path, synchronous=synchronous)

    def run():
        put = q.put
        for _ in range(n):
            put(PAYLOAD)

    return Contender("LiteQueue %s" % synchronous, n, run, q.checkpoint, q.close)


def raw_pop_ack(path, n):
    conn = open_raw(path)

    def prepare():
        left = conn.execute("SELECT count(*) FROM liteq_messages").fetchone()[0]
        if left:
            raise RuntimeError("raw pop left %d messages behind" % left)
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(SQL.INSERT, [(QUEUE, PAYLOAD, None, now, now, None)] * n)
        conn.execute("COMMIT")

    def run():
        execute, lease, ack = conn.execute, SQL.LEASE_FIFO_ONE, SQL.ACK_IN_QUEUE
        clock, getrandbits = time.time, random.getrandbits
        for _ in range(n):
            now = clock()
            token = getrandbits(62) + 1
            params = {"queue": QUEUE, "now": now, "until": now + LEASE_SECONDS,
                      "lease": token, "n": 1, "holder": None}
            msg_id = execute(lease, params).fetchall()[0][0]
            execute(ack, (msg_id, token, QUEUE))

    return Contender("raw sqlite3", n, run, _raw_checkpoint(conn), conn.close, prepare)


def liteq_pop(path, n, settle):
    """``settle`` is "delete" (Liteq's way: by id) or "ack" (by lease)."""
    q = LiteQueue(path)
    batch = [PAYLOAD] * n

    def prepare():
        if not q.empty():
            raise RuntimeError("LiteQueue pop left %d messages behind" % q.qsize())
        q.put_batch(batch)

    def run_delete():
        pop, delete = q.pop, q.delete
        for _ in range(n):
            delete(pop().id)

    def run_ack():
        pop, ack = q.pop, q.ack
        for _ in range(n):
            ack(pop())

    run = run_delete if settle == "delete" else run_ack
    return Contender("LiteQueue %s" % settle, n, run, q.checkpoint, q.close, prepare)


def raw_put_batch(path, batches):
    conn = open_raw(path)

    def run():
        execute, executemany, insert = conn.execute, conn.executemany, SQL.INSERT
        for _ in range(batches):
            now = time.time()
            rows = [(QUEUE, PAYLOAD, None, now, now, None) for _ in range(BATCH)]
            execute("BEGIN IMMEDIATE")
            executemany(insert, rows)
            execute("COMMIT")

    return Contender("raw sqlite3", batches * BATCH, run, _raw_checkpoint(conn), conn.close)


def liteq_put_batch(path, batches):
    q = LiteQueue(path)
    messages = [PAYLOAD] * BATCH

    def run():
        put_batch = q.put_batch
        for _ in range(batches):
            put_batch(messages)

    return Contender("LiteQueue", batches * BATCH, run, q.checkpoint, q.close)


def interleave(root, makers, repeat):
    """Run the contenders made by ``makers`` (each: path -> Contender) on
    fresh files in turns; return {label: [ops/s per repetition]}."""
    directory = tempfile.mkdtemp(dir=root)
    try:
        with contextlib.ExitStack() as stack:
            contenders = []
            for i, make in enumerate(makers):
                contender = make(os.path.join(directory, "db%d.sqlite" % i))
                stack.callback(contender.close)
                contenders.append(contender)
            for contender in contenders:  # warm-up
                contender.prepare()
                contender.run()
            rates = {c.label: [] for c in contenders}
            for r in range(repeat):
                for contender in contenders if r % 2 == 0 else contenders[::-1]:
                    contender.prepare()
                    contender.checkpoint()
                    start = time.perf_counter()
                    contender.run()
                    rates[contender.label].append(contender.ops / (time.perf_counter() - start))
            return rates
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@dataclasses.dataclass
class Row:
    operation: str
    baseline: str  # what the LiteQueue rates are compared with
    base_rates: List[float]
    rates: List[float]
    floor: Optional[float] = None  # the least acceptable ratio, if any
    unit: str = "ops/s"


def measure_throughput(root, s):
    rows = []
    n = s.ops
    log("put ...")
    r = interleave(root, [lambda p: raw_put(p, n), lambda p: liteq_put(p, n)], s.repeat)
    rows.append(Row("put", "raw sqlite3", r["raw sqlite3"], r["LiteQueue NORMAL"], FLOOR))

    log("pop + delete / pop + ack ...")
    r = interleave(
        root,
        [lambda p: raw_pop_ack(p, n), lambda p: liteq_pop(p, n, "delete"),
         lambda p: liteq_pop(p, n, "ack")],
        s.repeat,
    )
    rows.append(Row("pop + delete", "raw sqlite3", r["raw sqlite3"], r["LiteQueue delete"], FLOOR))
    rows.append(Row("pop + ack", "raw sqlite3", r["raw sqlite3"], r["LiteQueue ack"]))

    log("put_batch(1000) ...")
    b = s.batches
    r = interleave(root, [lambda p: raw_put_batch(p, b), lambda p: liteq_put_batch(p, b)], s.repeat)
    rows.append(Row("put_batch(1000)", "raw sqlite3", r["raw sqlite3"], r["LiteQueue"], FLOOR,
                    unit="msgs/s"))

    log("put with synchronous=FULL ...")
    f = s.ops_full
    r = interleave(
        root,
        [lambda p: raw_put(p, f, "FULL"), lambda p: liteq_put(p, f, "FULL"),
         lambda p: liteq_put(p, f, "NORMAL")],
        s.repeat,
    )
    rows.append(Row("put, synchronous=FULL", "raw sqlite3 FULL",
                    r["raw sqlite3"], r["LiteQueue FULL"]))
    rows.append(Row("put, FULL vs NORMAL", "LiteQueue NORMAL",
                    r["LiteQueue NORMAL"], r["LiteQueue FULL"]))
    return rows


# -- wake-up latency and idle cost ------------------------------------------------


def _wake_child(path, rounds, conn):
    q = LiteQueue(path)
    q.pop(wait_seconds=0)  # open the connection before the first round
    for _ in range(rounds):
        conn.send("waiting")
        msg = q.pop(wait_seconds=30)
        returned = time.time()
        if msg is not None:
            q.ack(msg)
        conn.send(returned if msg is not None else None)
    q.close()


def _wake_thread(q, rounds, to_parent):
    q.pop(wait_seconds=0)
    for _ in range(rounds):
        to_parent.put("waiting")
        msg = q.pop(wait_seconds=30)
        returned = time.time()
        if msg is not None:
            q.ack(msg)
        to_parent.put(returned if msg is not None else None)


def _idle_child(path, seconds, conn):
    q = LiteQueue(path)
    q.pop(wait_seconds=0)
    cpu, wall = time.process_time(), time.monotonic()
    msg = q.pop(wait_seconds=seconds)
    conn.send((time.process_time() - cpu, time.monotonic() - wall, msg is None))
    q.close()


def _expect(receive, what):
    value = receive()
    if value is None:
        raise RuntimeError("the waiter's pop(wait_seconds=30) returned no message")
    if what is not None and value != what:
        raise RuntimeError("unexpected message from the waiter: %r" % (value,))
    return value


def _wake_rounds(q, rounds, receive):
    """Put once per round when the waiter is asleep; return latencies (s)."""
    latencies = []
    for _ in range(rounds):
        _expect(receive, "waiting")
        time.sleep(SETTLE)
        start = time.time()
        q.put(PAYLOAD)
        latencies.append(_expect(receive, None) - start)
    return latencies


def _pipe_receiver(conn, timeout=40):
    def receive():
        if not conn.poll(timeout):
            raise RuntimeError("the waiter did not answer within %ds" % timeout)
        return conn.recv()
    return receive


def _waiter_setup(engine, rounds):
    """µs per enter + exit of a waiter, on one name and on distinct names,
    and the directories the distinct names left behind."""
    from persistqueue_liteq.sqlite import wakeup

    def timed(names):
        start = time.perf_counter()
        for name in names:
            with engine.waiter("put", name):
                pass
        return (time.perf_counter() - start) / len(names) * 1e6

    hot = timed(["hot"] * rounds)
    distinct = timed(["name-%d" % i for i in range(rounds)])
    root = engine._notifier._root
    left = len(os.listdir(root)) if os.path.isdir(root) else 0
    return hot, distinct, left, os.path.dirname(root) if wakeup.HAVE_SOCKETS else None


def measure_wakeups(root, s):
    ctx = multiprocessing.get_context("spawn")
    warm = 3  # first rounds are not counted
    rounds = s.wake_rounds + warm
    results = {}
    directory = tempfile.mkdtemp(dir=root)
    try:
        log("wake-up from another process ...")
        path = os.path.join(directory, "wake-process.sqlite")
        q = LiteQueue(path)
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_wake_child, args=(path, rounds, child), daemon=True)
        proc.start()
        try:
            results["process"] = _wake_rounds(q, rounds, _pipe_receiver(parent))[warm:]
        finally:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
            q.close()

        log("wake-up from another thread ...")
        path = os.path.join(directory, "wake-thread.sqlite")
        q = LiteQueue(path)
        to_parent = queue.SimpleQueue()
        thread = threading.Thread(target=_wake_thread, args=(q, rounds, to_parent), daemon=True)
        thread.start()
        try:
            results["thread"] = _wake_rounds(q, rounds, lambda: to_parent.get(timeout=40))[warm:]
        finally:
            thread.join(10)
            q.close()

        log("waiter set-up ...")
        path = os.path.join(directory, "setup.sqlite")
        q = LiteQueue(path)
        try:
            results["setup"] = _waiter_setup(q.engine, s.setup_rounds)
        finally:
            q.close()

        log("idle CPU in pop(wait_seconds=%g) ..." % s.idle_seconds)
        path = os.path.join(directory, "idle.sqlite")
        LiteQueue(path).close()
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_idle_child, args=(path, s.idle_seconds, child), daemon=True)
        proc.start()
        try:
            results["idle"] = _pipe_receiver(parent, s.idle_seconds + 30)()
        finally:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return results


# -- report -------------------------------------------------------------------------


def machine_header(root, s):
    fs = _common.filesystem(root)
    return [
        "# persistqueue_liteq: LiteQueue beside raw sqlite3",
        "",
        _common.machine(),
        "- Python %s (%s); SQLite %s"
        % (platform.python_version(), platform.python_implementation(), sqlite3.sqlite_version),
        "- Files in %s%s; run %s"
        % (tempfile.gettempdir(), " (%s)" % fs if fs else "",
           datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        "- Per repetition: %d puts / pops, %d x put_batch(1000), %d puts for the FULL rows; "
        "%d repetitions, contenders interleaved" % (s.ops, s.batches, s.ops_full, s.repeat),
    ]


def throughput_table(rows):
    lines = [
        "| operation | baseline | baseline rate, median (min–max) | LiteQueue rate, median "
        "(min–max) | ratio LiteQueue/baseline (paired min–max) | extra µs/op | floor |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        base, mine = statistics.median(row.base_rates), statistics.median(row.rates)
        ratio = mine / base
        paired = [a / b for a, b in zip(row.rates, row.base_rates)]
        if row.floor is None:
            verdict = "—"
        else:
            verdict = "%s (≥ %.2f)" % ("PASS" if ratio >= row.floor else "FAIL", row.floor)
        lines.append("| %s | %s | %s %s | %s %s | **%.3f** (%.2f–%.2f) | %+.1f | %s |" % (
            row.operation, row.baseline, _common.rate(row.base_rates), row.unit,
            _common.rate(row.rates), row.unit, ratio, min(paired), max(paired),
            1e6 / mine - 1e6 / base, verdict,
        ))
    return lines


def _ms(seconds):
    return "%.3f ms" % (seconds * 1e3)


def latency_table(results, s):
    lines = [
        "| measurement | median | p90 | max | rounds |",
        "|---|---:|---:|---:|---:|",
    ]
    names = {
        "process": "pop(wait_seconds=30) wake-up, put from another process",
        "thread": "pop(wait_seconds=30) wake-up, put from another thread",
    }
    for key, name in names.items():
        data = sorted(results[key])
        p90 = statistics.quantiles(data, n=10, method="inclusive")[-1]
        lines.append("| %s | %s | %s | %s | %d |" % (
            name, _ms(statistics.median(data)), _ms(p90), _ms(data[-1]), len(data)))
    hot, distinct, left, _ = results["setup"]
    lines.append("| enter + leave a waiter, one queue name | %.1f µs | — | — | %d |"
                 % (hot, s.setup_rounds))
    lines.append("| enter + leave a waiter, distinct names (directories left: %d) "
                 "| %.1f µs | — | — | %d |" % (left, distinct, s.setup_rounds))
    cpu, wall, empty = results["idle"]
    lines.append("| CPU of a process idle in pop(wait_seconds=%g)%s | %.4f s CPU in %.2f s "
                 "wall (%.3f%%) | — | — | 1 |" % (
                     s.idle_seconds, "" if empty else " (GOT A MESSAGE?)", cpu, wall,
                     100 * cpu / wall))
    return lines


def main(argv=None):
    parser = _common.arguments(__doc__, "small sizes: a smoke test",
                               "repetitions per measurement (default 7)")
    parser.add_argument("--output", metavar="FILE", help="also write the report to FILE")
    parser.add_argument("--wakeups", action="store_true",
                        help="only the wake-up latency and idle cost")
    args = parser.parse_args(argv)
    s = _common.settings(parser, args, Settings(), QUICK)

    started = time.monotonic()
    root = tempfile.mkdtemp(prefix="bench_engine-")
    try:
        header = machine_header(root, s)
        rows = None if args.wakeups else measure_throughput(root, s)
        wakeups = measure_wakeups(root, s)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    report = header[:]
    if rows is not None:
        report += [
            "",
            "## Throughput",
            "",
            *throughput_table(rows),
            "",
            "Rates are per second (put_batch: messages).  Ratio = median / median; in "
            "brackets the range of the ratios of adjacent repetitions.  Extra µs/op: "
            "LiteQueue's time per operation minus the baseline's.  Floors: put, pop + "
            "delete and put_batch(1000) at %d%% or more of raw sqlite3." % (FLOOR * 100),
        ]
    report += [
        "",
        "## Wake-up latency and idle cost",
        "",
        *latency_table(wakeups, s),
        "",
        "Latency: the waiter's time.time() when pop returns minus the producer's just "
        "before put(); %d ms settle after the waiter says it is about to wait."
        % (SETTLE * 1e3),
        "",
        "_Total benchmark time: %.0f s._" % (time.monotonic() - started),
    ]
    text = "\n".join(report) + "\n"
    _common.emit(text, args.output)


if __name__ == "__main__":
    main()
