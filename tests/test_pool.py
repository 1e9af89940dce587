"""The durable pools: concurrent.futures behaviour, and what it must do better."""

import concurrent.futures
import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures.process import BrokenProcessPool

import pytest

from persistqueue_liteq.pool import _collector, _shared, _storer, _worker
from persistqueue_liteq.sqlite import wakeup
from persistqueue_liteq.exceptions import SerializationError, TaskTimeout, WorkerDied
from persistqueue_liteq.pool import PersistentProcessPoolExecutor, PersistentThreadPoolExecutor
from persistqueue_liteq.sqlite.engine import SQLiteEngine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = dict(max_retries=2, retry_backoff=0)


# Task functions live at module level, so that every start method can load them.

def square(x):
    return x * x


def add(x, y):
    return x + y


def fail(message):
    raise ValueError(message)


def record(path, value):
    with open(path, "a") as f:
        f.write("%s\n" % value)
    return value


def kill_self_once(marker, value):
    """Dies with SIGKILL the first time; returns ``value`` the second."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return value


def kill_self_once_then_block(marker, started, gate, value):
    """Dies with SIGKILL the first time; the second, says so by creating
    ``started`` and returns ``value`` once ``gate`` exists."""
    kill_self_once(marker, None)
    return block_until(gate, started) and value


def kill_self():
    os.kill(os.getpid(), signal.SIGKILL)


def exit_hard(code):
    os._exit(code)


def segfault():
    import ctypes
    import faulthandler

    faulthandler.disable()  # no traceback on the test's stderr
    ctypes.string_at(0)  # reads address 0: SIGSEGV


def exhaust_memory():
    """What the kernel's OOM killer does to a worker (without starving the
    machine): the process is killed by SIGKILL while it allocates."""
    hog = []
    while True:
        hog.append(bytearray(1 << 20))
        if len(hog) == 64:
            os.kill(os.getpid(), signal.SIGKILL)


def allocate_beyond_limit():
    """An allocation refused by the address-space limit: MemoryError."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (1 << 31, hard))
    try:
        return len(bytearray(1 << 32))
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def fail_once(marker):
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("transient")
    return "recovered"


def block_until(path, started=None):
    if started is not None:
        open(started, "w").close()
    while not os.path.exists(path):
        time.sleep(0.01)
    return "released"


