"""What the PostgreSQL backend adds to the engine contract
(tests/test_engine_contract.py runs that on it too): processes that meet
only through the server, LISTEN/NOTIFY wake-ups, keys submitted at once,
lock timeouts, passwords, the front ends and the pools on it.

Runs when $PERSISTQUEUE_LITEQ_TEST_POSTGRES names a server (conftest's
``postgres_location``: a fresh schema per test); the tests that need no
server run always.
"""

import logging
import os
import re
import subprocess
import sys
import urllib.parse

import pytest

from persistqueue_liteq import (LiteQueue, PersistentProcessPoolExecutor, PersistentQueue,
                                PersistentThreadPoolExecutor)
from persistqueue_liteq.backends import describe, open_engine
from persistqueue_liteq.exceptions import DatabaseBusy, ReadOnlyDatabase, StorageError

from .conftest import postgres_location, run_child, run_children
from .test_pool import kill_self_once, square

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CURRENT = 2  # the schema version of this release's tables


@pytest.fixture
def pg(request):
    """A location on the test server, in a schema of its own."""
    return postgres_location(request)


@pytest.fixture
def engine(pg):
    engine = open_engine(pg)
    yield engine
    engine.close()


# -- without a server ----------------------------------------------------------------


def test_without_psycopg_a_postgres_url_names_the_extra_to_install():
    child = ("import sys; sys.modules['psycopg'] = None\n"
             "from persistqueue_liteq import LiteQueue\n"
             "LiteQueue('sqlite:///' + sys.argv[1]).put(b'x')  # the core works\n"
             "try:\n"
             "    LiteQueue('postgresql://u:secret@localhost/db')\n"
             "except ImportError as exc:\n"
             "    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", child, os.devnull + ".db"],
                          capture_output=True, text=True, timeout=60, cwd="/tmp",
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stderr
    assert "persistqueue_liteq[postgres]" in done.stdout
    assert "secret" not in done.stdout + done.stderr


def test_the_url_keeps_libpq_parameters_and_gives_up_the_backends_options():
    pytest.importorskip("psycopg")
    spec = describe("postgres://alice:pw@db.example/jobs?sslmode=require&schema=app"
                    "&table_prefix=q_&timeout=2.5&pool_size=3")
    assert spec.scheme == "postgresql"
    assert spec.location == "postgres://alice:pw@db.example/jobs?sslmode=require"
    assert spec.options == {"schema": "app", "table_prefix": "q_", "timeout": 2.5,
                            "pool_size": 3}
    assert "pw" not in repr(spec)
    with pytest.raises(TypeError, match="no option journal_size"):
        describe("postgresql://db.example/jobs", journal_size=3)
    with pytest.raises(ValueError, match="table_prefix must be letters"):
        open_engine("postgresql://db.example/jobs", table_prefix="x; DROP TABLE")


def test_every_connection_gets_keepalives_and_a_tcp_user_timeout_unless_its_url_sets_them(
        monkeypatch):
    """A cut link must fail an operation in seconds, not TCP's 15 minutes
    (tests/test_postgres_multihost.py cuts real links); the location's own
    values win."""
    pytest.importorskip("psycopg")
    from psycopg.conninfo import conninfo_to_dict

    from persistqueue_liteq.postgres.connections import Connections, with_tcp_defaults

    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    params = conninfo_to_dict(with_tcp_defaults("postgresql://u@db.example/jobs"))
    assert params["keepalives"] == "1"
    assert int(params["keepalives_idle"]) + int(params["keepalives_count"]) * int(
        params["keepalives_interval"]) <= 15
    assert int(params["tcp_user_timeout"]) <= 15000
    assert int(params["connect_timeout"]) <= 15
    mine = conninfo_to_dict(with_tcp_defaults(
        "postgresql://u@db.example/jobs?tcp_user_timeout=60000&keepalives=0"))
    assert (mine["tcp_user_timeout"], mine["keepalives"]) == ("60000", "0")
    assert mine["keepalives_idle"] == params["keepalives_idle"]
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "33")
    assert "connect_timeout" not in conninfo_to_dict(with_tcp_defaults("host=db.example"))
    conns = Connections("postgresql://u@db.example/jobs", "db.example", 5.0, 2)
    assert conninfo_to_dict(conns._dsn)["tcp_user_timeout"] == params["tcp_user_timeout"]


def test_a_server_that_does_not_answer_is_a_storage_error_without_the_password():
    pytest.importorskip("psycopg")
    with pytest.raises(StorageError) as info:
        open_engine("postgresql://alice:s3cr3t@127.0.0.1:1/jobs?connect_timeout=2")
    assert "s3cr3t" not in str(info.value) and "alice:***@" in str(info.value)


# -- processes meeting through the server ---------------------------------------------------


def _get_blocked(location, ready):
    q = PersistentQueue(location, name="jobs")
    ready.set()
    item = q.get(timeout=60)
    q.task_done()
    q.close()
    sys.exit(0 if item == "from another process" else 2)


