import logging
import multiprocessing
import os
import signal
import uuid

import pytest

from persistqueue_liteq import LiteQueue


#: The backends that the ``location`` fixture opens: a new backend adds its
#: name here and a branch to ``location``.
BACKENDS = ["sqlite", "postgresql"]

#: The PostgreSQL server the "postgresql" backend's tests use (a URL), if any.
POSTGRES_ENV = "PERSISTQUEUE_LITEQ_TEST_POSTGRES"
#: Set (by .ci/run) to make a PostgreSQL test that would be skipped for want
#: of a server or of psycopg fail instead: CI must run them for real.
REQUIRE_POSTGRES_ENV = "PERSISTQUEUE_LITEQ_REQUIRE_POSTGRES"
_NO_POSTGRES = ("to test the PostgreSQL backend", "the postgres extra is not installed",
                "import 'psycopg'", "pgbouncer is not installed")


@pytest.fixture(autouse=True)
def _package_logger_restored():
    """The package's logger as it was before the test: a test that runs the
    command line's main() in this process gets its logging set up (a
    handler on that test's stderr, propagate off), which would hide later
    tests' records from caplog and write to a closed stream."""
    logger = logging.getLogger("persistqueue_liteq")
    saved = logger.handlers[:], logger.propagate, logger.level
    yield
    logger.handlers[:], logger.propagate = saved[0], saved[1]
    logger.setLevel(saved[2])  # (setLevel also clears the loggers' level caches)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get(REQUIRE_POSTGRES_ENV):
        reason = str(report.longrepr[-1] if isinstance(report.longrepr, tuple)
                     else report.longrepr)
        if any(text in reason for text in _NO_POSTGRES):
            report.outcome = "failed"
            report.longrepr = "skipped, but $%s is set: %s" % (REQUIRE_POSTGRES_ENV, reason)


@pytest.fixture(params=BACKENDS)
def location(request, tmp_path):
    """A fresh database of each backend, as a location any front end and
    persistqueue_liteq.backends.open_engine take."""
    if request.param == "sqlite":
        return "sqlite:///" + str(tmp_path / "queue.db")
    if request.param == "postgresql":
        return postgres_location(request)
    raise AssertionError("no location for backend %r" % request.param)


def postgres_location(request):
    """A fresh namespace (a schema of its own, dropped after the test) on
    the server named by $PERSISTQUEUE_LITEQ_TEST_POSTGRES; skipped without it."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip("set %s to a postgresql:// URL to test the PostgreSQL backend"
                    % POSTGRES_ENV)
    pytest.importorskip("psycopg", reason="the postgres extra is not installed")
    schema = "test_" + uuid.uuid4().hex[:16]
    request.addfinalizer(lambda: drop_postgres_schema(url, schema))
    return url + ("&" if "?" in url else "?") + "schema=" + schema


def drop_postgres_schema(url, schema):
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute('DROP SCHEMA IF EXISTS "%s" CASCADE' % schema)


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "queue.db")


@pytest.fixture
def q(db):
    queue = LiteQueue(db)
    yield queue
    queue.close()


@pytest.fixture
def path(tmp_path):
    return tmp_path / "queue.db"


@pytest.fixture
def opened():
    """Queues to close after the test: opened(q) returns q."""

    class Opened(list):
        def __call__(self, q):
            self.append(q)
            return q

    queues = Opened()
    yield queues
    for q in queues:
        q.close()


@pytest.fixture
def fork():
    """A fork context whose children are SIGKILLed if a test leaves any."""
    ctx = multiprocessing.get_context("fork")
    yield ctx
    for child in multiprocessing.active_children():
        os.kill(child.pid, signal.SIGKILL)
        child.join()


def run_children(ctx, count, target, *args, timeout=60):
    """Run ``count`` children ``target(barrier, *args)`` at once (each waits
    at the shared ``barrier`` of ``count``); return their exit codes."""
    barrier = ctx.Barrier(count)
    children = [ctx.Process(target=target, args=(barrier,) + args) for _ in range(count)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout)
        if child.exitcode is None:
            os.kill(child.pid, signal.SIGKILL)
            child.join()
            raise AssertionError("child %s did not finish in %ss" % (target.__name__, timeout))
    return [child.exitcode for child in children]


def run_child(ctx, target, *args, timeout=30):
    """Run ``target(*args)`` in a child process; return its exit code."""
    proc = ctx.Process(target=target, args=args)
    proc.start()
    proc.join(timeout)
    if proc.exitcode is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        raise AssertionError("child %s did not finish in %ss" % (target.__name__, timeout))
    return proc.exitcode
