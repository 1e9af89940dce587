#!/usr/bin/env python3
"""AsyncPersistentQueue beside PersistentQueue, asyncio.Queue and persist-queue's
async queues, in one run.

Measurements
------------
1. **One task, round trips**: ``await put(item)``, ``await get()``,
   ``task_done()`` of a small picklable item (a dict of 3 ints), items/s,
   ``await join()`` at the end counted in (our ``task_done`` acknowledges on
   the storage thread), for asyncio.Queue (memory, for reference),
   PersistentQueue (sync, the same loop without ``await``),
   PersistentQueue awaited through ``loop.run_in_executor`` on one thread
   (the minimal baseline that keeps SQLite off the loop: three trips to a
   thread and back an item), AsyncPersistentQueue, and persist-queue 1.1's
   AsyncSQLiteQueue (aiosqlite; ``auto_commit=True``) and AsyncQueue
   (files; put, get, task_done), when they import.

   Floors: AsyncPersistentQueue at 0.7x PersistentQueue or more, and ahead of
   persist-queue's async queues.

2. **100 tasks**: 50 producer and 50 consumer tasks on one queue object in one
   loop; N items in all; items/s from the start to the last ``join``, beside
   1 producer and 1 consumer task doing the same.  Floor: 100 tasks not
   below 1 + 1 tasks.

3. **Wake-up latency**: a consumer awaits ``get`` on an empty queue; another
   process puts an item holding ``time.monotonic()`` (one clock for every
   process on Linux) as it starts the put; the latency is from then until
   ``get`` returns, p50 and p99 over the samples.  PersistentQueue's
   blocking ``get`` (in a thread) is measured likewise, for reference.

Every repetition uses fresh files in a fresh temporary directory (TMPDIR
chooses the file system); contenders take turns within every repetition, the
order alternating.  Reported: the median with the min-max over repetitions.

Usage::

    python benchmarks/bench_async.py [--quick] [--repeat R] [--output FILE]
"""

import asyncio
import concurrent.futures
import dataclasses
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _common  # noqa: E402

from persistqueue_liteq import PersistentQueue  # noqa: E402
from persistqueue_liteq.aio import STORAGE_THREADS, AsyncPersistentQueue  # noqa: E402

try:
    from persistqueue.async_sqlqueue import AsyncSQLiteQueue
    from persistqueue.async_queue import AsyncQueue
except ImportError:  # not installed (pip install persist-queue aiosqlite aiofiles)
    AsyncSQLiteQueue = AsyncQueue = None

RT_FLOOR = 0.7  # AsyncPersistentQueue / PersistentQueue, one task
WARMUP = 50


@dataclasses.dataclass
class Settings:
    rt_ops: int = 2000
    tasks_items: int = 4000
    wake_samples: int = 200
    repeat: int = 5


QUICK = Settings(rt_ops=300, tasks_items=500, wake_samples=30, repeat=2)


def log(text):
    print(text, file=sys.stderr, flush=True)


def make_item(i):
    return {"id": i, "p": 0, "i": i}


# -- 1. one task ------------------------------------------------------------------


async def _async_round_trips(q, n, awaited_done=False):
    for i in range(n):
        await q.put(make_item(i))
        await q.get()
        if awaited_done:
            await q.task_done()
        else:
            q.task_done()
    if not awaited_done:
        await q.join()


def rt_memory(directory, n):
    async def run():
        q = asyncio.Queue()
        await _async_round_trips(q, WARMUP)
        started = time.perf_counter()
        await _async_round_trips(q, n)
        return n / (time.perf_counter() - started)

    return asyncio.run(run())


def rt_sync(directory, n):
    q = PersistentQueue(os.path.join(directory, "sync.db"))
    try:
        for i in range(WARMUP):
            q.put(make_item(i)), q.get(), q.task_done()
        started = time.perf_counter()
        put, get, done = q.put, q.get, q.task_done
        for i in range(n):
            put(make_item(i))
            get()
            done()
        return n / (time.perf_counter() - started)
    finally:
        q.close()


def rt_async(directory, n):
    async def run():
        async with AsyncPersistentQueue(os.path.join(directory, "async.db")) as q:
            await _async_round_trips(q, WARMUP)
            started = time.perf_counter()
            await _async_round_trips(q, n)
            return n / (time.perf_counter() - started)

    return asyncio.run(run())


