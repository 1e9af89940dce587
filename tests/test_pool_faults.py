"""The pools under faults: clock steps, storage errors, a killed parent."""

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from persistqueue_liteq.exceptions import TaskTimeout
from persistqueue_liteq.pool import PersistentProcessPoolExecutor

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
    except FileNotFoundError:
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
