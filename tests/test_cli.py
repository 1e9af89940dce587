"""The command line, driven as a user drives it: ``python -m persistqueue_liteq``
in a subprocess, checked against what the test stored with LiteQueue.

"A read-only command never changes a file" is checked as the CLI documents
it: the database file keeps its bytes, size and mtime, and the only files that
may appear beside it are an empty ``-wal`` and the ``-shm`` index that SQLite
itself needs to read a WAL database.
"""

import base64
import hashlib
import json
import os
import pickle
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from persistqueue_liteq import LiteQueue
from persistqueue_liteq._policy import describe_exception
from persistqueue_liteq.sqlite.engine import SQLiteEngine

from .test_liteq_api import pages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "persistqueue-liteq: error: "
CLEAR = "\x1b[H\x1b[2J"

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


# -- task functions for the worker (module level, so that workers can load them) ------

def square(x):
    return x * x


def whoami():
    return os.getpid()


def _announce(db):
    """Say "started", with our pid, through the file (a test pops it)."""
    with LiteQueue(db) as q:
        q.put(str(os.getpid()).encode(), "started")


def slow_square(db, x, seconds):
    _announce(db)
    time.sleep(seconds)
    return x * x


def block(db):
    _announce(db)
    time.sleep(60)


# -- helpers -----------------------------------------------------------------------

def _env():
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("PERSISTQUEUE_LITEQ_DB", None)
    return env


class Result:
    def __init__(self, completed):
        self.rc = completed.returncode
        self.stdout_bytes = completed.stdout
        self.out = completed.stdout.decode("utf-8")
        self.err = completed.stderr.decode("utf-8")

    def json(self):
        return json.loads(self.out)


def cli(cwd, *args, stdin=b"", stderr=subprocess.PIPE):
    completed = subprocess.run(
        [sys.executable, "-m", "persistqueue_liteq", *map(str, args)],
        cwd=cwd, env=_env(), input=stdin, stdout=subprocess.PIPE, stderr=stderr, timeout=30,
    )
    if completed.stderr is None:
        completed.stderr = b""
    return Result(completed)


def cli_many(cwd, commands):
    """Run independent commands at once (they are many, and each is a whole
    Python start-up); return their Results in order."""
    procs = [subprocess.Popen([sys.executable, "-m", "persistqueue_liteq", *map(str, args)],
                              cwd=cwd, env=_env(), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for args in commands]
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=45)
            completed = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
            results.append(Result(completed))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def start(cwd, *args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "persistqueue_liteq", *map(str, args)], cwd=cwd, env=_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs,
    )


class Reader:
    """Collects a stream's text in a thread, so that a test can wait for what
    it expects with a deadline instead of blocking in read()."""

    def __init__(self, stream):
        self.text = ""
        self._stream = stream
        self._cond = threading.Condition()
        self._eof = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        while True:
            chunk = os.read(self._stream.fileno(), 4096)
            with self._cond:
                if not chunk:
                    self._eof = True
                else:
                    self.text += chunk.decode("utf-8")
                self._cond.notify_all()
            if not chunk:
                return

    def wait_for(self, predicate, timeout=15):
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.text):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._eof:
                    raise AssertionError("never came; got %r" % self.text)
                self._cond.wait(remaining)
            return self.text

    def rest(self, timeout=15):
        self._thread.join(timeout)
        return self.text


def one_error_line(result, *fragments):
    """The command failed with one line on stderr that says all of these."""
    assert result.rc == 1, (result.rc, result.out, result.err)
    lines = result.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX), result.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def dead_letter(q, data, qname):
    """Put ``data`` and fail it until it is dead (``q`` has max_retries=0)."""
    msg_id = q.put(data, qname)
    msg = q.pop(qname)
    assert msg.id == msg_id
    try:
        raise ValueError("boom %d" % msg_id)
    except ValueError as exc:
        q.process_failed(msg, describe_exception(exc))
    return msg_id


def fingerprint(path):
    st = os.stat(path)
    with open(path, "rb") as f:
        return st.st_size, st.st_mtime_ns, hashlib.sha256(f.read()).hexdigest()


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open("/proc/%d/stat" % pid) as f:  # a zombie is dead, only not reaped
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def wait_until_dead(pids, timeout=10):
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids):
        assert time.monotonic() < deadline, "worker processes left running: %s" % pids
        time.sleep(0.05)  # another process's exit: nothing to be woken by


def wait_for_result(engine, queue, key, timeout=20):
    deadline = time.monotonic() + timeout
    with engine.waiter("done", queue) as waiter:
        while engine.result(queue, key) is None:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "task %s never finished" % key
            waiter.wait(remaining)
    ok, data = engine.result(queue, key)
    return ok, pickle.loads(data)


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "q.db")


@pytest.fixture
def filled(db):
    """jobs: 2 ready, 1 delayed, 1 in flight; mail: 1 dead letter."""
    with LiteQueue(db, max_retries=0) as q:
        for data in (b"a", b"b", b"c"):
            q.put(data, "jobs")
        q.put(b"later", "jobs", visible_after_seconds=3600)
        assert q.pop("jobs", invisible_seconds=600).data == b"a"
        dead_letter(q, b"undeliverable", "mail")
    return db


# -- help and usage ----------------------------------------------------------------

