"""What another local user can plant at a queue's path in a directory that
anyone may write: refused with UnsafePath, nothing followed or trusted.

The attacker is ``nobody`` (uid 65534), through setpriv; the victim is this
process (root in CI)."""

import os
import shutil
import subprocess
import tempfile

import pytest

from persistqueue_liteq import LiteQueue, UnsafePath

NOBODY = 65534


def _as_nobody(*argv):
    subprocess.run(["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY,
                    "--clear-groups", *argv], check=True, capture_output=True)


@pytest.fixture
def shared_dir():
    """A world-writable directory (not sticky), reachable by nobody."""
    if os.getuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("planting files as another user needs root and setpriv")
    directory = tempfile.mkdtemp(prefix="pqlq-shared-")
    os.chmod(directory, 0o777)
    yield directory
    shutil.rmtree(directory)


@pytest.fixture
def secret(tmp_path):
    """A directory only root may reach, with a file in it."""
    os.chmod(tmp_path, 0o700)
    target = tmp_path / "precious"
    target.write_bytes(b"root's own")
    return tmp_path


def test_a_symlink_at_the_database_path_is_not_followed(shared_dir, secret):
    db = os.path.join(shared_dir, "queue.db")
    _as_nobody("ln", "-s", str(secret / "created-by-root.db"), db)
    with pytest.raises(UnsafePath, match="symbolic link") as caught:
        LiteQueue(db)
    assert db in str(caught.value)
    assert sorted(os.listdir(secret)) == ["precious"]  # nothing created there


def test_a_symlink_to_an_existing_database_is_refused_too(tmp_path):
    real = str(tmp_path / "real.db")
    LiteQueue(real).close()
    link = str(tmp_path / "link.db")
    os.symlink(real, link)
    with pytest.raises(UnsafePath, match="pass the real path"):
        LiteQueue(link)
    LiteQueue(os.path.realpath(link)).close()


@pytest.mark.parametrize("suffix", ["-wal", "-shm"])
def test_a_planted_symlinked_wal_or_shm(shared_dir, secret, suffix):
    db = os.path.join(shared_dir, "queue.db")
    LiteQueue(db).close()  # root's queue, closed: no -wal, no -shm
    _as_nobody("ln", "-s", str(secret / "precious"), db + suffix)
    with pytest.raises(UnsafePath, match="symbolic link") as caught:
        LiteQueue(db)
    assert db + suffix in str(caught.value)
    assert (secret / "precious").read_bytes() == b"root's own"


def test_a_planted_wal_of_another_user_is_not_read(shared_dir):
    db = os.path.join(shared_dir, "queue.db")
    with LiteQueue(db) as q:
        q.put(b"root's message")
    # nobody writes a WAL of their own making for root's database: SQLite
    # would take its frames as committed (messages injected into root's queue).
    _as_nobody("sh", "-c", "printf 'frames of my choosing' > %s-wal" % db)
    with pytest.raises(UnsafePath, match="uid 65534"):
        LiteQueue(db)


def test_a_wal_without_its_database_is_refused(tmp_path):
    db = str(tmp_path / "queue.db")
    with open(db + "-wal", "wb") as f:
        f.write(b"left over")
    with pytest.raises(UnsafePath, match="exists but"):
        LiteQueue(db)
    assert not os.path.exists(db)


def test_a_directory_at_the_database_path(tmp_path):
    db = tmp_path / "queue.db"
    db.mkdir()
    # A directory is persist-queue's convention for a queue's path: said so,
    # and pointed to the compatibility module that takes one.
    with pytest.raises(IsADirectoryError, match="it is a directory"):
        LiteQueue(str(db))
