"""The pools catch only what they mean.  A storage fault is waited out (see
test_pool_faults); any other exception of a pool's own threads is a bug,
which is logged with its traceback and fails the futures it concerns,
instead of a thread looping on it silently while those futures hang."""

import logging
import os
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from concurrent.futures.thread import BrokenThreadPool

import pytest

from persistqueue_liteq.pool import _shared, _worker
from persistqueue_liteq.pool import PersistentProcessPoolExecutor, PersistentThreadPoolExecutor
from persistqueue_liteq.sqlite.engine import SQLiteEngine

from .test_pool import block_until, fail_once, square

POOLS = {"threads": PersistentThreadPoolExecutor, "processes": PersistentProcessPoolExecutor}


def quick_or_blocking(x, release):
    return x if x == 0 else block_until(release)


def wait_for_file(path, timeout=30):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, "%s never appeared" % path
        time.sleep(0.005)


class _Records(logging.Handler):
    """The ERROR records of the "persistqueue_liteq" logger that carry
    ``error`` as their exception; ``seen`` is set at the first."""

    def __init__(self, error):
        super().__init__(logging.ERROR)
        self.error, self.records, self.seen = error, [], threading.Event()

    def emit(self, record):
        if record.exc_info and record.exc_info[1] is self.error:
            self.records.append(record)
            self.seen.set()


@pytest.fixture
def logged():
    logger = logging.getLogger("persistqueue_liteq")
    handlers = []

    def watch(error):
        handlers.append(_Records(error))
        logger.addHandler(handlers[-1])
        return handlers[-1]

    yield watch
    for handler in handlers:
        logger.removeHandler(handler)


@pytest.mark.parametrize("kind", sorted(POOLS))
def test_a_bug_in_the_collector_fails_the_futures_and_is_logged(db, monkeypatch, logged, kind):
    """The collector's read of the results raises what no storage fault
    raises: the futures waiting for results fail with it (they hung, the
    collector logging "it goes on" every second), and the results stay
    stored."""
    boom = RuntimeError("boom")
    records = logged(boom)
    ex = POOLS[kind](db, max_workers=1)
    try:
        def results_since(*args, **kwargs):
            raise boom

        monkeypatch.setattr(ex._engine, "results_since", results_since)
        future = ex.submit_keyed("seven", square, 7)
        with pytest.raises(RuntimeError, match="boom") as caught:
            future.result(timeout=20)
        assert caught.value is boom
        assert records.seen.is_set()
        assert "collector" in records.records[0].getMessage()
        monkeypatch.undo()  # the collector works again, and nothing was lost:
        assert ex.submit_keyed("seven", square, 7).result(timeout=20) == 49
        assert ex.submit(square, 8).result(timeout=20) == 64
    finally:
        monkeypatch.undo()
        ex.shutdown()


def test_a_bug_in_the_overseer_is_logged_once_and_the_worker_does_without_it(
        db, tmp_path, monkeypatch, logged):
    """The overseer of a worker running a slow task cannot store the quick
    tasks' outcomes (a bug, not a fault): it says so once, with the
    traceback (it used to try again silently every millisecond), and the
    worker stores them with its next lease."""
    boom = RuntimeError("boom")
    records = logged(boom)
    complete_many = SQLiteEngine.complete_many

    def overseer_cannot_store(self, queue, outcomes, *args, **kwargs):
        if threading.current_thread().name == "persistqueue_liteq overseer":
            raise boom
        return complete_many(self, queue, outcomes, *args, **kwargs)

    release = str(tmp_path / "release")
    with PersistentThreadPoolExecutor(db, max_workers=1) as ex:
        assert list(ex.map(square, range(200))) == [i * i for i in range(200)]  # batches grow
        monkeypatch.setattr(SQLiteEngine, "complete_many", overseer_cannot_store)
        results = ex.map(quick_or_blocking, [0, 1], [release] * 2)  # one batch
        try:
            assert records.seen.wait(20), "the overseer's failure was not logged"
        finally:
            open(release, "w").close()
        assert "overseer" in records.records[0].getMessage()
        assert list(results) == [0, "released"]
    assert len(records.records) == 1


def test_a_bug_in_the_heartbeat_fails_the_futures_of_the_tasks_it_holds(
        db, tmp_path, monkeypatch, logged):
    """Extending the leases raises what no storage fault raises: the tasks
    the workers hold are no longer kept for them, so their futures fail with
    it (they waited for a task that may be delivered again meanwhile)."""
    boom = RuntimeError("boom")
    records = logged(boom)
    release, started = str(tmp_path / "release"), str(tmp_path / "started")
    with PersistentThreadPoolExecutor(db, max_workers=1, lease_seconds=0.3) as ex:
        def set_visibility(*args, **kwargs):
            raise boom

        monkeypatch.setattr(ex._engine, "set_visibility", set_visibility)
        future = ex.submit(block_until, release, started)
        wait_for_file(started)
        try:
            with pytest.raises(RuntimeError, match="boom"):
                future.result(timeout=20)
        finally:
            open(release, "w").close()
        assert "heartbeat" in records.records[0].getMessage()
        monkeypatch.undo()
        assert ex.submit(square, 3).result(timeout=20) == 9