COMMANDS = ["stats", "peek", "put", "purge", "delete-queue", "dlq", "import-jsonl",
            "export-jsonl", "checkpoint", "vacuum", "check", "worker", "consume"]
DLQ_VERBS = ["list", "show", "redrive", "purge"]


def _listed(help_text, metavar):
    """The subcommands a help text lists under ``metavar`` (argparse's layout:
    the metavar on a line of its own, then one line per subcommand indented
    deeper, its help going on in lines indented deeper still)."""
    lines = help_text.splitlines()
    start = lines.index("  " + metavar) + 1
    names = []
    for line in lines[start:]:
        match = re.match(r"    (\S+)(?:\s|$)", line)
        if match:
            names.append(match.group(1))
        elif not line.startswith("      "):
            break  # the end of the list
    return names


def _accepted(result):
    """The subcommands argparse says it accepts, from its "invalid choice"
    error (quoted or not, as Python versions differ)."""
    match = re.search(r"invalid choice: .*?\(choose from ([^)]*)\)", result.err)
    assert result.rc == 2 and match, result.err
    return [name.strip().strip("'") for name in match.group(1).split(",")]


def test_help_lists_every_command(tmp_path):
    """The help lists exactly the subcommands the parser accepts, and each
    of them is one: its own --help works and shows its own usage."""
    result = cli(tmp_path, "--help")
    assert result.rc == 0, result.err
    assert _listed(result.out, "COMMAND") == COMMANDS
    assert _accepted(cli(tmp_path, "no-such-command", "q.db")) == COMMANDS
    dlq = cli(tmp_path, "dlq", "--help")
    assert dlq.rc == 0, dlq.err
    assert _listed(dlq.out, "VERB") == DLQ_VERBS
    assert _accepted(cli(tmp_path, "dlq", "no-such-verb", "q.db")) == DLQ_VERBS
    helps = cli_many(tmp_path, [[command, "--help"] for command in COMMANDS]
                     + [["dlq", verb, "--help"] for verb in DLQ_VERBS])
    for words, result in zip([[c] for c in COMMANDS] + [["dlq", v] for v in DLQ_VERBS], helps):
        assert result.rc == 0, (words, result.err)
        assert result.out.startswith("usage: persistqueue-liteq %s " % " ".join(words)), \
            (words, result.out)
    assert cli(tmp_path, "--version").out.startswith("persistqueue-liteq ")


def test_the_cli_package_runs_as_a_module_too(tmp_path):
    """``python -m persistqueue_liteq.cli`` is the same command line."""
    completed = subprocess.run(
        [sys.executable, "-m", "persistqueue_liteq.cli", "--version"], cwd=tmp_path, env=_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert (completed.returncode, completed.stderr) == (0, b"")
    assert completed.stdout.startswith(b"persistqueue-liteq ")


BAD_ARGUMENTS = [
    [],
    ["stats"],
    ["no-such-command", "q.db"],
    ["peek", "q.db", "-n", "0"],
    ["put", "q.db"],
    ["put", "q.db", "x", "--delay", "-1"],
    ["stats", "q.db", "--json", "--prometheus"],
    ["stats", "q.db", "--watch", "1", "--json"],
    ["purge", "q.db"],
    ["dlq", "show", "q.db", "abc"],
    ["dlq", "nope", "q.db"],
    ["worker", "q.db", "--workers", "0"],
    ["stats", "q.db", "--table-prefix", "x; drop"],
]


def test_bad_arguments_exit_2_with_one_line(tmp_path):
    for args, result in zip(BAD_ARGUMENTS, cli_many(tmp_path, BAD_ARGUMENTS)):
        assert result.rc == 2, (args, result.out, result.err)
        lines = result.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith(PREFIX), (args, result.err)
    assert os.listdir(tmp_path) == []


def test_options_may_come_between_positionals(filled, tmp_path):
    result = cli(tmp_path, "put", "q.db", "--queue", "jobs", "--delay", "5", "text")
    assert result.rc == 0, result.err
    with LiteQueue(filled) as q:
        assert q.get(int(result.out)).data == b"text"
    assert cli(tmp_path, "--table-prefix", "liteq_", "stats", "q.db", "--json").rc == 0


def test_verbose_logs_to_stderr(filled, tmp_path):
    assert cli(tmp_path, "stats", "q.db").err == ""
    result = cli(tmp_path, "-vv", "stats", "q.db")
    assert result.rc == 0
    assert re.search(r"persistqueue_liteq\.cli DEBUG: opening q\.db read-only", result.err)
    result = cli(tmp_path, "export-jsonl", "q.db", "--dead", "-v")
    assert " INFO: exported 1 dead messages" in result.err
    assert "DEBUG" not in result.err


# -- stats ---------------------------------------------------------------------------

def test_stats_table(filled, tmp_path):
    result = cli(tmp_path, "stats", "q.db")
    assert result.rc == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].split()[:3] == ["QUEUE", "READY", "DELAYED"]
    table = [line for line in lines if not line.startswith("(")]
    assert len({len(line) for line in table}) == 1, "columns are not aligned:\n" + result.out
    rows = {line.split()[0]: line.split()[1:] for line in table[1:]}
    # ready, delayed, in flight, dead, oldest, expired, dead-lettered, puts/s,
    # acks/s: 4 puts and no ack in the last 60 to 70 s (10-second buckets)
    assert rows["jobs"][:4] == ["2", "1", "1", "0"]
    assert rows["jobs"][5:7] == ["0", "0"] and rows["jobs"][8] == "0"
    assert 4 / 70 <= float(rows["jobs"][7]) <= 4 / 60
    assert rows["mail"][:7] == ["0", "0", "0", "1", "-", "0", "1"]
    assert "per second over the last minute" in result.out


