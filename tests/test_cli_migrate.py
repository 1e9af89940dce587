"""The command line as users of other queues reach for it: the database from
$PERSISTQUEUE_LITEQ_DB, simple_local_mq's JSON lines, a full export/import
round trip, a ``consume`` command that runs a shell command per message, and
the codec a queue records (what PersistentQueue wrote) honoured by put and
shown decoded by peek.
"""

import json
import os
import subprocess
import sys

import pytest

from persistqueue_liteq import LiteQueue, PersistentQueue
from persistqueue_liteq.sqlite.engine import SQLiteEngine

from .test_cli import ROOT, Result, cli, one_error_line

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX shell")


def cli_env(cwd, *args, db=None, stdin=b""):
    """The CLI with $PERSISTQUEUE_LITEQ_DB set to ``db``."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("PERSISTQUEUE_LITEQ_DB", None)
    if db is not None:
        env["PERSISTQUEUE_LITEQ_DB"] = str(db)
    completed = subprocess.run(
        [sys.executable, "-m", "persistqueue_liteq", *map(str, args)], cwd=cwd, env=env,
        input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    return Result(completed)


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "q.db")


# -- $PERSISTQUEUE_LITEQ_DB ------------------------------------------------------------

def test_every_command_takes_the_database_from_the_environment(db, tmp_path):
    env_db = str(tmp_path / "env.db")
    assert cli_env(tmp_path, "put", "hello", "--queue", "jobs", db=env_db).rc == 0
    assert cli_env(tmp_path, "put", "--json", '{"a": 1}', "--queue", "jobs", db=env_db).rc == 0
    with LiteQueue(env_db) as q:
        assert [m.data for m in q.pop_batch("jobs", 10, invisible_seconds=0)] == [
            b"hello", b'{"a": 1}']
    stats = cli_env(tmp_path, "stats", "--json", db=env_db)
    assert stats.rc == 0, stats.err
    assert stats.json()["queues"]["jobs"]["ready"] == 2
    assert "hello" in cli_env(tmp_path, "peek", "--queue", "jobs", db=env_db).out
    assert cli_env(tmp_path, "check", db=env_db).rc == 0
    assert cli_env(tmp_path, "checkpoint", db=env_db).rc == 0
    assert cli_env(tmp_path, "vacuum", db=env_db).rc == 0
    (tmp_path / "in.jsonl").write_text("one\ntwo\n")
    assert cli_env(tmp_path, "import-jsonl", "in.jsonl", "--queue", "more", db=env_db).rc == 0
    exported = cli_env(tmp_path, "export-jsonl", "--queue", "more", db=env_db)
    assert [json.loads(line)["data"] for line in exported.out.splitlines()] == ["one", "two"]
    assert cli_env(tmp_path, "dlq", "list", db=env_db).rc == 0
    assert "id:" in cli_env(tmp_path, "dlq", "show", "1", db=env_db).out
    assert cli_env(tmp_path, "purge", "--queue", "more", db=env_db).rc == 0
    assert cli_env(tmp_path, "delete-queue", "--queue", "jobs", db=env_db).rc == 0
    # A DB on the command line wins over the environment.
    assert cli_env(tmp_path, "put", db, "x", db=env_db).rc == 0
    with LiteQueue(db) as q:
        assert q.pop().data == b"x"
    assert not os.path.exists(str(tmp_path / "x"))


def test_without_db_or_environment_the_error_names_both(tmp_path):
    result = cli_env(tmp_path, "stats")
    assert result.rc == 2
    assert "PERSISTQUEUE_LITEQ_DB" in result.err and "DB" in result.err


# -- simple_local_mq's lines -------------------------------------------------------------

def test_import_jsonl_reads_simple_local_mq_lines(db, tmp_path):
    lines = ['{"topic": "emails", "payload": {"to": "a@b"}}',
             '{"topic": "emails", "message": "plain text"}',
             '"a JSON string"',
             'not json at all',
             '{"topic": "sms", "payload": "hi"}',
             '{"no": "topic"}']
    (tmp_path / "mq.jsonl").write_text("\n".join(lines) + "\n")
    result = cli(tmp_path, "import-jsonl", "q.db", "mq.jsonl", "--format", "simple_local_mq")
    assert result.rc == 0, result.err
    assert result.out.strip() == "imported 6 messages"
    with LiteQueue(db) as q:
        emails = [m.data for m in q.pop_batch("emails", 10)]
        assert [json.loads(emails[0]), emails[1]] == [{"to": "a@b"}, b"plain text"]
        assert [m.data for m in q.pop_batch("sms", 10)] == [b"hi"]
        assert [m.data for m in q.pop_batch("default", 10)] == [
            b"a JSON string", b"not json at all", b'{"no": "topic"}']


def test_simple_local_mq_lines_go_to_the_given_queue_when_they_name_none(db, tmp_path):
    (tmp_path / "mq.jsonl").write_text('"x"\n{"topic": "t", "payload": 1}\n')
    assert cli(tmp_path, "import-jsonl", "q.db", "mq.jsonl", "--format", "simple_local_mq",
               "--queue", "fallback").rc == 0
    with LiteQueue(db) as q:
        assert [m.data for m in q.pop_batch("fallback", 10)] == [b"x"]
        assert [m.data for m in q.pop_batch("t", 10)] == [b"1"]


def test_a_bad_topic_is_one_error_line(db, tmp_path):
    (tmp_path / "mq.jsonl").write_text('{"topic": 3, "payload": 1}\n')
    one_error_line(cli(tmp_path, "import-jsonl", "q.db", "mq.jsonl", "--format",
                       "simple_local_mq"), "line 1", "topic")


# -- a full round trip -------------------------------------------------------------------

def _state_of(engine, queue):
    """Everything a round trip must keep, per message, in id order (ids change)."""
    now = engine.now()
    rows = []
    for msg in engine.snapshot(queue):
        if msg.dead_at is not None:
            state = "dead"
        elif msg.visible_at <= now or msg.lease is not None:
            state = "ready"  # a lease does not survive: its holder is not in the copy
        else:
            state = "delayed"
        rows.append((msg.data, state, msg.attempts, msg.dead_reason, msg.last_error,
                     None if msg.expires_at is None else round(msg.expires_at - now, -1),
                     None if state != "delayed" else round(msg.visible_at - now, -1),
                     msg.priority))
    return rows


def test_export_then_import_restores_every_message_with_its_state(db, tmp_path):
    with LiteQueue(db, max_retries=5) as q:
        q.put(b"ready", "jobs")
        q.put(b"delayed", "jobs", visible_after_seconds=600)
        q.put(b"ttl", "jobs", ttl_seconds=1200)
        q.put(b"retried", "jobs")
        q.put(b"held", "jobs")
        q.put(b"doomed", "jobs")
        msgs = {m.data: m for m in q.pop_batch("jobs", 10, invisible_seconds=900)}
        q.release(msgs[b"ready"])
        q.release(msgs[b"ttl"])
        q.process_failed(msgs[b"retried"], "flaky", delay_seconds=300)
        q.engine.dead_letter(msgs[b"doomed"].id, msgs[b"doomed"].lease, "poison pill", "trace")
        q.put(b"\xff binary", "other")
    engine = SQLiteEngine(db, readonly=True)
    before = {name: _state_of(engine, name) for name in ("jobs", "other")}
    engine.close()
    assert [r[1] for r in before["jobs"]] == ["ready", "delayed", "ready", "delayed", "ready",
                                            "dead"]
    result = cli(tmp_path, "export-jsonl", "q.db", "--all", "all.jsonl")
    assert result.rc == 0, result.err
    assert result.out.strip() == "exported 7 messages to all.jsonl"
    result = cli(tmp_path, "import-jsonl", "copy.db", "all.jsonl", "--exported")
    assert result.rc == 0, result.err
    engine = SQLiteEngine(str(tmp_path / "copy.db"), readonly=True)
    try:
        assert {name: _state_of(engine, name) for name in ("jobs", "other")} == before
        dead = engine.dead_letters("jobs")
        assert [(m.data, m.dead_reason, m.last_error) for m in dead] == [
            (b"doomed", "poison pill", "trace")]
    finally:
        engine.close()


def test_a_priority_queue_survives_the_round_trip(db, tmp_path):
    from persistqueue_liteq import PersistentPriorityQueue

    q = PersistentPriorityQueue(db)
    for item in [3, 1, 2]:
        q.put(item)
    q.close()
    assert cli(tmp_path, "export-jsonl", "q.db", "all.jsonl", "--all").rc == 0
    result = cli(tmp_path, "import-jsonl", "copy.db", "all.jsonl", "--exported")
    assert result.rc == 0, result.err
    copy = PersistentPriorityQueue(str(tmp_path / "copy.db"))
    try:
        assert [copy.get(timeout=5) for _ in range(3)] == [1, 2, 3]
    finally:
        copy.close()


# -- consume -------------------------------------------------------------------------------

@posix_only
def test_consume_runs_a_command_per_message_and_acks_on_success(db, tmp_path):
    with LiteQueue(db) as q:
        q.put_batch([b"one", b"two", b"three"], "jobs")
    out = tmp_path / "seen.txt"
    result = cli(tmp_path, "consume", "q.db", "--queue", "jobs", "--until-empty",
                 "--", "sh", "-c", 'cat >> "%s"; echo >> "%s"' % (out, out))
    assert result.rc == 0, result.err
    assert out.read_text().splitlines() == ["one", "two", "three"]
    assert "3 done, 0 failed" in result.out
    with LiteQueue(db) as q:
        assert q.qsize("jobs") == 0


@posix_only
def test_consume_releases_a_failed_message_with_a_delay_then_dead_letters_it(db, tmp_path):
    with LiteQueue(db) as q:
        q.put(b"bad", "jobs")
        q.put(b"good", "jobs")
    result = cli(tmp_path, "consume", "q.db", "--queue", "jobs", "--until-empty",
                 "--retry-delay", "600", "--max-retries", "1",
                 "--", "sh", "-c", 'test "$(cat)" = good || { echo nope >&2; exit 3; }')
    assert result.rc == 0, result.err
    assert "1 done, 1 failed" in result.out
    engine = SQLiteEngine(db, readonly=True)
    try:
        (msg,) = engine.snapshot("jobs")
        assert msg.data == b"bad" and msg.dead_at is None
        assert msg.visible_at - engine.now() > 500  # released with the delay
        assert "exit status 3" in msg.last_error and "nope" in msg.last_error
    finally:
        engine.close()
    # Its next failure is past --max-retries 1: a dead letter with the reason.
    with LiteQueue(db) as q:
        assert q.engine.lease("jobs", 1, 0.0) == []  # still delayed
    _make_due(db, "jobs")
    result = cli(tmp_path, "consume", "q.db", "--queue", "jobs", "--until-empty",
                 "--max-retries", "1", "--", "sh", "-c", "exit 3")
    assert result.rc == 0, result.err
    engine = SQLiteEngine(db, readonly=True)
    try:
        (dead,) = engine.dead_letters("jobs")
        assert dead.data == b"bad" and "exit status 3" in dead.dead_reason
        assert dead.attempts == 2
    finally:
        engine.close()


def _make_due(db, queue):
    """Make every delayed message of ``queue`` due now, through the engine's
    snapshot and restore (what export and import do)."""
    engine = SQLiteEngine(db)
    try:
        messages = list(engine.snapshot(queue))
        for msg in messages:
            msg.visible_at = engine.now()
        engine.purge(queue)
        engine.restore(queue, messages)
    finally:
        engine.close()


@posix_only
def test_consume_gives_the_message_decoded_by_the_queues_codec(db, tmp_path):
    q = PersistentQueue(db, name="jobs", serializer="json")
    q.put({"n": 1})
    q.close()
    out = tmp_path / "seen.txt"
    result = cli(tmp_path, "consume", "q.db", "--queue", "jobs", "--until-empty",
                 "--", "sh", "-c", 'cat > "%s"' % out)
    assert result.rc == 0, result.err
    assert json.loads(out.read_text()) == {"n": 1}


# -- the queue's codec -----------------------------------------------------------------

def test_put_json_into_a_pickle_queue_is_encoded_to_match(db, tmp_path):
    q = PersistentQueue(db, name="jobs")
    q.put("from python")
    q.close()
    assert cli(tmp_path, "put", "q.db", "--queue", "jobs", "--json", '{"a": 1}').rc == 0
    assert cli(tmp_path, "put", "q.db", "--queue", "jobs", "text").rc == 0
    q = PersistentQueue(db, name="jobs")
    try:
        assert [q.get(timeout=5) for _ in range(3)] == ["from python", {"a": 1}, "text"]
    finally:
        q.close()


def test_put_into_a_json_queue_stores_json(db, tmp_path):
    q = PersistentQueue(db, name="jobs", serializer="json")
    q.put([1])
    q.close()
    assert cli(tmp_path, "put", "q.db", "--queue", "jobs", "--json", ' {"a" : 1} ').rc == 0
    assert cli(tmp_path, "put", "q.db", "--queue", "jobs", "some text").rc == 0
    q = PersistentQueue(db, name="jobs", serializer="json")
    try:
        assert [q.get(timeout=5) for _ in range(3)] == [[1], {"a": 1}, "some text"]
    finally:
        q.close()


def test_put_into_a_signed_queue_without_its_key_is_refused(db, tmp_path):
    q = PersistentQueue(db, name="jobs", hmac_key=b"k" * 32)
    q.put(1)
    q.close()
    line = one_error_line(cli(tmp_path, "put", "q.db", "--queue", "jobs", "--json", "1"),
                          "jobs", "hmac_key")
    assert "nothing was stored" in line
    (tmp_path / "key").write_bytes(b"k" * 32)
    assert cli(tmp_path, "put", "q.db", "--queue", "jobs", "--json", "2",
               "--hmac-key-file", "key").rc == 0
    q = PersistentQueue(db, name="jobs", hmac_key=b"k" * 32)
    try:
        assert [q.get(timeout=5) for _ in range(2)] == [1, 2]
    finally:
        q.close()


def test_put_into_a_queue_of_an_unknown_serializer_is_refused(db, tmp_path):
    import marshal

    q = PersistentQueue(db, name="jobs", serializer=marshal)
    q.put(1)
    q.close()
    one_error_line(cli(tmp_path, "put", "q.db", "--queue", "jobs", "x"), "jobs",
                   "module:marshal", "nothing was stored")


def test_peek_shows_items_decoded_without_running_pickles(db, tmp_path):
    q = PersistentQueue(db, name="jobs")
    q.put({"user": "ada", "n": 3})
    q.put(_Evil())
    q.close()
    marker = tmp_path / "pwned"
    result = cli(tmp_path, "peek", "q.db", "--queue", "jobs", "-n", "2")
    assert result.rc == 0, result.err
    assert "{'user': 'ada', 'n': 3}" in result.out
    assert "pickle of os.system" in result.out or "pickle of posix.system" in result.out
    assert not marker.exists()
    result = cli(tmp_path, "peek", "q.db", "--queue", "jobs", "--json")
    assert result.json()[0]["value"] == {"user": "ada", "n": 3}


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@posix_only
def test_consume_of_a_signed_queue_checks_signatures(db, tmp_path):
    key = b"k" * 32
    (tmp_path / "key").write_bytes(key)
    q = PersistentQueue(db, name="jobs", hmac_key=key, serializer="json")
    q.put({"n": 1})
    q.close()
    with LiteQueue(db) as raw:  # a row written without the key, as an attacker would
        raw.put(b"x" * 32 + b'{"n": 666}', "jobs")
    one_error_line(cli(tmp_path, "consume", "q.db", "--queue", "jobs", "--until-empty",
                       "--", "cat"), "jobs", "--hmac-key-file")
    out = tmp_path / "seen.txt"
    result = cli(tmp_path, "consume", "q.db", "--queue", "jobs", "--until-empty",
                 "--hmac-key-file", "key", "--", "sh", "-c", 'cat >> "%s"' % out)
    assert result.rc == 0, result.err
    assert json.loads(out.read_text()) == {"n": 1}  # the forged one never reached the command
    engine = SQLiteEngine(db, readonly=True)
    try:
        (dead,) = engine.dead_letters("jobs")
        assert dead.data.endswith(b'{"n": 666}') and "signature" in dead.dead_reason
    finally:
        engine.close()


def test_exported_records_of_a_signed_queue_are_refused_on_import(db, tmp_path):
    q = PersistentQueue(db, name="jobs", hmac_key=b"k" * 32)
    q.put(1)
    q.close()
    assert cli(tmp_path, "export-jsonl", "q.db", "all.jsonl", "--all").rc == 0
    one_error_line(cli(tmp_path, "import-jsonl", "copy.db", "all.jsonl", "--exported"),
                   "line 1", "signed", "the 0 messages before it were imported")
