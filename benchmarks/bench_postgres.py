#!/usr/bin/env python3
"""LiteQueue on PostgreSQL beside raw psycopg 3 running a minimal at-least-once
loop, and raw psycopg 3 running the engine's own statements, on the same
server, in one run.

Each contender works in a schema of its own (``bench_pg_<pid>_<n>``, made for
the run and dropped at its end).  The raw side is one table::

    t (id bigserial PRIMARY KEY, queue text, data bytea, visible_at timestamptz
       DEFAULT now(), lease bigint, attempts int DEFAULT 0), index (queue, id)

and one autocommit connection: every statement below is its own committed
transaction (as each of the engine's operations is), one round trip each:

    put         INSERT INTO t (queue, data) VALUES (%s, %s) RETURNING id
    lease       UPDATE t SET lease = %s, visible_at = now() + interval '60 s',
                attempts = attempts + 1 WHERE id = (SELECT id FROM t WHERE
                queue = %s AND visible_at <= now() ORDER BY id FOR UPDATE SKIP
                LOCKED LIMIT 1) RETURNING id, data, attempts
    ack         DELETE FROM t WHERE id = %s AND lease = %s
    put_batch   INSERT INTO t (queue, data) SELECT %s, unnest(%s::bytea[])
                RETURNING id
    lease 100   the lease with ``id IN (SELECT ... LIMIT 100)``
    ack 100     DELETE FROM t WHERE id = ANY(%s) AND lease = %s

Messages are 100 bytes.  Measurements (msgs/s unless said):

1. **put**, 1 and 4 processes: LiteQueue.put beside the INSERT.
2. **lease + ack of one message**, 1 and 4 processes, on a queue filled
   beforehand (untimed): LiteQueue.pop + ack beside the UPDATE and DELETE.
3. **put_batch of 1000**, 1 process: LiteQueue.put_batch beside the INSERT ...
   SELECT unnest.
4. **lease 100 + ack 100**, 1 and 4 processes, pre-filled: LiteQueue.pop_batch
   (max_messages=100) + ack_batch beside the batched UPDATE and DELETE.
5. **pool**: PersistentProcessPoolExecutor(location, max_workers=2)
   (forkserver), N trivial tasks submitted, then every ``result()``, tasks/s,
   on PostgreSQL and, for reference, on an SQLite file.
6. **wake-up latency across processes**: this process blocks in
   LiteQueue.pop(wait_seconds=30); a producer process, told it is waiting
   (and 5 ms later, so that it is inside its wait), puts a message holding
   ``time.monotonic()`` (one clock for every process on Linux) taken as the
   put starts; the latency is from then until pop returns.  p50 and p99.

Every worker is a forked process with its own connection (or LiteQueue
object), warmed up with a few operations; all of them wait at one barrier,
and the time runs from the first to pass it to the last to finish.  The
contenders take turns within every repetition, the order alternating; the
report gives the median with the min-max over repetitions.

The third contender (RawStatements) runs, on psycopg alone, the statements
the engine runs (its ``sql``: the INSERT that registers the queue, the FIFO
lease from a floor, the ack by id, lease and queue; for put_batch its ids
first, then the INSERT of them all), each one autocommit statement that
psycopg prepares: the cost of those statements without the engine's
transactions, NOTIFY, lock_timeout and Python.  Floors: the
engine at 0.75x raw psycopg running the same statements or more on each row
of 1-4 (also reported against the minimal loop); batched lease + ack
at 15k msgs/s or more; put_batch at 40k msgs/s or more; wake-up p50 under
5 ms and p99 under 25 ms.  It never asserts: it is not a test.  The load
average at the start and end is in the report (the machine may be shared).

Usage::

    python benchmarks/bench_postgres.py [--quick] [--repeat R] [--output FILE]
        [--url postgresql://root@127.0.0.1:5432/test]
"""

import dataclasses
import multiprocessing
import os
import shutil
import statistics
import struct
import sys
import tempfile
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psycopg  # noqa: E402