def test_stats_json(filled, tmp_path):
    before = time.time()
    result = cli(tmp_path, "stats", "q.db", "--json")
    assert result.rc == 0, result.err
    doc = result.json()
    assert doc["file"] == os.path.abspath(filled)
    jobs, mail = doc["queues"]["jobs"], doc["queues"]["mail"]
    counts = [jobs[key] for key in ("ready", "delayed", "in_flight", "dead", "live")]
    assert counts == [2, 1, 1, 0, 4]
    assert 0 < jobs["oldest_age_seconds"] < time.time() - before + 60
    assert jobs["throughput"]["acks_per_second"] == 0
    assert jobs["throughput"]["puts_per_second"] == 4 / jobs["throughput"]["window_seconds"]
    assert mail["dead"] == 1 and mail["oldest_age_seconds"] is None
    assert mail["counters"] == {"puts": 1, "gets": 1, "acks": 0, "retries": 0,
                                "expired": 0, "dead_lettered": 1}


def test_stats_prometheus(filled, tmp_path):
    with LiteQueue(filled) as q:
        q.put(b"x", 'odd"name\\')
    result = cli(tmp_path, "stats", "q.db", "--prometheus")
    assert result.rc == 0, result.err
    samples, types = {}, {}
    for line in result.out.splitlines():
        if line.startswith("# TYPE"):
            _, _, name, kind = line.split()
            types[name] = kind
        elif not line.startswith("#"):
            match = re.fullmatch(r'(\w+)\{(.*)\} (\S+)', line)
            assert match, line
            samples[match.group(1), match.group(2)] = float(match.group(3))
    assert samples["persistqueue_liteq_messages", 'queue="jobs",state="ready"'] == 2
    assert samples["persistqueue_liteq_messages", 'queue="jobs",state="in_flight"'] == 1
    assert samples["persistqueue_liteq_messages", 'queue="mail",state="dead"'] == 1
    assert samples["persistqueue_liteq_messages", 'queue="odd\\"name\\\\",state="ready"'] == 1
    assert samples["persistqueue_liteq_dead_lettered_total", 'queue="mail"'] == 1
    assert samples["persistqueue_liteq_oldest_message_age_seconds", 'queue="jobs"'] > 0
    assert samples["persistqueue_liteq_oldest_message_age_seconds", 'queue="mail"'] == 0
    assert types == {
        "persistqueue_liteq_messages": "gauge",
        "persistqueue_liteq_oldest_message_age_seconds": "gauge",
        "persistqueue_liteq_puts_total": "counter",
        "persistqueue_liteq_gets_total": "counter",
        "persistqueue_liteq_acks_total": "counter",
        "persistqueue_liteq_retries_total": "counter",
        "persistqueue_liteq_expired_total": "counter",
        "persistqueue_liteq_dead_lettered_total": "counter",
    }
    assert samples["persistqueue_liteq_puts_total", 'queue="jobs"'] == 4
    assert samples["persistqueue_liteq_gets_total", 'queue="jobs"'] == 1


def test_stats_of_a_queue_file_without_messages(db, tmp_path):
    LiteQueue(db).close()
    assert "no queue holds messages" in cli(tmp_path, "stats", "q.db").out
    assert cli(tmp_path, "stats", "q.db", "--json").json()["queues"] == {}


@posix_only
def test_stats_watch_redraws_until_ctrl_c(filled, tmp_path):
    proc = start(tmp_path, "stats", "q.db", "--watch", "0.1")
    try:
        out = Reader(proc.stdout)
        first = out.wait_for(lambda text: text.count(CLEAR) >= 2)
        assert re.search(r"^jobs +2 ", first, re.M)
        with LiteQueue(filled) as q:
            q.put(b"d", "jobs")
        # A later frame, drawn whole, shows the new message.
        frames = out.wait_for(lambda text: re.search(
            r"\x1b\[2J[^\x1b]*^jobs +3 [^\x1b]*\x1b\[H", text, re.M))
        assert frames.startswith(CLEAR)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        assert proc.stderr.read() == b""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- peek and put -------------------------------------------------------------------------

def test_peek(filled, tmp_path):
    result = cli(tmp_path, "peek", "q.db", "--queue", "jobs")
    assert result.rc == 0, result.err
    header, row = result.out.splitlines()
    assert header.split() == ["ID", "QUEUE", "ATTEMPTS", "AGE", "SIZE", "DATA"]
    assert row.split()[:3] == ["2", "jobs", "0"] and row.endswith("'b'")
    [record] = cli(tmp_path, "peek", "q.db", "--queue", "jobs", "--json").json()
    assert (record["id"], record["queue"], record["data"]) == (2, "jobs", "b")
    assert "has no ready message" in cli(tmp_path, "peek", "q.db", "--queue", "none").out
    with LiteQueue(filled) as q:  # nothing was leased
        assert q.queues()[0].ready == 2


