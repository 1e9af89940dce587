"""Leases, delays and TTLs when the wall clock is stepped, and across a boot.

A process whose wall clock was stepped is played by a forked child whose
``time.time``/``time.time_ns`` return the real time plus an offset (as after
``date -s``): the kernel's other clocks are left alone, as a real step leaves
them.  Children report through pipes and exit codes; the parent waits for
them with events and joins, never with sleeps.  The only sleep is the one
that lets a TTL run out.
"""

import os
import signal
import sqlite3
import time

import pytest

from persistqueue_liteq import LiteQueue, PersistentQueue, engine
from persistqueue_liteq.sqlite.engine import SQLiteEngine

pytestmark = pytest.mark.skipif(
    not (hasattr(time, "CLOCK_BOOTTIME") and os.path.exists("/proc/sys/kernel/random/boot_id")),
    reason="no CLOCK_BOOTTIME and boot id here: the wall clock decides leases (documented)")

HOUR = 3600.0
N = 20


@pytest.fixture
def ctx(fork):
    """conftest's fork context (children SIGKILLed after the test), by the
    name these tests use."""
    return fork


def step_wall_clock(seconds):
    """From now on this process's wall clock reads ``seconds`` off, as in a
    process started after the step: it forgets the latest time its parent
    read (which engine.clock() would not go back past)."""
    engine._last_time = 0.0
    real_time, real_time_ns = time.time, time.time_ns
    time.time = lambda: real_time() + seconds
    time.time_ns = lambda: real_time_ns() + int(seconds * 1e9)


def start(ctx, target, *args):
    proc = ctx.Process(target=target, args=args)
    proc.start()
    return proc


def finish(proc, timeout=50):
    proc.join(timeout)
    if proc.exitcode is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        raise AssertionError("child did not finish in %ss" % timeout)
    return proc.exitcode


def fill(db, n=N):
    with LiteQueue(db) as q:
        q.put_batch([b"m%d" % i for i in range(n)])


# -- 1. a living holder keeps its leases ------------------------------------------

def liteq_holder(db, offset, held, go_on, out):
    step_wall_clock(offset)
    q = LiteQueue(db)
    messages = q.pop_batch(max_messages=N, invisible_seconds=60)
    held.set()
    go_on.wait(50)
    out.send((len(messages), sum(q.ack(m) for m in messages)))


def liteq_other(db, offset, out):
    step_wall_clock(offset)
    with LiteQueue(db) as q:
        out.send(len(q.pop_batch(max_messages=N, invisible_seconds=60)))


def queue_holder(db, offset, held, go_on, out):
    step_wall_clock(offset)
    q = PersistentQueue(db, visibility_timeout=60)
    items = [q.get(timeout=10) for _ in range(N)]
    held.set()
    go_on.wait(50)
    for _ in items:
        q.task_done()
    out.send((len(items), q.unfinished_tasks))
    q.close()


def queue_other(db, offset, out):
    step_wall_clock(offset)
    q = PersistentQueue(db, visibility_timeout=60)
    got = 0
    while True:
        try:
            q.get(block=False)
        except Exception:  # queue.Empty
            break
        got += 1
    out.send(got)
    q.close()


# (holder's offset, other consumer's offset): the other's clock ahead by an hour.
AHEAD = [(0.0, HOUR), (-HOUR, 0.0)]


@pytest.mark.parametrize("holder_offset, other_offset", AHEAD)
def test_a_consumer_whose_clock_is_an_hour_ahead_gets_no_living_holders_lease(
        db, ctx, holder_offset, other_offset):
    fill(db)
    held, go_on = ctx.Event(), ctx.Event()
    holder_out, holder_in = ctx.Pipe(duplex=False)
    other_out, other_in = ctx.Pipe(duplex=False)
    holder = start(ctx, liteq_holder, db, holder_offset, held, go_on, holder_in)
    assert held.wait(30)
    other = start(ctx, liteq_other, db, other_offset, other_in)
    assert finish(other) == 0
    stolen = other_out.recv()
    go_on.set()
    assert finish(holder) == 0
    leased, acked = holder_out.recv()
    assert (leased, stolen, acked) == (N, 0, N)


@pytest.mark.parametrize("holder_offset, other_offset", AHEAD)
def test_persistent_queue_items_stay_with_their_living_holder(db, ctx, holder_offset, other_offset):
    with PersistentQueue(db) as q:
        for i in range(N):
            q.put(i)
    held, go_on = ctx.Event(), ctx.Event()
    holder_out, holder_in = ctx.Pipe(duplex=False)
    other_out, other_in = ctx.Pipe(duplex=False)
    holder = start(ctx, queue_holder, db, holder_offset, held, go_on, holder_in)
    assert held.wait(30)
    other = start(ctx, queue_other, db, other_offset, other_in)
    assert finish(other) == 0
    stolen = other_out.recv()
    go_on.set()
    assert finish(holder) == 0
    got, unfinished = holder_out.recv()
    assert (got, stolen, unfinished) == (N, 0, 0)


