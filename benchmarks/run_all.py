#!/usr/bin/env python3
"""Every comparison in one run: the engine, the queues and the pools beside their peers.

Writes DIR/results.md (the markdown report, also printed) and DIR/chart.png
(default DIR: benchmarks/results/)::

    python benchmarks/run_all.py [--quick] [--repeat R] [--out DIR]

Peers come from the ``bench`` extra (``pip install -e ".[bench]"``); one that
does not import is reported as "skipped (not installed)".  The measurements
reuse the functions of bench_engine.py, bench_queues.py and bench_pool.py.

Method (every section)
----------------------
R repetitions (``--repeat``, default 5; ``--quick``: 2 and small sizes).
Within each repetition every contender runs once, the order reversed every
other repetition (AB BA AB ...), so that the noise of the machine hits all of
them alike.  Every run gets fresh files in a fresh temporary directory (set
TMPDIR to choose the file system), and what is opened or warmed up before a
run is outside its clock.  A figure is the median over the R runs, with the
min-max in brackets; "x fastest" is that median divided by the best median of
its table (1.00 = the fastest).

1. Queues, single thread
    One thread repeats a round trip of a small item (``{"id", "p", "i"}``,
    3 ints) N times (default 2,000, after 50 untimed); rate = N / seconds.

    ===============================  ==================================================
    contender                        one round trip (the clock runs around N of them)
    ===============================  ==================================================
    raw sqlite3                      bench_queues.st_raw_minimal: the least a correct
                                     at-least-once queue does: pickle.dumps, INSERT (no
                                     AUTOINCREMENT), UPDATE ... WHERE id = (SELECT ...
                                     LIMIT 1) RETURNING id, data, pickle.loads, DELETE
                                     WHERE id AND lease; WAL, synchronous=NORMAL,
                                     autocommit
    raw sqlite3, the engine's        bench_queues.st_raw: the same with the engine's
    statements                       INSERT, lease and ack on the engine's tables
    queue.Queue                      put, get, task_done (memory)
    multiprocessing.Queue            put then get in the same process: the queue's
                                     feeder thread pickles the item into a pipe, get
                                     reads and unpickles it (memory, no process hop)
    persist-queue SQLiteAckQueue     put; ack(get()); at synchronous=NORMAL like the
                                     others, and at its default (SQLite's, FULL here)
    persist-queue SQLiteQueue        auto_commit=True: put, get (deletes), task_done;
                                     NORMAL and its default likewise
    litequeue                        put(pickle.dumps(item)); m = pop();
                                     pickle.loads(m.data); done(m.message_id)
    diskcache Deque                  append(item); popleft() (diskcache pickles)
    PersistentQueue                  put(item); get(); task_done()
    LiteQueue                        put(pickle.dumps(item)); m = pop();
                                     pickle.loads(m.data); ack(m)
    ===============================  ==================================================

    "Durable" = kept in a file (all but the two memory queues).  SQLiteQueue,
    diskcache's popleft and litequeue's pop without done are at-most-once
    (the item is gone, or never comes back, if the consumer dies); the others
    deliver at least once.

2. Scaling with threads and processes
    Threads (one queue object shared): 1 thread puts N items then gets and
    acknowledges them; 2, 4, 8 threads = half producers, half consumers,
    running together (bench_queues.mt_run).  Processes: 1+1, 2+2, 4+4
    producer+consumer processes (fork) on one file (bench_queues.mp_run):
    consumers get until the producers are done and a get(timeout=0.25) comes
    back empty, and the parent counts duplicates (ids delivered more than
    once) and losses.  N is the total over all producers (threads 4,000,
    processes 4,000; persist-queue across processes 600).  Rate = unique
    items delivered / seconds from the start barrier to the last
    acknowledgement.  persist-queue's SQLiteAckQueue runs as shipped
    (``multithreading=True`` for threads; its blocking ``get`` across
    processes) and, across processes, also with ``get`` polled every 1 ms
    (bench_queues.PolledAckQueue), because its blocking get notices a put
    from another process only every 10 s.

3. Latency from put to get across processes
    A spawned process waits in a blocking get; when it says (through a Pipe)
    that it is about to wait, the parent sleeps 3 ms, reads time.time() and
    puts a 100-byte bytes object; the child reads time.time() when get
    returns (bench_engine._wake_rounds).  200 samples per contender and
    repetition (after 3 uncounted), except persist-queue's blocking get, whose
    every sample takes about 10 s: 1 per repetition.  p50, p90, p99
    (nearest rank) of each repetition, then the median and min-max of those.
    Contenders: PersistentQueue ``get(timeout=30)``, multiprocessing.Queue
    ``get(timeout=30)``, persist-queue SQLiteAckQueue ``get(timeout=30)``
    and the same polled every 1 ms.

4. Durability: synchronous=FULL against NORMAL
    bench_engine.interleave over four contenders per row (raw sqlite3 and
    LiteQueue, each with NORMAL and FULL): "put" times N ``put`` of 100
    bytes (raw: one INSERT in autocommit, bench_engine.raw_put); "round
    trip" times N of put, pop, ack (raw: INSERT, UPDATE ... RETURNING,
    DELETE).  N = 5,000 under NORMAL, 1,000 under FULL (every commit of FULL
    waits for an fsync).  Each run starts from a checkpointed, empty WAL.

5. Pools, 2 workers, a trivial task (``noop(x): return x``)
    bench_pool.run_submit: 20,000 ``submit`` then ``.result()`` on each,
    tasks/s; bench_pool.run_map: ``map(noop, range(200,000),
    chunksize=100)``, items/s.  A new pool per run, warmed up until both
    workers answered; start and shutdown outside the clock.  The process
    pools use the forkserver context (bench_pool.contenders; its
    once-measured fork reference is left out).  huey: SqliteHuey with
    synchronous=NORMAL (benchmarks/_huey_app.py) on a fresh file; its
    consumer runs in a subprocess as ``huey_consumer -w 2 -k process`` would
    (Consumer API, 2 forked worker processes, queue polled from 1 ms, no
    periodic tasks), started and warmed before the clock; the benchmark
    enqueues N calls of the task and then ``Result.get(blocking=True)`` on
    each in order (huey polls the result store from 50 ms, backing off
    1.15x).  huey has no chunked map: its map cell says n/a.

Standard library apart from the peers and matplotlib (the chart); the package
is imported from the repository root as the other scripts do.
"""