def test_a_blocked_get_in_one_process_wakes_when_another_process_puts(pg, fork):
    ready = fork.Event()
    child = fork.Process(target=_get_blocked, args=(pg, ready))
    child.start()
    assert ready.wait(30)

    def put_from_another_process():
        q = PersistentQueue(pg, name="jobs")
        q.put("from another process")
        q.close()

    assert run_child(fork, put_from_another_process) == 0
    child.join(60)
    assert child.exitcode == 0


def _wait_for_put(spec, ready):
    engine = spec.open()
    with engine.waiter("put", "q") as waiter:
        if engine.lease("q", 1, 30.0):  # the last look: nothing yet
            sys.exit(3)
        ready.set()
        woken = waiter.wait(60.0)  # False when it ends at the 1 s safety look
        got = engine.lease("q", 1, 30.0)
    engine.close()
    sys.exit(0 if woken and got else 2)


def test_a_waiter_in_another_process_is_woken_by_the_notification(engine, fork):
    ready = fork.Event()
    child = fork.Process(target=_wait_for_put, args=(engine.spec, ready))
    child.start()
    assert ready.wait(30)
    producer = engine.spec.open()  # another engine: no in-process shortcut
    producer.put("q", b"x")
    producer.close()
    child.join(60)
    assert child.exitcode == 0  # 2: it was not woken (or found nothing)


def test_a_notification_from_another_process_wakes_a_waiter(engine, fork):
    def put_from_child(spec):
        other = spec.open()
        other.put("q", b"x")
        other.close()

    with engine.waiter("put", "q") as waiter:
        assert run_child(fork, put_from_child, engine.spec) == 0
        # Woken (True), not timed out (False): the safety look is 1 s, and
        # wait() returns False when it ends without a wake-up.
        assert waiter.wait(30.0) is True


def test_after_the_listener_reconnects_every_waiter_is_woken(engine):
    import psycopg

    with engine.waiter("done", "q") as waiter:
        with psycopg.connect(engine.spec.location, autocommit=True) as admin:
            # This process's listener only: its last statement LISTENed to
            # this engine's channel (other users of the server are left be).
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'persistqueue_liteq listener' AND query = %s",
                ('LISTEN "%s"' % engine._channel,)).fetchall()
        assert len(killed) == 1
        woken = False
        for _ in range(30):  # each wait ends at the 1 s safety look at the latest
            if waiter.wait(1.0):
                woken = True
                break
        assert woken


def _submit_key(spec, barrier, out):
    engine = spec.open()
    barrier.wait(30)
    (status, msg_id), = engine.put_keyed("tasks", [("same", b"call")])
    out.put((status, msg_id))
    engine.close()


def test_two_processes_submitting_one_key_at_once_store_it_once(engine, fork):
    for attempt in range(5):
        key_queue = "tasks"
        barrier, out = fork.Barrier(2), fork.Queue()
        children = [fork.Process(target=_submit_key, args=(engine.spec, barrier, out))
                    for _ in range(2)]
        for child in children:
            child.start()
        results = sorted(out.get(timeout=30) for _ in children)
        for child in children:
            child.join(30)
            assert child.exitcode == 0
        assert [status for status, _ in results] == ["new", "queued"]
        assert results[0][1] == results[1][1]
        assert engine.count(key_queue) == 1
        engine.purge(key_queue)


def _backend_pid(engine):
    return engine._conns.execute("SELECT pg_backend_pid()")[0][0]


def test_a_forked_child_uses_its_own_connections_and_the_parent_keeps_its_own(engine, fork):
    engine.put("q", b"before")
    parent_pids = {_backend_pid(engine) for _ in range(20)}  # its pool's connections
    out = fork.Queue()

    def child_work(e, out):
        out.put(_backend_pid(e))
        msg = e.lease("q", 1, 30.0)[0]
        assert e.ack(msg.id, msg.lease)
        e.put("q", b"from the child")
        e.close()

    assert run_child(fork, child_work, engine, out) == 0
    assert out.get(timeout=10) not in parent_pids  # a connection of its own
    # The parent's pool still works: the child closed only its own (the
    # parent's connections all still serve it; its pool may have opened
    # another meanwhile).
    assert parent_pids <= {_backend_pid(engine) for _ in range(20)}
    assert [m.data for m in engine.lease("q", 5, 30.0)] == [b"from the child"]


def test_a_row_lock_held_past_the_timeout_is_database_busy(pg):
    import psycopg

    engine = open_engine(pg, timeout=0.2)
    try:
        engine.put("q", b"x")
        msg = engine.lease("q", 1, 30.0)[0]
        with psycopg.connect(engine.spec.location) as app:
            app.execute('SELECT 1 FROM "%s"."%smessages" WHERE id = %%s FOR UPDATE'
                        % (engine.sql.SCHEMA, engine.sql.PREFIX), (msg.id,))
            with pytest.raises(DatabaseBusy, match="timeout_seconds=0.2"):
                engine.ack(msg.id, msg.lease)
            assert engine.lease("q", 1, 30.0) == []  # SKIP LOCKED: never waits
            app.rollback()
        assert engine.ack(msg.id, msg.lease)
    finally:
        engine.close()


