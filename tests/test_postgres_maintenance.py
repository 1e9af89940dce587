"""The PostgreSQL engine's maintenance interface (VACUUM, ANALYZE, the
integrity check, sizes, what autovacuum is told and sees), the storage
settings its tables get and the command line's
``vacuum``, ``check`` and ``checkpoint`` on a postgresql:// URL.

Runs when $PERSISTQUEUE_LITEQ_TEST_POSTGRES names a server (conftest's
``postgres_location``: a fresh schema per test).
"""

import os
import time
import subprocess
import sys
import urllib.parse

import pytest

from persistqueue_liteq import LiteQueue
from persistqueue_liteq.backends import open_engine
from persistqueue_liteq.exceptions import DatabaseBusy, ReadOnlyDatabase, Unsupported
from persistqueue_liteq.postgres import maintenance as pg_maintenance

from .conftest import postgres_location

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def pg(request):
    return postgres_location(request)


@pytest.fixture
def engine(pg):
    engine = open_engine(pg)
    yield engine
    engine.close()


def _schema(pg):
    return urllib.parse.parse_qs(urllib.parse.urlsplit(pg).query)["schema"][0]


def _server(pg):
    """A psycopg connection of the test's own (autocommit), on the server of ``pg``."""
    import psycopg

    return psycopg.connect(os.environ["PERSISTQUEUE_LITEQ_TEST_POSTGRES"], autocommit=True)


def _table(pg, name):
    return '"%s"."liteq_%s"' % (_schema(pg), name)


def test_new_tables_get_their_autovacuum_and_fillfactor_settings(engine, pg):
    settings = engine.maintenance().vacuum_settings()
    assert settings[_table(pg, "messages")] == {
        "autovacuum_vacuum_scale_factor": "0.02", "autovacuum_vacuum_threshold": "1000",
        "autovacuum_analyze_scale_factor": "0.02", "autovacuum_analyze_threshold": "1000"}
    assert settings[_table(pg, "counters")]["fillfactor"] == "50"
    assert settings[_table(pg, "activity")]["fillfactor"] == "70"
    assert settings[_table(pg, "results")]["autovacuum_vacuum_scale_factor"] == "0.05"


def test_tables_of_an_earlier_version_get_the_settings_from_their_owner(pg):
    """Opening tables never changes their settings (an application's role
    may own none of them); apply_table_settings() does, and a read-only
    engine refuses it."""
    open_engine(pg).close()
    with _server(pg) as conn:  # as an earlier version left them
        for name in ("messages", "results", "counters", "activity"):
            conn.execute("ALTER TABLE %s RESET (fillfactor, autovacuum_vacuum_scale_factor, "
                         "autovacuum_vacuum_threshold, autovacuum_analyze_scale_factor, "
                         "autovacuum_analyze_threshold)" % _table(pg, name))
    engine = open_engine(pg)
    reader = open_engine(pg, readonly=True)
    try:
        upkeep = engine.maintenance()
        assert upkeep.vacuum_settings()[_table(pg, "messages")] == {}  # opened as they are
        assert "apply_table_settings()" in dict(upkeep.health())["autovacuum"]
        with pytest.raises(ReadOnlyDatabase, match="read-only: apply_table_settings"):
            reader.maintenance().apply_table_settings()
        upkeep.apply_table_settings()
        settings = upkeep.vacuum_settings()
        assert settings[_table(pg, "messages")]["autovacuum_vacuum_scale_factor"] == "0.02"
        assert settings[_table(pg, "counters")]["fillfactor"] == "50"
        upkeep.apply_table_settings()  # again: the same
        assert upkeep.vacuum_settings() == settings
    finally:
        reader.close()
        engine.close()


def test_a_read_only_engine_neither_vacuums_nor_analyzes(pg):
    open_engine(pg).close()
    reader = open_engine(pg, readonly=True)
    try:
        upkeep = reader.maintenance()
        for operation in (upkeep.vacuum, upkeep.analyze):
            with pytest.raises(ReadOnlyDatabase, match="read-only"):
                operation()
        assert upkeep.integrity_check() == ["ok"]  # looking is fine
    finally:
        reader.close()