def test_peek_several(filled, tmp_path):
    result = cli(tmp_path, "peek", "q.db", "--queue", "jobs", "-n", "5", "--json")
    assert [r["data"] for r in result.json()] == ["b", "c"]


def test_put_text_json_and_file(db, tmp_path):
    (tmp_path / "blob").write_bytes(b"\x00\xffbinary\n")
    ids = {}
    for name, args in [("text", ["caf\u00e9"]), ("json", ["--json", '{"a": [1, 2]}']),
                       ("file", ["--file", "blob"])]:
        result = cli(tmp_path, "put", "q.db", "--queue", "in", *args)
        assert result.rc == 0, result.err
        ids[name] = int(result.out)
    with LiteQueue(db) as q:
        assert q.get(ids["text"]).data == "caf\u00e9".encode("utf-8")
        assert json.loads(q.get(ids["json"]).data) == {"a": [1, 2]}
        assert q.get(ids["file"]).data == b"\x00\xffbinary\n"
    one_error_line(cli(tmp_path, "put", "q.db", "--json", "{not json"), "not valid JSON")


def test_put_with_a_delay(db, tmp_path):
    assert cli(tmp_path, "put", "q.db", "later", "--delay", "60").rc == 0
    with LiteQueue(db) as q:
        [stats] = q.queues()
        assert (stats.name, stats.ready, stats.delayed) == ("default", 0, 1)


def test_put_stdin_one_message_per_line(db, tmp_path):
    result = cli(tmp_path, "put", "q.db", "--stdin", "--queue", "lines",
                 stdin=b"one\ntwo words\r\n\n   \nthree")
    assert result.rc == 0, result.err
    assert result.out.strip() == "put 3 messages in queue 'lines'"
    with LiteQueue(db) as q:
        assert [m.data for m in q.pop_batch("lines", 10)] == [b"one", b"two words", b"three"]


# -- purge and delete-queue --------------------------------------------------------------

def test_purge_live_then_dead(filled, tmp_path):
    assert cli(tmp_path, "purge", "q.db", "--queue", "jobs").out.strip() == \
        "purged 4 live messages from queue 'jobs'"
    assert cli(tmp_path, "purge", "q.db", "--queue", "mail").out.startswith("purged 0 ")
    assert cli(tmp_path, "purge", "q.db", "--queue", "mail", "--dead").out.startswith("purged 1 ")
    with LiteQueue(filled) as q:  # emptied queues still exist (issue 15)
        assert [(s.live, s.dead) for s in q.queues()] == [(0, 0)] * len(q.queues())
        assert {s.name for s in q.queues()} == {"jobs", "mail"}


def test_delete_queue_says_how_many_went(filled, tmp_path):
    result = cli(tmp_path, "delete-queue", "q.db", "--queue", "mail")
    assert result.out.strip() == "deleted queue 'mail': 1 message"
    with LiteQueue(filled) as q:
        assert [s.name for s in q.queues()] == ["jobs"]
        assert "mail" not in q.counters()


# -- dead letters ------------------------------------------------------------------

@pytest.fixture
def dead(db):
    """Dead letters 1 (text) and 2 (binary) in jobs, 3 in mail."""
    with LiteQueue(db, max_retries=0) as q:
        ids = [dead_letter(q, b"poison", "jobs"), dead_letter(q, b"\xff\xfe", "jobs"),
               dead_letter(q, b"letter", "mail")]
        q.put(b"alive", "jobs")
    assert ids == [1, 2, 3]
    return db


def test_dlq_list(dead, tmp_path):
    result = cli(tmp_path, "dlq", "list", "q.db")
    assert result.rc == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].split() == ["ID", "QUEUE", "ATTEMPTS", "DEAD", "AT", "REASON"]
    assert [line.split()[:3] for line in lines[1:]] == [["1", "jobs", "1"], ["2", "jobs", "1"],
                                                       ["3", "mail", "1"]]
    assert lines[1].endswith("failed 1 time (max_retries=0): ValueError: boom 1")
    records = cli(tmp_path, "dlq", "list", "q.db", "--queue", "jobs", "--json").json()
    assert [r["id"] for r in records] == [1, 2]
    assert records[0]["dead_reason"].endswith("ValueError: boom 1")
    assert "Traceback (most recent call last)" in records[0]["last_error"]
    assert records[1]["encoding"] == "base64"
    assert base64.b64decode(records[1]["data"]) == b"\xff\xfe"
    assert cli(tmp_path, "dlq", "list", "q.db", "--queue", "none").out.strip() == \
        "no dead letters in queue 'none'"


def test_dlq_show(dead, tmp_path):
    result = cli(tmp_path, "dlq", "show", "q.db", "1")
    assert result.rc == 0, result.err
    assert re.search(r"^state: +dead$", result.out, re.M)
    assert re.search(r"^dead reason: +failed 1 time \(max_retries=0\): ValueError: boom 1$",
                     result.out, re.M)
    assert "'poison' (6 bytes)" in result.out
    tail = result.out.split("last error:\n", 1)[1].splitlines()
    assert tail[0] == "  Traceback (most recent call last):" and tail[-1] == "  ValueError: boom 1"
    record = cli(tmp_path, "dlq", "show", "q.db", "3", "--json").json()
    assert (record["state"], record["queue"], record["data"]) == ("dead", "mail", "letter")
    assert cli(tmp_path, "dlq", "show", "q.db", "4", "--json").json()["state"] == "ready"
    one_error_line(cli(tmp_path, "dlq", "show", "q.db", "99"), "no message with id 99")