def test_namespaces_share_a_database_without_seeing_each_other(pg):
    a = open_engine(pg, table_prefix="a_")
    b = open_engine(pg, table_prefix="b_")
    try:
        a.put("q", b"of a")
        assert b.count("q") == 0 and a.count("q") == 1
        assert [s.name for s in b.queues()] == []
    finally:
        a.close()
        b.close()


def test_the_password_shows_nowhere(pg, caplog):
    parts = urllib.parse.urlsplit(pg)
    user = parts.username or "postgres"
    netloc = "%s:hunter2@%s" % (user, parts.netloc.rpartition("@")[2])
    url = urllib.parse.urlunsplit(parts._replace(netloc=netloc))  # trust auth: any password
    caplog.set_level(logging.DEBUG, logger="persistqueue_liteq")
    lite = LiteQueue(url, table_prefix="pw_")
    try:
        lite.put(b"x")
        shown = [lite.filename, lite.engine.location, repr(lite.engine), repr(lite.engine.spec)]
        assert ":hunter2@" in lite.engine.spec.location  # kept, to be opened again
    finally:
        lite.close()
    with pytest.raises(Exception) as info:
        open_engine(url.replace(parts.path, "/no_such_database_here"))
    shown += [str(info.value), caplog.text]
    assert not [text for text in shown if "hunter2" in text]
    assert ":***@" in lite.filename


# -- the front ends on PostgreSQL ------------------------------------------------------------


def test_liteq_and_the_queue_family_work_on_postgres(pg):
    lite = LiteQueue(pg)
    try:
        lite.put(b"lite")
        msg = lite.pop()
        assert msg.data == b"lite"
        assert lite.ack(msg)
        assert lite.qsize() == 0
    finally:
        lite.close()
    q = PersistentQueue(pg, name="family")
    try:
        q.put({"any": "object"})
        assert q.get(timeout=30) == {"any": "object"}
        q.task_done()
        q.join()
    finally:
        q.close()
    with pytest.raises(TypeError, match="no option synchronous"):
        LiteQueue(pg, synchronous="FULL")


def test_the_async_queue_works_on_postgres(pg):
    import asyncio

    from persistqueue_liteq.aio import AsyncPersistentQueue

    async def main():
        q = AsyncPersistentQueue(pg)
        getter = asyncio.ensure_future(q.get())  # blocks: the queue is empty
        await asyncio.sleep(0)
        await q.put("async")
        got = await asyncio.wait_for(getter, 30)
        q.task_done()
        await q.aclose()
        return got

    assert asyncio.run(main()) == "async"


def test_a_thread_pool_submits_maps_and_keeps_results_on_postgres(pg):
    with PersistentThreadPoolExecutor(pg, max_workers=2) as ex:
        assert ex.submit(square, 7).result(60) == 49
        assert list(ex.map(square, range(10))) == [i * i for i in range(10)]


def test_a_killed_process_workers_task_is_retried_on_postgres(pg, tmp_path):
    with PersistentProcessPoolExecutor(pg, max_workers=2, max_retries=2,
                                       retry_backoff=0) as ex:
        dying = ex.submit(kill_self_once, str(tmp_path / "marker"), "survived")
        others = [ex.submit(square, i) for i in range(10)]
        assert dying.result(60) == "survived"
        assert [f.result(60) for f in others] == [i * i for i in range(10)]
        assert ex.dead_letters() == []
    assert os.path.exists(tmp_path / "marker")  # it did die once


def test_glob_patterns_become_the_same_regular_expressions():
    import re

    from persistqueue_liteq.postgres.sql import glob_to_regex

    keys = ["call:ab12", "call:ab12:x", "Call:ab12", "call:[x]", "call.ab12", "a*b", "a?b"]
    for pattern, matching in [
        ("call:*", {"call:ab12", "call:ab12:x", "call:[x]"}),
        ("call:ab1?", {"call:ab12"}),
        ("call[:.]ab12", {"call:ab12", "call.ab12"}),
        ("call:[^a]*", {"call:[x]"}),
        ("a*b", {"a*b", "a?b"}),
        ("call.ab12", {"call.ab12"}),
        ("call:[x", set()),
    ]:
        regex = glob_to_regex(pattern)
        assert {k for k in keys if re.search(regex, k)} == matching, pattern


def test_forget_results_matching_takes_a_glob_on_postgres(engine):
    engine.put_keyed("tasks", [("call:1", b"a"), ("call:2", b"b"), ("other", b"c")])
    for msg in engine.lease("tasks", 3, 30.0):
        engine.complete(msg.id, msg.lease, msg.key, msg.key != "call:2", b"r")
    assert engine.forget_results_matching("tasks", "call:*", failed_only=True) == 1
    assert engine.forget_results_matching("tasks", "call:*") == 1
    assert [key for _, key, _, _ in engine.results_since("tasks", 0)] == ["other"]