def wait_for_file(path, timeout=30):
    """Wait until another process has created ``path`` (its way to say "now")."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, "%s never appeared" % path
        time.sleep(0.005)


def hang():
    threading.Event().wait()


def get_pid(_=None):
    return os.getpid()


def unpicklable_result():
    return threading.Lock()


class Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("no pickling of this one")


def raise_unpicklable():
    raise Unpicklable("custom")


def bad_initializer():
    raise RuntimeError("cannot initialise")


@pytest.fixture(params=["process", "thread"])
def make_pool(request, db):
    pools = []

    def make(**options):
        options = {**FAST, **options}
        if request.param == "process":
            ex = PersistentProcessPoolExecutor(db, max_workers=options.pop("max_workers", 2), **options)
        else:
            ex = PersistentThreadPoolExecutor(db, max_workers=options.pop("max_workers", 2), **options)
        pools.append(ex)
        return ex

    make.kind = request.param
    yield make
    for ex in pools:
        ex.shutdown(wait=True, cancel_futures=True)


# -- the concurrent.futures surface ----------------------------------------------------

def test_submit_returns_real_futures(make_pool):
    ex = make_pool()
    futures = [ex.submit(add, i, y=1) for i in range(10)]
    assert all(isinstance(f, concurrent.futures.Future) for f in futures)
    assert sorted(f.result(30) for f in concurrent.futures.as_completed(futures, 30)) == list(range(1, 11))
    done, not_done = concurrent.futures.wait(futures, 30)
    assert len(done) == 10 and not not_done


def test_map_keeps_order_with_any_chunksize(make_pool):
    ex = make_pool()
    assert list(ex.map(square, range(50))) == [x * x for x in range(50)]
    assert list(ex.map(add, range(30), range(30), chunksize=7)) == [2 * x for x in range(30)]


def test_map_timeout(make_pool, tmp_path):
    ex = make_pool(max_workers=1)
    results = ex.map(block_until, [str(tmp_path / "never")], timeout=0.2)
    with pytest.raises(concurrent.futures.TimeoutError):
        next(results)
    open(tmp_path / "never", "w").close()


def test_an_exception_comes_back_with_the_remote_traceback(make_pool):
    ex = make_pool(max_retries=0)
    with pytest.raises(ValueError, match="broken input") as info:
        ex.submit(fail, "broken input").result(30)
    assert "Traceback" in str(info.value.__cause__)
    assert "in fail" in str(info.value.__cause__)


def test_stored_pickles_name_the_pool_module_as_before_it_was_a_package():
    # A file written before pool.py became a package holds map's chunks and
    # remote tracebacks pickled under these names; they must still load, and
    # what we store now must load in the version before.
    import pickle

    from persistqueue_liteq import pool
    for name in ("_apply_chunk", "_rebuild_exception", "_RemoteTraceback"):
        old = b"cpersistqueue_liteq.pool\n" + name.encode() + b"\n."  # GLOBAL module name
        assert pickle.loads(old) is getattr(pool, name)
        assert pickle.dumps(getattr(pool, name), protocol=0).startswith(old[:-1])


def test_stdlib_argument_errors(db):
    for cls in (PersistentProcessPoolExecutor, PersistentThreadPoolExecutor):
        with pytest.raises(ValueError, match="max_workers must be greater than 0"):
            cls(db, max_workers=0)


def test_submit_after_shutdown(make_pool):
    ex = make_pool()
    ex.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(square, 2)


def test_a_failing_initializer_breaks_the_pool(db):
    ex = PersistentProcessPoolExecutor(db, max_workers=1, initializer=bad_initializer)
    future = ex.submit(square, 3)
    with pytest.raises(BrokenProcessPool):
        future.result(30)
    with pytest.raises(BrokenProcessPool):
        ex.submit(square, 3)
    ex.shutdown()


def test_a_failing_initializer_breaks_the_thread_pool(db):
    ex = PersistentThreadPoolExecutor(db, max_workers=1, initializer=bad_initializer)
    with pytest.raises(concurrent.futures.thread.BrokenThreadPool):
        ex.submit(square, 3).result(30)
    ex.shutdown()


# -- better than ProcessPoolExecutor ----------------------------------------------------

def test_a_worker_killed_mid_task_costs_one_retry_not_the_pool(db, tmp_path):
    """One SIGKILL, one attempt: the task's second run is its second delivery
    (seen in the file while it runs), and it is not dead-lettered."""
    marker, started, gate = (str(tmp_path / name) for name in ("marker", "started", "gate"))
    with PersistentProcessPoolExecutor(db, max_workers=2, **FAST) as ex:
        try:
            dying = ex.submit_keyed("dying", kill_self_once_then_block, marker, started, gate,
                                    "survived")
            others = [ex.submit(square, i) for i in range(20)]
            wait_for_file(started)  # its second run, which waits for the gate
            with contextlib.closing(SQLiteEngine(db)) as engine:
                (running,) = [m for m in engine.snapshot("tasks") if m.key == "dying"]
        finally:
            open(gate, "w").close()
        assert running.attempts == 2 and running.lease is not None
        assert "SIGKILL" in running.last_error and "(attempt 1 of 3)" in running.last_error
        assert dying.result(60) == "survived"
        assert [f.result(60) for f in others] == [i * i for i in range(20)]
    with contextlib.closing(SQLiteEngine(db)) as engine:
        assert engine.dead_letters("tasks") == []


def test_a_task_that_always_kills_its_worker_fails_alone(db):
    with PersistentProcessPoolExecutor(db, max_workers=2, max_retries=1, retry_backoff=0) as ex:
        doomed = ex.submit(kill_self)
        with pytest.raises(WorkerDied, match="signal SIGKILL.*attempt 2 of 2"):
            doomed.result(60)
        assert ex.submit(square, 12).result(60) == 144
        (dead,) = ex.dead_letters()
        assert "SIGKILL" in dead.dead_reason


def test_a_worker_exit_code_is_named(db):
    with PersistentProcessPoolExecutor(db, max_workers=1, max_retries=0) as ex:
        with pytest.raises(WorkerDied, match="exit code 3"):
            ex.submit(exit_hard, 3).result(60)
        assert ex.submit(square, 3).result(60) == 9


def test_a_segfault_costs_one_attempt_and_is_named(db):
    with PersistentProcessPoolExecutor(db, max_workers=1, max_retries=1, retry_backoff=0) as ex:
        crashing = ex.submit(segfault)
        others = [ex.submit(square, i) for i in range(5)]
        with pytest.raises(WorkerDied, match="signal SIGSEGV.*attempt 2 of 2"):
            crashing.result(60)
        assert [f.result(60) for f in others] == [i * i for i in range(5)]
        (dead,) = ex.dead_letters()
        assert "SIGSEGV" in dead.dead_reason


def test_out_of_memory_fails_only_its_task(db):
    with PersistentProcessPoolExecutor(db, max_workers=1, max_retries=0) as ex:
        killed = ex.submit(exhaust_memory)
        refused = ex.submit(allocate_beyond_limit)
        with pytest.raises(WorkerDied, match="signal SIGKILL"):
            killed.result(60)
        with pytest.raises(MemoryError):
            refused.result(60)
        assert ex.submit(square, 7).result(60) == 49


def test_a_task_over_its_timeout_is_killed_and_counted(db):
    with PersistentProcessPoolExecutor(db, max_workers=1, max_retries=1, retry_backoff=0,
                                       task_timeout=0.3) as ex:
        with pytest.raises(TaskTimeout, match="task_timeout=0.3s.*attempt 2 of 2"):
            ex.submit(hang).result(60)
        assert ex.submit(square, 4).result(60) == 16


def test_a_failing_task_is_retried_then_succeeds(make_pool, tmp_path):
    ex = make_pool(retry_on=(RuntimeError,))
    assert ex.submit(fail_once, str(tmp_path / "marker")).result(60) == "recovered"


def test_a_poison_task_lands_in_the_dead_letter_queue_and_can_be_redriven(make_pool, tmp_path):
    ex = make_pool(max_retries=2, retry_on=(ValueError,))
    with pytest.raises(ValueError):
        ex.submit(fail, "poison").result(60)
    (dead,) = ex.dead_letters()
    assert dead.attempts == 3
    assert "ValueError: poison" in dead.dead_reason
    assert ex.redrive() == 1
    with pytest.raises(ValueError):  # the same task, run again from the start
        ex.submit(fail, "poison").result(60)


def test_a_retry_runs_when_its_backoff_ends(db, tmp_path, monkeypatch):
    """No idle look-around (an hour): the worker wakes for the retry itself."""
    monkeypatch.setattr(_worker, "_IDLE_CHECK", 3600.0)
    monkeypatch.setattr(_collector, "_IDLE_CHECK", 3600.0)
    monkeypatch.setattr(wakeup, "SAFETY_INTERVAL", 3600.0)
    with PersistentThreadPoolExecutor(db, max_workers=1, max_retries=1, retry_on=RuntimeError,
                                      retry_backoff=0.05) as ex:
        assert ex.submit(fail_once, str(tmp_path / "marker")).result(60) == "recovered"


def test_a_dead_task_runs_again_once_its_failure_is_forgotten(make_pool):
    ex = make_pool(max_retries=0)
    with pytest.raises(ValueError, match="poison"):
        ex.submit_keyed("job-1", fail, "poison").result(60)
    with pytest.raises(ValueError, match="poison"):  # answered from the file
        ex.submit_keyed("job-1", fail, "poison").result(60)
    assert [m.key for m in ex.dead_letters()] == ["job-1"]
    assert ex.forget_results() == 1
    with pytest.raises(ValueError, match="again"):  # run again, not left hanging
        ex.submit_keyed("job-1", fail, "again").result(60)
    assert [m.key for m in ex.dead_letters()] == ["job-1"]


def test_cancel_removes_tasks_that_have_not_started(make_pool, tmp_path):
    ex = make_pool(max_workers=1)
    gate = str(tmp_path / "gate")
    log = str(tmp_path / "log")
    busy = ex.submit(block_until, gate)
    waiting = [ex.submit(record, log, i) for i in range(5)]
    assert all(f.cancel() for f in waiting)
    assert all(f.cancelled() for f in waiting)
    open(gate, "w").close()
    assert busy.result(60) == "released"
    assert ex.submit(record, log, "after").result(60) == "after"
    with open(log) as f:
        assert f.read().split() == ["after"]


@pytest.fixture
def big_batches(monkeypatch):
    """Workers of pools made from now on lease up to _BATCH_MAX tasks at once
    from their second lease on, whatever the speed of the machine."""
    monkeypatch.setattr(_shared, "_BATCH_SECONDS", 3600.0)


def test_cancel_reaches_tasks_waiting_in_a_workers_batch(db, tmp_path, big_batches):
    gate, started = str(tmp_path / "gate"), str(tmp_path / "started")
    log = str(tmp_path / "log")
    with PersistentThreadPoolExecutor(db, max_workers=1, **FAST) as ex:
        assert ex.submit(square, 2).result(60) == 4  # the next lease takes a batch
        busy, *waiting = ex._submit_many(  # stored in one transaction
            [(None, block_until, (gate, started), {})]
            + [(None, record, (log, i), {}) for i in range(5)])
        wait_for_file(started)
        with contextlib.closing(SQLiteEngine(db)) as engine:
            # All six are leased, by the one worker: nothing waits unleased.
            assert engine.count("tasks", "live") == 6
            assert engine.count("tasks", "waiting") == 0
            assert all(f.cancel() for f in waiting)
            assert all(f.cancelled() for f in waiting)
            assert engine.count("tasks", "live") == 1
        open(gate, "w").close()
        assert busy.result(60) == "released"
        assert ex.submit(record, log, "after").result(60) == "after"
    with open(log) as f:
        assert f.read().split() == ["after"]


def test_a_dead_workers_unstarted_batch_costs_no_attempt(db, tmp_path, big_batches):
    """max_retries=0: an attempt lost by the waiting tasks would dead-letter
    them; lease_seconds=600: if they were not handed back at once they would
    wait for their leases to run out."""
    marker, log = str(tmp_path / "marker"), str(tmp_path / "log")
    with PersistentProcessPoolExecutor(db, max_workers=1, max_retries=0, lease_seconds=600) as ex:
        assert ex.submit(square, 2).result(60) == 4
        dying, *waiting = ex._submit_many(
            [(None, kill_self_once, (marker, "second life"), {})]
            + [(None, record, (log, i), {}) for i in range(5)])
        with pytest.raises(WorkerDied, match="signal SIGKILL"):
            dying.result(60)  # its one attempt
        assert [f.result(60) for f in waiting] == list(range(5))
    with open(log) as f:
        assert f.read().split() == [str(i) for i in range(5)]


def test_tasks_submitted_before_exit_are_stored(db):
    """submit returns before its task is stored; an interpreter that exits
    without shutdown() still stores everything first."""
    script = (
        "import sys; sys.path.insert(0, %r)\n"
        "from persistqueue_liteq import PersistentProcessPoolExecutor\n"
        "from tests.test_pool import square\n"
        "ex = PersistentProcessPoolExecutor(%r, run_workers=False)\n"
        "futures = [ex.submit(square, i) for i in range(500)]\n"
        % (ROOT, db))
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    engine = SQLiteEngine(db)
    assert engine.count("tasks") == 500
    engine.close()


_SLOW_UNREGISTER = """
import atexit, sys, threading, time
sys.path.insert(0, %r)
from multiprocessing import resource_tracker
unregister, in_manager = resource_tracker.unregister, threading.Event()