import dataclasses
import importlib.metadata
import multiprocessing
import os
import pickle
import platform
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import bench_pool  # noqa: E402  (first: it puts the repository root on sys.path)
import bench_engine  # noqa: E402
import bench_queues  # noqa: E402
import _common  # noqa: E402
from bench_queues import Outcome, make_item  # noqa: E402
from persistqueue_liteq import LiteQueue, PersistentQueue  # noqa: E402

try:
    import litequeue as _litequeue
except Exception:
    _litequeue = None
try:
    from diskcache import Deque as _Deque
except Exception:
    _Deque = None
try:
    import _huey_app
except Exception:
    _huey_app = None

PQ = bench_queues.SQLiteAckQueue is not None
PQ_ACK = "persist-queue SQLiteAckQueue"
PQ_POLLED = bench_queues.PQ_POLLED
SKIPPED = "skipped (not installed)"
WARMUP = bench_queues.WARMUP


@dataclasses.dataclass
class Settings:
    st_ops: int = 2000  # 1. round trips per run
    scale_items: int = 4000  # 2. items per run, threads (over all producers)
    scale_items_mp: int = 4000  # 2. items per run, processes, PersistentQueue
    scale_items_mp_pq: int = 600  # 2. items per run, processes, persist-queue
    latency_rounds: int = 200  # 3. samples per contender and repetition
    latency_rounds_pq_block: int = 1  # 3. persist-queue's blocking get: ~10 s each
    sync_ops: int = 5000  # 4. operations per run under NORMAL
    sync_ops_full: int = 1000  # 4. under FULL
    pool_tasks: int = 20_000  # 5. submit + result
    pool_map_items: int = 200_000  # 5. map(chunksize=100)
    repeat: int = 5


QUICK = Settings(st_ops=300, scale_items=600, scale_items_mp=600, scale_items_mp_pq=120,
                 latency_rounds=30, sync_ops=1000, sync_ops_full=200, pool_tasks=1000,
                 pool_map_items=20_000, repeat=2)

THREADS = (1, 2, 4, 8)
PROCESS_PAIRS = (1, 2, 4)

_STARTED = time.monotonic()


def log(text):
    print("[%5.0f s] %s" % (time.monotonic() - _STARTED, text), file=sys.stderr, flush=True)


def order(items, r):
    """AB BA AB ...: the contenders of repetition r."""
    return list(items) if r % 2 == 0 else list(items)[::-1]


def med(values):
    return statistics.median(values)


def fresh(root):
    return tempfile.mkdtemp(dir=root)


# -- 1. queues, single thread --------------------------------------------------------------


def st_mp_queue(directory, n):
    q = multiprocessing.Queue()

    def run(count):
        put, get = q.put, q.get
        for i in range(count):
            put(make_item(0, i))
            get()

    def close():
        q.close()
        q.join_thread()

    return run, close


def st_litequeue(directory, n):
    q = _litequeue.LiteQueue(os.path.join(directory, "litequeue.sqlite"))

    def run(count):
        put, pop, done = q.put, q.pop, q.done
        dumps, loads, proto = pickle.dumps, pickle.loads, pickle.HIGHEST_PROTOCOL
        for i in range(count):
            put(dumps(make_item(0, i), proto))
            m = pop()
            loads(m.data)
            done(m.message_id)

    return run, q.close


def st_diskcache(directory, n):
    d = _Deque(directory=os.path.join(directory, "deque"))

    def run(count):
        append, popleft = d.append, d.popleft
        for i in range(count):
            append(make_item(0, i))
            popleft()

    return run, d.cache.close