def test_results_commit_in_seq_order_so_a_follower_skips_none(engine):
    """A result writer waits for the one before it to commit: a follower of
    results_since that saw seq n never finds n - 1 committed later."""
    import threading

    import psycopg

    engine.put_keyed("tasks", [("first", b"1"), ("second", b"2")])
    first, second = sorted(engine.lease("tasks", 2, 30.0), key=lambda m: m.key)
    stored, go, done = threading.Event(), threading.Event(), threading.Event()

    def slow_writer():  # stores its result, then holds its transaction open
        with engine._conns.transaction() as tx:
            engine._complete_in(tx, first.id, first.lease, first.key, True, b"r", None)
            stored.set()
            go.wait(30)

    def second_writer():
        engine.complete(second.id, second.lease, second.key, True, b"r")
        done.set()

    threads = [threading.Thread(target=slow_writer)]
    threads[0].start()
    assert stored.wait(30)
    threads.append(threading.Thread(target=second_writer))
    threads[1].start()
    with psycopg.connect(engine.spec.location, autocommit=True) as admin:
        for _ in range(3000):  # until the second writer waits for the advisory lock
            if admin.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event = "
                             "'advisory' AND application_name = 'persistqueue_liteq'"
                             ).fetchone()[0]:
                break
            done.wait(0.01)
        else:
            raise AssertionError("the second writer did not wait for the first")
    assert not done.is_set()
    assert engine.results_since("tasks", 0) == []  # nothing committed yet
    go.set()
    for thread in threads:
        thread.join(30)
    rows = engine.results_since("tasks", 0)
    assert [key for _, key, _, _ in rows] == ["first", "second"]


def test_a_pooled_connection_that_died_while_idle_is_replaced_not_raised(engine):
    import psycopg

    engine.put("q", b"before")
    killed = {_backend_pid(engine) for _ in range(20)}  # its pool's (only this test's)
    with psycopg.connect(engine.spec.location, autocommit=True) as admin:
        for pid in killed:
            assert admin.execute("SELECT pg_terminate_backend(%s, 20000)", (pid,)).fetchone()[0]
    # Died before anything of these was sent: run again on a new connection.
    for _ in range(len(killed) + 1):
        engine.put("q", b"after")
    assert engine.count("q") == len(killed) + 2


def test_a_transaction_on_a_pooled_connection_that_died_while_idle_gets_another(engine):
    """Nothing of the transaction was sent: like a single put, it must not
    fail because the server ended an idle connection (a restart, a cut
    link: found by tests/test_postgres_multihost.py)."""
    import psycopg

    engine.put("q", b"before")
    pids = {_backend_pid(engine) for _ in range(20)}  # its pool's (only this test's)
    with psycopg.connect(engine.spec.location, autocommit=True) as admin:
        for pid in pids:
            assert admin.execute("SELECT pg_terminate_backend(%s, 20000)", (pid,)).fetchone()[0]
    with engine.transaction() as tx:
        tx.put("q", b"in")
        tx.put("r", b"in")
    assert (engine.count("q"), engine.count("r")) == (2, 1)


# Version 1's registration of queues, a row trigger (see sql.MIGRATIONS[2]).
_V1_FUNCTION = """
CREATE FUNCTION {t}messages_register_queue() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {t}queues (name, created_at) VALUES (NEW.queue, NEW.created_at)
    ON CONFLICT (name) DO NOTHING;
    RETURN NULL;
END $$"""
_V1_TRIGGER = """
CREATE TRIGGER liteq_messages_register_queue AFTER INSERT ON {t}messages
FOR EACH ROW EXECUTE FUNCTION {t}messages_register_queue()"""


def _make_version_1(engine):
    """Take ``engine``'s tables back to schema version 1."""
    import psycopg

    t = '"%s".liteq_' % engine.sql.SCHEMA
    with psycopg.connect(engine.spec.location, autocommit=True) as admin:
        admin.execute(_V1_FUNCTION.format(t=t))
        admin.execute(_V1_TRIGGER.format(t=t))
        admin.execute("UPDATE %smeta SET value = '1' WHERE key = 'schema_version'" % t)


def _schema_state(location):
    """(schema_version, whether version 1's trigger is there)."""
    import psycopg

    engine = open_engine(location, readonly=True)
    t = '"%s".liteq_' % engine.sql.SCHEMA
    try:
        with psycopg.connect(location.split("?")[0], autocommit=True) as admin:
            version = admin.execute("SELECT value FROM %smeta WHERE key = 'schema_version'"
                                    % t).fetchone()[0]
            trigger = admin.execute(
                "SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass "
                "AND tgname = 'liteq_messages_register_queue'", ("%smessages" % t,)
            ).fetchone()[0]
    finally:
        engine.close()
    return int(version), bool(trigger)


def test_version_1_tables_are_upgraded_at_open_and_keep_every_message(pg, caplog):
    old = open_engine(pg)
    kept = old.put("kept", b"x")
    _make_version_1(old)
    old.close()
    assert _schema_state(pg) == (1, True)  # a read-only open leaves them as they are
    caplog.set_level(logging.INFO, logger="persistqueue_liteq")
    engine = open_engine(pg)
    try:
        assert _schema_state(pg) == (CURRENT, False)
        assert "from schema version 1 to %d" % CURRENT in caplog.text
        assert engine.get(kept).data == b"x"
        engine.put("new", b"y")  # registered by the insert itself now
        assert {s.name for s in engine.queues()} == {"kept", "new"}
    finally:
        engine.close()
    open_engine(pg).close()  # once upgraded, opened again without change
    assert _schema_state(pg) == (CURRENT, False)


