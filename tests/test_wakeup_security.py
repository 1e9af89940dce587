"""Wake-ups against another local user, and against an unlucky operator.

The victim always runs in a subprocess of its own, with TMPDIR pointed at a
directory of the test (mode 1777, like /tmp) and XDG_RUNTIME_DIR unset, so
that it never touches the real <TMPDIR>/pqlq-* that other tests share.  The
attacker is ``nobody`` (uid 65534), through setpriv.  That directory is made
by mkdtemp in the system's temporary directory rather than under tmp_path:
pytest's tmp_path lies below a 0700 directory that no other user can reach.

A victim script prints one JSON line (what it saw); any exception makes it
exit non-zero with its traceback, which the test shows.
"""

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap

import pytest

from persistqueue_liteq.sqlite import wakeup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOBODY = 65534
VICTIM_UID = 12345  # an unprivileged victim, for what root's privileges hide



def _python_for_others():
    """An interpreter that other users may run: this one, or (when it lies
    below a directory only we may enter, such as a CI run's virtual
    environment in a private temporary directory) the one it was made from,
    or the system's python3.  The victims need only the standard library
    and a copy of the package.  None if there is none, or if this is not
    root on Linux with setpriv."""
    if (not sys.platform.startswith("linux") or os.geteuid() != 0
            or shutil.which("setpriv") is None):
        return None
    candidates = [sys.executable, getattr(sys, "_base_executable", None),
                  os.path.realpath(sys.executable), shutil.which("python3", path=os.defpath)]
    for python in dict.fromkeys(c for c in candidates if c):
        command = ["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY,
                   "--clear-groups", python, "-c", "pass"]
        if subprocess.run(command, capture_output=True, timeout=60).returncode == 0:
            return python
    return None