def rt_executor(directory, n):
    """The minimal baseline that keeps SQLite off the loop: PersistentQueue's
    put, get and task_done each awaited through ``loop.run_in_executor`` on
    one thread (three trips to the thread and back an item)."""
    async def run():
        q = PersistentQueue(os.path.join(directory, "executor.db"))
        pool = concurrent.futures.ThreadPoolExecutor(1)
        loop = asyncio.get_running_loop()

        async def round_trips(count):
            for i in range(count):
                await loop.run_in_executor(pool, q.put, make_item(i))
                await loop.run_in_executor(pool, q.get)
                await loop.run_in_executor(pool, q.task_done)

        try:
            await round_trips(WARMUP)
            started = time.perf_counter()
            await round_trips(n)
            return n / (time.perf_counter() - started)
        finally:
            await loop.run_in_executor(pool, q.close)
            pool.shutdown()

    return asyncio.run(run())


def rt_pq_sql(directory, n):
    async def run():
        q = AsyncSQLiteQueue(os.path.join(directory, "pq-sql.db"), auto_commit=True)
        try:
            await _async_round_trips(q, WARMUP, awaited_done=True)
            started = time.perf_counter()
            await _async_round_trips(q, n, awaited_done=True)
            return n / (time.perf_counter() - started)
        finally:
            await q._conn.close()

    return asyncio.run(run())


def rt_pq_files(directory, n):
    async def run():
        q = AsyncQueue(os.path.join(directory, "pq-files"))
        try:
            await _async_round_trips(q, WARMUP, awaited_done=True)
            started = time.perf_counter()
            for i in range(n):
                await q.put(make_item(i))
                await q.get()
                await q.task_done()
            return n / (time.perf_counter() - started)
        finally:
            await q.close()

    return asyncio.run(run())


# -- 2. 100 tasks -------------------------------------------------------------------


def tasks_async(directory, n, producers=50, consumers=50):
    async def run():
        async with AsyncPersistentQueue(os.path.join(directory, "tasks.db")) as q:
            got = []

            async def produce(p):
                for i in range(p, n, producers):
                    await q.put(make_item(i))

            async def consume():
                while True:
                    got.append((await q.get())["id"])
                    q.task_done()

            started = time.perf_counter()
            workers = [asyncio.ensure_future(consume()) for _ in range(consumers)]
            await asyncio.gather(*[produce(p) for p in range(producers)])
            await q.join()
            elapsed = time.perf_counter() - started
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            assert sorted(got) == list(range(n)), "lost or duplicated items"
            return n / elapsed

    return asyncio.run(run())


# -- 3. wake-up latency ------------------------------------------------------------


def _waker(path, samples, go, ready):
    q = PersistentQueue(path)
    for _ in range(samples):
        ready.wait()  # the consumer is awaiting get
        ready.clear()
        go.wait()
        go.clear()
        q.put(time.monotonic())
    q.close()


def _start_waker(ctx, path, samples):
    go, ready = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_waker, args=(path, samples, go, ready))
    child.start()
    return child, go, ready


def wake_async(ctx, directory, samples):
    path = os.path.join(directory, "wake-async.db")
    PersistentQueue(path).close()
    child, go, ready = _start_waker(ctx, path, samples)

    async def run():
        latencies = []
        async with AsyncPersistentQueue(path) as q:
            for _ in range(samples):
                getter = asyncio.ensure_future(q.get())
                while not q._getters:  # it is awaiting
                    await asyncio.sleep(0.001)
                ready.set()
                go.set()
                put_at = await getter
                latencies.append(time.monotonic() - put_at)
                q.task_done()
        return latencies

    try:
        return asyncio.run(run())
    finally:
        child.join()


def wake_sync(ctx, directory, samples):
    path = os.path.join(directory, "wake-sync.db")
    q = PersistentQueue(path)
    child, go, ready = _start_waker(ctx, path, samples)
    latencies = []
    try:
        for _ in range(samples):
            result = []
            waiting = threading.Event()

            def get():
                waiting.set()
                result.append(q.get())

            thread = threading.Thread(target=get)
            thread.start()
            waiting.wait()
            time.sleep(0.002)  # into its wait (binding is before the last look anyway)
            ready.set()
            go.set()
            thread.join()
            latencies.append(time.monotonic() - result[0])
            q.task_done()
        return latencies
    finally:
        child.join()
        q.close()


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


# -- the run -----------------------------------------------------------------------