def _open_and_put(barrier, location):
    barrier.wait(30)
    engine = open_engine(location)
    engine.put("q", b"x")
    engine.close()


def test_processes_that_open_version_1_tables_together_upgrade_them_once(pg, fork):
    old = open_engine(pg)
    _make_version_1(old)
    old.close()
    assert run_children(fork, 3, _open_and_put, pg) == [0, 0, 0]
    assert _schema_state(pg) == (CURRENT, False)
    engine = open_engine(pg)
    try:
        assert engine.count("q") == 3
    finally:
        engine.close()


def test_a_readonly_engine_looks_and_changes_nothing(pg):
    with pytest.raises(FileNotFoundError, match="no queue tables"):
        open_engine(pg, readonly=True)  # and it made none
    with pytest.raises(FileNotFoundError):
        open_engine(pg, readonly=True)
    writer = open_engine(pg)
    writer.put("jobs", b"x")
    reader = open_engine(pg, readonly=True)
    try:
        assert reader.spec.options["readonly"] is True
        assert reader.count("jobs") == 1
        assert reader.peek("jobs").data == b"x"
        with pytest.raises(ReadOnlyDatabase):
            reader.put("jobs", b"y")
        with pytest.raises(ReadOnlyDatabase):
            reader.lease("jobs", 1, 30)
        assert writer.count("jobs") == 1
    finally:
        reader.close()
        writer.close()


def test_the_command_line_reads_a_postgres_queue(pg, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "persistqueue_liteq"] + list(args),
                              capture_output=True, text=True, timeout=60, env=env)

    assert cli("stats", pg).returncode == 1  # nothing there: said so, nothing made
    done = cli("put", pg, "hello", "--queue", "jobs")
    assert done.returncode == 0, done.stderr
    done = cli("stats", pg)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^jobs +1 ", done.stdout, re.M), done.stdout
    done = cli("checkpoint", pg)
    assert done.returncode == 1 and "manages its write-ahead log itself" in done.stderr


@pytest.mark.parametrize("operation", ["put_many", "put_keyed", "redrive"])
def test_a_transaction_retried_after_a_deadlock_reads_a_generator_argument_again(
        engine, monkeypatch, operation):
    """A deadlock makes the transaction run again, whole; an argument that
    is a generator (used up by the first attempt) must not make the second
    store or move nothing."""
    import psycopg

    from persistqueue_liteq.postgres import connections

    if operation == "redrive":
        ids = engine.put_many("q", [b"a", b"b"])
        for m in engine.lease("q", 2, 30):
            engine.dead_letter(m.id, m.lease, "r")
    failed = []

    def fail_first_write(name, writes):
        method = getattr(connections.Tx, name)

        def run(tx, statement, params=None):
            value = method(tx, statement, params)
            if not failed and writes in statement:  # the whole transaction fails, once
                failed.append(statement)
                raise psycopg.errors.DeadlockDetected("deadlock detected (the test's)")
            return value
        monkeypatch.setattr(connections.Tx, name, run)

    if operation == "put_many":
        fail_first_write("rows", "INSERT")
        assert len(engine.put_many("q", (b"x" for _ in range(3)))) == 3
        assert engine.count("q") == 3
    elif operation == "put_keyed":
        fail_first_write("one", "INSERT")
        statuses = engine.put_keyed("q", ((key, b"x") for key in ("k1", "k2")))
        assert [status for status, _ in statuses] == ["new", "new"]
        assert engine.count("q") == 2
    else:
        fail_first_write("rowcount", "UPDATE")
        assert engine.redrive("q", (i for i in ids)) == 2
        assert engine.count("q", "dead") == 0 and engine.count("q") == 2
    assert failed  # the first attempt did fail


def test_the_notifications_of_a_commit_are_quoted_whatever_they_hold(pg):
    """A commit's notifications go as literals in its query: plain ones
    (what channels and payloads are made of) as they are, any other
    through psycopg's quoting."""
    import psycopg

    from persistqueue_liteq.postgres.connections import _literal

    with psycopg.connect(pg.split("?")[0], autocommit=True) as conn:
        for text in ("pqlq_0a1b", "put:0a1b", "", "it's", "a\\\\b", "ünï", "'; COMMIT; --"):
            assert conn.execute("SELECT " + _literal(text)).fetchone()[0] == text


def test_the_notify_statements_of_a_commit_reach_their_channel_whatever_it_is_named(pg):
    """Channels go as identifiers: ours (lower case, ``pqlq_``) as they
    are, any other quoted, so that its case is kept and a keyword or a
    quote cannot end the statement; payloads as literals."""
    import itertools

    import psycopg
    from psycopg import sql

    from persistqueue_liteq.postgres.connections import _notifying

    channels = ("pqlq_0a1b", "Pqlq_Upper", 'it\'s "odd"; LISTEN x', "select", "pqlq_é")
    payloads = ("put:0a1b", "", "it's", "a\\b", "'; COMMIT; --")
    sent = [(channel, payload) for channel in channels for payload in payloads]
    url = pg.split("?")[0]
    with psycopg.connect(url, autocommit=True) as listener, \
            psycopg.connect(url, autocommit=True) as sender:
        for channel in channels:
            listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        sender.execute(_notifying(sent))
        heard = [(note.channel, note.payload)
                 for note in itertools.islice(listener.notifies(timeout=30), len(sent))]
    assert heard == sent