def st_liteq_engine(directory, n):
    q = LiteQueue(os.path.join(directory, "liteq-engine.sqlite"))

    def run(count):
        put, pop, ack = q.put, q.pop, q.ack
        dumps, loads, proto = pickle.dumps, pickle.loads, pickle.HIGHEST_PROTOCOL
        for i in range(count):
            put(dumps(make_item(0, i), proto))
            m = pop()
            loads(m.data)
            ack(m)

    return run, q.close


# (label, maker, available, durable, what one round trip is)
SINGLE = [
    (bench_queues.RAW_MINIMAL, bench_queues.st_raw_minimal, True, True,
     "INSERT; UPDATE … WHERE id = (SELECT … LIMIT 1) RETURNING; DELETE (minimal)"),
    (bench_queues.RAW_ENGINE, bench_queues.st_raw, True, True,
     "INSERT; UPDATE … RETURNING; DELETE (the engine's statements and tables)"),
    ("queue.Queue", bench_queues.st_memory, True, False, "put; get; task_done (memory)"),
    ("multiprocessing.Queue", st_mp_queue, True, False,
     "put; get in one process, through its feeder thread and pipe"),
    (bench_queues.PQ_ACK_NORMAL, bench_queues.st_pq_ack_normal, PQ, True, "put; ack(get())"),
    (bench_queues.PQ_ACK_FULL, bench_queues.st_pq_ack, PQ, True, "put; ack(get())"),
    (bench_queues.PQ_PLAIN_NORMAL, bench_queues.st_pq_plain_normal, PQ, True,
     "auto_commit: put; get; task_done"),
    (bench_queues.PQ_PLAIN_FULL, bench_queues.st_pq_plain, PQ, True,
     "auto_commit: put; get; task_done"),
    ("litequeue", st_litequeue, _litequeue is not None, True, "put; pop; done"),
    ("diskcache Deque", st_diskcache, _Deque is not None, True, "append; popleft"),
    ("PersistentQueue", bench_queues.st_liteq, True, True, "put; get; task_done"),
    ("LiteQueue", st_liteq_engine, True, True, "put; pop; ack"),
]


def measure_single(root, s):
    active = [(label, make) for label, make, ok, _, _ in SINGLE if ok]
    return bench_queues.measure_single(root, s, active, title="1. single thread")


# -- 2. scaling ---------------------------------------------------------------------------------


def one_thread_run(kind, directory, n):
    """One thread: put n items, then get and acknowledge n."""
    put, get, done, close = bench_queues._mt_ops(kind, directory)
    ids = []
    try:
        start = time.perf_counter()
        for i in range(n):
            put(make_item(1, i))
        for _ in range(n):
            item = get(30.0)
            done(item)
            ids.append(item["id"])
        elapsed = time.perf_counter() - start
    finally:
        close()
    return Outcome(len(set(ids)) / elapsed, n, len(ids), len(set(ids)), [])


def threads_run(kind, directory, threads, items):
    if threads == 1:
        return one_thread_run(kind, directory, items)
    half = threads // 2
    return bench_queues.mt_run(kind, directory, items // half, half, half)


def measure_scaling(root, s):
    """{("threads"|"processes", kind, count): [Outcome per repetition]}."""
    thread_kinds = ["PersistentQueue"] + ([PQ_ACK] if PQ else [])
    process_kinds = ["PersistentQueue"] + ([PQ_ACK, PQ_POLLED] if PQ else [])
    results = {}

    def one(key, run, items):
        directory = fresh(root)
        try:
            outcome = run(directory)
        except Exception as exc:
            outcome = Outcome(0.0, items, 0, 0, ["run failed: %r" % (exc,)])
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        results.setdefault(key, []).append(outcome)

    for r in range(s.repeat):
        log("2. scaling with threads, repetition %d/%d ..." % (r + 1, s.repeat))
        for count in THREADS:
            for kind in order(thread_kinds, r):
                one(("threads", kind, count),
                    lambda d: threads_run(kind, d, count, s.scale_items), s.scale_items)
        log("2. scaling with processes, repetition %d/%d ..." % (r + 1, s.repeat))
        for pairs in PROCESS_PAIRS:
            for kind in order(process_kinds, r):
                items = s.scale_items_mp if kind == "PersistentQueue" else s.scale_items_mp_pq
                per = items // pairs
                one(("processes", kind, pairs),
                    lambda d: bench_queues.mp_run(kind, d, per, pairs, pairs), per * pairs)
    return results


# -- 3. latency ---------------------------------------------------------------------------------

PQ_BLOCK = "persist-queue SQLiteAckQueue, blocking get"
LATENCY_WARM = 3  # uncounted first rounds (not for PQ_BLOCK: 10 s each)


def _latency_open(kind, target):
    """(queue, get(timeout) -> item, done(item)); target: a path or an mp.Queue."""
    if kind == "PersistentQueue":
        q = PersistentQueue(target)
        return q, lambda t: q.get(timeout=t), lambda item: q.task_done()
    if kind == "multiprocessing.Queue":
        return target, lambda t: target.get(timeout=t), lambda item: None
    if kind == PQ_POLLED:
        q = bench_queues.PolledAckQueue(target)
        return q, q.get, q.ack
    q = bench_queues.SQLiteAckQueue(target)
    return q, lambda t: q.get(timeout=t), q.ack


def _latency_child(kind, target, rounds, conn):
    """Runs in a spawned process: get, once per round, reporting the time."""
    q, get, done = _latency_open(kind, target)
    if kind != "multiprocessing.Queue":
        try:  # open the connections before the first round
            q.get(block=False) if kind != PQ_POLLED else q.get(0)
        except bench_queues.EMPTY:
            pass
    for _ in range(rounds):
        conn.send("waiting")
        try:
            item = get(30.0)
        except bench_queues.EMPTY:
            item = None
        returned = time.time()
        if item is not None:
            done(item)
        conn.send(returned if item is not None else None)


def latency_run(kind, directory, rounds):
    """Latencies (s) of one child process over ``rounds`` puts."""
    ctx = multiprocessing.get_context("spawn")
    if kind == "PersistentQueue":
        target = os.path.join(directory, "liteq.sqlite")
        q = PersistentQueue(target)
        close = q.close
    elif kind == "multiprocessing.Queue":
        q = target = ctx.Queue()
        close = lambda: (q.close(), q.join_thread())  # noqa: E731
    else:
        target = os.path.join(directory, "pq-ack")
        q = bench_queues.SQLiteAckQueue(target)
        close = lambda: None  # noqa: E731
    warm = 0 if kind == PQ_BLOCK else LATENCY_WARM
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_latency_child, args=(kind, target, rounds + warm, child),
                       daemon=True)
    proc.start()
    try:
        return bench_engine._wake_rounds(q, rounds + warm,
                                         bench_engine._pipe_receiver(parent))[warm:]
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
        close()


