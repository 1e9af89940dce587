"""The PostgreSQL backend behind PgBouncer in transaction mode.

A pooler in transaction mode gives each transaction of a client whichever
server session is free: a session-level SET of one client stays for the
next, prepared statements of one session are not in the next (before
PgBouncer 1.21), and a LISTEN lasts one transaction.  The engine sets what
it needs per transaction (``SET LOCAL`` with its BEGIN, ``BEGIN READ
ONLY``, ``application_name`` at connection time), takes ``prepared=false``
and LISTENs on ``listen_url``, a direct URL.

Each test runs a PgBouncer of its module (as the ``postgres`` user when
root: it refuses to run as root) in front of $PERSISTQUEUE_LITEQ_TEST_POSTGRES;
without pgbouncer on the PATH they are skipped, and .ci/run installs it.
"""

import multiprocessing
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse

import pytest

from persistqueue_liteq import PersistentQueue
from persistqueue_liteq.backends import open_engine
from persistqueue_liteq.exceptions import ReadOnlyDatabase

from . import test_engine_contract as _contract
from .conftest import POSTGRES_ENV, postgres_location, run_child

# The engine contract's tests (and its ``engine`` fixture), collected here
# too: this module's ``location`` fixture replaces conftest's for them, so
# they run through PgBouncer.
globals().update((name, value) for name, value in vars(_contract).items()
                 if name.startswith("test_") or name == "engine")

NO_PGBOUNCER = "pgbouncer is not installed (apt-get install pgbouncer)"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pgbouncer():
    """(host, port) of a PgBouncer in transaction mode in front of the test
    server: database "test" with a pool of 2 server sessions, "single"
    (the same database) with 1, so that its clients share one session."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip("set %s to a postgresql:// URL to test the PostgreSQL backend"
                    % POSTGRES_ENV)
    pytest.importorskip("psycopg", reason="the postgres extra is not installed")
    binary = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)
    if binary is None:
        pytest.skip(NO_PGBOUNCER)
    server = urllib.parse.urlsplit(url)
    target = "host=%s port=%d dbname=%s user=%s" % (
        server.hostname or "127.0.0.1", server.port or 5432, server.path.strip("/") or "test",
        server.username or pwd.getpwuid(os.getuid()).pw_name)
    if server.password:
        target += " password=%s" % server.password
    home = tempfile.mkdtemp(prefix="pqlq-pgbouncer-")
    command = [binary]
    if os.getuid() == 0:  # it will not run as root
        postgres = pwd.getpwnam("postgres")
        os.chown(home, postgres.pw_uid, postgres.pw_gid)
        command += ["-u", "postgres"]
    port = _free_port()
    config = os.path.join(home, "pgbouncer.ini")
    with open(config, "w") as f:
        f.write("[databases]\n"
                "test = %s pool_size=2\n"
                "single = %s pool_size=1\n"
                "[pgbouncer]\n"
                "listen_addr = 127.0.0.1\n"
                "listen_port = %d\n"
                "unix_socket_dir =\n"
                "auth_type = any\n"
                "pool_mode = transaction\n"
                # A client left waiting for a server session fails in 20 s
                # (the tests' timeout is 60) instead of hanging.
                "query_wait_timeout = 20\n"
                "max_client_conn = 200\n"
                "logfile = %s/pgbouncer.log\n"
                "pidfile = %s/pgbouncer.pid\n" % (target, target, port, home, home))
    os.chmod(config, 0o644)
    # Its output goes to a file, never to a pipe: it also logs every login
    # and close to stderr, and once a pipe that nobody reads holds 64 KB
    # (about 250 connections, as many as this module makes) its next line
    # blocks it, and with it every client, until this process exits.
    output = os.path.join(home, "pgbouncer.out")
    with open(output, "wb") as out:
        proc = subprocess.Popen(command + [config], stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_until_it_answers(proc, port, output)
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(home, ignore_errors=True)


def _wait_until_it_answers(proc, port, output):
    import psycopg

    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            with open(output, errors="replace") as f:
                raise AssertionError("pgbouncer exited (%s): %s" % (proc.returncode, f.read()))
        try:
            psycopg.connect("postgresql://root@127.0.0.1:%d/test" % port,
                            connect_timeout=2).close()
            return
        except psycopg.OperationalError as exc:
            assert time.monotonic() < deadline, "pgbouncer did not answer: %s" % exc
            time.sleep(0.05)


def _through(direct, pgbouncer, database="test", **options):
    """The location ``direct`` (a URL with its test schema) through PgBouncer,
    with ``prepared=false`` and ``listen_url`` the direct URL."""
    parts = urllib.parse.urlsplit(direct)
    query = urllib.parse.parse_qsl(parts.query) + [
        ("prepared", "false"), ("listen_url", direct.split("?")[0])]
    query += [(name, str(value)) for name, value in options.items()]
    host, port = pgbouncer
    netloc = "%s@%s:%d" % (parts.username or "root", host, port)
    return urllib.parse.urlunsplit(parts._replace(
        netloc=netloc, path="/" + database, query=urllib.parse.urlencode(query)))


@pytest.fixture
def direct(request):
    return postgres_location(request)


@pytest.fixture
def location(direct, pgbouncer):
    """For the engine contract's tests: a fresh schema, through PgBouncer."""
    return _through(direct, pgbouncer)