# -- one round trip an operation -------------------------------------------------------


def _queries(monkeypatch):
    """The queries that every psycopg connection sends from now on, each a
    round trip (none of these runs in a pipeline); neither the server's
    clock nor its notification queue is read again meanwhile (they are,
    every few seconds)."""
    import psycopg

    from persistqueue_liteq.postgres import clock, connections

    monkeypatch.setattr(connections, "NOTIFY_CHECK_INTERVAL", float("inf"))
    monkeypatch.setattr(clock, "CLOCK_RESYNC", float("inf"))
    sent = []
    execute = psycopg.Connection.execute

    def recorded(conn, query, *args, **kwargs):
        sent.append(query if isinstance(query, str) else repr(query))
        return execute(conn, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Connection, "execute", recorded)
    return sent


@pytest.fixture
def engine1(pg):
    """An engine of one connection: what was prepared on it is known."""
    engine = open_engine(pg + ("&" if "?" in pg else "?") + "pool_size=1")
    yield engine
    engine.close()


def test_a_put_a_lease_and_an_ack_are_one_round_trip_each(engine1, monkeypatch):
    """Their transaction (BEGIN, the statement, COMMIT, the notification)
    goes as one query, its statement prepared once per connection; so do
    a lease's extension and the look for the next message's time."""
    engine = engine1
    for _ in range(3):  # every statement prepared on the pool's connection
        engine.put("q", b"warm")
        [m] = engine.lease("q", 1, 30)
        engine.set_visibility(m.id, m.lease, 30)
        engine.next_visible_at("q")
        engine.ack(m.id, m.lease, "q")
    sent = _queries(monkeypatch)
    msg_id = engine.put("q", b"x")
    assert len(sent) == 1 and "; COMMIT; NOTIFY pqlq_" in sent[0], sent
    [m] = engine.lease("q", 1, 30)
    assert (m.id, m.data) == (msg_id, b"x")
    assert len(sent) == 2 and "FOR UPDATE SKIP LOCKED" not in sent[1]  # EXECUTE, prepared
    assert engine.set_visibility(m.id, m.lease, 60) is True
    assert engine.next_visible_at("q") > engine.now() + 50
    assert len(sent) == 4
    assert engine.ack(m.id, m.lease, "q") is True
    assert len(sent) == 5
    assert engine.ack(m.id, m.lease, "q") is False  # acknowledged once
    assert engine.set_visibility(m.id, m.lease, 60) is False
    assert engine.count("q") == 0


def test_a_put_through_an_unprepared_engine_is_one_round_trip_too(pg, monkeypatch):
    """prepared=False (PgBouncer in transaction mode): the statement goes
    whole, its parameters bound by psycopg, in the same one query."""
    unprepared = open_engine(pg + "&prepared=false" if "?" in pg else pg + "?prepared=false")
    try:
        unprepared.put("q", b"warm")
        sent = _queries(monkeypatch)
        unprepared.put("q", b"it's \x00 \\ binary")
        [a, b] = unprepared.lease("q", 2, 30)
        assert (a.data, b.data) == (b"warm", b"it's \x00 \\ binary")
        assert len(sent) == 2 and not any("EXECUTE" in query for query in sent), sent
        assert not any("PREPARE" in query for query in sent)
    finally:
        unprepared.close()


@pytest.mark.parametrize("prepared", ["true", "false"])
def test_what_a_one_query_operation_binds_arrives_whole_whatever_it_holds(pg, prepared):
    """Its parameters are bound into the query's text (psycopg's quoting):
    queue names and payloads made to break out of a literal arrive as they
    were sent, and nothing else runs."""
    engine = open_engine(pg + ("&" if "?" in pg else "?") + "prepared=" + prepared)
    try:
        names = ["it's", "a\\b", "'); DROP TABLE x; --", "$1 %s %(n)s", "ünï \u2028"]
        payloads = [b"'; COMMIT; --", b"\x00\x01\\'\"", bytes(range(256)), b""]
        for name in names:
            for payload in payloads:
                msg_id = engine.put(name, payload)
                [m] = engine.lease(name, 1, 30)
                assert (m.id, m.data, m.queue_name) == (msg_id, payload, name)
                assert engine.ack(m.id, m.lease, name) is True
            assert engine.count(name) == 0
        assert sorted(stats.name for stats in engine.queues()) == sorted(names)
    finally:
        engine.close()