def test_dlq_redrive_by_id_then_all(dead, tmp_path):
    assert cli(tmp_path, "dlq", "redrive", "q.db", "2").out.strip() == "redrove 1 dead letter"
    with LiteQueue(dead) as q:
        assert [m.id for m in q.dead_letters("jobs")] == [1]
        msg = q.get(2)
        assert msg.dead_at is None and msg.attempts == 0
    one_error_line(cli(tmp_path, "dlq", "redrive", "q.db", "2"), "not a dead letter")
    one_error_line(cli(tmp_path, "dlq", "redrive", "q.db", "--queue", "mail", "1"),
                   "is in queue 'jobs', not 'mail'")
    assert cli(tmp_path, "dlq", "redrive", "q.db").out.strip() == "redrove 2 dead letters"
    with LiteQueue(dead) as q:
        assert [s.dead for s in q.queues()] == [0, 0]
        popped = sorted(m.data for m in q.pop_batch("jobs", 10))
        assert popped == sorted([b"\xff\xfe", b"alive", b"poison"])


def test_dlq_redrive_forgets_a_tasks_stored_failure(db, tmp_path):
    engine = SQLiteEngine(db)
    [(_, task_id)] = engine.put_keyed("tasks", [("k", b"payload")])
    [msg] = engine.lease("tasks", 1, 60)
    engine.complete(msg.id, msg.lease, "k", False, b"failure", dead_reason="failed")
    assert engine.result("tasks", "k") == (False, b"failure")
    assert cli(tmp_path, "dlq", "redrive", "q.db", "--queue", "tasks").rc == 0
    assert engine.result("tasks", "k") is None
    assert engine.get(task_id).dead_at is None
    engine.close()


def test_dlq_purge(dead, tmp_path):
    assert cli(tmp_path, "dlq", "purge", "q.db", "--queue", "jobs").out.strip() == \
        "purged 2 dead letters"
    assert cli(tmp_path, "dlq", "purge", "q.db").out.strip() == "purged 1 dead letter"
    with LiteQueue(dead) as q:
        assert [(s.name, s.live, s.dead) for s in q.queues()] == [("jobs", 1, 0), ("mail", 0, 0)]


# -- import and export ------------------------------------------------------------------

def test_import_jsonl_stores_json_as_its_text_and_other_lines_as_text(db, tmp_path):
    lines = [b'{"user": "caf\xc3\xa9", "n": 1}', b"", b"plain text, not JSON", b"   ",
             b'"a JSON string"', b"\xff not utf-8", b"42"]
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines) + b"\r\n")
    result = cli(tmp_path, "import-jsonl", "q.db", "in.jsonl", "--queue", "imported")
    assert result.rc == 0, result.err
    assert result.out.strip() == "imported 5 messages"
    assert result.err == ""  # no progress when stderr is not a terminal
    with LiteQueue(db) as q:
        stored = [m.data for m in q.pop_batch("imported", 10)]
    assert stored == [line for line in lines if line.strip()]
    assert json.loads(stored[0]) == {"user": "caf\u00e9", "n": 1}


def test_import_jsonl_without_a_file_is_a_usage_error(tmp_path):
    result = cli(tmp_path, "import-jsonl", "q.db")  # no FILE, no $PERSISTQUEUE_LITEQ_DB
    assert result.rc == 2, result.err
    assert "give FILE, the file to import, or - for standard input" in result.err
    assert "TypeError" not in result.err
    assert not (tmp_path / "q.db").exists()  # nothing made


def test_export_and_import_of_dead_letters_round_trip(dead, tmp_path):
    with LiteQueue(dead, max_retries=0) as q:
        dead_letter(q, b'{"json": [1, 2]}', "json")
    result = cli(tmp_path, "export-jsonl", "q.db", "--dead", "out.jsonl")
    assert result.rc == 0, result.err
    assert result.out.strip() == "exported 4 messages to out.jsonl"
    exported = (tmp_path / "out.jsonl").read_bytes()
    assert cli(tmp_path, "export-jsonl", "q.db", "--dead", "-").stdout_bytes == exported
    records = [json.loads(line) for line in exported.splitlines()]
    assert [(r["id"], r["queue"]) for r in records] == [(1, "jobs"), (2, "jobs"), (5, "json"),
                                                        (3, "mail")]
    for r in records:
        assert r["attempts"] == 1 and r["created_at"] <= r["dead_at"]
        assert r["dead_reason"].startswith("failed 1 time")
        assert r["last_error"].startswith("Traceback")
    assert records[0]["data"] == "poison" and "encoding" not in records[0]
    assert records[1]["encoding"] == "base64"
    assert json.loads(records[2]["data"]) == {"json": [1, 2]}

    # Issue 15: dead letters come back dead, with their reasons and attempts
    # (they used to come back ready); a redrive makes them ready.
    result = cli(tmp_path, "import-jsonl", "copy.db", "out.jsonl", "--exported")
    assert result.rc == 0, result.err
    with LiteQueue(str(tmp_path / "copy.db")) as copy:
        assert copy.pop("jobs") is None
        for queue, payloads in (("jobs", [b"poison", b"\xff\xfe"]),
                                ("json", [b'{"json": [1, 2]}']), ("mail", [b"letter"])):
            dead = copy.dead_letters(queue)
            assert [m.data for m in dead] == payloads
            assert all(m.attempts == 1 and m.dead_reason.startswith("failed 1 time")
                       and m.last_error.startswith("Traceback") for m in dead)
            assert copy.redrive(queue) == len(payloads)
            assert [m.data for m in copy.pop_batch(queue, 10)] == payloads


