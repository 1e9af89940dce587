import multiprocessing
import os
import signal

import pytest

from persistqueue_liteq import LiteQueue


#: The backends that the ``location`` fixture opens: a new backend adds its
#: name here and a branch to ``location``.
BACKENDS = ["sqlite"]


@pytest.fixture(params=BACKENDS)
def location(request, tmp_path):
    """A fresh database of each backend, as a location any front end and
    persistqueue_liteq.backends.open_engine take."""
    if request.param == "sqlite":
        return "sqlite:///" + str(tmp_path / "queue.db")
    raise AssertionError("no location for backend %r" % request.param)


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