def test_a_connection_the_server_ended_while_idle_is_not_used_for_a_put(engine, pg):
    """A put sends its COMMIT with its statement: on a connection that
    failed on the way it could not know whether it committed.  So a
    connection that the server closed while it sat in the pool (a restart,
    idle_session_timeout, an operator) is found so before anything is sent,
    and another one used: each put stores its message, once."""
    import psycopg

    engine.put("q", b"first")
    with psycopg.connect(pg.split("?")[0], autocommit=True) as admin:
        pids = [pid for (pid,) in admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'persistqueue_liteq' "
            "AND pid <> pg_backend_pid() AND datname = current_database() "
            "AND state = 'idle'").fetchall()]
        assert pids
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s, 30000)", (pid,))
    engine.put("q", b"second")
    [a, b] = engine.lease("q", 2, 30)
    assert (a.data, b.data) == (b"first", b"second")
    assert engine.ack(a.id, a.lease, "q") and engine.ack(b.id, b.lease, "q")
    assert engine.count("q") == 0


def test_statements_deallocated_behind_the_engines_back_are_prepared_again(
        engine1, monkeypatch):
    """DISCARD ALL or DEALLOCATE ALL on the engine's connection (a
    pooler's reset, an operator): the next operation prepares again, on the
    same connection: its EXECUTE, refused, then the PREPARE and the EXECUTE."""
    engine = engine1
    engine.put("q", b"first")
    [conn] = list(engine._conns._prepared_on)  # idle in the pool
    conn.execute("DEALLOCATE ALL")
    del conn
    sent = _queries(monkeypatch)
    msg_id = engine.put("q", b"second")
    assert [("PREPARE pqlq_" in query, "EXECUTE pqlq_" in query) for query in sent] == [
        (False, True), (True, False), (False, True)], sent
    [a, b] = engine.lease("q", 2, 30)
    assert (a.data, b.id) == (b"first", msg_id)
    assert engine.ack(b.id, b.lease, "q") and engine.count("q") == 1


def test_behind_a_pooler_that_changes_server_sessions_statements_go_unprepared(
        engine1, monkeypatch, caplog):
    """PgBouncer in transaction mode keeps psycopg's prepared statements
    (1.21 on) but not SQL's PREPARE: the EXECUTE that follows it may go to
    another server session.  The engine sees its statement gone right
    after preparing it, runs the operation again with the statement whole,
    and prepares nothing from then on."""
    import psycopg

    engine = engine1
    execute = psycopg.Connection.execute

    def another_session_each_time(conn, query, *args, **kwargs):
        result = execute(conn, query, *args, **kwargs)
        if isinstance(query, str) and "PREPARE pqlq_" in query:
            execute(conn, "DEALLOCATE ALL")  # as a session without it would be
        return result

    monkeypatch.setattr(psycopg.Connection, "execute", another_session_each_time)
    with caplog.at_level(logging.INFO, logger="persistqueue_liteq"):
        msg_id = engine.put("q", b"x")
    assert "no longer prepared" in caplog.text
    sent = _queries(monkeypatch)
    [m] = engine.lease("q", 1, 30)
    assert m.id == msg_id and engine.ack(m.id, m.lease, "q")
    assert len(sent) == 2 and not any("PREPARE" in q or "EXECUTE" in q for q in sent), sent
    assert engine.count("q") == 0


def test_a_prepared_statement_is_named_by_its_text_and_takes_its_placeholders_in_order():
    """The same name on any connection for the same statement only (two
    engines on other tables behind one pooler share server sessions), and
    every placeholder numbered: positional ones in turn, a named one
    where it first appears."""
    pytest.importorskip("psycopg")
    from persistqueue_liteq.postgres.connections import _prepared

    name, prepare, execute = _prepared("SELECT %s, %s FROM t WHERE a LIKE '5%%'")
    assert prepare == "PREPARE %s AS SELECT $1, $2 FROM t WHERE a LIKE '5%%'" % name
    assert execute == "EXECUTE %s (%%s, %%s)" % name
    other, prepare, execute = _prepared("UPDATE t SET a = %(a)s WHERE b = %(b)s OR c = %(a)s")
    assert prepare == "PREPARE %s AS UPDATE t SET a = $1 WHERE b = $2 OR c = $1" % other
    assert execute == "EXECUTE %s (%%(a)s, %%(b)s)" % other
    assert other != name and _prepared("SELECT 1")[0] not in (name, other)
    assert _prepared("SELECT %s, %s FROM t WHERE a LIKE '5%%'")[0] == name
    assert _prepared("SELECT 1")[1:] == ("PREPARE %s AS SELECT 1" % _prepared("SELECT 1")[0],
                                         "EXECUTE " + _prepared("SELECT 1")[0])


def test_a_deadlock_in_a_one_statement_transaction_runs_it_again(engine, monkeypatch):
    """Its transaction rolled back (nothing committed): run again, whole."""
    import psycopg

    from persistqueue_liteq.postgres import connections

    failed = []
    run_once = connections.Connections._once

    def deadlocked_once(conns, conn, statement, *args):
        if not failed:
            failed.append(statement)
            conn.execute("BEGIN")  # as a statement that failed leaves it: in a transaction
            raise psycopg.errors.DeadlockDetected("deadlock detected (the test's)")
        return run_once(conns, conn, statement, *args)

    monkeypatch.setattr(connections.Connections, "_once", deadlocked_once)
    msg_id = engine.put("q", b"x")
    assert failed and engine.count("q") == 1
    with engine._conns.pool().connection() as conn:  # every connection is out of it
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    [m] = engine.lease("q", 1, 30)
    assert m.id == msg_id