def _session_settings(pgbouncer, database):
    """What a plain client through PgBouncer finds set on its session."""
    import psycopg

    host, port = pgbouncer
    with psycopg.connect("postgresql://root@%s:%d/%s" % (host, port, database),
                         autocommit=True, prepare_threshold=None,
                         application_name="another client") as conn:
        return {name: conn.execute("SHOW %s" % name).fetchone()[0]
                for name in ("lock_timeout", "default_transaction_read_only",
                             "transaction_read_only", "application_name")}


def test_the_pgbouncer_of_these_tests_outlasts_many_connections(pgbouncer):
    # Its log lines once filled a pipe nobody read, after about 250
    # connections: then it stopped answering anyone, and whichever test of
    # this module came next failed 20 or 60 s later.
    import psycopg

    host, port = pgbouncer
    for _ in range(600):
        psycopg.connect("postgresql://root@%s:%d/test" % (host, port), connect_timeout=5).close()


def test_no_setting_of_the_engine_stays_on_a_shared_server_session(direct, pgbouncer):
    before = _session_settings(pgbouncer, "single")
    writer = open_engine(_through(direct, pgbouncer, "single", timeout=7))
    reader = open_engine(_through(direct, pgbouncer, "single"), readonly=True)
    try:
        for _ in range(10):  # more than psycopg's prepare_threshold
            writer.put("q", b"x")
            msg = writer.lease("q", 1, 30.0)[0]
            assert writer.ack(msg.id, msg.lease)
        assert reader.count("q") == 0
        with pytest.raises(ReadOnlyDatabase):
            reader.put("q", b"refused")
    finally:
        reader.close()
        writer.close()
    # The one server session of "single" ran all of it, and is as it was.
    assert _session_settings(pgbouncer, "single") == before
    assert before["lock_timeout"] != "7s"


