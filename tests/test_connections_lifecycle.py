"""Connections follow their threads: opened on first use, closed when the
thread ends, never closed by a forked child."""

import os
import subprocess
import sys
import threading

from persistqueue_liteq import LiteQueue

from .conftest import run_child


def _open_descriptors():
    return len(os.listdir("/proc/self/fd"))


def test_ten_thousand_short_lived_threads_leak_no_descriptors(q):
    # A thread-per-request server: each request is a thread that puts and
    # gets once.  Each thread's connection (the file and its -wal: two
    # descriptors) used to stay open for good, so such a server ran out of
    # descriptors after a few thousand requests.
    q.put(b"warm-up")
    q.ack(q.pop())
    before = _open_descriptors()
    errors = []

    def request(i):
        try:
            q.put(b"request %d" % i)
            msg = q.pop()
            q.ack(msg)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    most = 0
    for i in range(10_000):
        thread = threading.Thread(target=request, args=(i,))
        thread.start()
        thread.join()
        if i % 100 == 0:
            most = max(most, _open_descriptors())
            assert most <= before + 10, "%d descriptors open after %d threads, %d before" % (
                most, i + 1, before)
    assert errors == []
    assert _open_descriptors() <= before + 2
    assert q.qsize() == 0


def test_a_thread_that_ends_while_another_uses_the_queue(q):
    # The ending thread closes only its own connection.
    q.put(b"a")
    started, finish = threading.Event(), threading.Event()

    def short():
        q.put(b"b")

    def long():
        q.put(b"c")
        started.set()
        finish.wait(30)
        q.put(b"d")

    keeper = threading.Thread(target=long)
    keeper.start()
    assert started.wait(30)
    for _ in range(20):
        t = threading.Thread(target=short)
        t.start()
        t.join()
    finish.set()
    keeper.join(30)
    assert q.qsize() == 23
    assert len(q.engine._conns._all) == 1  # this thread's; the others closed


def test_a_forked_child_never_closes_the_parents_connections(q, db, fork):
    holding, release = threading.Event(), threading.Event()
    parent_conns = [q.engine._conns.get()]

    def worker():
        q.put(b"from a parent thread")
        parent_conns.append(q.engine._conns.get())
        holding.set()
        release.wait(30)
        q.put(b"after the fork")

    thread = threading.Thread(target=worker)
    thread.start()
    assert holding.wait(30)

    def child():
        # The parent's other thread is gone in the child: CPython dropped its
        # threading.local slot, which must not have closed its connection.
        for conn in parent_conns:
            try:
                conn.total_changes  # raises ProgrammingError once closed
            except Exception:  # noqa: BLE001
                os._exit(4)
        q.put(b"child through the inherited queue")
        LiteQueue(db).put(b"child through a queue of its own")
        os._exit(0)

    assert run_child(fork, child) == 0
    release.set()
    thread.join(30)
    assert q.qsize() == 4
    assert q.integrity_check() == ["ok"]


def test_opening_and_closing_queues_again_and_again_leaks_no_descriptors(tmp_path):
    # A process that opens a queue per request (or a script per file) and
    # closes it: the -shm descriptor the engine keeps to read the WAL's
    # length must go once SQLite has removed that -shm with the last
    # connection, or every open costs one descriptor for good.
    def cycle(path):
        q = LiteQueue(str(path))
        q.put(b"x")
        q.ack(q.pop())
        q.close()

    cycle(tmp_path / "warm-up.db")
    before = _open_descriptors()
    for _ in range(200):
        cycle(tmp_path / "same.db")
    assert _open_descriptors() <= before + 2
    for i in range(200):
        cycle(tmp_path / ("file%d.db" % i))
    assert _open_descriptors() <= before + 2



def _exit_of(script, tmp_path):
    """Run ``script`` with a queue file's path; (exit code, stdout, stderr)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        proc = subprocess.run(
            [sys.executable, "-X", "faulthandler", "-c", script, str(tmp_path / "q.db")],
            env=dict(os.environ, PYTHONPATH=root), capture_output=True, timeout=30)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError("the script hung at its exit:\n%s"
                             % (exc.stderr or b"").decode(errors="replace")) from None
    return proc.returncode, proc.stdout, proc.stderr


_DAEMON_HOLDS_THE_LOCK = """if 1:
    import sys, threading
    from persistqueue_liteq import LiteQueue
    q = LiteQueue(sys.argv[1])
    held = threading.Event()
    def hold(conns=q.engine._conns):
        q.put(b"x")  # this thread's connection
        with conns._lock:  # where a daemon thread may be when the interpreter stops it
            held.set()
            threading.Event().wait()
    threading.Thread(target=hold, daemon=True).start()
    held.wait()
    print("exiting")
"""


def test_exit_with_a_daemon_thread_inside_the_connections_lock(tmp_path):
    # The interpreter stops its daemon threads where they are when it
    # exits, then clears their states from the main thread, which drops
    # their connections' slots: closing one there used to wait forever for
    # the lock a stopped thread held (a pool's threads open their
    # connections under it: a script that made a thread pool and ended at
    # once hung at its exit now and then).
    assert _exit_of(_DAEMON_HOLDS_THE_LOCK, tmp_path) == (0, b"exiting\n", b"")


_DAEMON_IN_A_STATEMENT = """if 1:
    import sys, threading
    from persistqueue_liteq import LiteQueue
    q = LiteQueue(sys.argv[1])
    started = threading.Event()
    def query(conns=q.engine._conns):
        conn = conns.get()  # this thread's connection
        conn.create_function("started", 0, lambda: started.set() or 1)
        # Says it started from inside the statement, which never ends.
        conn.execute("WITH RECURSIVE c(n) AS (SELECT started() UNION ALL "
                     "SELECT n + 1 FROM c) SELECT count(*) FROM c").fetchall()
    threading.Thread(target=query, daemon=True).start()
    started.wait()
    print("exiting")
"""


def test_exit_with_a_daemon_thread_inside_a_statement(tmp_path):
    # The same, with the stopped thread inside a statement on its
    # connection: closing that connection from the main thread waited for
    # the statement (forever here), or crashed the exit with a segmentation
    # fault (seen on 3.10 with a thread pool's worker): it is left for the
    # process's exit to close.
    assert _exit_of(_DAEMON_IN_A_STATEMENT, tmp_path) == (0, b"exiting\n", b"")