def test_import_stops_at_a_bad_record_with_one_line(db, tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"data": "ok"}\n{"data": 3}\n')
    one_error_line(cli(tmp_path, "import-jsonl", "q.db", "bad.jsonl", "--exported"),
                   "line 2", "not an export-jsonl record", "the 1 message before it was imported")
    with LiteQueue(db) as q:  # fix the line, import the rest
        assert [m.data for m in q.pop_batch(max_messages=10)] == [b"ok"]


def test_export_and_import_of_live_messages_round_trip(db, tmp_path):
    payloads = [b"text", b'{"k": "v"}', b"\x00\x01\xff"]
    with LiteQueue(db) as q:
        q.put_batch(payloads, "jobs")
    result = cli(tmp_path, "export-jsonl", "q.db", "--queue", "jobs")
    assert result.rc == 0, result.err
    records = [json.loads(line) for line in result.out.splitlines()]
    assert [r["id"] for r in records] == [1, 2, 3]
    imported = cli(tmp_path, "import-jsonl", "copy.db", "-", "--exported",
                   stdin=result.stdout_bytes)
    assert imported.rc == 0, imported.err
    with LiteQueue(str(tmp_path / "copy.db")) as copy:
        assert [m.data for m in copy.pop_batch("jobs", 10)] == payloads


@posix_only
def test_import_shows_progress_on_a_terminal(db, tmp_path):
    import pty

    (tmp_path / "big.jsonl").write_text("".join('{"n": %d}\n' % i for i in range(25_000)))
    master, slave = pty.openpty()
    try:
        result = cli(tmp_path, "import-jsonl", "q.db", "big.jsonl", stderr=slave)
        os.close(slave)
        slave = None
        shown = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            shown += chunk
    finally:
        if slave is not None:
            os.close(slave)
        os.close(master)
    assert result.rc == 0 and result.out.strip() == "imported 25000 messages"
    assert b"\rimported 10000 lines (" in shown and b"\rimported 20000 lines (" in shown


# -- maintenance ----------------------------------------------------------------------

def everything(engine):
    """Every message of the file, live and dead, with its state."""
    return [engine.snapshot(s.name) for s in engine.queues()]


def test_checkpoint_vacuum_and_check(filled, tmp_path):
    with LiteQueue(filled) as q:  # 2 MB put and acked: free pages
        q.put_batch([os.urandom(1000) for _ in range(2000)], "bulk")
        while True:
            msgs = q.pop_batch("bulk", max_messages=500)
            if not msgs:
                break
            assert q.ack_batch(msgs) == len(msgs)
        kept = everything(q.engine)
    assert sum(map(len, kept)) == 5  # filled's
    result = cli(tmp_path, "checkpoint", "q.db")
    assert result.rc == 0 and result.out.startswith("checkpoint TRUNCATE: "), result.err
    page_count, free = pages(filled)
    size = os.path.getsize(filled)
    assert free > 400
    result = cli(tmp_path, "vacuum", "q.db")
    match = re.match(r"vacuumed q\.db: (\d+) bytes before, (\d+) after", result.out)
    assert result.rc == 0 and match, result.err
    assert int(match.group(1)) == size and int(match.group(2)) == os.path.getsize(filled)
    assert os.path.getsize(filled) < size / 2
    after, free_after = pages(filled)
    assert free_after == 0 and after <= page_count - free
    result = cli(tmp_path, "check", "q.db")
    assert result.rc == 0, result.err
    assert re.search(r"^integrity: +ok$", result.out, re.M)
    assert re.search(r"^WAL file: +none$", result.out, re.M)
    with LiteQueue(filled) as q:  # a writer keeps a WAL file open
        assert everything(q.engine) == kept  # vacuum kept every message as it was
        q.put(b"more", "jobs")
        result = cli(tmp_path, "check", "q.db")
        wal = os.path.getsize(filled + "-wal")
    assert re.search(r"^WAL file: +%d bytes$" % wal, result.out, re.M) and wal > 0


def _index_leaf_page(path, index):
    """(page size, number of a leaf page of ``index``): the root page if it
    is a leaf, else its right-most child (b-tree page header, file format)."""
    conn = sqlite3.connect(path)
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    page = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (index,)).fetchone()[0]
    conn.close()
    with open(path, "rb") as f:
        while True:
            f.seek((page - 1) * size)
            header = f.read(12)
            if header[0] == 0x0A:  # leaf index page
                return size, page
            assert header[0] == 0x02, header  # interior index page
            page = int.from_bytes(header[8:12], "big")