def slow_unregister(name, rtype):
    # A reaped worker's slot lets go of its semaphore in the manager thread:
    # widen the window between its sem_unlink and the tracker hearing of it.
    if threading.current_thread().name != "MainThread":
        in_manager.set()
        time.sleep(0.5)
    unregister(name, rtype)

resource_tracker.unregister = slow_unregister

@atexit.register  # runs after the pool's exit handlers, before finalization
def until_the_manager_reaps():
    print("manager unregistered" if in_manager.wait(30) else "manager never unregistered")

from persistqueue_liteq import PersistentProcessPoolExecutor
if __name__ == "__main__":
    ex = PersistentProcessPoolExecutor(%r, 1)
    print(ex.submit(pow, 2, 5).result())
"""


def test_exit_leaves_no_semaphore_to_the_resource_tracker(db, tmp_path):
    """An interpreter that exits with a pool open waits for the manager to
    reap the workers it ends: a daemon thread frozen at finalization between
    a semaphore's unlink and its unregistering would leave it on the
    resource tracker's books ("leaked semaphore objects" at shutdown)."""
    script = tmp_path / "exit_with_pool.py"
    script.write_text(_SLOW_UNREGISTER % (ROOT, db))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["32", "manager", "unregistered"], done.stdout
    assert "leaked semaphore" not in done.stderr, done.stderr
    assert done.stderr == ""


