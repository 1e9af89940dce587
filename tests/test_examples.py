"""Every example runs, so that none rots."""

import collections
import os
import re
import signal
import sqlite3
import subprocess
import sys

from persistqueue_liteq import LiteQueue

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_example(name, *args):
    """Run an example to its end; assert it succeeded and return its output."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", name), *args],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_quickstart_loses_no_job(tmp_path):
    out = run_example("quickstart.py", str(tmp_path / "jobs.db"))
    assert "restart:  5 jobs still there" in out
    for i in range(1, 6):
        assert "done resize photo %d" % i in out
    assert "done resize photo 1 (attempt 2: its first worker died)" in out
    assert out.rstrip().endswith("all jobs done, none lost")


def test_threaded_crawler_resumes_after_a_kill(tmp_path):
    out = run_example("threaded_crawler.py", str(tmp_path / "frontier.db"))
    run1, _, run2 = out.partition("killed after 8 pages\n")
    assert run2, out
    fetched1 = re.findall(r"^fetched (/page\d+\.html)$", run1, re.M)
    fetched2 = re.findall(r"^fetched (/page\d+\.html)$", run2, re.M)
    assert len(fetched1) == 8
    left = int(re.search(r"^restart: (\d+) pages still in the file$", out, re.M).group(1))
    assert left > 0
    # The restart went on from the file: nothing fetched twice, nothing missed.
    assert sorted(fetched1 + fetched2) == sorted("/page%d.html" % i for i in range(40))
    assert "run 2 fetched 32 pages" in out
    assert out.rstrip().endswith("found 40 distinct pages of 40, 0 recorded twice")


def test_producer_consumer_processes_consume_each_item_once(tmp_path):
    out = run_example("producer_consumer.py", str(tmp_path / "jobs.db"))
    assert "producers put 400 items; all done" in out
    taken = [int(n) for n in re.findall(r"^consumer \d+ took (\d+) items$", out, re.M)]
    assert len(taken) == 3 and sum(taken) == 400
    assert out.rstrip().endswith("consumed 400 distinct items of 400, duplicates 0, missing 0")


def test_durable_pool_retries_then_dead_letters(tmp_path):
    out = run_example("durable_pool.py", str(tmp_path / "tasks.db"))
    assert "submit: square(12) = 144" in out
    assert "map: [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]" in out
    for text in ("7", "42", "1000"):
        assert "as_completed: parse(%r) = %s" % (text, text) in out
    assert "retried: report.csv fetched on attempt 2" in out
    assert "failed for good: ValueError: invalid literal for int() with base 10: 'twelve'" in out
    dead = re.findall(r"^dead letter: task \d+, (\d+) attempts, (.*)$", out, re.M)
    assert dead == [("1", "raised ValueError: invalid literal for int() with base 10: 'twelve'")]


def test_resumable_batch_killed_with_sigkill_resumes(tmp_path):
    db = str(tmp_path / "batch.db")
    log = tmp_path / "executions"
    script = os.path.join(ROOT, "examples", "resumable_batch.py")
    env = dict(os.environ, PYTHONPATH=ROOT)
    first = subprocess.Popen(
        [sys.executable, script, db, "--delay", "0.1", "--log", str(log)],
        stdout=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )
    lines = []
    try:
        while sum(line.startswith("done ") for line in lines) < 10:
            line = first.stdout.readline()
            assert line, "the first run ended early: %r" % lines
            lines.append(line)
    finally:
        try:
            os.killpg(first.pid, signal.SIGKILL)  # the script, its workers, the forkserver
        except ProcessLookupError:
            pass
        first.wait()
    with first.stdout:
        lines += first.stdout.read().splitlines(True)
    assert first.returncode == -signal.SIGKILL
    finished1 = {int(m) for m in re.findall(r"^done (\d+) ", "".join(lines), re.M)}
    assert len(finished1) >= 10

    out = run_example("resumable_batch.py", db, "--log", str(log))
    done2 = collections.Counter(int(m) for m in re.findall(r"^done (\d+) ", out, re.M))
    assert sorted(done2) == list(range(200)) and set(done2.values()) == {1}
    assert "finished: 200 results, 0 wrong, sum 2646700" in out

    executions = [line.split() for line in log.read_text().splitlines()]
    run1 = [int(item) for pid, item in executions if int(pid) == first.pid]
    run2 = [int(item) for pid, item in executions if int(pid) != first.pid]
    assert set(run1) | set(run2) == set(range(200))  # every item ran at least once
    assert not finished1 & set(run2)  # what finished in run 1 did not run again
    assert len(run2) == len(set(run2)) < 200  # run 2 ran only what was left, once
    assert out.rstrip().endswith(
        "this run executed %d tasks; the other results came from the file" % len(run2))


def test_dead_letters_redrive_after_the_fix(tmp_path):
    db = str(tmp_path / "orders.db")
    out = run_example("dead_letters.py", db)
    before_fix, _, after_fix = out.partition("handler fixed; redriving 1 message(s):\n")
    assert after_fix, out
    for attempt in (1, 2, 3):
        assert "order message 2 failed (attempt %d): ValueError" % attempt in before_fix
    assert "shipped order 1: 2 x lamp" in before_fix
    # The good order is not held up: it ships before the poison's second attempt.
    assert before_fix.index("shipped order 3: 1 x desk") < before_fix.index("(attempt 2)")
    reason = ("failed 3 times (max_retries=2): "
              "ValueError: invalid literal for int() with base 10: 'three'")
    assert "message 2, 3 attempts: %s" % reason in before_fix
    cli_row = re.search(r"^\s+2\s+orders\s+3\s+.*\s%s$" % re.escape(reason), before_fix, re.M)
    assert cli_row, before_fix
    assert "shipped order 2: 3 x chair" in after_fix
    assert after_fix.rstrip().endswith("left in the queue: 0; dead letters: 0")


def test_app_database_keeps_the_app_tables(tmp_path):
    db = str(tmp_path / "shop.db")
    out = run_example("app_database.py", db)
    assert "shop tables: customers, orders\n" in out
    after = re.search(r"^after opening the queue: (.*)$", out, re.M).group(1).split(", ")
    assert "jobs_messages" in after
    assert [t for t in after if not t.startswith("jobs_")] == ["customers", "orders"]
    assert "shop rows unchanged: True" in out
    assert "journal mode: wal" in out
    assert "sweep queued jobs for orders [2, 3]" in out
    assert out.count("e-mailed ada@example.com about order 2 (lamp)") == 1
    assert out.count("e-mailed bob@example.com about order 3 (desk)") == 1
    assert "order 2 was e-mailed already: skipped" in out
    assert out.rstrip().endswith(
        "orders (id, item, e-mailed): [(1, 'chair', 1), (2, 'lamp', 1), (3, 'desk', 1)]")
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM customers").fetchone() == (2,)
    conn.close()
    with LiteQueue(db, table_prefix="jobs_") as jobs:
        assert jobs.qsize("emails") == 0
