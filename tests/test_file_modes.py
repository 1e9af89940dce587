"""Queue files get the mode open() would give them: 0666 less the umask,
the -wal and -shm the same as the database file."""

import os

import pytest

from persistqueue_liteq import LiteQueue

from .conftest import run_child


def _make_queue_under(umask, db, report):
    os.umask(umask)
    q = LiteQueue(db)
    q.put(b"x")  # a writer: the -wal and -shm exist now
    modes = [os.stat(db + suffix).st_mode & 0o777 for suffix in ("", "-wal", "-shm")]
    with open(report, "w") as f:
        f.write(" ".join("%o" % m for m in modes))
    os._exit(0)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077, 0o007, 0o000])
def test_files_follow_the_umask(tmp_path, fork, umask):
    # SQLite alone made the file 0644 less the umask, whatever the umask
    # allowed: a group sharing a queue under umask 002 could not write it.
    db, report = str(tmp_path / "queue.db"), str(tmp_path / "modes")
    assert run_child(fork, _make_queue_under, umask, db, report) == 0
    expected = "%o" % (0o666 & ~umask)
    assert open(report).read() == " ".join([expected] * 3)


def test_an_existing_file_keeps_its_mode(db):
    LiteQueue(db).close()
    os.chmod(db, 0o640)
    with LiteQueue(db) as q:
        q.put(b"x")
        assert os.stat(db).st_mode & 0o777 == 0o640
        assert os.stat(db + "-wal").st_mode & 0o777 == 0o640
