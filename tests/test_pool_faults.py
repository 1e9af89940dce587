"""The pools under faults: clock steps, storage errors, a killed parent."""

import os
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