def main(argv=None):
    parser = _common.arguments(__doc__, "small sizes: a smoke test",
                               "repetitions per measurement (default 5)")
    parser.add_argument("--output", metavar="FILE", help="also write the report to FILE")
    args = parser.parse_args(argv)
    s = _common.settings(parser, args, Settings(), QUICK)
    ctx = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")

    contenders = [("asyncio.Queue (memory)", rt_memory), ("PersistentQueue (sync)", rt_sync),
                  ("PersistentQueue via run_in_executor", rt_executor),
                  ("AsyncPersistentQueue", rt_async)]
    if AsyncSQLiteQueue is not None:
        contenders += [("persist-queue AsyncSQLiteQueue", rt_pq_sql),
                       ("persist-queue AsyncQueue (files)", rt_pq_files)]
    rates = {label: [] for label, _ in contenders}
    tasks = {"1 + 1": [], "50 + 50": []}
    wakes = {"AsyncPersistentQueue": [], "PersistentQueue (thread)": []}
    root = tempfile.mkdtemp(prefix="bench_async-")
    started = time.monotonic()
    try:
        for r in range(s.repeat):
            order = contenders if r % 2 == 0 else contenders[::-1]
            for label, fn in order:
                directory = tempfile.mkdtemp(dir=root)
                rates[label].append(fn(directory, s.rt_ops))
                log("rep %d %s: %.0f/s" % (r, label, rates[label][-1]))
            for label, (p, c) in (("1 + 1", (1, 1)), ("50 + 50", (50, 50)))[::1 if r % 2 == 0 else -1]:
                tasks[label].append(tasks_async(tempfile.mkdtemp(dir=root), s.tasks_items, p, c))
                log("rep %d %s tasks: %.0f/s" % (r, label, tasks[label][-1]))
            for label, fn in (("AsyncPersistentQueue", wake_async),
                              ("PersistentQueue (thread)", wake_sync))[::1 if r % 2 == 0 else -1]:
                wakes[label].extend(fn(ctx, tempfile.mkdtemp(dir=root), s.wake_samples))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    sync = statistics.median(rates["PersistentQueue (sync)"])
    mine = statistics.median(rates["AsyncPersistentQueue"])
    lines = [
        "# bench_async: %s" % time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "",
        _common.machine(),
        "- Python %s; SQLite file system: %s; STORAGE_THREADS=%d"
        % (sys.version.split()[0], _common.filesystem(tempfile.gettempdir()) or "?",
           STORAGE_THREADS),
        "- Settings: %s" % (s,),
        "",
        "## 1. One task: await put + await get + task_done of a dict of 3 ints",
        "",
        "| contender | items/s, median (min-max) | x PersistentQueue |",
        "|---|---|---|",
    ]
    for label, _ in contenders:
        med = statistics.median(rates[label])
        lines.append("| %s | %s | %.2fx |" % (label, _common.rate(rates[label]), med / sync))
    lines += [
        "",
        "## 2. Producer + consumer tasks on one AsyncPersistentQueue",
        "",
        "| producer + consumer tasks | items/s, median (min-max) | x 1 + 1 |",
        "|---|---|---|",
        *["| %s | %s | %.2fx |" % (label, _common.rate(values), statistics.median(values)
                                   / statistics.median(tasks["1 + 1"]))
          for label, values in tasks.items()],
        "",
        "## 3. Wake-up of an awaiting get by a put in another process",
        "",
        "| waiter | samples | p50 ms | p99 ms |",
        "|---|---|---|---|",
    ]
    for label, values in wakes.items():
        lines.append("| %s | %d | %.2f | %.2f |" % (
            label, len(values), 1000 * percentile(values, 50), 1000 * percentile(values, 99)))
    floors = ["", "## Floors", ""]
    ratio = mine / sync
    floors.append("- AsyncPersistentQueue >= %.1fx PersistentQueue: %s (%.2fx)"
                  % (RT_FLOOR, "PASS" if ratio >= RT_FLOOR else "FAIL", ratio))
    executor = statistics.median(rates["PersistentQueue via run_in_executor"])
    floors.append("- (no floor) AsyncPersistentQueue / PersistentQueue via run_in_executor, "
                  "the minimal way to keep SQLite off the loop: %.2fx" % (mine / executor))
    for label in ("persist-queue AsyncSQLiteQueue", "persist-queue AsyncQueue (files)"):
        if label in rates:
            other = statistics.median(rates[label])
            floors.append("- AsyncPersistentQueue ahead of %s: %s (%.2fx)"
                          % (label, "PASS" if mine > other else "FAIL", mine / other))
        else:
            floors.append("- AsyncPersistentQueue ahead of %s: skipped (not installed)" % label)
    many, pair = statistics.median(tasks["50 + 50"]), statistics.median(tasks["1 + 1"])
    floors.append("- 50 + 50 tasks >= 1 + 1 tasks: %s (%.2fx)"
                  % ("PASS" if many >= pair else "FAIL", many / pair))
    lines += floors + ["", "Run time: %.0f s" % (time.monotonic() - started), ""]
    _common.emit("\n".join(lines), args.output)


if __name__ == "__main__":
    main()