def test_the_notifications_of_a_commit_follow_it_and_are_held_back_when_their_queue_fills(
        engine, pg, monkeypatch, caplog):
    """A notification goes after the COMMIT, in a transaction of its own
    (it cannot undo the change, and PostgreSQL's lock on notifying commits
    is not held through the change's WAL flush); above NOTIFY_QUEUE_LIMIT
    of PostgreSQL's notification queue in use (a listener somewhere stopped
    reading; a NOTIFY would fail at its commit) none is sent, and the
    operation still commits and returns, with a warning.  How full it is
    is read every NOTIFY_CHECK_INTERVAL seconds; then again, it is sent."""
    import psycopg

    from persistqueue_liteq.postgres import connections

    monkeypatch.setattr(connections, "NOTIFY_CHECK_INTERVAL", 0.0)  # read at every operation
    channel = engine._channel
    with psycopg.connect(pg.split("?")[0], autocommit=True) as listener:
        listener.execute("LISTEN %s" % channel)

        def heard_until(marker):
            """What the listener heard, up to ``marker``, sent last."""
            with psycopg.connect(pg.split("?")[0], autocommit=True) as other:
                other.execute("SELECT pg_notify(%s, %s)", (channel, marker))
            heard = []
            for note in listener.notifies(timeout=30):
                if note.payload == marker:
                    return heard
                heard.append(note.payload)
            raise AssertionError("the marker %r never came" % marker)

        engine.put("q", b"one")
        with engine.transaction() as tx:
            tx.put("q", b"one more")
            tx.put("other", b"another")
        assert [p.split(":")[0] for p in heard_until("marker 1")] == ["put"] * 3
        monkeypatch.setattr(connections, "NOTIFY_QUEUE_LIMIT", 0.0)  # the queue "full"
        with caplog.at_level(logging.WARNING, logger="persistqueue_liteq"):
            engine.put("q", b"two")
        assert "notification queue is 0% full: no wake-ups are sent" in caplog.text
        with engine.transaction() as tx:
            tx.put("q", b"three")
            tx.put("other", b"four")
        [m] = engine.lease("other", 1, 30)
        assert engine.ack(m.id, m.lease, "other")
        assert heard_until("marker 2") == []
        assert engine.count("q") == 4 and engine.count("other") == 1
        monkeypatch.setattr(connections, "NOTIFY_QUEUE_LIMIT", 0.5)
        engine.put("q", b"five")
        assert "wake-ups are sent again" in caplog.text
        assert [p.split(":")[0] for p in heard_until("marker 3")] == ["put"]


def test_the_results_of_a_batch_take_the_namespace_lock_once(engine, monkeypatch):
    """complete_many stores each result under the namespace's advisory
    lock, held to the commit: taken by the first, a round trip, not again
    by the others."""
    engine.put_keyed("tasks", [("k%d" % i, b"x") for i in range(5)])
    leased = engine.lease("tasks", 5, 30)
    sent = _queries(monkeypatch)
    engine.complete_many("tasks", [(m.id, m.lease, m.key, True, b"r") for m in leased])
    assert sum("pg_advisory_xact_lock" in query for query in sent) == 1, sent
    assert engine.count("tasks") == 0
    assert [key for _, key, _, _ in engine.results_since("tasks", 0)] == [
        m.key for m in leased]


def test_a_table_lock_held_by_another_tool_makes_one_query_operations_database_busy(pg):
    """LOCK TABLE from a migration or a maintenance tool: a put, a lease,
    an ack and a lease's extension (one query each, lock_timeout in it)
    each raise DatabaseBusy after timeout_seconds instead of waiting for
    the lock, change nothing, and work once it is gone."""
    import psycopg

    engine = open_engine(pg, timeout=0.2)
    try:
        engine.put("q", b"before")
        [msg] = engine.lease("q", 1, 30.0)
        table = '"%s"."%smessages"' % (engine.sql.SCHEMA, engine.sql.PREFIX)
        with psycopg.connect(engine.spec.location) as tool:
            tool.execute("LOCK TABLE %s IN ACCESS EXCLUSIVE MODE" % table)
            for operation in (lambda: engine.put("q", b"during"),
                              lambda: engine.lease("q", 1, 30.0),
                              lambda: engine.ack(msg.id, msg.lease, "q"),
                              lambda: engine.set_visibility(msg.id, msg.lease, 60)):
                with pytest.raises(DatabaseBusy, match="timeout_seconds=0.2"):
                    operation()
            tool.rollback()
        assert engine.count("q") == 1  # nothing of "during" was stored
        assert engine.set_visibility(msg.id, msg.lease, 60) is True
        assert engine.ack(msg.id, msg.lease, "q") is True
        engine.put("q", b"after")
        [m] = engine.lease("q", 1, 30.0)
        assert m.data == b"after" and engine.ack(m.id, m.lease, "q")
    finally:
        engine.close()