def _quantile(data, q):
    return bench_pool._quantile(data, q)


def measure_latency(root, s):
    """{kind: [(p50, p90, p99, samples) per repetition]} (seconds)."""
    kinds = ["PersistentQueue", "multiprocessing.Queue"] + ([PQ_BLOCK, PQ_POLLED] if PQ else [])
    results = {k: [] for k in kinds}
    for r in range(s.repeat):
        log("3. latency, repetition %d/%d ..." % (r + 1, s.repeat))
        for kind in order(kinds, r):
            rounds = s.latency_rounds_pq_block if kind == PQ_BLOCK else s.latency_rounds
            directory = fresh(root)
            try:
                data = sorted(latency_run(kind, directory, rounds))
                results[kind].append(tuple(_quantile(data, q) for q in (0.5, 0.9, 0.99))
                                     + (len(data),))
            except Exception as exc:
                log("   %s failed: %r" % (kind, exc))
            finally:
                shutil.rmtree(directory, ignore_errors=True)
    return results


# -- 4. FULL against NORMAL -----------------------------------------------------------------


def raw_round_trip(path, n, synchronous):
    conn = bench_engine.open_raw(path, synchronous)
    sql = bench_engine.SQL

    def run():
        execute, insert, lease, ack = conn.execute, sql.INSERT, sql.LEASE_FIFO_ONE, sql.ACK_IN_QUEUE
        clock, getrandbits, payload, name = time.time, random.getrandbits, bench_engine.PAYLOAD, \
            bench_engine.QUEUE
        for _ in range(n):
            now = clock()
            execute(insert, (name, payload, None, now, now, None))
            now = clock()
            token = getrandbits(62) + 1
            msg_id = execute(lease, {"queue": name, "now": now, "until": now + 60.0,
                                     "lease": token, "n": 1, "holder": None}).fetchall()[0][0]
            execute(ack, (msg_id, token, name))

    return bench_engine.Contender("raw sqlite3 %s" % synchronous, n, run,
                                  bench_engine._raw_checkpoint(conn), conn.close)


def liteq_round_trip(path, n, synchronous):
    q = LiteQueue(path, synchronous=synchronous)

    def run():
        put, pop, ack, payload = q.put, q.pop, q.ack, bench_engine.PAYLOAD
        for _ in range(n):
            put(payload)
            ack(pop())

    return bench_engine.Contender("LiteQueue %s" % synchronous, n, run, q.checkpoint, q.close)


def _raw_put(path, n, synchronous):
    c = bench_engine.raw_put(path, n, synchronous)
    return dataclasses.replace(c, label="raw sqlite3 %s" % synchronous)


def measure_sync(root, s):
    """{("put"|"round trip", "raw sqlite3"|"LiteQueue", "NORMAL"|"FULL"): [ops/s]}."""
    results = {}
    rows = (("put", _raw_put, bench_engine.liteq_put),
            ("round trip", raw_round_trip, liteq_round_trip))
    for operation, raw, mine in rows:
        log("4. %s, synchronous NORMAL and FULL ..." % operation)
        makers = []
        for sync, n in (("NORMAL", s.sync_ops), ("FULL", s.sync_ops_full)):
            makers.append(lambda p, sync=sync, n=n: raw(p, n, sync))
            makers.append(lambda p, sync=sync, n=n: mine(p, n, sync))
        rates = bench_engine.interleave(root, makers, s.repeat)
        for label, values in rates.items():
            who, sync = label.rsplit(" ", 1)
            results[(operation, who, sync)] = values
    return results