import _common  # noqa: E402

from persistqueue_liteq import LiteQueue, PersistentProcessPoolExecutor  # noqa: E402

DEFAULT_URL = os.environ.get("PERSISTQUEUE_LITEQ_TEST_POSTGRES",
                             "postgresql://root@127.0.0.1:5432/test")
RATIO_FLOOR = 0.75  # engine / raw psycopg, rows 1-4
BATCH_LEASE_FLOOR = 15_000  # msgs/s, lease 100 + ack 100
PUT_BATCH_FLOOR = 40_000  # msgs/s
WAKE_P50_FLOOR = 0.005  # s
WAKE_P99_FLOOR = 0.025  # s
WARMUP = 20
BATCH = 1000  # put_batch
LEASE_BATCH = 100
QUEUE = "bench"
DATA = bytes(range(100))


@dataclasses.dataclass
class Settings:
    ops: int = 1500  # rows 1, 2: operations in all, shared by the processes
    batches: int = 20  # row 3: put_batch calls of 1000
    lease_batches: int = 40  # row 4: batches of 100 in all
    pool_tasks: int = 20_000  # row 5
    wake_samples: int = 200  # row 6, per repetition
    repeat: int = 5


QUICK = Settings(ops=400, batches=4, lease_batches=8, pool_tasks=2000, wake_samples=50,
                 repeat=2)


def log(text):
    print(text, file=sys.stderr, flush=True)


# -- schemas ------------------------------------------------------------------------

_schemas = []


def new_schema(url):
    """A fresh schema name for one contender of one measurement (dropped at the end)."""
    name = "bench_pg_%d_%d" % (os.getpid(), len(_schemas))
    _schemas.append(name)
    return name


def drop_schemas(url):
    with psycopg.connect(url, autocommit=True) as conn:
        for name in _schemas:
            conn.execute("DROP SCHEMA IF EXISTS %s CASCADE" % name)