def test_a_bug_in_the_manager_breaks_the_pool_with_it_as_the_cause(db, tmp_path, logged):
    """The process pool's manager meets a bug: it would meet it again at
    every turn (it used to log "it goes on" each second while the futures
    hung), so the pool is broken, its futures failing with
    BrokenProcessPool whose cause is the bug."""
    boom = RuntimeError("boom")
    records = logged(boom)
    release, started = str(tmp_path / "release"), str(tmp_path / "started")
    ex = PersistentProcessPoolExecutor(db, max_workers=1, task_timeout=60)
    try:
        future = ex.submit(block_until, release, started)
        wait_for_file(started)

        def enforce_timeout():
            raise boom

        ex._enforce_timeout = enforce_timeout  # runs every 50 ms with a task_timeout
        with pytest.raises(BrokenProcessPool, match="manager thread failed: RuntimeError: boom") \
                as caught:
            future.result(timeout=20)
        assert caught.value.__cause__ is boom
        assert records.seen.is_set()
        with pytest.raises(BrokenProcessPool):
            ex.submit(square, 2)
    finally:
        open(release, "w").close()
        ex.shutdown()


def test_a_bug_handing_back_the_tasks_of_a_dead_worker_fails_their_futures(
        db, monkeypatch, logged):
    """A worker thread ends on a bug, and handing its task back meets a bug
    too: the task's future fails with it (it waited out the task's whole
    lease, the thread's end unhandled)."""
    bug, boom = RuntimeError("a bug"), RuntimeError("boom")
    records = logged(boom)
    complete_many = SQLiteEngine.complete_many
    failed = []

    def complete_many_with_a_bug(self, queue, outcomes, *args, **kwargs):
        worker = threading.current_thread().name.startswith("persistqueue_liteq worker")
        if outcomes and worker and not failed:
            failed.append(outcomes)
            raise bug
        return complete_many(self, queue, outcomes, *args, **kwargs)

    def release(self, *args, **kwargs):
        raise boom

    monkeypatch.setattr(SQLiteEngine, "complete_many", complete_many_with_a_bug)
    monkeypatch.setattr(SQLiteEngine, "release", release)
    # The worker's own store must meet the bug: on a loaded machine its
    # overseer could store the outcome first (it stores outcomes older than
    # 2 ms), and the future got 25 (seen once in CI on 3.13).
    monkeypatch.setattr(_worker._Overseer, "_store", lambda self: None)
    with PersistentThreadPoolExecutor(db, max_workers=1, lease_seconds=60) as ex:
        future = ex.submit(square, 5)
        with pytest.raises(RuntimeError, match="boom"):
            future.result(timeout=20)
        assert failed and records.seen.is_set()
        monkeypatch.undo()
        assert ex.submit(square, 6).result(timeout=20) == 36


def _buggy_complete_many(self, *args, **kwargs):
    raise TypeError("a bug in complete_many")


def _break_complete_many():
    """A process worker's initializer: every lease of the worker raises."""
    SQLiteEngine.complete_many = _buggy_complete_many


@pytest.mark.parametrize("kind", POOLS)
def test_workers_stopped_by_a_bug_again_and_again_break_the_pool(db, monkeypatch, caplog, kind):
    """A worker whose own storage calls fail with a bug (not a storage
    fault) every time is not replaced forever: after a few in a row with no
    result stored meanwhile the pool is broken, its message naming the bug,
    as concurrent.futures breaks a pool whose workers cannot run."""
    caplog.set_level(logging.INFO, logger="persistqueue_liteq")
    if kind == "threads":
        monkeypatch.setattr(SQLiteEngine, "complete_many", _buggy_complete_many)
        options, broken = {}, BrokenThreadPool
    else:
        options, broken = {"initializer": _break_complete_many}, BrokenProcessPool
    ex = POOLS[kind](db, max_workers=2, **options)
    try:
        try:
            future = ex.submit(square, 3)
        except broken:  # broken already: its workers need no task to fail
            pass
        else:
            with pytest.raises(broken, match="TypeError: a bug in complete_many"):
                future.result(timeout=30)
        with pytest.raises(broken, match="TypeError: a bug in complete_many"):
            ex.submit(square, 4)
    finally:
        ex.shutdown(wait=True)
    if kind == "threads":  # the log says what happened: two replaced, then broken
        replaced = [r for r in caplog.records if "a new thread replaces" in r.getMessage()]
        assert len(replaced) == _shared._BUGS_IN_A_ROW - 1


def _busy_now_and_then(method, times):
    """A process worker's initializer: the first ``times`` calls of
    ``method`` in this worker find the file locked (a passing fault), then
    it works."""
    from persistqueue_liteq.exceptions import DatabaseBusy

    real, left = getattr(SQLiteEngine, method), [times]

    def flaky(self, *args, **kwargs):
        if left[0]:
            left[0] -= 1
            raise DatabaseBusy("locked for a moment")
        return real(self, *args, **kwargs)

    setattr(SQLiteEngine, method, flaky)


def test_a_passing_fault_in_the_workers_storage_calls_is_waited_out(db):
    """A lock that passes is waited out by the worker: no worker stops, the
    pool does not break (from the pool11 branch)."""
    with PersistentProcessPoolExecutor(db, max_workers=2, initializer=_busy_now_and_then,
                                       initargs=("complete_many", 3)) as ex:
        futures = [ex.submit(square, i) for i in range(20)]
        assert [f.result(timeout=40) for f in futures] == [i * i for i in range(20)]
        assert ex.submit(square, 21).result(timeout=40) == 441


def test_redrive_takes_ids_from_a_generator(db, tmp_path):
    """The ids are read once: a generator redrives what it names (it used
    to be used up by the forgetting of the stored failures, and nothing was
    redriven)."""
    marker = str(tmp_path / "failed once")
    with PersistentThreadPoolExecutor(db, max_workers=1, max_retries=0) as ex:
        with pytest.raises(RuntimeError, match="transient"):
            ex.submit_keyed("job-1", fail_once, marker).result(60)
        assert ex.redrive(m.id for m in ex.dead_letters()) == 1
        # Run again (not answered with the stored failure): it succeeds now.
        assert ex.submit_keyed("job-1", fail_once, marker).result(60) == "recovered"
        assert ex.dead_letters() == []