# A pool's task, run by a thread of the holder: the events are inherited
# through fork (a thread pool pickles the function by name, not the events).
_TASK_EVENTS = {}


def held_task():
    _TASK_EVENTS["started"].set()
    _TASK_EVENTS["finish"].wait(50)
    return 42


def pool_holder(db, offset, out):
    from persistqueue_liteq import PersistentThreadPoolExecutor

    step_wall_clock(offset)
    with PersistentThreadPoolExecutor(db, max_workers=1, lease_seconds=30) as pool:
        future = pool.submit(held_task)
        out.send(future.result(timeout=50))


def pool_rerun(db, offset, out):
    """What a second pool's worker does on the same file: lease tasks."""
    step_wall_clock(offset)
    engine = SQLiteEngine(db)
    out.send(len(engine.complete_many("tasks", [], lease=10, seconds=30)))
    engine.close()


@pytest.mark.parametrize("holder_offset, other_offset", AHEAD)
def test_a_pools_running_task_is_not_taken_by_a_worker_whose_clock_is_ahead(
        db, ctx, holder_offset, other_offset):
    _TASK_EVENTS.update(started=ctx.Event(), finish=ctx.Event())
    holder_out, holder_in = ctx.Pipe(duplex=False)
    other_out, other_in = ctx.Pipe(duplex=False)
    holder = start(ctx, pool_holder, db, holder_offset, holder_in)
    assert _TASK_EVENTS["started"].wait(30)
    assert finish(start(ctx, pool_rerun, db, other_offset, other_in)) == 0
    taken = other_out.recv()
    _TASK_EVENTS["finish"].set()
    assert finish(holder) == 0
    assert (taken, holder_out.recv()) == (0, 42)


# -- 2. a dead holder's lease ends after its length ---------------------------------

LEASE = 2.0
WAIT = 30.0  # much less than the hour a stepped clock would add


def liteq_dying_holder(db, offset, held):
    step_wall_clock(offset)
    q = LiteQueue(db)
    q.pop_batch(max_messages=N, invisible_seconds=LEASE)
    held.set()
    os.kill(os.getpid(), signal.SIGKILL)


def liteq_collector(db, offset, out):
    """Lease every message back, waiting up to WAIT seconds in all; send
    how many came and how long it took (monotonic)."""
    step_wall_clock(offset)
    began = time.monotonic()
    deadline = began + WAIT
    got = 0
    with LiteQueue(db) as q:
        while got < N and time.monotonic() < deadline:
            got += len(q.pop_batch(max_messages=N, invisible_seconds=60,
                                   wait_seconds=deadline - time.monotonic()))
    out.send((got, time.monotonic() - began))


def queue_dying_holder(db, offset, held):
    step_wall_clock(offset)
    q = PersistentQueue(db, visibility_timeout=LEASE)
    for _ in range(N):
        q.get(timeout=10)
    held.set()
    os.kill(os.getpid(), signal.SIGKILL)


def queue_collector(db, offset, out):
    step_wall_clock(offset)
    began = time.monotonic()
    deadline = began + WAIT
    got = 0
    q = PersistentQueue(db, visibility_timeout=60)
    try:
        while got < N:
            q.get(timeout=max(deadline - time.monotonic(), 0))
            q.task_done()
            got += 1
    except Exception:  # queue.Empty: out of time
        pass
    out.send((got, time.monotonic() - began))
    q.close()


# (dead holder's offset, collector's offset): the collector's clock behind by an hour.
BEHIND = [(0.0, -HOUR), (HOUR, 0.0)]


@pytest.mark.parametrize("holder_offset, collector_offset", BEHIND)
@pytest.mark.parametrize("holder, collector", [(liteq_dying_holder, liteq_collector),
                                               (queue_dying_holder, queue_collector)],
                         ids=["LiteQueue", "PersistentQueue"])