def test_shutdown_can_cancel_pending_futures(make_pool, tmp_path):
    ex = make_pool(max_workers=1)
    gate, started = str(tmp_path / "gate"), str(tmp_path / "started")
    busy = ex.submit(block_until, gate, started)
    waiting = [ex.submit(square, i) for i in range(5)]
    wait_for_file(started)
    # Release the running task only once shutdown has cancelled the others
    # (a cancel runs the done-callbacks), so that none of them can start.
    left = [len(waiting)]

    def one_more_done(_):
        left[0] -= 1
        if left[0] == 0:
            open(gate, "w").close()

    for future in waiting:
        future.add_done_callback(one_more_done)
    ex.shutdown(wait=True, cancel_futures=True)
    assert busy.result() == "released"  # it had started: it runs to the end
    assert all(f.cancelled() for f in waiting)


def test_shutdown_without_waiting_still_runs_pending_tasks(make_pool):
    ex = make_pool()
    futures = [ex.submit(square, i) for i in range(10)]
    ex.shutdown(wait=False)
    assert [f.result(60) for f in futures] == [i * i for i in range(10)]


def test_max_tasks_per_child_replaces_workers(db):
    with PersistentProcessPoolExecutor(db, max_workers=1, max_tasks_per_child=1) as ex:
        pids = [ex.submit(get_pid, i).result(60) for i in range(3)]
    assert len(set(pids)) == 3


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_start_methods(db, method):
    ctx = multiprocessing.get_context(method)
    with PersistentProcessPoolExecutor(db, max_workers=2, mp_context=ctx) as ex:
        assert list(ex.map(square, range(5))) == [0, 1, 4, 9, 16]