def test_vacuum_gives_back_the_space_of_deleted_messages_and_keeps_the_rest(engine):
    payload = os.urandom(1000)  # kept in the table's own pages (not TOASTed)
    engine.put_many("jobs", [payload] * 4000)
    kept = engine.put("kept", b"still here")  # on the last page: no plain vacuum cuts it
    engine.purge("jobs")
    upkeep = engine.maintenance()
    before = upkeep.sizes().database
    upkeep.vacuum()
    after = upkeep.sizes().database
    assert after < before - 4000 * 1000 // 2, (before, after)
    assert upkeep.sizes().log is None  # the server's WAL is not the engine's
    [message] = engine.lease("kept", 1, 30)
    assert (message.id, message.data) == (kept, b"still here")
    upkeep.vacuum(full=False)  # and a plain one, as autovacuum runs it
    upkeep.analyze()
    assert engine.count("kept") == 1


def test_vacuum_full_waits_for_a_table_lock_no_longer_than_the_timeout(pg):
    engine = open_engine(pg, timeout=0.5)
    try:
        engine.put("jobs", b"x")
        with _server(pg) as conn:
            with conn.transaction():  # a reader of the table, in a long transaction
                conn.execute("SELECT count(*) FROM %s" % _table(pg, "messages")).fetchall()
                with pytest.raises(DatabaseBusy, match="timeout_seconds=0.5"):
                    engine.maintenance().vacuum()
        assert engine.count("jobs") == 1
    finally:
        engine.close()


def test_the_integrity_check_finds_an_invalid_index_and_a_missing_table(engine, pg):
    upkeep = engine.maintenance()
    assert upkeep.integrity_check() == ["ok"]
    engine.put("jobs", b"a")
    engine.put("jobs", b"b")
    with _server(pg) as conn:  # a CREATE INDEX CONCURRENTLY that failed leaves it invalid
        with pytest.raises(Exception, match="could not create unique index"):
            conn.execute('CREATE UNIQUE INDEX CONCURRENTLY broken ON %s (queue)'
                         % _table(pg, "messages"))
    [problem] = upkeep.integrity_check()
    assert problem == ("index %s.broken is invalid: rebuild it with REINDEX INDEX %s.broken"
                       % (_schema(pg), _schema(pg)))
    with _server(pg) as conn:
        conn.execute("DROP INDEX %s" % ('"%s".broken' % _schema(pg)))
        conn.execute("DROP TABLE %s" % _table(pg, "activity"))
    assert upkeep.integrity_check() == ["table %s is missing" % _table(pg, "activity")]


def test_the_integrity_check_runs_amcheck_where_it_is_installed(engine, pg):
    with _server(pg) as conn:
        superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
                                 ).fetchone()[0]
        available = conn.execute("SELECT 1 FROM pg_available_extensions "
                                 "WHERE name = 'amcheck'").fetchone()
        if not (superuser and available):
            pytest.skip("amcheck needs a superuser to install it and the contrib package")
        conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
    engine.put_many("jobs", [b"x"] * 100)
    upkeep = engine.maintenance()
    assert dict(engine._rows(pg_maintenance.AMCHECK_FUNCTIONS)).keys() == {
        "bt_index_check", "verify_heapam"}
    assert upkeep.integrity_check() == ["ok"]


def test_checkpoint_and_the_automatic_vacuum_are_postgresqls_own(engine):
    upkeep = engine.maintenance()
    with pytest.raises(Unsupported, match="manages its write-ahead log itself"):
        upkeep.checkpoint()
    with pytest.raises(Unsupported, match="autovacuum vacuums the queue tables"):
        upkeep.set_auto_vacuum(100)
    assert upkeep.auto_vacuum_free_pages is None


def test_health_names_the_transaction_that_holds_back_vacuums(engine, pg):
    """The oldest transaction of the database that holds back vacuums: the
    test's own, or one older still (an autovacuum worker, another client's
    session on the shared test server)."""
    upkeep = engine.maintenance()
    labels = [label for label, _ in upkeep.health()]
    assert labels[0] == "rows" and labels[-1] == "autovacuum"
    with _server(pg) as conn, _server(pg) as probe:
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            conn.execute("SELECT 1").fetchall()
            pid = conn.info.backend_pid
            seconds, holder, state = upkeep.oldest_transaction()
            assert seconds >= 0
            if holder == pid:
                assert state == "idle in transaction"
            else:  # older than the test's: holding back more
                ages = dict(probe.execute(
                    "SELECT pid, age(backend_xmin) FROM pg_stat_activity WHERE pid = ANY(%s)",
                    ([pid, holder],)).fetchall())
                assert ages.get(holder, 0) >= ages[pid] or holder not in ages
            health = dict(upkeep.health())
            assert "oldest tx" in health and "no vacuum removes rows" in health["oldest tx"]
    assert "autovacuum_vacuum_scale_factor=0.02" in health["autovacuum"]
    rows = upkeep.dead_rows()[_table(pg, "messages")]
    assert len(rows) == 3