def test_check_reports_a_damaged_file(db, tmp_path):
    with LiteQueue(db) as q:
        q.put_batch([b"x" * 500] * 300, "jobs")
        q.checkpoint()
    size, page = _index_leaf_page(db, "liteq_messages_ready")
    with open(db, "r+b") as f:  # flip bits in the cells at the end of the page
        f.seek(page * size - 200)
        cells = f.read(100)
        f.seek(page * size - 200)
        f.write(bytes(b ^ 1 for b in cells))
    result = cli(tmp_path, "check", "q.db")
    assert result.rc == 1, result.err
    assert re.search(r"^integrity: +\d+ problem\(s\)$", result.out, re.M), result.err
    assert "missing from index liteq_messages_ready" in result.out
    assert result.err.count("\n") == 1
    assert result.err.startswith(PREFIX + "integrity check of q.db failed: ")
    with open(db, "r+b") as f:  # and now the schema page itself
        f.seek(100)
        f.write(b"\xff" * 64)
    result = cli(tmp_path, "check", "q.db")
    assert result.rc == 1 and result.out == ""
    assert result.err == PREFIX + "q.db is not a usable SQLite database: " \
        "database disk image is malformed\n"


# -- files that are missing, foreign, or must not change --------------------------------

READ_ONLY = [["stats"], ["stats", "--json"], ["stats", "--prometheus"], ["peek"],
             ["dlq", "list"], ["dlq", "show", "1"], ["export-jsonl", "--dead"], ["check"]]
NEEDS_A_QUEUE_FILE = READ_ONLY + [
    ["purge", "--queue", "jobs"], ["delete-queue", "--queue", "jobs"], ["dlq", "redrive"],
    ["dlq", "purge"], ["checkpoint"], ["vacuum"],
]
# One of each way of opening a file: read-only; checked, then read-write;
# read-write, creating what is missing.
EACH_WAY_OF_OPENING = [
    ["stats"], ["dlq", "show", "1"], ["export-jsonl", "--dead"], ["check"],
    ["purge", "--queue", "jobs"], ["dlq", "redrive"], ["vacuum"],
    ["put", "text"], ["import-jsonl", "in.jsonl"], ["worker", "--workers", "1"],
]


def _command(args, path):
    """``args`` with the file inserted after the command's words."""
    words = 2 if args[0] == "dlq" else 1
    return args[:words] + [path] + args[words:]


def test_a_missing_file_is_an_error_and_is_not_created(tmp_path):
    commands = [_command(args, "missing.db") for args in NEEDS_A_QUEUE_FILE]
    for args, result in zip(commands, cli_many(tmp_path, commands)):
        assert one_error_line(result) == PREFIX + "no such queue file: missing.db", args
    assert os.listdir(tmp_path) == []


def test_a_foreign_file_is_one_line_and_stays_as_it_was(tmp_path):
    foreign = tmp_path / "notes.txt"
    foreign.write_text("not a database, but somebody's notes\n" * 100)
    (tmp_path / "in.jsonl").write_text("x\n")
    before = fingerprint(foreign)
    commands = [_command(args, "notes.txt") for args in EACH_WAY_OF_OPENING]
    for args, result in zip(commands, cli_many(tmp_path, commands)):
        line = one_error_line(result)
        assert line == PREFIX + "notes.txt is not a usable SQLite database: file is not a " \
                                "database", (args, line)
    assert fingerprint(foreign) == before
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl", "notes.txt"]


def test_sqlite_without_queue_tables_is_reported_not_changed(tmp_path):
    path = tmp_path / "app.db"
    with sqlite3.connect(str(path)) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    conn.close()
    before = fingerprint(path)
    commands = [_command(args, "app.db") for args in EACH_WAY_OF_OPENING[:7]]
    for args, result in zip(commands, cli_many(tmp_path, commands)):
        assert "app.db has no persistqueue_liteq queue tables" in one_error_line(result), args
    assert fingerprint(path) == before
    assert os.listdir(tmp_path) == ["app.db"]


def _assert_unchanged(tmp_path, db, before, wal_before):
    assert fingerprint(db) == before
    extra = set(os.listdir(tmp_path)) - {"q.db"}
    assert extra <= {"q.db-wal", "q.db-shm"}, extra
    if wal_before is None:
        # Made by SQLite to read a WAL database, and empty.
        assert not os.path.exists(db + "-wal") or os.path.getsize(db + "-wal") == 0
    else:
        assert fingerprint(db + "-wal") == wal_before


def test_read_only_commands_change_nothing(filled, tmp_path):
    assert sorted(os.listdir(tmp_path)) == ["q.db"]  # closed cleanly: no WAL
    before = fingerprint(filled)
    time.sleep(0.01)  # so that a write would show in the mtime
    commands = [_command(args, "q.db") for args in READ_ONLY]
    for args, result in zip(commands, cli_many(tmp_path, commands)):
        assert result.rc == 0, (args, result.err)
    _assert_unchanged(tmp_path, filled, before, None)


def test_read_only_commands_change_nothing_while_a_writer_has_the_file(filled, tmp_path):
    commands = [_command(args, "q.db") for args in READ_ONLY]
    with LiteQueue(filled) as q:
        q.put(b"in the WAL only", "jobs")
        before, wal_before = fingerprint(filled), fingerprint(filled + "-wal")
        results = cli_many(tmp_path, commands)
        for args, result in zip(commands, results):
            assert result.rc == 0, (args, result.err)
        _assert_unchanged(tmp_path, filled, before, wal_before)
    # They did read what is only in the WAL.
    assert results[READ_ONLY.index(["stats", "--json"])].json()["queues"]["jobs"]["ready"] == 3


