"""Chaos: the resumable batch example, its process group SIGKILLed again and
again (now and then the script alone), then run to its end.  Every result is
stored exactly once, no task that had finished runs again, and no process of
a killed run is left."""

import os
import random
import selectors
import signal
import subprocess
import sys
import time

import pytest

from persistqueue_liteq.sqlite.engine import SQLiteEngine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "resumable_batch.py")
ITEMS = 200  # as in the example
KILLS = 12


def session_processes(sid):
    """Pids of the live processes of session ``sid`` (zombies do not count)."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/stat" % name) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if fields[0] != "Z" and int(fields[3]) == sid:  # state, ..., session
                pids.append(int(name))
    return pids


def finished_items(db):
    """item -> how many times its result was stored (the results' sequence
    numbers are never reused, so a result stored again would leave a gap)."""
    engine = SQLiteEngine(db)
    try:
        rows = engine.results_since("tasks", 0, limit=10 * ITEMS)
    finally:
        engine.close()
    return {int(key.split("-")[1]): seq for seq, key, _, _ in rows}


def read_lines_until(proc, enough, timeout=30):
    """Read the run's output until ``enough(lines)`` or its end."""
    lines, buffer = [], b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while not enough(lines):
            assert time.monotonic() < deadline, "the run said nothing for %ss" % timeout
            if not selector.select(0.1):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            lines.extend(line.decode() for line in complete)
    return lines


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_a_batch_killed_again_and_again_stores_every_result_once(tmp_path):
    seed = random.randrange(1 << 30)
    print("seed", seed)  # shown if the test fails
    chance = random.Random(seed)
    db, log = str(tmp_path / "batch.db"), str(tmp_path / "executions")
    command = [sys.executable, SCRIPT, db, "--delay", "0.01", "--log", log]
    env = dict(os.environ, PYTHONPATH=ROOT)
    runs = []  # per killed run: its pid and the items finished when it was killed
    for _ in range(KILLS):
        finished = finished_items(db) if os.path.exists(db) else {}
        driver = subprocess.Popen(command, stdout=subprocess.PIPE, env=env, cwd=ROOT,
                                  start_new_session=True)
        try:
            if chance.random() < 0.3:  # while it starts, or stores its tasks
                time.sleep(chance.uniform(0, 0.5))  # chaos, not synchronisation
            else:  # while its workers run tasks
                target = len(finished) + chance.randint(1, 15)
                read_lines_until(driver, lambda lines: sum(
                    line.startswith("done") for line in lines) >= target)
        finally:
            if chance.random() < 0.3:  # the script alone: the rest must follow it
                driver.kill()
            else:
                os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        deadline = time.monotonic() + 5
        while session_processes(driver.pid):
            assert time.monotonic() < deadline, "left behind: %s" % session_processes(driver.pid)
            time.sleep(0.02)
        runs.append((driver.pid, set(finished_items(db)) if os.path.exists(db) else set()))

    last = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=60)
    assert last.returncode == 0, last.stderr
    assert "finished: %d results, 0 wrong" % ITEMS in last.stdout

    stored = finished_items(db)
    assert sorted(stored) == list(range(ITEMS))
    # Sequence numbers 1..ITEMS: each result was stored once, none replaced.
    assert sorted(stored.values()) == list(range(1, ITEMS + 1))
    with open(log) as f:
        executions = [tuple(map(int, line.split())) for line in f]
    assert {item for _, item in executions} == set(range(ITEMS))
    pids = [pid for pid, _ in runs]
    for i, (pid, done_then) in enumerate(runs):
        later = {item for run_pid, item in executions
                 if run_pid not in pids[:i + 1]}  # by a later run
        assert not later & done_then, "finished before kill %d, yet ran again" % (i + 1)