# -- 5. pools -----------------------------------------------------------------------------------

HUEY = "huey SqliteHuey (consumer: 2 processes)"
_HUEY_CONSUMER = ("import sys; sys.path.insert(0, sys.argv[1]); import _huey_app; "
                  "_huey_app.consume(sys.argv[2], int(sys.argv[3]))")


class _HueyFuture:
    __slots__ = ("_result",)

    def __init__(self, result):
        self._result = result

    def result(self):
        return self._result.get(blocking=True, timeout=600)


def open_huey(directory):
    """A bench_pool.Pool over huey: enqueue from here, a consumer subprocess."""
    path = os.path.join(directory, "huey.sqlite")
    huey, tasks = _huey_app.make(path)
    by_function = {bench_pool.noop: tasks[_huey_app.noop],
                   bench_pool._warm_task: tasks[_huey_app.warm_task]}
    consumer = subprocess.Popen([sys.executable, "-c", _HUEY_CONSUMER, HERE, path,
                                 str(bench_pool.WORKERS)])

    def submit(fn, *args):
        return _HueyFuture(by_function[fn](*args))

    def close():
        consumer.send_signal(signal.SIGTERM)  # huey: stop now (SIGINT: graceful)
        try:
            consumer.wait(30)
        except subprocess.TimeoutExpired:
            consumer.kill()
            consumer.wait()
        getattr(huey.storage, "close", lambda: None)()

    return bench_pool.Pool(huey, submit=submit, close=close)


def pool_contenders():
    found, skipped = bench_pool.contenders()
    found = [c for c in found if not c.once]
    if _huey_app is not None:
        found.append(bench_pool.Contender(HUEY, open_huey, _version("huey"), peer=True))
    else:
        skipped.append("huey (not installed: pip install huey)")
    return found, skipped


def measure_pools(root, s, found):
    ps = bench_pool.Settings(tasks=s.pool_tasks, map_items=s.pool_map_items, repeat=s.repeat)
    log("5. pools: submit + result of %s tasks ..." % f"{s.pool_tasks:,}")
    submit = bench_pool.interleave(root, found, bench_pool.run_submit, ps)
    log("5. pools: map of %s items ..." % f"{s.pool_map_items:,}")
    mapped = bench_pool.interleave(root, [c for c in found if c.label != HUEY],
                                   bench_pool.run_map, ps)
    return {"submit": submit, "map": mapped}


# -- report -------------------------------------------------------------------------------------


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _fmt(x):
    return "{:,.0f}".format(x)


def _ms(x):
    return "%.2f" % (x * 1e3) if x < 1 else "{:,.0f}".format(x * 1e3)


def _x(value, best):
    return "%.2f" % (value / best)