PYTHON = _python_for_others()
needs_root = pytest.mark.skipif(
    PYTHON is None,
    reason="needs root, setpriv (Linux) and a Python that other users may run, to act "
           "as another user",
)
pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def box():
    """A directory every user can reach, holding the victim's TMPDIR
    ("tmp", 1777) and a root-only directory with files ("secret")."""
    path = tempfile.mkdtemp(prefix="wakeup-attack-")
    os.chmod(path, 0o755)
    tmp = os.path.join(path, "tmp")
    os.mkdir(tmp)
    os.chmod(tmp, 0o1777)
    secret = os.path.join(path, "secret")
    os.mkdir(secret, 0o700)
    for name in ("a", "b", "c"):
        with open(os.path.join(secret, name), "w") as f:
            f.write(name)
    # The package, where every victim can read it (the checkout may lie
    # below a directory that only root may enter).
    shutil.copytree(os.path.join(ROOT, "persistqueue_liteq"),
                    os.path.join(path, "lib", "persistqueue_liteq"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_user(uid, code, *args):
    """Run Python ``code`` as ``uid`` (no groups); fail the test if it fails."""
    command = ["setpriv", "--reuid=%d" % uid, "--regid=%d" % uid, "--clear-groups",
               PYTHON, "-c", textwrap.dedent(code)] + [str(a) for a in args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def victim(box, code, *args, uid=None, timeout=90):
    """Run the victim's ``code`` (after PREAMBLE) with TMPDIR=<box>/tmp;
    return its JSON, or fail with its traceback."""
    env = dict(os.environ, TMPDIR=os.path.join(box, "tmp"),
               PYTHONPATH=os.path.join(box, "lib"))
    env.pop("XDG_RUNTIME_DIR", None)
    python = sys.executable if uid is None else PYTHON
    command = [python, "-c", PREAMBLE + textwrap.dedent(code)] + [str(a) for a in args]
    if uid is not None:
        command = ["setpriv", "--reuid=%d" % uid, "--regid=%d" % uid, "--clear-groups"] + command
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=box)
    assert done.returncode == 0, "victim failed:\n" + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


PREAMBLE = textwrap.dedent("""\
    import json, logging, multiprocessing, os, sys, threading
    from persistqueue_liteq import LiteQueue, PersistentQueue, PersistentThreadPoolExecutor
    from persistqueue_liteq.sqlite import wakeup

    warnings = []

    class Warnings(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                warnings.append(record.getMessage())

    logging.getLogger("persistqueue_liteq").addHandler(Warnings())
    fork = multiprocessing.get_context("fork")
    waiting = fork.Event()  # set by every wait: the waiter looked for the last time

    def _announcing(cls):
        original = cls.wait
        def wait(self, timeout):
            waiting.set()
            return original(self, timeout)
        cls.wait = wait

    for _name in ("_SocketWaiter", "_PollingWaiter"):
        if hasattr(wakeup, _name):
            _announcing(getattr(wakeup, _name))

    def in_another_process(action):
        \"\"\"Start a process that runs ``action()`` once we wait.\"\"\"
        waiting.clear()
        def run():
            waiting.wait(30)
            action()
            os._exit(0)
        proc = fork.Process(target=run)
        proc.start()
        return proc
""")

# Every blocking call of every front end, with the partner in another
# process (or thread), then a thread pool: what must work however the
# wake-up directory looks.
EVERYTHING = """
    directory = sys.argv[1]
    lite = os.path.join(directory, "lite.db")
    q = LiteQueue(lite)
    q.put(b"plain")
    q.ack(q.pop())
    producer = in_another_process(lambda: LiteQueue(lite).put(b"from a producer"))
    got = q.pop(wait_seconds=30)
    producer.join(30)
    assert got is not None and got.data == b"from a producer", got
    assert producer.exitcode == 0
    q.ack(got)

    path = os.path.join(directory, "persistent.db")
    pq = PersistentQueue(path)
    producer = in_another_process(lambda: PersistentQueue(path).put("late"))
    assert pq.get(timeout=30) == "late"
    producer.join(30)
    assert producer.exitcode == 0
    pq.task_done()
    pq.put("work")
    assert pq.get(timeout=30) == "work"
    waiting.clear()
    finisher = threading.Thread(target=lambda: waiting.wait(30) and pq.task_done())
    finisher.start()
    pq.join()
    finisher.join(30)
    assert not finisher.is_alive()

    with PersistentThreadPoolExecutor(os.path.join(directory, "pool.db"), max_workers=2) as ex:
        assert [f.result(30) for f in [ex.submit(pow, 2, n) for n in range(5)]] == [1, 2, 4, 8, 16]
    print(json.dumps({"warnings": warnings}))
"""


def _names(db, prefix="liteq_"):
    """The wake-up directory names of ``db`` (as wakeup.py makes them)."""
    st = os.stat(db)
    root = wakeup._digest("%d:%d:%s" % (st.st_dev, st.st_ino, prefix), 8)
    return root, ["%s-%s" % (kind, wakeup._digest("default", 6)) for kind in ("put", "done")]


def _entries(path):
    """Every path below ``path`` with its owner, links not followed."""
    found = []
    for parent, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(parent, name)
            found.append((full, os.lstat(full).st_uid))
    return found


def _assert_secret_intact(box):
    secret = os.path.join(box, "secret")
    assert sorted(os.listdir(secret)) == ["a", "b", "c"]


def _victim_dir(box, uid=0):
    path = os.path.join(box, "victim-%d" % uid)
    os.mkdir(path)
    os.chown(path, uid, uid)
    return path


def _assert_one_warning(result, base):
    assert len(result["warnings"]) == 1, result["warnings"]
    assert base in result["warnings"][0]


# -- 1. another user made the directory first -------------------------------------


@needs_root
def test_a_directory_made_by_another_user_first_is_never_used(box):
    """nobody makes <TMPDIR>/pqlq-0 (0777) with a queue file's channel
    directories in it as symlinks to a root-only directory: root's puts,
    gets and blocking gets delete nothing there, raise nothing, still
    deliver (by polling) and warn once."""
    directory = _victim_dir(box)
    lite = os.path.join(directory, "lite.db")
    open(lite, "wb").close()  # an empty file is an empty database: its inode is known
    root, channels = _names(lite)
    as_user(NOBODY, """
        import os, sys
        base, root, secret = sys.argv[1:4]
        os.umask(0)
        os.mkdir(base, 0o777)
        os.mkdir(os.path.join(base, root), 0o777)
        for channel in sys.argv[4:]:
            os.symlink(secret, os.path.join(base, root, channel))
    """, os.path.join(box, "tmp", "pqlq-0"), root, os.path.join(box, "secret"), *channels)
    base = os.path.join(box, "tmp", "pqlq-0")
    before = _entries(base)

    result = victim(box, EVERYTHING, directory)

    _assert_secret_intact(box)
    assert _entries(base) == before  # nothing made in nobody's directory
    _assert_one_warning(result, base)


# -- 2. something else is in the way ----------------------------------------------


def _plant(box, what, uid):
    """nobody puts ``what`` where the victim's wake-up directory goes."""
    base = os.path.join(box, "tmp", "pqlq-%d" % uid)
    as_user(NOBODY, """
        import os, sys
        what, base, secret = sys.argv[1:4]
        if what == "file":
            open(base, "w").close()
        elif what == "directory":
            os.mkdir(base, 0o700)
        else:
            os.symlink(secret, base)
    """, what, base, os.path.join(box, "secret"))
    return base


@needs_root
@pytest.mark.parametrize("what", ["file", "directory", "symlink"])
def test_anything_in_the_way_of_root_means_polling_not_errors(box, what):
    directory = _victim_dir(box)
    base = _plant(box, what, 0)
    before = _entries(os.path.join(box, "tmp"))

    result = victim(box, EVERYTHING, directory)

    _assert_secret_intact(box)
    assert _entries(os.path.join(box, "tmp")) == before  # nothing made in or through it
    _assert_one_warning(result, base)


@needs_root
@pytest.mark.parametrize("what", ["file", "directory", "symlink"])
def test_anything_in_the_way_of_a_plain_user_means_polling_not_errors(box, what):
    """Without root's privileges nobody's 0700 directory cannot even be
    entered (the old code raised PermissionError)."""
    directory = _victim_dir(box, VICTIM_UID)
    base = _plant(box, what, VICTIM_UID)

    result = victim(box, EVERYTHING, directory, uid=VICTIM_UID)

    _assert_secret_intact(box)
    _assert_one_warning(result, base)


# -- 3. out of file descriptors ------------------------------------------------------


OUT_OF_DESCRIPTORS = """
    import errno, resource
    directory = sys.argv[1]
    q = LiteQueue(os.path.join(directory, "fds.db"))
    q.qsize()  # the connection is open
    listening = q.engine.waiter("put", "default")
    listening.__enter__()  # a waiter's socket: the channel's directory exists

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(n) for n in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
    fillers = []
    try:
        while True:  # take every free number below the limit
            fillers.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as exc:
        assert exc.errno == errno.EMFILE, exc

    returned, errors = [], []
    for i in range(5):
        for attempt in range(3):  # a caller that retries on any exception
            try:
                q.put(b"item %d" % i)
            except Exception as exc:
                errors.append(repr(exc))
            else:
                returned.append(i)
                break
    try:
        waited = q.pop("elsewhere", wait_seconds=0.2)  # a waiter needs a socket too
    except Exception as exc:
        waited = repr(exc)

    for fd in fillers:
        os.close(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    listening.__exit__(None, None, None)
    stored = []
    while True:
        msg = q.pop()
        if msg is None:
            break
        stored.append(msg.data.decode())
        q.ack(msg)
    print(json.dumps({"returned": returned, "errors": errors, "stored": stored,
                      "waited": waited, "warnings": warnings}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc/self/fd")
def test_out_of_descriptors_a_put_never_raises_after_its_commit(box):
    result = victim(box, OUT_OF_DESCRIPTORS, _victim_dir(box, os.geteuid()))

    for i in range(5):
        times = result["stored"].count("item %d" % i)
        assert times == (1 if i in result["returned"] else 0), result
    assert result["returned"] == list(range(5)), result  # none had to fail, here
    assert result["waited"] is None, result
    assert len(result["warnings"]) == 1, result["warnings"]


# -- 4. directories do not accumulate -----------------------------------------------


MANY_NAMES = """
    directory = sys.argv[1]
    q = LiteQueue(os.path.join(directory, "names.db"))
    for i in range(3000):
        assert q.pop("name-%d" % i, wait_seconds=0.0001) is None
    base = os.path.join(os.environ["TMPDIR"], "pqlq-%d" % os.geteuid())
    print(json.dumps({"directories": sum(len(d) for _, d, _ in os.walk(base)),
                      "warnings": warnings}))
"""


def test_blocking_pops_on_many_names_leave_a_bounded_number_of_directories(box):
    result = victim(box, MANY_NAMES, _victim_dir(box, os.geteuid()))

    assert result["warnings"] == []
    assert result["directories"] <= 1 + 64, result  # the file's, and _KEEP channels
    base = os.path.join(box, "tmp", "pqlq-%d" % os.geteuid())
    assert [d for _, dirs, _ in os.walk(base) for d in dirs] == []  # gone at exit


# -- what is kept of the directory's checks ---------------------------------------


def test_the_directory_is_made_private(box):
    base = os.path.join(box, "tmp", "pqlq-%d" % os.geteuid())
    os.mkdir(base, 0o755)  # as older versions made it
    victim(box, """
        q = LiteQueue(os.path.join(sys.argv[1], "q.db"))
        assert q.pop(wait_seconds=0.01) is None
        print(json.dumps({}))
    """, _victim_dir(box, os.geteuid()))
    assert stat.S_IMODE(os.lstat(base).st_mode) == 0o700


DEAD_SOCKETS = """
    import socket
    directory, secret = sys.argv[1:3]
    q = LiteQueue(os.path.join(directory, "q.db"))
    channel = q.engine._notifier._directory("put", "default")
    with q.engine.waiter("put", "default"):
        pass  # the channel's directory exists, and stays
    for name in ("dead", "foreign"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(os.path.join(channel, name))
        sock.close()  # refuses datagrams from now on
    os.chown(os.path.join(channel, "foreign"), 65534, 65534)
    open(os.path.join(channel, "file"), "w").close()
    os.symlink(os.path.join(secret, "a"), os.path.join(channel, "link"))
    q.put(b"x")
    left = sorted(os.listdir(channel)) if os.path.isdir(channel) else []
    print(json.dumps({"left": left, "warnings": warnings}))
"""


@needs_root
def test_only_our_own_dead_sockets_are_removed(box):
    result = victim(box, DEAD_SOCKETS, _victim_dir(box), os.path.join(box, "secret"))

    assert result["left"] == ["file", "foreign", "link"]
    _assert_secret_intact(box)
    assert result["warnings"] == []


# -- nothing that goes wrong with a wake-up escapes a commit ---------------------------


def test_no_wake_up_failure_escapes_an_operation_that_committed(q, monkeypatch):
    """Every writing call of the engine notifies after its commit; a failure
    there (here: no socket to send with) must not surface as an exception."""
    def no_socket():
        raise OSError(errno.EIO, "Input/output error (injected)")

    with q.engine.waiter("put", "default"), q.engine.waiter("done", "default"):
        monkeypatch.setattr(wakeup, "_get_sender", no_socket)
        q.put(b"one")
        q.put_batch([b"two", b"three", b"four", b"five"])
        with q.transaction() as tx:
            tx.put(b"six")
        q.ack(q.pop())
        q.release(q.pop())
        q.process_failed(q.pop(), "failed once")
        q.delete(q.pop().id)
        q.change_visibility(q.pop(), 0)
        assert q.redrive() == 0
        assert q.clear() == 4
        q.put(b"seven")
        assert q.delete_queue("default") == 1
        q.engine.wake("done", "default")
    assert q.qsize() == 0