# -- durability of results ----------------------------------------------------------

def test_a_stored_result_answers_a_resubmitted_task_without_running_it(make_pool, tmp_path):
    log = str(tmp_path / "log")
    ex = make_pool()
    assert ex.submit_keyed("report-2026", record, log, "first").result(60) == "first"
    again = make_pool()
    assert again.submit_keyed("report-2026", record, log, "second").result(60) == "first"
    with open(log) as f:
        assert f.read().split() == ["first"]


def test_identical_calls_in_one_run_are_distinct_tasks(make_pool, tmp_path):
    log = str(tmp_path / "log")
    ex = make_pool()
    assert [ex.submit(record, log, "x").result(60) for _ in range(3)] == ["x"] * 3
    with open(log) as f:
        assert f.read().split() == ["x", "x", "x"]


BATCH_SCRIPT = r"""
import sys
from persistqueue_liteq.pool import PersistentProcessPoolExecutor
from tests.test_pool import record

db, log = sys.argv[1], sys.argv[2]
with PersistentProcessPoolExecutor(db, max_workers=2, lease_seconds=1) as ex:
    futures = [ex.submit(record, log, i) for i in range(40)]
    for i, future in enumerate(futures):
        print("result", future.result(), flush=True)
print("finished", flush=True)
"""