def cli(*args):
    return subprocess.run([sys.executable, "-m", "persistqueue_liteq"] + list(args),
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=ROOT))


def test_the_command_line_checks_and_vacuums_a_postgres_queue(pg):
    q = LiteQueue(pg)
    try:
        for _ in range(50):
            q.put(b"x" * 1000)
        q.purge()
    finally:
        q.close()
    done = cli("check", pg)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("database:   postgresql://") and "bytes of queue tables" in lines[0]
    assert lines[1].startswith("rows:") and lines[-1] == "integrity:  ok", done.stdout
    done = cli("vacuum", pg)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("vacuumed %s: " % pg), done.stdout
    done = cli("checkpoint", pg)
    assert done.returncode == 1 and "manages its write-ahead log itself" in done.stderr
    done = cli("vacuum", "--auto", "100", pg)
    assert done.returncode == 1 and "autovacuum vacuums the queue tables" in done.stderr


# -- leases while a long transaction holds back vacuums -------------------------------


def _plan_blocks(conn, statement, params):
    """The shared buffers that running ``statement`` touches (EXPLAIN
    ANALYZE, rolled back: nothing is leased)."""
    import json

    with conn.transaction(force_rollback=True):
        [[plan]] = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement,
                                params).fetchall()
    plan = plan if isinstance(plan, list) else json.loads(plan)
    top = plan[0]["Plan"]
    return top["Shared Hit Blocks"] + top["Shared Read Blocks"]


def _statements_run(engine, monkeypatch):
    """The (statement, parameters) that ``engine`` runs as transactions of
    one statement (its leases), from now on."""
    ran = []
    once = engine._conns.once

    def recorded(statement, params=None, *args, **kwargs):
        ran.append((statement, dict(params)))
        return once(statement, params, *args, **kwargs)

    monkeypatch.setattr(engine._conns, "once", recorded)
    return ran


def test_fifo_leases_do_not_step_over_taken_messages_that_no_vacuum_can_remove(
        engine, pg, monkeypatch):
    """A transaction open elsewhere keeps every version of every message
    taken since it began (no vacuum may remove them); a FIFO lease that
    scanned the queue from its start would read all of their index entries
    and pages, ever slower.  The engine's leases scan from a floor, which
    reads about as many as on a fresh table."""
    from persistqueue_liteq.postgres import lease as pg_lease

    # No slack below the floor: with it, the scan also reads the messages
    # of the last 50 ms, as many as the machine's speed puts there (33
    # blocks once on a loaded machine, against 30 allowed).
    monkeypatch.setattr(pg_lease, "FIFO_SLACK", 0.0)
    with _server(pg) as holder, _server(pg) as probe:
        with holder.transaction():
            holder.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            holder.execute("SELECT 1").fetchall()  # its snapshot: from now on
            for i in range(1000):
                engine.put("jobs", b"%d" % i)
                [m] = engine.lease("jobs", 1, 30)
                assert m.data == b"%d" % i  # in order, every one
                engine.ack(m.id, m.lease, "jobs")
            engine.put("jobs", b"next")
            ran = _statements_run(engine, monkeypatch)
            [m] = engine.lease("jobs", 1, 30)
            assert m.data == b"next"
            [(statement, params)] = ran
            assert statement == engine.sql.LEASE_FIFO_FROM  # what it ran: from its floor
            params["lease"] += 1  # as another lease would run it
            from_floor = _plan_blocks(probe, statement, params)
            from_start = _plan_blocks(probe, engine.sql.LEASE_FIFO, params)
            assert from_floor * 20 < from_start, (from_floor, from_start)
            assert from_floor < 30, from_floor