def test_a_killed_holders_leases_come_back_after_the_lease_whatever_the_clocks(
        db, ctx, holder, collector, holder_offset, collector_offset):
    if holder is liteq_dying_holder:
        fill(db)
    else:
        with PersistentQueue(db) as q:
            for i in range(N):
                q.put(i)
    held = ctx.Event()
    proc = start(ctx, holder, db, holder_offset, held)
    assert held.wait(30)
    assert finish(proc) == -signal.SIGKILL
    out, into = ctx.Pipe(duplex=False)
    assert finish(start(ctx, collector, db, collector_offset, into)) == 0
    got, took = out.recv()
    assert got == N
    assert took < LEASE + 15  # the lease and some, not an hour


# -- 3. delays and TTLs count elapsed seconds -------------------------------------------

def put_one(db, offset, delay, ttl):
    step_wall_clock(offset)
    with LiteQueue(db) as q:
        q.put(b"x", visible_after_seconds=delay, ttl_seconds=ttl)


def pop_now(db, offset, out):
    step_wall_clock(offset)
    with LiteQueue(db) as q:
        msg = q.pop()
        out.send(None if msg is None else msg.data)


def test_a_delay_is_not_cut_short_by_a_consumer_whose_clock_is_ahead(db, ctx):
    assert finish(start(ctx, put_one, db, 0.0, 600, None)) == 0
    out, into = ctx.Pipe(duplex=False)
    assert finish(start(ctx, pop_now, db, HOUR, into)) == 0
    assert out.recv() is None
    with LiteQueue(db) as q:
        assert q.qsize() == 1


def test_a_delay_put_by_a_process_whose_clock_is_ahead_ends_on_time(db, ctx):
    assert finish(start(ctx, put_one, db, HOUR, 1, None)) == 0
    with LiteQueue(db) as q:
        msg = q.pop(wait_seconds=WAIT)  # not an hour
    assert msg is not None and msg.data == b"x"


def test_a_ttl_is_not_cut_short_by_a_consumer_whose_clock_is_ahead(db, ctx):
    assert finish(start(ctx, put_one, db, 0.0, 0, 600)) == 0
    out, into = ctx.Pipe(duplex=False)
    assert finish(start(ctx, pop_now, db, HOUR, into)) == 0
    assert out.recv() == b"x"


def test_a_ttl_put_by_a_process_whose_clock_is_ahead_runs_out_on_time(db, ctx):
    ttl = 1.0
    assert finish(start(ctx, put_one, db, HOUR, 0, ttl)) == 0
    time.sleep(ttl + 0.2)  # the TTL, measured after the put committed
    with LiteQueue(db) as q:
        assert q.pop() is None
        assert q.counters()["default"]["expired"] == 1


def report_now(db, offset, out):
    step_wall_clock(offset)
    with LiteQueue(db) as q:
        out.send(q.engine.now())


@pytest.mark.parametrize("offset", [HOUR, -HOUR])
def test_processes_with_stepped_clocks_agree_on_the_engines_clock(db, ctx, offset):
    with LiteQueue(db) as q:
        out, into = ctx.Pipe(duplex=False)
        before = q.engine.now()
        assert finish(start(ctx, report_now, db, offset, into)) == 0
        after = q.engine.now()
        assert before <= out.recv() <= after


# -- 4. a new boot -------------------------------------------------------------------------

def lease_and_die(db, offset, n, seconds):
    step_wall_clock(offset)
    q = LiteQueue(db)
    assert len(q.pop_batch(max_messages=n, invisible_seconds=seconds)) == n
    os.kill(os.getpid(), signal.SIGKILL)


def reboot(db):
    """Make the file look last anchored in another boot."""
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("INSERT OR REPLACE INTO liteq_meta (key, value) "
                     "VALUES ('clock_boot_id', '00000000-0000-0000-0000-000000000000')")
    conn.close()


def test_the_first_open_after_a_boot_releases_the_old_boots_leases_and_keeps_delays(db, ctx):
    with LiteQueue(db) as q:
        q.put_batch([b"leased"] * 5)
        delayed = q.put(b"later", visible_after_seconds=HOUR)
    assert finish(start(ctx, lease_and_die, db, 0.0, 5, HOUR)) == -signal.SIGKILL
    reboot(db)
    with LiteQueue(db) as q:
        back = q.pop_batch(max_messages=10, invisible_seconds=HOUR)
        assert [m.data for m in back] == [b"leased"] * 5
        assert [m.attempts for m in back] == [2] * 5  # the dead holder's counted
        assert q.engine.count("default", "ready") == 0
        left = q.get(delayed).visible_at - q.engine.now()
        assert HOUR - 60 < left <= HOUR
    # Once per boot: the leases just taken are not released by the next open.
    with LiteQueue(db) as q:
        assert q.pop(invisible_seconds=HOUR) is None


