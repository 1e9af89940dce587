"""The pools under faults: clock steps, storage errors, a killed parent."""

import logging
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from persistqueue_liteq.exceptions import StorageFault, TaskTimeout
from persistqueue_liteq.pool import PersistentProcessPoolExecutor, PersistentThreadPoolExecutor
from persistqueue_liteq.sqlite.engine import SQLiteEngine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOUR = 3600.0


# Task functions and initializers live at module level, so that every start
# method can load them.

def block_until(path, started=None):
    if started is not None:
        open(started, "w").close()
    while not os.path.exists(path):
        time.sleep(0.01)
    return "released"


def square(x):
    return x * x


def payload(n, log=None):
    """A result of ``n`` bytes; each execution appends a line to ``log``."""
    if log is not None:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, b"ran\n")
        os.close(fd)
    return b"x" * n


def meet(directory, me, others):
    """Return once ``others`` other tasks have called meet too: proof that
    that many workers run at once."""
    open(os.path.join(directory, "here.%d" % me), "w").close()
    deadline = time.monotonic() + 30
    while len([n for n in os.listdir(directory) if n.startswith("here.")]) <= others:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    return me


def limit_blobs(size):
    """Initializer: every SQLite connection of this process refuses a
    string or blob over ``size`` bytes (SQLite's own limit is about 1e9)."""
    connect = sqlite3.connect

    def limited(*args, **kwargs):
        conn = connect(*args, **kwargs)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, size)
        return conn

    sqlite3.connect = limited


def hang():
    threading.Event().wait()


def step_clock(seconds):
    """Initializer: this worker's wall clock is ``seconds`` off."""
    real = time.time
    time.time = lambda: real() + seconds


def exit_with(code):
    sys.exit(code)


def start_a_process(method, code):
    """A task that starts a process of its own and returns its exit code."""
    child = multiprocessing.get_context(method).Process(target=exit_with, args=(code,))
    child.start()
    child.join()
    return child.exitcode


def wait_for_file(path, timeout=30):
    """Wait until another process has created ``path`` (its way to say "now")."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, "%s never appeared" % path
        time.sleep(0.005)


def step_parent_clock(monkeypatch, ex, seconds):
    """Step this process's wall clock by ``seconds`` and return once the
    pool's manager has looked at its workers' run times at least once since."""
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + seconds)
    looked = threading.Event()
    enforce = ex._enforce_timeout

    def enforce_and_tell():
        enforce()
        looked.set()

    monkeypatch.setattr(ex, "_enforce_timeout", enforce_and_tell)
    assert looked.wait(30)


# -- task_timeout counts monotonic time ------------------------------------------------

def test_a_clock_step_forward_does_not_kill_a_healthy_task(db, tmp_path, monkeypatch):
    release, started = str(tmp_path / "release"), str(tmp_path / "started")
    with PersistentProcessPoolExecutor(db, max_workers=1, max_retries=0,
                                       task_timeout=30) as ex:
        future = ex.submit(block_until, release, started)
        wait_for_file(started)
        step_parent_clock(monkeypatch, ex, +HOUR)
        open(release, "w").close()
        assert future.result(10) == "released"


def test_a_clock_step_back_does_not_spare_a_hung_task(db, monkeypatch):
    with PersistentProcessPoolExecutor(db, max_workers=1, max_retries=0,
                                       task_timeout=0.5) as ex:
        future = ex.submit(hang)
        step_parent_clock(monkeypatch, ex, -HOUR)
        with pytest.raises(TaskTimeout, match="task_timeout=0.5s"):
            future.result(10)


def test_a_worker_clock_ahead_does_not_spare_a_hung_task(db):
    with PersistentProcessPoolExecutor(db, max_workers=1, max_retries=0, task_timeout=0.5,
                                       initializer=step_clock, initargs=(HOUR,)) as ex:
        with pytest.raises(TaskTimeout, match="task_timeout=0.5s"):
            ex.submit(hang).result(10)


# -- workers follow their parent --------------------------------------------------------

PARENT_SCRIPT = r"""
import multiprocessing.forkserver, multiprocessing.resource_tracker, sys
from persistqueue_liteq.pool import PersistentProcessPoolExecutor
from tests.test_pool_faults import block_until