def liteq_url(url, schema):
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query) + [("schema", schema)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


# -- the two contenders ---------------------------------------------------------------


class Engine:
    """LiteQueue in ``schema``."""

    label = "LiteQueue (engine)"

    def __init__(self, url, schema):
        self.location = liteq_url(url, schema)
        LiteQueue(self.location).close()  # the schema and tables, before the workers

    def open(self):
        return LiteQueue(self.location)

    @staticmethod
    def close(q):
        q.close()

    @staticmethod
    def put(q):
        q.put(DATA, QUEUE)

    @staticmethod
    def put_batch(q, payloads):
        q.put_batch(payloads, QUEUE)

    @staticmethod
    def lease_ack(q):
        msg = q.pop(QUEUE, invisible_seconds=60)
        if msg is None:
            raise RuntimeError("the pre-filled queue ran dry")
        q.ack(msg)

    @staticmethod
    def lease_ack_batch(q):
        msgs = q.pop_batch(QUEUE, max_messages=LEASE_BATCH, invisible_seconds=60)
        if len(msgs) != LEASE_BATCH:
            raise RuntimeError("the pre-filled queue ran dry")
        if q.ack_batch(msgs) != LEASE_BATCH:
            raise RuntimeError("a batch ack lost its leases")


RAW_TABLE = """CREATE TABLE {s}.t (id bigserial PRIMARY KEY, queue text NOT NULL,
    data bytea NOT NULL, visible_at timestamptz NOT NULL DEFAULT now(), lease bigint,
    attempts int NOT NULL DEFAULT 0)"""
RAW_INDEX = "CREATE INDEX ON {s}.t (queue, id)"
RAW_PUT = "INSERT INTO {s}.t (queue, data) VALUES (%s, %s) RETURNING id"
RAW_PUT_BATCH = "INSERT INTO {s}.t (queue, data) SELECT %s, unnest(%s::bytea[]) RETURNING id"
RAW_LEASE = """UPDATE {s}.t SET lease = %s, visible_at = now() + interval '60 seconds',
    attempts = attempts + 1
 WHERE id = (SELECT id FROM {s}.t WHERE queue = %s AND visible_at <= now()
              ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1)
RETURNING id, data, attempts"""
RAW_LEASE_N = """UPDATE {s}.t SET lease = %s, visible_at = now() + interval '60 seconds',
    attempts = attempts + 1
 WHERE id IN (SELECT id FROM {s}.t WHERE queue = %s AND visible_at <= now()
              ORDER BY id FOR UPDATE SKIP LOCKED LIMIT %s)
RETURNING id, data, attempts"""
RAW_ACK = "DELETE FROM {s}.t WHERE id = %s AND lease = %s"
RAW_ACK_N = "DELETE FROM {s}.t WHERE id = ANY(%s) AND lease = %s"


class Raw:
    """The minimal at-least-once loop on psycopg 3, autocommit, in ``schema``."""

    label = "raw psycopg 3"

    def __init__(self, url, schema):
        self.url = url
        self.sql = {name: text.format(s=schema) for name, text in (
            ("put", RAW_PUT), ("put_batch", RAW_PUT_BATCH), ("lease", RAW_LEASE),
            ("lease_n", RAW_LEASE_N), ("ack", RAW_ACK), ("ack_n", RAW_ACK_N))}
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA %s" % schema)
            conn.execute(RAW_TABLE.format(s=schema))
            conn.execute(RAW_INDEX.format(s=schema))

    def open(self):
        conn = psycopg.connect(self.url, autocommit=True)
        conn.sql = self.sql
        conn.token = os.getpid() << 32
        return conn

    @staticmethod
    def close(conn):
        conn.close()

    @staticmethod
    def put(conn):
        conn.execute(conn.sql["put"], (QUEUE, DATA)).fetchone()

    @staticmethod
    def put_batch(conn, payloads):
        conn.execute(conn.sql["put_batch"], (QUEUE, payloads)).fetchall()

    @staticmethod
    def _token(conn):
        conn.token += 1
        return conn.token

    @classmethod
    def lease_ack(cls, conn):
        token = cls._token(conn)
        row = conn.execute(conn.sql["lease"], (token, QUEUE)).fetchone()
        if row is None:
            raise RuntimeError("the pre-filled queue ran dry")
        conn.execute(conn.sql["ack"], (row[0], token))

    @classmethod
    def lease_ack_batch(cls, conn):
        token = cls._token(conn)
        rows = conn.execute(conn.sql["lease_n"], (token, QUEUE, LEASE_BATCH)).fetchall()
        if len(rows) != LEASE_BATCH:
            raise RuntimeError("the pre-filled queue ran dry")
        done = conn.execute(conn.sql["ack_n"], ([r[0] for r in rows], token)).rowcount
        if done != LEASE_BATCH:
            raise RuntimeError("a batch ack lost its leases")


class RawStatements(Raw):
    """Raw psycopg 3 running the engine's own statements (its ``sql``, for a
    LiteQueue in ``schema``), autocommit, each prepared by psycopg: what
    the engine sends, without its NOTIFY, its lock_timeout, its one-query
    transactions or its Python.  The FIFO lease goes from a floor, as the
    engine's does."""

    label = "raw psycopg 3, the engine's statements"

    def __init__(self, url, schema):
        self.url = url
        q = LiteQueue(liteq_url(url, schema))
        sql = q.engine.sql
        q.close()
        self.sql = {"put": sql.INSERT, "next_ids": sql.NEXT_IDS, "put_many": sql.INSERT_MANY,
                    "lease": sql.LEASE_FIFO, "lease_from": sql.LEASE_FIFO_FROM,
                    "ack": sql.ACK_IN_QUEUE, "ack_n": sql.ACK_MANY}

    def open(self):
        conn = super().open()
        conn.floor = None
        return conn

    @staticmethod
    def put(conn):
        now = time.time()
        conn.execute(conn.sql["put"], (QUEUE, DATA, None, now, now, None)).fetchone()

    @staticmethod
    def put_batch(conn, payloads):
        now = time.time()
        ids = [i for (i,) in conn.execute(conn.sql["next_ids"], (len(payloads),))]
        conn.execute(conn.sql["put_many"], (QUEUE, now, now, None, ids, payloads)).fetchall()

    @classmethod
    def _lease(cls, conn, n):
        now = time.time()
        token = cls._token(conn)
        params = {"queue": QUEUE, "now": now, "until": now + 60, "lease": token, "n": n,
                  "holder": None, "floor": conn.floor}
        rows = conn.execute(conn.sql["lease" if conn.floor is None else "lease_from"],
                            params).fetchall()
        if len(rows) != n:
            raise RuntimeError("the pre-filled queue ran dry")
        conn.floor = max(row[9] for row in rows) - 0.05
        return token, rows

    @classmethod
    def lease_ack(cls, conn):
        token, [row] = cls._lease(conn, 1)
        conn.execute(conn.sql["ack"], (row[0], token, QUEUE))

    @classmethod
    def lease_ack_batch(cls, conn):
        token, rows = cls._lease(conn, LEASE_BATCH)
        done = conn.execute(conn.sql["ack_n"], ([r[0] for r in rows],
                                                [token] * len(rows))).rowcount
        if done != LEASE_BATCH:
            raise RuntimeError("a batch ack lost its leases")


SIDES = (Engine, Raw, RawStatements)


# -- processes at a barrier ------------------------------------------------------------


def _worker(side, op, count, warmup, barrier, out):
    """Open, warm up, wait at the barrier, run ``op`` ``count`` times, report
    (start, end) or the error."""
    try:
        handle = side.open()
        run = getattr(side, op)
        for _ in range(warmup):
            run(handle)
        barrier.wait()
        started = time.monotonic()
        for _ in range(count):
            run(handle)
        out.send((started, time.monotonic()))
        side.close(handle)
    except BaseException as exc:  # reported to the parent, never hidden
        barrier.abort()
        out.send(repr(exc))
    finally:
        out.close()


def timed_processes(ctx, side, op, procs, count, warmup=WARMUP):
    """Seconds from the barrier to the last of ``procs`` forked workers done,
    each running ``op`` ``count // procs`` times."""
    barrier = ctx.Barrier(procs)
    pipes, children = [], []
    for _ in range(procs):
        ours, theirs = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_worker,
                            args=(side, op, count // procs, warmup, barrier, theirs))
        child.start()
        theirs.close()
        pipes.append(ours)
        children.append(child)
    reports = [p.recv() for p in pipes]
    for child in children:
        child.join()
    errors = [r for r in reports if isinstance(r, str)]
    if errors:
        raise RuntimeError("a worker failed: %s" % errors[0])
    return max(end for _, end in reports) - min(start for start, _ in reports)


def fill(side, n):
    """Put ``n`` messages (untimed), in batches of 1000."""
    handle = side.open()
    try:
        for start in range(0, n, BATCH):
            side.put_batch(handle, [DATA] * min(BATCH, n - start))
    finally:
        side.close(handle)


# -- rows 1-4 ---------------------------------------------------------------------------


def row_put(ctx, url, cls, procs, s):
    side = cls(url, new_schema(url))
    return s.ops / timed_processes(ctx, side, "put", procs, s.ops)


def row_lease_ack(ctx, url, cls, procs, s):
    side = cls(url, new_schema(url))
    fill(side, s.ops + procs * WARMUP + 100)
    return s.ops / timed_processes(ctx, side, "lease_ack", procs, s.ops)


def row_put_batch(ctx, url, cls, procs, s):
    side = cls(url, new_schema(url))
    side.put_batch_of = [DATA] * BATCH
    return s.batches * BATCH / timed_processes(ctx, _Batched(side), "put_batch", procs,
                                               s.batches, warmup=2)


class _Batched:
    """``side`` with put_batch of 1000 messages as a one-argument op."""

    def __init__(self, side):
        self.side = side

    def open(self):
        return self.side.open()

    def close(self, handle):
        self.side.close(handle)

    def put_batch(self, handle):
        self.side.put_batch(handle, self.side.put_batch_of)


def row_lease_batch(ctx, url, cls, procs, s):
    side = cls(url, new_schema(url))
    batches = s.lease_batches - s.lease_batches % procs
    fill(side, (batches + procs * 2) * LEASE_BATCH + 100)
    return batches * LEASE_BATCH / timed_processes(ctx, side, "lease_ack_batch", procs,
                                                   batches, warmup=2)


ROWS = [  # (key, title, function, processes)
    ("put1", "put, 1 process", row_put, 1),
    ("put4", "put, 4 processes", row_put, 4),
    ("la1", "lease + ack, 1 process", row_lease_ack, 1),
    ("la4", "lease + ack, 4 processes", row_lease_ack, 4),
    ("pb1", "put_batch(1000), 1 process", row_put_batch, 1),
    ("lb1", "lease 100 + ack 100, 1 process", row_lease_batch, 1),
    ("lb4", "lease 100 + ack 100, 4 processes", row_lease_batch, 4),
]


# -- row 5: the pool ----------------------------------------------------------------------


def noop(x):
    return x


def _warm_task(i):
    return os.getpid()


def pool_rate(location, n, workers=2):
    ctx = multiprocessing.get_context("forkserver")
    pool = PersistentProcessPoolExecutor(location, max_workers=workers, mp_context=ctx)
    try:
        deadline = time.monotonic() + 60
        pids = set()
        while len(pids) < workers and time.monotonic() < deadline:
            pids.update(f.result() for f in [pool.submit(_warm_task, i)
                                             for i in range(2 * workers)])
        for f in [pool.submit(noop, i) for i in range(20)]:
            f.result()
        started = time.perf_counter()
        futures = [pool.submit(noop, i) for i in range(n)]
        for f in futures:
            f.result()
        return n / (time.perf_counter() - started)
    finally:
        pool.shutdown()
        engine = getattr(pool, "_engine", None)
        if engine is not None:
            engine.close()


def pool_postgres(url, directory, n):
    return pool_rate(liteq_url(url, new_schema(url)), n)


def pool_sqlite(url, directory, n):
    return pool_rate(os.path.join(directory, "pool.sqlite"), n)


# -- row 6: wake-up latency -------------------------------------------------------------


def _producer(location, samples, ready):
    q = LiteQueue(location)
    q.put(struct.pack("d", time.monotonic()), "warm")
    for _ in range(samples):
        ready.wait()  # the consumer is about to block in pop
        ready.clear()
        time.sleep(0.005)  # inside its wait by now
        q.put(struct.pack("d", time.monotonic()), QUEUE)
    q.close()


def wake_latencies(ctx, url, samples):
    location = liteq_url(url, new_schema(url))
    q = LiteQueue(location)
    ready = ctx.Event()
    child = ctx.Process(target=_producer, args=(location, samples, ready))
    child.start()
    latencies = []
    try:
        q.ack(q.pop("warm", wait_seconds=30))
        for _ in range(samples):
            ready.set()
            msg = q.pop(QUEUE, wait_seconds=30)
            now = time.monotonic()
            if msg is None:
                raise RuntimeError("no wake-up within 30 s")
            latencies.append(now - struct.unpack("d", msg.data)[0])
            q.ack(msg)
    finally:
        child.join()
        q.close()
    return latencies


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


# -- the run -------------------------------------------------------------------------------


def server_settings(url):
    """The server's version and the settings that bound a commit's cost."""
    with psycopg.connect(url) as conn:
        shown = [conn.execute("SHOW %s" % name).fetchone()[0] for name in (
            "server_version", "synchronous_commit", "fsync", "wal_sync_method")]
    return "PostgreSQL %s (synchronous_commit=%s, fsync=%s, wal_sync_method=%s)" % tuple(shown)


def attempt(fn, *args, tries=3):
    """``fn(*args)``, run again (up to ``tries`` in all) if it raised: a shared
    server's other clients may end our connections (pg_terminate_backend in
    another checkout's tests); every retry is logged and counted."""
    for n in range(tries):
        try:
            return fn(*args)
        except Exception as exc:
            if n == tries - 1:
                raise
            _retries.append(repr(exc))
            log("retrying after %r" % (exc,))


_retries = []


def measure(ctx, url, s):
    rates = {(key, cls.label): [] for key, *_ in ROWS for cls in SIDES}
    pools = {"PostgreSQL": [], "SQLite file": []}
    wakes = []
    root = tempfile.mkdtemp(prefix="bench_postgres-")
    try:
        for r in range(s.repeat):
            sides = SIDES[r % len(SIDES):] + SIDES[:r % len(SIDES)]
            for key, title, fn, procs in ROWS:
                for cls in sides:
                    rates[key, cls.label].append(attempt(fn, ctx, url, cls, procs, s))
                    log("rep %d %s, %s: %.0f msgs/s" % (r, title, cls.label,
                                                          rates[key, cls.label][-1]))
            for label, fn in (("PostgreSQL", pool_postgres),
                              ("SQLite file", pool_sqlite))[::1 if r % 2 == 0 else -1]:
                pools[label].append(attempt(fn, url, tempfile.mkdtemp(dir=root),
                                            s.pool_tasks))
                log("rep %d pool on %s: %.0f tasks/s" % (r, label, pools[label][-1]))
            wakes.append(attempt(wake_latencies, ctx, url, s.wake_samples))
            log("rep %d wake-up p50 %.2f ms" % (r, 1000 * percentile(wakes[-1], 50)))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return rates, pools, wakes


def report(url, s, rates, pools, wakes, load_start, load_end, elapsed):
    lines = [
        "# bench_postgres: %s" % time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "",
        _common.machine(),
        "- Python %s; psycopg %s; %s at %s" % (
            sys.version.split()[0], psycopg.__version__, server_settings(url),
            url.split("@")[-1]),
        "- Load average (1, 5, 15 min): %.2f %.2f %.2f at the start, %.2f %.2f %.2f at the end"
        % (load_start + load_end),
        "- Settings: %s; %.0f s" % (s, elapsed),
        "- Measurements run again after an error (another client ending our "
        "connections): %d%s" % (len(_retries), "".join("; " + e for e in _retries[:3])),
        "",
        "## 1-4. LiteQueue beside raw psycopg 3 (msgs/s, median (min-max) of %d)" % s.repeat,
        "",
        "Raw psycopg 3 runs the minimal loop of this module's docstring, and the "
        "engine's own statements (each one autocommit statement, prepared).",
        "",
        "| row | LiteQueue (engine) | raw, minimal loop | engine / minimal "
        "| raw, the engine's statements | engine / same statements "
        "| extra us/msg over the same statements |",
        "|---|---|---|---|---|---|---|",
    ]
    ratios = {}
    for key, title, _, _ in ROWS:
        mine = rates[key, Engine.label]
        raw = rates[key, Raw.label]
        same = rates[key, RawStatements.label]
        ratios[key] = statistics.median(mine) / statistics.median(raw)
        ratios[key, "same"] = statistics.median(mine) / statistics.median(same)
        extra = 1e6 / statistics.median(mine) - 1e6 / statistics.median(same)
        lines.append("| %s | %s | %s | %.2fx | %s | %.2fx | %+.0f |" % (
            title, _common.rate(mine), _common.rate(raw), ratios[key], _common.rate(same),
            ratios[key, "same"], extra))
    lines += [
        "",
        "## 5. PersistentProcessPoolExecutor, 2 workers: %s trivial tasks, submit + result"
        % "{:,}".format(s.pool_tasks),
        "",
        "| storage | tasks/s, median (min-max) | x SQLite file |",
        "|---|---|---|",
    ]
    sqlite = statistics.median(pools["SQLite file"])
    for label, values in pools.items():
        lines.append("| %s | %s | %.2fx |" % (label, _common.rate(values),
                                              statistics.median(values) / sqlite))
    p50s = [percentile(w, 50) for w in wakes]
    p99s = [percentile(w, 99) for w in wakes]
    every = [x for w in wakes for x in w]
    lines += [
        "",
        "## 6. Wake-up of a blocked pop(wait_seconds=30) by a put in another process",
        "",
        "| samples | p50 ms, median (min-max) of repetitions | p99 ms, median (min-max) "
        "| p50 / p99 ms of all samples |",
        "|---|---|---|---|",
        "| %d x %d | %s | %s | %.2f / %.2f |" % (
            len(wakes), s.wake_samples, _ms(p50s), _ms(p99s),
            1000 * percentile(every, 50), 1000 * percentile(every, 99)),
        "",
        "## Floors",
        "",
    ]
    for key, title, _, _ in ROWS:
        lines.append("- %s: engine >= %.2fx raw running the same statements: %s (%.2fx)" % (
            title, RATIO_FLOOR, _verdict(ratios[key, "same"] >= RATIO_FLOOR),
            ratios[key, "same"]))
        lines.append("- %s: engine >= %.2fx raw running the minimal loop: %s (%.2fx)" % (
            title, RATIO_FLOOR, _verdict(ratios[key] >= RATIO_FLOOR), ratios[key]))
    for key in ("lb1", "lb4"):
        got = statistics.median(rates[key, Engine.label])
        lines.append("- %s: engine >= %s msgs/s: %s (%s)" % (
            dict((k, t) for k, t, _, _ in ROWS)[key], "{:,}".format(BATCH_LEASE_FLOOR),
            _verdict(got >= BATCH_LEASE_FLOOR), "{:,.0f}".format(got)))
    got = statistics.median(rates["pb1", Engine.label])
    lines.append("- put_batch(1000): engine >= %s msgs/s: %s (%s)" % (
        "{:,}".format(PUT_BATCH_FLOOR), _verdict(got >= PUT_BATCH_FLOOR),
        "{:,.0f}".format(got)))
    p50, p99 = statistics.median(p50s), statistics.median(p99s)
    lines.append("- wake-up p50 < %.0f ms: %s (%.2f ms)" % (
        1000 * WAKE_P50_FLOOR, _verdict(p50 < WAKE_P50_FLOOR), 1000 * p50))
    lines.append("- wake-up p99 < %.0f ms: %s (%.2f ms)" % (
        1000 * WAKE_P99_FLOOR, _verdict(p99 < WAKE_P99_FLOOR), 1000 * p99))
    return "\n".join(lines) + "\n"


def _ms(values):
    return "%.2f (%.2f-%.2f)" % tuple(1000 * x for x in (statistics.median(values),
                                                         min(values), max(values)))


def _verdict(ok):
    return "PASS" if ok else "FAIL"


def main(argv=None):
    parser = _common.arguments(__doc__, "small sizes: a smoke test",
                               "repetitions per measurement (default 5)")
    parser.add_argument("--output", metavar="FILE", help="also write the report to FILE")
    parser.add_argument("--url", default=DEFAULT_URL,
                        help="the PostgreSQL server (default: %(default)s)")
    args = parser.parse_args(argv)
    s = _common.settings(parser, args, Settings(), QUICK)
    ctx = multiprocessing.get_context("fork")
    load_start = os.getloadavg()
    started = time.monotonic()
    try:
        results = measure(ctx, args.url, s)
    finally:
        attempt(drop_schemas, args.url)
    load_end = os.getloadavg()
    _common.emit(report(args.url, s, *results, load_start, load_end,
                        time.monotonic() - started), args.output)


if __name__ == "__main__":
    main()