def test_a_read_only_open_after_a_boot_changes_nothing(db, ctx):
    fill(db, 3)
    assert finish(start(ctx, lease_and_die, db, 0.0, 3, HOUR)) == -signal.SIGKILL
    reboot(db)
    engine = SQLiteEngine(db, readonly=True)
    assert engine.count("default", "ready") == 0
    engine.close()
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT value FROM liteq_meta WHERE key = 'clock_boot_id'").fetchall() == [
        ("00000000-0000-0000-0000-000000000000",)]
    conn.close()
    with LiteQueue(db) as q:  # the first writer does it
        assert len(q.pop_batch(max_messages=10)) == 3


def pop_all(db, offset, out):
    step_wall_clock(offset)
    with LiteQueue(db) as q:
        out.send(len(q.pop_batch(max_messages=N)))


def test_a_wall_clock_behind_at_the_first_open_after_a_boot_holds_nothing_back(db, ctx):
    fill(db, 3)
    reboot(db)
    out, into = ctx.Pipe(duplex=False)
    assert finish(start(ctx, pop_all, db, -24 * HOUR, into)) == 0
    assert out.recv() == 3


# -- what people are shown ------------------------------------------------------------------

def cli_stats(db, offset, out):
    step_wall_clock(offset)
    import contextlib
    import io
    import json

    from persistqueue_liteq.cli import main

    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        status = main(["stats", db, "--json"])
    out.send((status, json.loads(text.getvalue())))


def test_the_command_line_shows_ages_and_wall_times_by_a_stepped_clock(db, ctx):
    with LiteQueue(db) as q:
        q.put(b"x")
    out, into = ctx.Pipe(duplex=False)
    real_before = time.time()
    assert finish(start(ctx, cli_stats, db, HOUR, into)) == 0
    status, stats = out.recv()
    assert status == 0
    queue = stats["queues"]["default"]
    assert queue["oldest_age_seconds"] < 60  # not an hour
    # Times in the wall clock of whoever looks: theirs is an hour ahead.
    assert abs(stats["time"] - (real_before + HOUR)) < 60
    assert abs(queue["oldest_created_at"] - (real_before + HOUR)) < 60


# -- odd anchors, other time namespaces ---------------------------------------------------------

def set_meta(db, key, value):
    conn = sqlite3.connect(db)
    with conn:
        if value is None:
            conn.execute("DELETE FROM liteq_meta WHERE key = ?", (key,))
        else:
            conn.execute("INSERT OR REPLACE INTO liteq_meta (key, value) VALUES (?, ?)",
                         (key, value))
    conn.close()


def test_a_file_without_an_anchor_is_anchored_and_keeps_its_leases(db, ctx):
    """As a file of a version before anchors: its leases may be held by
    processes of that version, which live on."""
    fill(db, 3)
    with LiteQueue(db) as q:
        assert len(q.pop_batch(max_messages=3, invisible_seconds=HOUR)) == 3
        for key in ("clock_boot_id", "clock_wall", "clock_boottime"):
            set_meta(db, key, None)
        out, into = ctx.Pipe(duplex=False)
        assert finish(start(ctx, pop_all, db, 0.0, into)) == 0
        assert out.recv() == 0
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT value FROM liteq_meta WHERE key = 'clock_boot_id'").fetchall() == [
        (open("/proc/sys/kernel/random/boot_id").read().strip(),)]
    conn.close()


@pytest.mark.parametrize("value", ["soon", "nan", "-1", "1e300"])
def test_an_unreadable_anchor_is_made_again(db, value):
    fill(db, 2)
    with LiteQueue(db) as q:
        q.pop(invisible_seconds=HOUR)
    set_meta(db, "clock_wall", value)
    with LiteQueue(db) as q:
        assert len(q.pop_batch(max_messages=5)) == 2  # the lease went with the anchor
        assert abs(q.engine.now() - time.time()) < 60


def test_a_process_in_another_time_namespace_reads_the_same_clock(db):
    import shutil
    import subprocess
    import sys

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to make a time namespace")
    with LiteQueue(db) as q:
        before = q.engine.now()
        code = "from persistqueue_liteq import LiteQueue; print(repr(LiteQueue(%r).engine.now()))" % db
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        try:
            done = subprocess.run(
                ["unshare", "--time", "--fork", "--boottime", "86400", sys.executable, "-c", code],
                cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        except OSError as exc:
            pytest.skip("unshare failed: %s" % exc)
        if done.returncode and b"unshare failed" in done.stderr:
            pytest.skip("no time namespaces here: %s" % done.stderr.decode(errors="replace"))
        after = q.engine.now()
    assert done.returncode == 0, done.stderr
    assert before <= float(done.stdout) <= after

