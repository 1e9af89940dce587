"""Storage faults: each is an exception of ours that names the file and says
what happened, and nothing committed is lost by it."""

import os
import resource
import sqlite3
import subprocess
import threading

import pytest

from persistqueue_liteq import (
    DiskFull,
    IncompatibleDatabase,
    LiteQueue,
    OutOfFileDescriptors,
    PayloadTooLarge,
    StorageError,
)

from .conftest import run_child


def _use_every_descriptor():
    held = []
    try:
        while True:
            held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    return held


def _run_out_of_descriptors(db):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = len(os.listdir("/proc/self/fd")) + 24
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    q = LiteQueue(db)
    q.put(b"before")
    held = _use_every_descriptor()
    outcome = {}

    def in_a_new_thread():  # a new thread needs a connection of its own
        try:
            q.put(b"lost?")
        except Exception as exc:  # noqa: BLE001 - checked below
            outcome["put"] = exc

    thread = threading.Thread(target=in_a_new_thread)
    thread.start()
    thread.join()
    try:
        LiteQueue(db)
    except Exception as exc:  # noqa: BLE001 - checked below
        outcome["open"] = exc
    for fd in held:
        os.close(fd)
    for what in ("put", "open"):
        exc = outcome.get(what)
        if not isinstance(exc, OutOfFileDescriptors):
            print(what, repr(exc))
            os._exit(3)
        text = str(exc)
        if db not in text or "file descriptors" not in text or "limit of %d" % limit not in text:
            print(what, text)
            os._exit(4)
    # With descriptors back, everything works and nothing was half-stored.
    q.put(b"after")
    got = [m.data for m in q.pop_batch(max_messages=10)]
    os._exit(0 if got == [b"before", b"after"] else 5)


def test_running_out_of_file_descriptors_says_so(db, fork):
    # It used to say "cannot be opened for writing (is the file or its
    # directory read-only?)": SQLite reports both as "unable to open".
    assert run_child(fork, _run_out_of_descriptors, db) == 0


# -- disk full ------------------------------------------------------------------

def _fill_until_full(q, payload):
    """Put ``payload`` until the storage refuses; return the puts that worked
    and the error."""
    stored = 0
    while True:
        try:
            q.put(payload)
        except DiskFull as exc:
            return stored, exc
        stored += 1
        assert stored < 100_000, "never ran out of room"


def test_max_page_count_reached_is_disk_full(q, db):
    q.put(b"first")
    conn = q.engine._conns.get()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute("PRAGMA max_page_count=%d" % (pages + 20))
    stored, exc = _fill_until_full(q, b"x" * 3000)
    assert db in str(exc) and "no room" in str(exc)
    assert isinstance(exc, StorageError) and isinstance(exc, OSError)
    with pytest.raises(DiskFull):
        q.put_batch([b"y" * 3000] * 50)
    conn.execute("PRAGMA max_page_count=%d" % (1 << 30))  # room again
    q.put(b"last")
    assert q.qsize() == stored + 2
    got = [m.data for m in q.pop_batch(max_messages=stored + 2)]
    assert got == [b"first"] + [b"x" * 3000] * stored + [b"last"]
    assert q.integrity_check() == ["ok"]


@pytest.fixture
def small_filesystem(tmp_path):
    """A 2 MB tmpfs mounted for the test (root only)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.getuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: %s" % done.stderr.strip())
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_file_system_is_disk_full_and_the_queue_works_once_there_is_room(small_filesystem):
    db = str(small_filesystem / "queue.db")
    ballast = small_filesystem / "ballast"
    ballast.write_bytes(b"\0" * (512 << 10))
    q = LiteQueue(db)
    try:
        stored, exc = _fill_until_full(q, b"m" * 8000)
        assert stored > 10
        assert db in str(exc) and "bytes free" in str(exc)
        ballast.unlink()  # room again
        q.put(b"after")
        got = [m.data for m in q.pop_batch(max_messages=stored + 1)]
        assert got == [b"m" * 8000] * stored + [b"after"]
        assert q.integrity_check() == ["ok"]
    finally:
        q.close()


# -- other faults of the file -----------------------------------------------------

@pytest.mark.skipif(not hasattr(sqlite3.Connection, "setlimit"),
                    reason="lowering SQLite's length limit needs Python 3.11+")
def test_a_payload_over_sqlites_length_limit(q, db):
    q.put(b"kept")
    q.engine._conns.get().setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1000)
    with pytest.raises(PayloadTooLarge, match="length limit is 1000 bytes") as caught:
        q.put(b"x" * 2000)
    assert db in str(caught.value) and isinstance(caught.value, ValueError)
    with pytest.raises(PayloadTooLarge):
        q.put_batch([b"small", b"x" * 2000])
    q.put(b"y" * 900)
    assert [m.data for m in q.pop_batch()] == [b"kept", b"y" * 900]


def test_a_disk_io_error_is_a_storage_error(q, db):
    for _ in range(100):
        q.put(b"x" * 3000)
    os.truncate(db + "-wal", 5000)  # another program cuts the WAL short
    caught = {}

    def read():  # a new thread: a new connection reads the WAL
        try:
            q.qsize()
        except Exception as exc:  # noqa: BLE001 - checked below
            caught["error"] = exc

    thread = threading.Thread(target=read)
    thread.start()
    thread.join()
    exc = caught.get("error")
    assert type(exc) is StorageError, repr(exc)
    assert db in str(exc) and "disk I/O error" in str(exc)
    assert isinstance(exc.__cause__, sqlite3.Error)


def test_tables_dropped_by_another_program(q, db):
    q.put(b"x")
    other = sqlite3.connect(db)
    other.execute("DROP TABLE liteq_messages")
    other.commit()
    with pytest.raises(IncompatibleDatabase, match="no longer has its queue tables") as caught:
        q.put(b"y")
    assert db in str(caught.value)
    with pytest.raises(IncompatibleDatabase, match="liteq_messages"):
        LiteQueue(db)


@pytest.mark.parametrize("prefix", ["sqlite_", "SQLite_q_", "sqlite_stat"])
def test_a_table_prefix_that_sqlite_reserves(db, prefix):
    with pytest.raises(ValueError, match="reserved"):
        LiteQueue(db, table_prefix=prefix)
    assert not os.path.exists(db)


def test_a_schema_version_that_is_not_a_number(db):
    LiteQueue(db).put(b"kept")
    conn = sqlite3.connect(db)
    conn.execute("UPDATE liteq_meta SET value = 'two' WHERE key = 'schema_version'")
    conn.commit()
    with pytest.raises(IncompatibleDatabase, match="schema version 'two'") as caught:
        LiteQueue(db)
    assert db in str(caught.value)
    assert conn.execute("SELECT count(*) FROM liteq_messages").fetchone() == (1,)