def test_a_killed_batch_script_resumes_where_it_stopped(db, tmp_path):
    log = str(tmp_path / "side_effects")
    script = [sys.executable, "-c", BATCH_SCRIPT, db, log]
    env = dict(os.environ, PYTHONPATH=ROOT)
    first = subprocess.Popen(script, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    reported = []
    for line in first.stdout:
        reported.append(int(line.split()[1]))
        if len(reported) == 10:
            break
    first.kill()  # SIGKILL, in the middle of the batch
    first.wait()
    assert first.returncode == -signal.SIGKILL

    second = subprocess.run(script, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert second.returncode == 0, second.stderr
    lines = second.stdout.split("\n")
    assert lines[-2] == "finished"
    assert [int(line.split()[1]) for line in lines[:-2]] == list(range(40))

    with open(log) as f:
        runs = [int(x) for x in f.read().split()]
    assert set(runs) == set(range(40))  # nothing lost
    ran_twice = {i for i in runs if runs.count(i) > 1}
    assert not ran_twice & set(reported)  # what had finished did not run again
    assert len(runs) < 80  # the rerun did not simply start over


def test_a_pool_without_workers_collects_what_another_runs(db, tmp_path):
    client = PersistentProcessPoolExecutor(db, run_workers=False)
    futures = [client.submit(square, i) for i in range(5)]
    assert not any(f.done() for f in futures)
    with PersistentThreadPoolExecutor(db, max_workers=2):  # the service
        assert [f.result(60) for f in futures] == [i * i for i in range(5)]
    later = PersistentProcessPoolExecutor(db, run_workers=False)  # collect later:
    assert later.submit(square, 3).result(60) == 9  # no worker anywhere: from the file
    later.shutdown()
    client.shutdown()


# -- bad input -------------------------------------------------------------------------

def test_an_unpicklable_argument_raises_at_submit_and_stores_nothing(make_pool, db):
    ex = make_pool()
    with pytest.raises(SerializationError, match="cannot pickle"):
        ex.submit(square, threading.Lock())
    assert SQLiteEngine(db).count("tasks") == 0


def test_lambdas_without_cloudpickle_get_a_clear_error(make_pool, monkeypatch):
    monkeypatch.setattr(_shared, "cloudpickle", None)
    ex = make_pool()
    with pytest.raises(SerializationError, match="cloudpickle"):
        ex.submit(lambda: 1)


def test_lambdas_work_with_cloudpickle(make_pool):
    pytest.importorskip("cloudpickle", reason="installed by the test extra")
    ex = make_pool()
    offset = 10
    assert ex.submit(lambda x: x + offset, 5).result(60) == 15


def test_an_unpicklable_result_fails_its_task_not_the_pool(make_pool):
    ex = make_pool()
    with pytest.raises(SerializationError, match="result .* cannot be pickled"):
        ex.submit(unpicklable_result).result(60)
    assert ex.submit(square, 5).result(60) == 25


def test_an_unpicklable_exception_comes_back_as_text(make_pool):
    ex = make_pool(max_retries=0)
    with pytest.raises(SerializationError, match="Unpicklable.*custom"):
        ex.submit(raise_unpicklable).result(60)
    assert ex.submit(square, 6).result(60) == 36


def test_a_foreign_file_is_refused(tmp_path):
    path = tmp_path / "notes.db"
    path.write_bytes(b"not a database at all" * 50)
    from persistqueue_liteq import IncompatibleDatabase

    with pytest.raises(IncompatibleDatabase):
        PersistentThreadPoolExecutor(str(path))


# -- failures as concurrent.futures reports them ------------------------------------

def record_and_fail(path, value):
    record(path, value)
    raise ValueError("bug %s" % value)


def test_an_exception_is_the_outcome_at_once_not_retried(make_pool, tmp_path):
    """max_retries (2 here) is for a dead worker or a timeout; a task that
    raises ran once, and its exception is its outcome, dead-lettered with
    its traceback."""
    log = str(tmp_path / "log")
    ex = make_pool(retry_backoff=30)
    with pytest.raises(ValueError, match="bug 1"):
        ex.submit(record_and_fail, log, 1).result(20)
    with open(log) as f:
        assert f.read().split() == ["1"]
    (dead,) = ex.dead_letters()
    assert dead.attempts == 1
    assert "ValueError: bug 1" in dead.dead_reason
    assert "Traceback" in dead.last_error and "in record_and_fail" in dead.last_error


def test_retries_of_exceptions_are_opt_in(make_pool, tmp_path):
    ex = make_pool(retry_on=(RuntimeError,))
    assert ex.submit(fail_once, str(tmp_path / "marker")).result(60) == "recovered"
    log = str(tmp_path / "log")
    with pytest.raises(ValueError):  # not one of retry_on: at once
        ex.submit(record_and_fail, log, 2).result(60)
    with open(log) as f:
        assert f.read().split() == ["2"]


def test_retry_on_is_checked(db):
    for cls in (PersistentProcessPoolExecutor, PersistentThreadPoolExecutor):
        with pytest.raises(TypeError, match="retry_on takes exception classes, not 'nope'"):
            cls(db, retry_on=(ValueError, "nope"))
        with pytest.raises(TypeError, match="retry_on takes exception classes, not 5"):
            cls(db, retry_on=5)


# -- no task waits behind another --------------------------------------------------

def test_a_finished_task_is_not_held_back_by_a_slow_one_of_its_batch(make_pool, tmp_path,
                                                                     big_batches):
    assert_a_quick_task_is_done_while_the_slow_one_runs(make_pool(max_workers=1), tmp_path)


def assert_a_quick_task_is_done_while_the_slow_one_runs(ex, tmp_path):
    """In one batch of one worker: a quick task, then a slow one."""
    gate = str(tmp_path / "gate")
    assert ex.submit(square, 2).result(60) == 4  # the next lease takes a batch
    quick, slow = ex._submit_many([(None, square, (3,), {}),
                                   (None, block_until, (gate,), {})])
    try:
        assert quick.result(20) == 9  # while the slow one still runs
    finally:
        open(gate, "w").close()
    assert slow.result(60) == "released"


def test_a_worker_stores_waiting_outcomes_between_two_tasks(db, tmp_path, big_batches,
                                                           monkeypatch):
    """Without the overseer (which stores them once a task turns out slow),
    the worker itself stores the outcomes that waited flush_age (0 here)
    before it starts its next task."""
    monkeypatch.setattr(_shared, "_FLUSH_AGE", 0.0)
    monkeypatch.setattr(_worker._Overseer, "_watch", lambda self: None)
    with PersistentThreadPoolExecutor(db, max_workers=1, **FAST) as ex:
        assert_a_quick_task_is_done_while_the_slow_one_runs(ex, tmp_path)


def test_a_process_worker_switches_threads_often_the_pools_process_as_before(db):
    """The overseer needs the GIL from a task that holds it; the user's own
    process keeps the interval it had."""
    before = sys.getswitchinterval()
    with PersistentProcessPoolExecutor(db, max_workers=1, **FAST) as ex:
        assert ex.submit(sys.getswitchinterval).result(60) <= _shared._WORKER_SWITCH
    assert sys.getswitchinterval() == before


def test_no_task_waits_behind_a_slow_one_while_a_worker_is_idle(make_pool, tmp_path,
                                                                big_batches):
    gate, started = str(tmp_path / "gate"), str(tmp_path / "started")
    ex = make_pool(max_workers=2)
    assert [f.result(60) for f in [ex.submit(square, i) for i in range(8)]] == [
        i * i for i in range(8)]  # both workers now lease batches
    slow, *quick = ex._submit_many([(None, block_until, (gate, started), {})]
                                   + [(None, square, (i,), {}) for i in range(5)])
    try:
        wait_for_file(started)
        assert [f.result(20) for f in quick] == [i * i for i in range(5)]
    finally:
        open(gate, "w").close()
    assert slow.result(60) == "released"


def test_a_future_is_running_while_its_task_runs(make_pool, tmp_path):
    gate, started = str(tmp_path / "gate"), str(tmp_path / "started")
    ex = make_pool(max_workers=1)
    future = ex.submit(block_until, gate, started)
    try:
        wait_for_file(started)
        deadline = time.monotonic() + 20
        while not future.running():
            assert time.monotonic() < deadline, "the future never entered RUNNING"
            time.sleep(0.005)
        assert not future.cancel()
    finally:
        open(gate, "w").close()
    assert future.result(60) == "released"
    assert not future.running()


def test_first_exception_sees_the_earlier_success(make_pool, tmp_path, big_batches):
    """CPython's test_first_exception, with a gate instead of sleeps."""
    gate = str(tmp_path / "gate")
    ex = make_pool(max_workers=2)
    assert [f.result(60) for f in [ex.submit(square, i) for i in range(8)]] == [
        i * i for i in range(8)]
    ok, bad, blocked = ex._submit_many([(None, square, (6,), {}), (None, fail, ("x",), {}),
                                        (None, block_until, (gate,), {})])
    try:
        done, pending = concurrent.futures.wait(
            [ok, bad, blocked], timeout=20, return_when=concurrent.futures.FIRST_EXCEPTION)
        assert done == {ok, bad} and pending == {blocked}
    finally:
        open(gate, "w").close()


# -- resume without stale results -----------------------------------------------------

def random_number():
    import random

    return random.random()


@pytest.mark.parametrize("kind", [PersistentProcessPoolExecutor, PersistentThreadPoolExecutor])
def test_a_clean_run_leaves_no_result_to_a_later_one(db, tmp_path, kind):
    log = str(tmp_path / "log")
    numbers = []
    for _ in range(2):
        with kind(db, max_workers=1) as ex:
            numbers.append(ex.submit(random_number).result(60))
            assert ex.submit(record, log, "x").result(60) == "x"
            assert list(ex.map(square, range(3))) == [0, 1, 4]
    assert numbers[0] != numbers[1]
    with open(log) as f:
        assert f.read().split() == ["x", "x"]  # ran in each run


@pytest.mark.parametrize("kind", [PersistentProcessPoolExecutor, PersistentThreadPoolExecutor])
def test_keyed_results_outlive_a_clean_run(db, tmp_path, kind):
    log = str(tmp_path / "log")
    for value in ("first", "second"):
        with kind(db, max_workers=1) as ex:
            assert ex.submit_keyed("report", record, log, value).result(60) == "first"
    with open(log) as f:
        assert f.read().split() == ["first"]


@pytest.mark.parametrize("kind", [PersistentProcessPoolExecutor, PersistentThreadPoolExecutor])
def test_a_run_that_did_not_end_cleanly_resumes_and_reruns_its_failures(db, tmp_path, kind):
    log, marker = str(tmp_path / "log"), str(tmp_path / "marker")
    with pytest.raises(KeyboardInterrupt):  # the with block ends with an exception
        with kind(db, max_workers=1) as ex:
            assert ex.submit(record, log, "a").result(60) == "a"
            with pytest.raises(RuntimeError, match="transient"):
                ex.submit(fail_once, marker).result(60)
            raise KeyboardInterrupt
    with kind(db, max_workers=1) as ex:
        assert ex.submit(record, log, "a").result(60) == "a"  # from the file
        assert ex.submit(fail_once, marker).result(60) == "recovered"  # run again
    with open(log) as f:
        assert f.read().split() == ["a"]


def test_the_occurrence_counts_do_not_grow_in_memory(make_pool, tmp_path, monkeypatch):
    """Identical calls stay distinct tasks with the same keys in every run,
    though only 4 calls' counts are kept in memory."""
    monkeypatch.setattr(_storer, "_OCCURRENCES_IN_MEMORY", 4)
    log = str(tmp_path / "log")
    calls = [(None, record, (log, i % 10), {}) for i in range(30)]
    runs = []
    for _ in range(2):
        ex = make_pool()
        futures = ex._submit_many(calls)
        assert [f.result(60) for f in futures] == [i % 10 for i in range(30)]
        assert len(ex._occurrences._counts) == 4
        runs.append([f._key for f in futures])
        ex.shutdown()
    assert runs[0] == runs[1] and len(set(runs[0])) == 30
    with open(log) as f:
        assert sorted(map(int, f.read().split())) == sorted([i % 10 for i in range(30)] * 2)


# -- detached use ------------------------------------------------------------------------

def test_a_pool_without_workers_returns_once_its_calls_are_stored(db, tmp_path):
    """Submit, leave, collect later: by submitting the same calls, or by key."""
    log = str(tmp_path / "log")
    left = threading.Event()

    def submit_and_leave():
        with PersistentProcessPoolExecutor(db, run_workers=False) as client:
            for i in range(5):
                client.submit(record, log, i)
            client.submit_keyed("report", record, log, "report")
        left.set()

    threading.Thread(target=submit_and_leave, daemon=True).start()
    assert left.wait(20), "leaving the with block waited for results no worker makes"
    with PersistentThreadPoolExecutor(db, max_workers=2) as service:
        with PersistentProcessPoolExecutor(db, run_workers=False) as later:
            assert [later.submit(record, log, i).result(60) for i in range(5)] == list(range(5))
            assert later.submit_keyed("report", square, 0).result(60) == "report"
        assert service.dead_letters() == []
    with open(log) as f:
        assert sorted(f.read().split()) == sorted([str(i) for i in range(5)] + ["report"])


# -- broken means broken ---------------------------------------------------------------

def _explode_in_a_child(parent_pid):
    if os.getpid() != parent_pid:
        raise ImportError("this worker cannot load what it needs")
    return Bomb()


class Bomb:
    """An initarg that cannot be loaded in a worker: the worker cannot start."""

    def __reduce__(self):
        return _explode_in_a_child, (os.getpid(),)


def noop(*args):
    return None


def test_workers_that_cannot_start_break_the_pool(db):
    ex = PersistentProcessPoolExecutor(db, max_workers=2, initializer=noop, initargs=(Bomb(),))
    try:
        future = ex.submit(square, 3)
        with pytest.raises(BrokenProcessPool, match=r"could not start.*exit code 1"):
            future.result(30)
        with pytest.raises(BrokenProcessPool, match="could not start"):
            ex.submit(square, 3)
    finally:
        ex.shutdown(cancel_futures=True)


def init_fail_logging_to(log_queue):
    import logging
    from logging.handlers import QueueHandler

    logger = logging.getLogger("concurrent.futures")
    logger.addHandler(QueueHandler(log_queue))
    logger.setLevel("CRITICAL")
    logger.propagate = False
    raise ValueError("error in initializer")


def test_a_failing_initializer_is_logged_and_named(db):
    ctx = multiprocessing.get_context("forkserver")
    log_queue = ctx.Queue()
    ex = PersistentProcessPoolExecutor(db, max_workers=1, mp_context=ctx,
                                       initializer=init_fail_logging_to, initargs=(log_queue,))
    try:
        with pytest.raises(BrokenProcessPool, match="ValueError: error in initializer"):
            ex.submit(square, 3).result(30)
    finally:
        ex.shutdown(cancel_futures=True)
    record = log_queue.get(timeout=10)  # formatted by the QueueHandler, traceback included
    assert record.levelname == "CRITICAL"
    assert record.getMessage().startswith("Exception in initializer:\nTraceback")
    assert "ValueError: error in initializer" in record.getMessage()


def test_a_failing_thread_initializer_is_logged(db, caplog):
    with caplog.at_level("CRITICAL", logger="concurrent.futures"):
        ex = PersistentThreadPoolExecutor(db, max_workers=1, initializer=bad_initializer)
        with pytest.raises(concurrent.futures.thread.BrokenThreadPool,
                           match="RuntimeError: cannot initialise"):
            ex.submit(square, 3).result(30)
        ex.shutdown()
    (record,) = [r for r in caplog.records if r.name == "concurrent.futures"]
    assert record.getMessage() == "Exception in initializer:" and record.exc_info


class Dummy:
    pass


def make_dummy(_):
    return Dummy()


def test_map_holds_no_result_it_has_yielded(make_pool):
    """CPython's test_free_reference."""
    import gc
    import weakref

    ex = make_pool()
    for obj in ex.map(make_dummy, range(10), chunksize=3):
        ref = weakref.ref(obj)
        del obj
        gc.collect()
        assert ref() is None


def wait_until(predicate, what, timeout=30):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_a_worker_killed_while_idle_no_longer_counts_as_idle(db):
    """Else busy workers would go on handing their tasks back to nobody."""
    with PersistentProcessPoolExecutor(db, max_workers=2) as ex:
        assert ex.submit(square, 2).result(60) == 4
        wait_until(lambda: all(s.counted_idle for s in ex._workers.values()), "never idle")
        victim = next(iter(ex._workers))
        os.kill(victim.pid, signal.SIGKILL)
        wait_until(lambda: victim not in ex._workers and len(ex._workers) == 2
                   and all(s.counted_idle for s in ex._workers.values()), "not replaced")
        assert ex._idle._value.value == 2