# -- worker -------------------------------------------------------------------------

def _start_worker(tmp_path, *args, **kwargs):
    proc = start(tmp_path, "worker", "q.db", "--queue", "jobs", *args, **kwargs)
    out = Reader(proc.stdout)
    line = out.wait_for(lambda text: "\n" in text)
    assert re.match(r"persistqueue-liteq: worker %d started: .* queue 'jobs' of " % proc.pid, line)
    return proc, out


def _submit(engine, key, fn, *args):
    [(status, _)] = engine.put_keyed("jobs", [(key, pickle.dumps((fn, args, {})))])
    assert status == "new"


@posix_only
def test_worker_runs_tasks_until_sigterm(db, tmp_path):
    proc, out = _start_worker(tmp_path, "--workers", "2")
    engine = SQLiteEngine(db)
    try:
        for i in range(6):
            _submit(engine, "square-%d" % i, square, i)
        _submit(engine, "pid-a", whoami)
        _submit(engine, "pid-b", whoami)
        assert [wait_for_result(engine, "jobs", "square-%d" % i) for i in range(6)] == [
            (True, i * i) for i in range(6)]
        pids = {wait_for_result(engine, "jobs", key)[1] for key in ("pid-a", "pid-b")}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        stdout = out.rest()
        assert stdout.splitlines()[-1] == (
            "persistqueue-liteq: worker %d stopped: 0 tasks left in queue 'jobs'" % proc.pid)
        assert "Traceback" not in proc.stderr.read().decode()
        wait_until_dead(pids)
    finally:
        engine.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@posix_only
def test_worker_with_an_hmac_key_file_runs_signed_tasks_only(db, tmp_path):
    from persistqueue_liteq.serializers import Signer

    (tmp_path / "key").write_bytes(b"worker key\n")
    proc, out = _start_worker(tmp_path, "--workers", "1", "--hmac-key-file", "key")
    signer = Signer(b"worker key")
    engine = SQLiteEngine(db)
    try:
        call = pickle.dumps((square, (7,), {}))
        engine.put_keyed("jobs", [("signed", signer.seal(signer.task_context("jobs", "signed"),
                                                         call))])
        _submit(engine, "unsigned", square, 8)
        ok, data = _wait_for_stored(engine, "signed")
        assert ok and pickle.loads(signer.open(signer.result_context("jobs", "signed", True),
                                               data)) == 49
        ok, data = _wait_for_stored(engine, "unsigned")
        error = pickle.loads(signer.open(signer.result_context("jobs", "unsigned", False), data))
        assert "signature does not match" in str(error)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        engine.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    (tmp_path / "empty").write_bytes(b"")
    for key_file, words in [("empty", "is empty"), ("missing", "cannot read the key file")]:
        result = cli(tmp_path, "worker", "q.db", "--hmac-key-file", key_file)
        assert result.rc == 2 and words in result.err


def _wait_for_stored(engine, key, timeout=20):
    deadline = time.monotonic() + timeout
    with engine.waiter("done", "jobs") as waiter:
        while engine.result("jobs", key) is None:
            assert time.monotonic() < deadline, "task %s never finished" % key
            waiter.wait(deadline - time.monotonic())
    return engine.result("jobs", key)


@posix_only
def test_ctrl_c_on_the_terminal_lets_running_tasks_finish(db, tmp_path):
    # A Ctrl-C reaches every process of the terminal's group: the workers
    # must leave it to the command, which waits for their running tasks.
    proc, out = _start_worker(tmp_path, "--workers", "1", start_new_session=True)
    engine = SQLiteEngine(db)
    try:
        _submit(engine, "slow", slow_square, db, 7, 1.0)
        with LiteQueue(db) as q:
            assert q.pop("started", wait_seconds=20) is not None, "the task never started"
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(20) == 0
        assert wait_for_result(engine, "jobs", "slow") == (True, 49)
        assert "stopped: 0 tasks left" in out.rest()
    finally:
        engine.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@posix_only
def test_worker_second_signal_stops_at_once(db, tmp_path):
    proc, out = _start_worker(tmp_path, "--workers", "1")
    err = Reader(proc.stderr)
    engine = SQLiteEngine(db)
    try:
        _submit(engine, "hangs", block, db)
        with LiteQueue(db) as q:
            started = q.pop("started", wait_seconds=20)
        assert started is not None, "the task never started"
        task_pid = int(started.data)
        began = time.monotonic()
        proc.send_signal(signal.SIGINT)
        # Two signals sent at once may arrive as one: send the second after
        # the first was taken (as a person pressing Ctrl-C twice does).
        err.wait_for(lambda text: "SIGINT: stopping once the running tasks finish" in text)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 1
        assert time.monotonic() - began < 5
        assert "stopped at once by a second SIGINT" in out.rest()
        wait_until_dead([task_pid])
        # Not lost: back in the queue for the next worker.
        assert engine.result("jobs", "hangs") is None
        assert engine.count("jobs", "live") == 1
    finally:
        engine.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