def test_a_message_committed_behind_the_fifo_floor_is_leased_at_the_next_full_scan(
        engine, pg, monkeypatch):
    """A producer's transaction that commits late makes its message visible
    with a visible_at behind what the consumer already leased: below its
    floor.  The consumer's next scan from the start (every FIFO_FULL_SCAN
    seconds) finds it."""
    import threading

    from persistqueue_liteq.postgres import lease as pg_lease

    monkeypatch.setattr(pg_lease, "FIFO_SLACK", 0.0)
    monkeypatch.setattr(pg_lease, "FIFO_FULL_SCAN", 0.2)
    producer = open_engine(pg)
    try:
        producer.put("jobs", b"first")  # the queue exists (the transaction adds no row)
        [first] = engine.lease("jobs", 1, 30)
        engine.ack(first.id, first.lease, "jobs")
        with producer.transaction() as tx:
            tx.put("jobs", b"late")  # its visible_at: now
            other = threading.Thread(target=producer.put, args=("jobs", b"early"))
            other.start()
            other.join()  # committed at once
            [early] = engine.lease("jobs", 1, 30)
            assert early.data == b"early"
        [(late_visible_at,)] = producer._rows(
            "SELECT visible_at FROM %s WHERE data = 'late'" % _table(pg, "messages"))
        assert engine._fifo_floors["jobs"][0] > late_visible_at  # behind the floor
        deadline = time.monotonic() + 30
        leased = []
        while not leased and time.monotonic() < deadline:
            leased = engine.lease("jobs", 1, 30)
        assert [(m.data, m.attempts) for m in leased] == [(b"late", 1)]
    finally:
        producer.close()


def test_the_fifo_floors_stay_bounded_whatever_the_number_of_queues(engine, monkeypatch):
    """One floor per queue leased from: a deleted queue's goes with it, and
    past FIFO_FLOORS_KEPT queues they are forgotten, not kept for the
    engine's life (an application with a reply queue per job)."""
    from persistqueue_liteq.postgres import lease as pg_lease

    monkeypatch.setattr(pg_lease, "FIFO_FLOORS_KEPT", 3)
    for i in range(10):
        engine.put("reply-%d" % i, b"x")
        [m] = engine.lease("reply-%d" % i, 1, 30)
        assert engine.ack(m.id, m.lease)
        assert len(engine._fifo_floors) <= 3
    assert "reply-9" in engine._fifo_floors
    engine.delete_queue("reply-9")
    assert "reply-9" not in engine._fifo_floors


def test_a_put_in_flight_across_an_empty_scan_is_leased_once_it_commits(engine, pg, monkeypatch):
    """A slow link to the server: a put has taken its visible_at, a scan from
    the start finds the queue empty, then the put commits.  The next lease,
    from the floor, finds it (the floor moved up to FIFO_FULL_SCAN seconds
    before the empty scan, not to its moment)."""
    from persistqueue_liteq.postgres import lease as pg_lease

    monkeypatch.setattr(pg_lease, "FIFO_FULL_SCAN", 30.0)  # no other scan from the start
    monkeypatch.setattr(pg_lease, "FIFO_SLACK", 0.0)  # however short the flight
    producer = open_engine(pg)
    try:
        producer.put("jobs", b"first")  # the queue exists; leased by another engine
        [first] = producer.lease("jobs", 1, 30)
        producer.ack(first.id, first.lease, "jobs")
        with producer.transaction() as tx:
            tx.put("jobs", b"in flight")
            assert engine.lease("jobs", 1, 30) == []  # from the start: nothing committed
        ran = _statements_run(engine, monkeypatch)
        [m] = engine.lease("jobs", 1, 30)
        assert m.data == b"in flight" and [s for s, _ in ran] == [engine.sql.LEASE_FIFO_FROM]
    finally:
        producer.close()


def test_the_command_line_never_shows_the_password_of_its_url(pg):
    """The server trusts this test's connections whatever the password, so
    a URL with one opens: nothing printed, logged or raised shows it."""
    parts = urllib.parse.urlsplit(pg)
    secret = "s3cr3t-pw"
    url = parts._replace(netloc="%s:%s@%s" % (parts.username or "root", secret,
                                               parts.hostname + ":%d" % (parts.port or 5432))
                         ).geturl()
    q = LiteQueue(url)
    try:
        q.put(b"x")
    finally:
        q.close()
    runs = [cli("-vv", "stats", url), cli("stats", "--json", url), cli("check", url),
            cli("vacuum", url), cli("-vv", "dlq", "show", url, "12345"),
            cli("checkpoint", url), cli("dlq", "show", "12345", url)]  # the last: misordered
    for done in runs:
        assert secret not in done.stdout + done.stderr, done.args
    assert [done.returncode for done in runs] == [0, 0, 0, 0, 1, 1, 2], [
        r.stderr for r in runs]
    assert "***" in runs[2].stdout  # the URL is shown, without its password