def _shut(*sockets):
    """End both directions of each socket (the other thread's recv returns)."""
    for s in sockets:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _LateFlushes:
    """A TCP proxy in front of PgBouncer that holds back each Flush message
    sent right after a Sync until the Sync's answer has surely come back.

    psycopg ends a pipeline with a Sync, and with a Flush too when its
    results were not all in yet: whether that Flush reaches PgBouncer
    before or after the Sync's ReadyForQuery depends on timing (on a loaded
    machine, 1 module run in 60).  This makes it always after."""

    HOLD = 0.05  # seconds; a Sync's answer comes back within a millisecond here

    def __init__(self, upstream):
        self._upstream = upstream
        self._server = socket.create_server(("127.0.0.1", 0))
        self.address = self._server.getsockname()
        self._sockets = [self._server]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(self._upstream)
            self._sockets += [client, upstream]
            threading.Thread(target=self._forward, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._copy, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _copy(source, sink):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _shut(source, sink)

    def _forward(self, client, upstream):
        """Client to PgBouncer, message by message: the startup messages
        (no type byte) until the StartupMessage, then typed ones."""
        buffer, started, last = b"", False, None
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    break
                buffer += data
                while True:
                    if not started:
                        if len(buffer) < 8:
                            break
                        size = int.from_bytes(buffer[:4], "big")
                        if len(buffer) < size:
                            break
                        message, buffer = buffer[:size], buffer[size:]
                        code = int.from_bytes(message[4:8], "big")
                        started = code == 196608  # protocol 3.0: typed messages follow
                        upstream.sendall(message)
                        continue
                    if len(buffer) < 5:
                        break
                    size = 1 + int.from_bytes(buffer[1:5], "big")
                    if len(buffer) < size:
                        break
                    message, buffer = buffer[:size], buffer[size:]
                    kind = message[:1]
                    if kind == b"H" and last == b"S":
                        time.sleep(self.HOLD)
                    upstream.sendall(message)
                    last = kind
        except OSError:
            pass
        finally:
            _shut(client, upstream)

    def close(self):
        for s in self._sockets:
            s.close()


def test_a_transaction_through_pgbouncer_gives_its_server_session_back(direct, pgbouncer):
    # "single" has one server session.  A commit that ended its
    # transaction in a pipeline, whose late Flush then took the session
    # again, left it to an idle connection of the writer: the reader's
    # count waited for it until PgBouncer's query_wait_timeout (20 s).
    proxy = _LateFlushes(pgbouncer)
    try:
        writer = open_engine(_through(direct, proxy.address, "single"))
        reader = open_engine(_through(direct, proxy.address, "single"), readonly=True)
        try:
            for i in range(3):
                writer.put("q", b"x")  # a commit with a notification
                assert reader.count("q") == i + 1
            msg = writer.lease("q", 1, 30.0)[0]
            assert writer.ack(msg.id, msg.lease)
            assert reader.count("q") == 2
        finally:
            reader.close()
            writer.close()
    finally:
        proxy.close()


def _put_once(location):
    engine = open_engine(location)
    engine.put("q", b"x")
    engine.close()


def test_a_blocked_get_through_pgbouncer_is_woken_over_listen_url(direct, pgbouncer):
    # "single": a LISTEN through PgBouncer would be on the one server session
    # that the put's transaction runs on too, and its notification would go
    # to the putting client.  The put comes from another process (a put in
    # this one wakes this process's waiters without the server).
    location = _through(direct, pgbouncer, "single")
    waiting = open_engine(location)
    try:
        with waiting.waiter("put", "q") as waiter:
            # spawn: this process has threads (its pool's, its listener's)
            spawn = multiprocessing.get_context("spawn")
            assert run_child(spawn, _put_once, location) == 0
            # True: woken; the safety look every second ends a wait with False.
            assert waiter.wait(30.0) is True
    finally:
        waiting.close()


def test_a_queue_through_pgbouncer_keeps_its_items_across_many_threads(direct, pgbouncer):
    import threading

    q = PersistentQueue(_through(direct, pgbouncer))
    try:
        def produce(base):
            for i in range(50):
                q.put(base + i)

        producers = [threading.Thread(target=produce, args=(k * 1000,)) for k in range(4)]
        for t in producers:
            t.start()
        got = []
        for _ in range(200):
            got.append(q.get(timeout=30))
            q.task_done()
        for t in producers:
            t.join(30)
        assert sorted(got) == sorted(k * 1000 + i for k in range(4) for i in range(50))
        q.join()
    finally:
        q.close()