def header(root, s, command):
    fs = _common.filesystem(root)
    peers = []
    for dist in ("persist-queue", "litequeue", "diskcache", "loky", "pebble", "huey"):
        v = _version(dist)
        peers.append("%s %s" % (dist, v) if v else "%s: %s" % (dist, SKIPPED))
    return [
        "# persistqueue_liteq beside its peers, in one run",
        "",
        _common.machine(),
        "- Python %s (%s); SQLite %s; persistqueue_liteq %s from %s%s" % (
            platform.python_version(), platform.python_implementation(),
            sqlite3.sqlite_version, bench_pool.persistqueue_liteq.__version__,
            os.path.dirname(os.path.dirname(bench_pool.persistqueue_liteq.__file__)),
            bench_pool._git_state()),
        "- Peers: %s" % "; ".join(peers),
        "- Files in %s%s; run %s" % (
            tempfile.gettempdir(), " (%s)" % fs if fs else "",
            datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        "- %d repetitions per figure, contenders interleaved (AB BA); figures are medians "
        "with the min–max of the repetitions; “× fastest” = median / best median of the table"
        % s.repeat,
        "- Command: `python benchmarks/run_all.py%s`" % "".join(" " + a for a in command),
    ]


def single_section(rates, s):
    durable = {label: d for label, _, _, d, _ in SINGLE}
    medians = {k: med(v) for k, v in rates.items()}
    best_all = max(medians.values())
    best_durable = max(v for k, v in medians.items() if durable[k])
    lines = [
        "## 1. Queues, one thread: put + get (+ ack) of a small pickled item",
        "",
        "| contender | one round trip | durable | round trips/s, median (min–max) "
        "| × fastest durable | × fastest | µs per round trip |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for label, _, ok, is_durable, what in SINGLE:
        if not ok:
            lines.append("| %s | %s | %s | %s | — | — | — |" % (
                label, what, "yes" if is_durable else "no", SKIPPED))
            continue
        m = medians[label]
        lines.append("| %s | %s | %s | %s | %s | %s | %.1f |" % (
            label, what, "yes" if is_durable else "no (memory)", _common.rate(rates[label]),
            _x(m, best_durable) if is_durable else "—", _x(m, best_all), 1e6 / m))
    lines += [
        "",
        "%s round trips per run after %d untimed; a dict of 3 ints, pickled.  Durable: "
        "the item is in an SQLite file (WAL, synchronous=NORMAL for all of them but the "
        "rows marked FULL: persist-queue's own default, an fsync per commit) when put "
        "returns.  raw sqlite3 is the least a correct at-least-once queue does (no "
        "AUTOINCREMENT, one index, a lease of one row, an ack by id and lease token); the "
        "row below it runs the engine's own statements on the engine's tables.  "
        "persist-queue SQLiteQueue, litequeue and diskcache do not give an item "
        "back if its consumer dies (at most once); the others do (at least once)."
        % (_fmt(s.st_ops), WARMUP),
    ]
    return lines


def _scaling_row(kind, label, count_text, outcomes, best):
    rates = [o.rate for o in outcomes]
    m = med(rates)
    dups = sum(o.duplicates for o in outcomes)
    lost = sum(o.lost for o in outcomes)
    errors = sum(len(o.errors) for o in outcomes)
    return "| %s | %s | %s | %s | %d | %d | %d | %d | %d |" % (
        label, count_text, _common.rate(rates), _x(m, best),
        sum(o.produced for o in outcomes), sum(o.delivered for o in outcomes), dups, lost,
        errors)


def scaling_section(results, s):
    lines = [
        "## 2. Scaling: items/s against threads and processes",
        "",
        "| queue | threads / processes | items/s, median (min–max) | × fastest at this count "
        "| produced | delivered | duplicates | lost | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for mode, counts in (("threads", THREADS), ("processes", PROCESS_PAIRS)):
        for count in counts:
            keys = [k for k in results if k[0] == mode and k[2] == count]
            best = max(med([o.rate for o in results[k]]) for k in keys)
            for key in keys:
                if mode == "threads":
                    text = "1 thread (puts, then gets)" if count == 1 else \
                        "%d threads (%d+%d)" % (count, count // 2, count // 2)
                else:
                    text = "%d+%d processes" % (count, count)
                lines.append(_scaling_row(key[1], key[1], text, results[key], best))
                seen = []
                for o in results[key]:
                    seen += [e for e in o.errors if e not in seen]
                for e in seen[:2]:
                    notes.append("- %s, %s: %s" % (key[1], text, e.replace("\n", " ")[:300]))
    if not PQ:
        lines.append("| persist-queue SQLiteAckQueue | threads, processes | %s | — | — | — | — "
                     "| — | — |" % SKIPPED)
    lines += [
        "",
        "Items per run: %s with threads, %s with processes (persist-queue across "
        "processes: %s); produced, delivered, duplicates, lost and errors are summed over "
        "the %d repetitions.  Items/s: unique items delivered per second from the start to "
        "the last acknowledgement.  persist-queue runs at its default synchronous (FULL "
        "in this SQLite build), as it ships.  persist-queue's blocking get across processes waits "
        "on an event that only a put in its own process sets, and otherwise looks at the "
        "file every 10 s: its blocking row measures that wait; the polled row "
        "(get(block=False) every 1 ms) measures its storage."
        % (_fmt(s.scale_items), _fmt(s.scale_items_mp), _fmt(s.scale_items_mp_pq), s.repeat),
    ]
    if notes:
        lines += ["", "Errors:", ""] + notes
    return lines


def latency_section(results, s):
    lines = [
        "## 3. Latency from a put in one process to a blocking get in another, ms",
        "",
        "| queue | p50 | p90 | p99 | samples |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind, reps in results.items():
        if not reps:
            lines.append("| %s | failed | | | |" % kind)
            continue
        cells = []
        for i in range(3):
            values = [rep[i] for rep in reps]
            cells.append("%s (%s–%s)" % (_ms(med(values)), _ms(min(values)), _ms(max(values))))
        lines.append("| %s | %s | %s | %s | %d |" % (kind, *cells, sum(r[3] for r in reps)))
    if not PQ:
        lines.append("| persist-queue SQLiteAckQueue | %s | | | |" % SKIPPED)
    lines += [
        "",
        "Each cell: the median over %d repetitions of that percentile in one repetition "
        "(%d samples each; persist-queue's blocking get: %d, each about 10 s), with the "
        "min–max.  Latency: the getter's time.time() when get returns minus the putter's "
        "just before put; the getter waits since 3 ms." % (
            s.repeat, s.latency_rounds, s.latency_rounds_pq_block),
    ]
    return lines


def sync_section(results, s):
    lines = [
        "## 4. Durability: synchronous=FULL against NORMAL, operations/s",
        "",
        "| operation | NORMAL, median (min–max) | × fastest | FULL, median (min–max) "
        "| × fastest | FULL costs (NORMAL ÷ FULL) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for operation in ("put", "round trip"):
        best = {sync: max(med(results[(operation, who, sync)])
                          for who in ("raw sqlite3", "LiteQueue"))
                for sync in ("NORMAL", "FULL")}
        for who in ("raw sqlite3", "LiteQueue"):
            normal, full = results[(operation, who, "NORMAL")], results[(operation, who, "FULL")]
            lines.append("| %s, %s | %s | %s | %s | %s | %.1f× |" % (
                who, operation, _common.rate(normal), _x(med(normal), best["NORMAL"]),
                _common.rate(full), _x(med(full), best["FULL"]), med(normal) / med(full)))
    lines += [
        "",
        "Put: 100 bytes, one commit.  Round trip: put, pop (lease), ack: three commits "
        "(raw sqlite3: INSERT, UPDATE … RETURNING, DELETE).  %s operations per run under "
        "NORMAL, %s under FULL, each run from an empty WAL." % (
            _fmt(s.sync_ops), _fmt(s.sync_ops_full)),
    ]
    return lines


def _store_note():
    """How the measured PersistentProcessPoolExecutor stores a submit."""
    batch = getattr(sys.modules["persistqueue_liteq.pool._shared"], "_STORE_BATCH", None)
    if batch:
        return ("; PersistentProcessPoolExecutor's submit returns before the call is "
                "stored, and a background thread stores the calls, up to {:,} to a "
                "transaction".format(batch))
    return ", and so does PersistentProcessPoolExecutor's submit"


def pool_section(results, found, skipped, s):
    submit, mapped = results["submit"], results["map"]
    best_submit = max(med(v) for v in submit.values())
    best_map = max(med(v) for v in mapped.values())
    lines = [
        "## 5. Pools, 2 workers, a trivial task",
        "",
        "| pool | submit + result, tasks/s (min–max) | × fastest | map chunksize=100, "
        "items/s (min–max) | × fastest |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in found:
        label = "%s [%s]" % (c.label, c.version)
        m = mapped.get(c.label)
        lines.append("| %s | %s | %s | %s | %s |" % (
            label, _common.rate(submit[c.label]), _x(med(submit[c.label]), best_submit),
            _common.rate(m) if m else "n/a (no chunked map)",
            _x(med(m), best_map) if m else "—"))
    for name in skipped:
        lines.append("| %s | %s | — | — | — |" % (name.split(" ")[0], SKIPPED))
    lines += [
        "",
        "%s tasks through submit, then .result() on each; map over %s inputs.  Process "
        "pools with the forkserver context; huey's consumer in a subprocess with 2 forked "
        "worker processes, its SQLite file at synchronous=NORMAL.  ProcessPoolExecutor, "
        "loky and pebble keep their tasks in memory; huey stores each call when it is "
        "enqueued%s." % (
            _fmt(s.pool_tasks), _fmt(s.pool_map_items), _store_note()),
    ]
    return lines


# -- chart --------------------------------------------------------------------------------------


def _errbars(values_list):
    meds = [med(v) for v in values_list]
    lo = [m - min(v) for m, v in zip(meds, values_list)]
    hi = [max(v) - m for m, v in zip(meds, values_list)]
    return meds, [lo, hi]


def write_chart(path, single, scaling, latency, sync, pools, found, title):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:
        log("no chart: matplotlib does not import (%s)" % exc)
        return False
    ours = {"PersistentQueue", "LiteQueue", bench_pool.PERSISTENT}
    fig, axes = plt.subplots(2, 3, figsize=(18, 10.5))
    fig.suptitle(title, fontsize=11)

    # 1. single thread
    ax = axes[0][0]
    labels = [label for label, *_ in SINGLE if label in single]
    meds, err = _errbars([single[k] for k in labels])
    durable = {label: d for label, _, _, d, _ in SINGLE}
    colors = ["tab:red" if k in ours else ("tab:blue" if durable[k] else "tab:gray")
              for k in labels]
    ax.barh(range(len(labels)), meds, xerr=err, color=colors, capsize=3)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(right=max(max(single[k]) for k in labels) * 4)
    ax.set_xlabel("round trips/s (log scale; bar: median, whiskers: min–max)")
    ax.set_title("1. One thread: put + get (+ ack)\n(red: this package, gray: in memory)",
                 fontsize=10)
    for i, k in enumerate(labels):
        ax.text(max(single[k]) * 1.08, i, _fmt(meds[i]), va="center", fontsize=7)

    # 2. scaling
    for ax, mode, counts, xlabel in (
            (axes[0][1], "threads", THREADS, "threads (1: puts then gets; else half producers)"),
            (axes[0][2], "processes", PROCESS_PAIRS, "producer + consumer processes (n + n)")):
        kinds = []
        for key in scaling:
            if key[0] == mode and key[1] not in kinds:
                kinds.append(key[1])
        for kind in kinds:
            values = [[o.rate for o in scaling[(mode, kind, c)]] for c in counts]
            meds, err = _errbars(values)
            dups = sum(o.duplicates for c in counts for o in scaling[(mode, kind, c)])
            label = kind + (" (%d duplicates)" % dups if mode == "processes" else "")
            ax.errorbar(counts, meds, yerr=err, marker="o", capsize=3, label=label,
                        color="tab:red" if kind == "PersistentQueue" else None)
        ax.set_xticks(counts, [str(c) if mode == "threads" else "%d+%d" % (c, c)
                               for c in counts])
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("items/s (log scale)")
        ax.set_title("2. Throughput against %s (one file)" % mode, fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)

    # 3. latency
    ax = axes[1][0]
    kinds = [k for k, reps in latency.items() if reps]
    width = 0.27
    for i, (name, color) in enumerate((("p50", "tab:green"), ("p90", "tab:orange"),
                                       ("p99", "tab:purple"))):
        values = [[rep[i] * 1e3 for rep in latency[k]] for k in kinds]
        meds, err = _errbars(values)
        ax.bar([x + (i - 1) * width for x in range(len(kinds))], meds, width, yerr=err,
               capsize=2, label=name, color=color)
    short = {"multiprocessing.Queue": "multiprocessing\n.Queue", PQ_BLOCK: "persist-queue\n"
             "blocking get", PQ_POLLED: "persist-queue\nget polled 1 ms"}
    ax.set_xticks(range(len(kinds)), [short.get(k, k) for k in kinds], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("ms (log scale)")
    ax.set_title("3. Put in one process → blocking get in another", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", which="both", alpha=0.3)

    # 4. FULL against NORMAL
    ax = axes[1][1]
    groups = [(op, who) for op in ("put", "round trip") for who in ("raw sqlite3", "LiteQueue")]
    for i, (level, color) in enumerate((("NORMAL", "tab:blue"), ("FULL", "tab:brown"))):
        meds, err = _errbars([sync[(op, who, level)] for op, who in groups])
        ax.bar([x + (i - 0.5) * 0.4 for x in range(len(groups))], meds, 0.4, yerr=err,
               capsize=3, label="synchronous=%s" % level, color=color)
    ax.set_xticks(range(len(groups)), ["%s\n%s" % (who, op) for op, who in groups], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("operations/s (log scale)")
    ax.set_title("4. Durability: FULL (fsync per commit) against NORMAL", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", which="both", alpha=0.3)

    # 5. pools
    ax = axes[1][2]
    labels = [c.label for c in found]
    y = range(len(labels))
    meds, err = _errbars([pools["submit"][k] for k in labels])
    ax.barh([i - 0.2 for i in y], meds, 0.4, xerr=err, capsize=3, color="tab:cyan",
            label="submit + result, tasks/s")
    present = [k for k in labels if k in pools["map"]]
    meds_m, err_m = _errbars([pools["map"][k] for k in present])
    ax.barh([labels.index(k) + 0.2 for k in present], meds_m, 0.4, xerr=err_m, capsize=3,
            color="tab:olive", label="map chunksize=100, items/s")
    ax.set_yticks(list(y), [k.replace(" (", "\n(") for k in labels], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("per second (log scale)")
    ax.set_title("5. Pools, 2 workers, a trivial task", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(True, axis="x", which="both", alpha=0.3)

    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# -- main ---------------------------------------------------------------------------------------


def main(argv=None):
    parser = _common.arguments(__doc__, "small sizes (under ~3 minutes)",
                               "repetitions per figure (default 5)")
    parser.add_argument("--out", metavar="DIR", default=os.path.join(HERE, "results"),
                        help="where results.md and chart.png go (default: benchmarks/results)")
    args = parser.parse_args(argv)
    s = _common.settings(parser, args, Settings(), QUICK)
    os.makedirs(args.out, exist_ok=True)

    found, pool_skipped = pool_contenders()
    for label, _, ok, _, _ in SINGLE:
        if not ok:
            log("skipped (not installed): %s" % label)
    for name in pool_skipped:
        log("skipped: %s" % name)
    root = tempfile.mkdtemp(prefix="bench_all-")
    try:
        head = header(root, s, [a for a in (argv if argv is not None else sys.argv[1:])])
        single = measure_single(root, s)
        scaling = measure_scaling(root, s)
        latency = measure_latency(root, s)
        sync = measure_sync(root, s)
        pools = measure_pools(root, s, found)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    elapsed = time.monotonic() - _STARTED
    lines = head + [""]
    lines += single_section(single, s) + [""]
    lines += scaling_section(scaling, s) + [""]
    lines += latency_section(latency, s) + [""]
    lines += sync_section(sync, s) + [""]
    lines += pool_section(pools, found, pool_skipped, s) + [""]
    lines += ["_Total benchmark time: %.0f s._" % elapsed]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as out:
        out.write(text)
    title = "persistqueue_liteq beside its peers: %s, %s CPUs, Python %s, SQLite %s (%s)" % (
        _common.cpu_model(), os.cpu_count(), platform.python_version(), sqlite3.sqlite_version,
        datetime.now(timezone.utc).strftime("%Y-%m-%d"))
    chart = os.path.join(args.out, "chart.png")
    if write_chart(chart, single, scaling, latency, sync, pools, found, title):
        log("wrote %s" % chart)
    log("wrote %s" % os.path.join(args.out, "results.md"))
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
