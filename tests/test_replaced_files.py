"""Files deleted or replaced under an open queue: refused with
DatabaseReplaced where SQLite would lose committed data silently."""

import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from persistqueue_liteq import DatabaseReplaced, LiteQueue, StorageError
from persistqueue_liteq.sqlite import connections

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _in_a_new_interpreter(code, *args):
    """Run ``code`` in a fresh Python (not forked: a forked child shares this
    process's SQLite state, -shm mapping included); return its output."""
    done = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, %r)\n" % ROOT + code % args],
        capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


PUT_200 = """
from persistqueue_liteq import LiteQueue
q = LiteQueue(%r)
for i in range(200):
    q.put(b"other %%d" %% i)
"""

COUNT = """
import sqlite3
print(sqlite3.connect(%r).execute("SELECT count(*) FROM liteq_messages").fetchone()[0])
"""


def test_a_deleted_shm_stops_the_writer_that_would_overwrite_others(q, db):
    q.put(b"mine")
    os.remove(db + "-shm")  # an operator "cleaning up"
    # Another process makes a new -shm and appends 200 puts to the WAL;
    # this process's next commit overwrote them, silently: the file then
    # held 2 messages.
    _in_a_new_interpreter(PUT_200, db)
    with pytest.raises(DatabaseReplaced, match="-shm") as caught:
        q.put(b"would overwrite")
    assert db in str(caught.value) and isinstance(caught.value, StorageError)
    with pytest.raises(DatabaseReplaced):
        q.pop()
    q.close()  # keeps its connections: closing them would delete the WAL
    assert _in_a_new_interpreter(COUNT, db).strip() == "201"


def test_a_database_file_replaced_under_an_open_queue(q, db, tmp_path):
    q.put(b"old file")
    other = str(tmp_path / "other.db")
    with LiteQueue(other) as o:
        o.put(b"new file")
    shutil.copy(other, db + ".new")
    os.replace(db + ".new", db)
    # Found when a new connection opens (a thread's first use) ...
    errors = []

    def use():
        try:
            q.put(b"x")
        except Exception as exc:  # noqa: BLE001 - checked below
            errors.append(exc)

    thread = threading.Thread(target=use)
    thread.start()
    thread.join()
    assert len(errors) == 1 and isinstance(errors[0], DatabaseReplaced), errors
    assert "replaced by another file" in str(errors[0]) and db in str(errors[0])
    # ... and the queue refuses from then on.
    with pytest.raises(DatabaseReplaced):
        q.put(b"y")


def test_a_database_file_replaced_is_found_at_the_next_write(q, db, tmp_path):
    q.put(b"old file")
    other = str(tmp_path / "other.db")
    with LiteQueue(other) as o:
        o.put(b"new file")
    shutil.copy(other, db + ".new")
    os.replace(db + ".new", db)  # e.g. a backup restored over a queue in use
    # A writer looks at its files once a millisecond at most (the window
    # documented in connections.py): let one go by.
    time.sleep(2 * connections._LOOK_INTERVAL)
    # This thread's connection is still on the old file, which shares the
    # -wal by name with the new one: 298 puts went into the restored file so.
    with pytest.raises(DatabaseReplaced, match="replaced by another file"):
        q.put(b"z" * 500)
    # The restored file is as it was restored.
    assert _in_a_new_interpreter(COUNT, db).strip() == "1"


def test_reopening_after_every_connection_closed_is_not_a_replacement(db):
    q = LiteQueue(db)
    q.put(b"a")
    q.close()
    # All connections closed: SQLite removed -wal and -shm; a new queue on a
    # new -shm is normal, and so is a file restored from a backup.
    assert not os.path.exists(db + "-shm")
    q = LiteQueue(db)
    q.put(b"b")
    assert [m.data for m in q.pop_batch()] == [b"a", b"b"]
    q.close()