db, started = sys.argv[1], sys.argv[2]
ex = PersistentProcessPoolExecutor(db, max_workers=2, lease_seconds=2)
future = ex.submit(block_until, started + ".never", started)  # a 60 s task, or longer
pids = [p.pid for p in ex._workers]
pids.append(multiprocessing.forkserver._forkserver._forkserver_pid)
pids.append(multiprocessing.resource_tracker._resource_tracker._pid)
print(" ".join(map(str, pids)), flush=True)
future.result()
"""


def alive(pid):
    """True while ``pid`` runs (a zombie waiting for its reaper does not)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone before the open, or the read
        return False


def wait_gone(pids, timeout):
    deadline = time.monotonic() + timeout
    while True:
        left = [pid for pid in pids if alive(pid)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_workers_forkserver_and_tracker_exit_when_the_parent_is_killed(db, tmp_path):
    started = str(tmp_path / "started")
    driver = subprocess.Popen([sys.executable, "-c", PARENT_SCRIPT, db, started],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT,
                              env=dict(os.environ, PYTHONPATH=ROOT))
    pids = []
    try:
        pids = [int(pid) for pid in driver.stdout.readline().split()]
        assert len(pids) == 4 and all(pids), pids
        wait_for_file(started)  # a worker runs the long task
        driver.kill()
        driver.wait()
        left = wait_gone(pids, 5)
        assert not left, "still running after their parent was killed: %s" % left
    finally:
        driver.kill()
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_a_task_may_start_a_process(db, method):
    with PersistentProcessPoolExecutor(db, max_workers=1, max_retries=0,
                                       mp_context=multiprocessing.get_context(method)) as ex:
        assert ex.submit(start_a_process, "spawn", 7).result(60) == 7
        assert ex.submit(start_a_process, "fork", 5).result(60) == 5


LEFT_OPEN_SCRIPT = r"""
import sys
from persistqueue_liteq.pool import PersistentProcessPoolExecutor
from tests.test_pool_faults import block_until

ex = PersistentProcessPoolExecutor(sys.argv[1], max_workers=2)
future = ex.submit(block_until, sys.argv[2] + ".never", sys.argv[2])
while not __import__("os").path.exists(sys.argv[2]):
    pass
print("exiting", flush=True)
"""


def test_an_interpreter_exits_with_a_pool_left_running(db, tmp_path):
    """Its workers are not daemonic, yet they do not keep it waiting once
    the pending task is done (the interpreter waits for that, as with the
    stdlib's pools: CPython's test_interpreter_shutdown)."""
    started = str(tmp_path / "started")
    proc = subprocess.Popen([sys.executable, "-c", LEFT_OPEN_SCRIPT, db, started], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "exiting\n"
        open(started + ".never", "w").close()  # the task ends
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert out == ""


# -- storage faults ---------------------------------------------------------------------

FAULTY = dict(max_workers=2, max_retries=1, retry_backoff=0, lease_seconds=1.5,
              timeout_seconds=0.2)


@pytest.fixture(params=["process", "thread"])
def kind(request):
    return request.param


@pytest.fixture
def make_faulty_pool(kind, request):
    pools = []

    def make(path, **options):
        options = {**FAULTY, **options}
        cls = PersistentProcessPoolExecutor if kind == "process" else PersistentThreadPoolExecutor
        pools.append(cls(path, **options))
        return pools[-1]

    yield make
    for ex in pools:
        ex.shutdown(wait=True, cancel_futures=True)


class Logged(logging.Handler):
    """Tells when the pool logged a warning (or worse) that contains ``text``."""

    def __init__(self, text):
        super().__init__(logging.WARNING)
        self.text, self.seen = text, threading.Event()

    def emit(self, record):
        if self.text in record.getMessage():
            self.seen.set()


@pytest.fixture
def logged():
    handlers = []

    def watch(text):
        handlers.append(Logged(text))
        logging.getLogger("persistqueue_liteq").addHandler(handlers[-1])
        return handlers[-1].seen

    yield watch
    for handler in handlers:
        logging.getLogger("persistqueue_liteq").removeHandler(handler)


def outcome(future, timeout=30):
    """The future's result, or its exception if that is a StorageFault."""
    try:
        return future.result(timeout)
    except StorageFault as exc:
        return exc


def check_still_works(ex, tmp_path):
    """Both workers of ``ex`` live (2 tasks run at once), and results come back."""
    meeting = tmp_path / ("meeting%d" % time.monotonic_ns())
    meeting.mkdir()
    first = ex.submit(meet, str(meeting), 0, 1)
    wait_for_file(str(meeting / "here.0"))  # one worker is busy: the other runs the next
    second = ex.submit(meet, str(meeting), 1, 1)
    assert (first.result(30), second.result(30)) == (0, 1)
    assert list(ex.map(square, range(20))) == [i * i for i in range(20)]


def hold_write_lock(path, seconds):
    """Another program's connection holds the write lock for ``seconds``,
    in a thread; returns the thread once the lock is held."""
    held = threading.Event()

    def hold():
        other = sqlite3.connect(path, isolation_level=None, timeout=30)
        other.execute("BEGIN EXCLUSIVE")
        held.set()
        time.sleep(seconds)  # the fault's duration, not a synchronisation
        other.execute("COMMIT")
        other.close()

    thread = threading.Thread(target=hold)
    thread.start()
    assert held.wait(30)
    return thread


def test_a_lock_held_longer_than_timeout_seconds_is_waited_out(make_faulty_pool, db, tmp_path,
                                                               logged):
    ex = make_faulty_pool(db)
    assert ex.submit(square, 2).result(30) == 4
    faulted = logged(db)
    locked = hold_write_lock(db, 5 * FAULTY["timeout_seconds"])
    futures = [ex.submit(square, i) for i in range(200)]  # the storer waits for the lock
    locked.join()
    assert [f.result(30) for f in futures] == [i * i for i in range(200)]
    assert faulted.is_set()  # the pool did meet the lock
    check_still_works(ex, tmp_path)


def test_a_lock_held_too_long_fails_the_futures_it_holds_up(make_faulty_pool, db, tmp_path,
                                                            logged):
    ex = make_faulty_pool(db)
    assert ex.submit(square, 2).result(30) == 4
    locked = hold_write_lock(db, 2 * FAULTY["lease_seconds"])
    futures = [ex.submit(square, i) for i in range(200)]
    locked.join()
    outcomes = [outcome(f) for f in futures]
    faults = [o for o in outcomes if isinstance(o, StorageFault)]
    assert faults and all("for more than" in str(f) and db in str(f) for f in faults)
    assert all(o == i * i for i, o in enumerate(outcomes) if not isinstance(o, StorageFault))
    check_still_works(ex, tmp_path)


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MB tmpfs (root only), and a way to fill it up and free it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip("cannot mount a tmpfs here: %s" % done.stderr.strip())

    class Disk:
        path = str(mount)
        filler = str(mount / "filler")

        def fill(self, leave=0):
            """Fill the disk up, but for about ``leave`` bytes."""
            fd = os.open(self.filler, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            try:
                while True:
                    os.write(fd, b"\0" * 4096)
            except OSError:
                pass
            finally:
                os.close(fd)
            if leave:
                os.truncate(self.filler, max(0, os.path.getsize(self.filler) - leave))

        def free(self):
            os.unlink(self.filler)

    yield Disk()
    subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.mark.parametrize("lasting", [False, True], ids=["passing", "lasting"])
def test_a_full_disk_is_survived(make_faulty_pool, small_disk, tmp_path, logged, lasting):
    db = os.path.join(small_disk.path, "queue.db")
    ex = make_faulty_pool(db)
    assert list(ex.map(square, range(10))) == [i * i for i in range(10)]
    faulted = logged(db)
    small_disk.fill()
    futures = [ex.submit(payload, 20000) for _ in range(100)]
    assert faulted.wait(30)  # the pool met the full disk
    if lasting:
        time.sleep(2 * FAULTY["lease_seconds"])  # the fault's duration, not a synchronisation
    small_disk.free()
    outcomes = [outcome(f) for f in futures]
    if lasting:
        assert any(isinstance(o, StorageFault) for o in outcomes)
    assert all(o == b"x" * 20000 for o in outcomes if not isinstance(o, StorageFault))
    check_still_works(ex, tmp_path)


def test_a_result_too_big_for_the_disk_fails_its_task(make_faulty_pool, small_disk, tmp_path):
    db = os.path.join(small_disk.path, "queue.db")
    log = str(tmp_path / "executions")
    ex = make_faulty_pool(db)
    assert list(ex.map(square, range(10))) == [i * i for i in range(10)]
    small_disk.fill(leave=200000)
    with pytest.raises(StorageFault, match="result of task .* cannot be stored"):
        ex.submit(payload, 2000000, log).result(30)
    with open(log) as f:
        assert len(f.readlines()) == FAULTY["max_retries"] + 1  # each attempt counted
    assert len(ex.dead_letters()) == 1
    assert ex.submit(square, 3).result(30) == 9  # the pool goes on


@pytest.mark.skipif(sys.version_info < (3, 11), reason="Connection.setlimit is new in 3.11")
def test_a_result_over_the_blob_limit_fails_its_task(kind, db, tmp_path, monkeypatch):
    log = str(tmp_path / "executions")
    if kind == "thread":
        monkeypatch.setattr(sqlite3, "connect", sqlite3.connect)  # undone after the test
        limit_blobs(100000)  # the pool's threads connect after this
        options = {}
    else:
        options = dict(initializer=limit_blobs, initargs=(100000,))
    cls = PersistentProcessPoolExecutor if kind == "process" else PersistentThreadPoolExecutor
    with cls(db, max_workers=1, max_retries=2, retry_backoff=0, **options) as ex:
        future = ex.submit(payload, 200000, log)
        with pytest.raises(StorageFault, match="result of task .* cannot be stored: .*longer than SQLite stores"):
            future.result(30)
        assert ex.submit(payload, 1000).result(30) == b"x" * 1000
        [dead] = ex.dead_letters()
        assert "cannot be stored" in dead.dead_reason
    with open(log) as f:
        assert len(f.readlines()) == 2 + 1  # max_retries + 1 executions, then no more


def test_a_forked_worker_that_ends_leaves_its_siblings_alone(db, tmp_path):
    """A worker forked from the pool's process inherits the pool; when it
    ends (max_tasks_per_child) the exit handlers must not stop the pool."""
    meeting = tmp_path / "meeting"
    meeting.mkdir()
    with PersistentProcessPoolExecutor(db, max_workers=2, max_tasks_per_child=1,
                                       mp_context=multiprocessing.get_context("fork")) as ex:
        first = ex.submit(meet, str(meeting), 0, 1)
        wait_for_file(str(meeting / "here.0"))
        assert ex.submit(square, 3).result(30) == 9  # the other worker runs it, then ends
        assert ex.submit(meet, str(meeting), 1, 1).result(30) == 1
        assert first.result(30) == 0


def test_a_worker_thread_that_dies_is_replaced_and_its_task_handed_back(db, monkeypatch, logged):
    """A bug (not a storage fault) ends a worker thread while it holds a
    task: the death is logged with its traceback, the task goes back at once
    (not after its 60 s lease: the heartbeat no longer extends it) and a new
    thread runs it."""
    complete_many = SQLiteEngine.complete_many
    failed = []

    def complete_many_with_a_bug(self, queue, outcomes, *args, **kwargs):
        if outcomes and not failed:
            failed.append(outcomes)
            raise RuntimeError("a bug")
        return complete_many(self, queue, outcomes, *args, **kwargs)

    monkeypatch.setattr(SQLiteEngine, "complete_many", complete_many_with_a_bug)
    died = logged("stopped")
    with PersistentThreadPoolExecutor(db, max_workers=1, lease_seconds=60) as ex:
        assert ex.submit(square, 5).result(10) == 25
    assert failed and died.is_set()


def test_a_worker_that_gives_up_fails_the_futures_of_stored_tasks(make_faulty_pool, db,
                                                                  tmp_path):
    """The storer has nothing to store and the results can be read: only the
    workers meet the fault.  When they give up, the futures of the tasks
    waiting in the file fail too, instead of waiting as long as the fault."""
    ex = make_faulty_pool(db)
    release = str(tmp_path / "release")
    started = [str(tmp_path / ("started%d" % i)) for i in range(2)]
    running = [ex.submit(block_until, release, path) for path in started]
    for path in started:
        wait_for_file(path)  # each worker runs one
    waiting = [ex.submit(square, i) for i in range(10)]
    ex._flush()  # stored
    locked = hold_write_lock(db, 3 * FAULTY["lease_seconds"])
    open(release, "w").close()  # the running tasks end; their results cannot be stored
    for future in waiting:
        with pytest.raises(StorageFault, match="for more than"):
            future.result(30)
    locked.join()
    assert all(isinstance(outcome(f), (str, StorageFault)) for f in running)
    check_still_works(ex, tmp_path)
