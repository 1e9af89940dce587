"""The database's files on disk, as the connections meet them.

What SQLite would follow or trust is refused before a connection opens
(:func:`_check_path`, see :class:`~persistqueue_liteq.exceptions.UnsafePath`);
the file is created with the mode open() gives (:func:`_create`); and the
sizes, free space and spare descriptors that reports and error messages
name are read here (:func:`file_size`, :func:`_free_space`,
:func:`_out_of_descriptors`).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Dict, List, Optional

try:
    import resource
except ImportError:  # not on Windows
    resource = None  # type: ignore[assignment]  # tested for None where it is used

from ..exceptions import UnsafePath


def file_size(path: str) -> Optional[int]:
    """Bytes of the file at ``path``, or None if there is none."""
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def _out_of_descriptors() -> Optional[str]:
    """What says that this process cannot open a file now (SQLite needs up
    to three: the database, its -wal and its -shm), or None."""
    opened: List[int] = []
    try:
        for _ in range(3):
            opened.append(os.open(os.devnull, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)))
    except OSError as exc:
        if exc.errno == errno.ENFILE:
            return "the system ran out of file descriptors (ENFILE)"
        if exc.errno == errno.EMFILE:
            limit = "its limit" if resource is None else "its limit of %d" % (
                resource.getrlimit(resource.RLIMIT_NOFILE)[0])
            return "this process ran out of file descriptors (EMFILE: %s open files)" % limit
    finally:
        for fd in opened:
            os.close(fd)
    return None


def _free_space(path: str) -> str:
    try:
        st = os.statvfs(os.path.dirname(path))
    except OSError:
        return "free space unknown"
    return "%d bytes free on its file system" % (st.f_bavail * st.f_frsize)


def _check_path(path: str, target: str) -> Optional[os.stat_result]:
    """Refuse what SQLite would follow or trust (see UnsafePath).

    SQLite follows a symlink at the database path (and creates the file
    where it points, as whoever runs it), and takes an existing -wal for
    the database's own: its frames are read as committed.  It opens the
    -wal and -shm with O_NOFOLLOW itself, but then says only "unable to open
    database file".  Called before every new connection (four lstat()s);
    what changes between this look and SQLite's open is not caught.
    """
    sides: Dict[str, os.stat_result] = {}
    for suffix in ("-wal", "-shm"):
        try:
            sides[suffix] = os.lstat(target + suffix)
        except FileNotFoundError:
            pass
        except OSError:
            pass  # SQLite will say what it cannot reach
    try:
        main = os.lstat(target)
    except OSError:
        main = None
    if main is not None and stat.S_ISLNK(main.st_mode):
        raise UnsafePath(
            "%s is a symbolic link (to %s): a queue does not follow one at its "
            "database path, since whoever made it chooses where the file is "
            "created; pass the real path" % (path, os.readlink(target))
        )
    if main is not None and not stat.S_ISREG(main.st_mode):
        raise UnsafePath("%s is not a regular file (mode %o)" % (path, main.st_mode))
    try:
        shared = os.stat(os.path.dirname(target)).st_mode & stat.S_IWOTH
    except OSError:
        shared = 0
    trusted = {os.geteuid()} if hasattr(os, "geteuid") else set()
    if main is not None:
        trusted.add(main.st_uid)
    for suffix, st in sides.items():
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
            raise UnsafePath(
                "%s%s is %s, not a file SQLite made: refused (remove it if no "
                "process has the queue open)" % (
                    path, suffix, "a symbolic link" if stat.S_ISLNK(st.st_mode)
                    else "not a regular file")
            )
        if main is None:
            raise UnsafePath(
                "%s%s exists but %s does not: SQLite would read its frames as the "
                "new database's content; remove it" % (path, suffix, path)
            )
        if shared and trusted and st.st_uid not in trusted:
            raise UnsafePath(
                "%s%s belongs to uid %d, neither the database's owner nor this "
                "process, in a directory that anyone may write: refused, since "
                "its content would be taken as committed" % (path, suffix, st.st_uid)
            )
    return main


def _create(target: str) -> None:
    """Create the (empty) database file with mode 0666 less the umask, as
    open() would.  SQLite would make it 0644 less the umask, so a group's
    umask 002 still gave 0644; it gives the -wal and -shm the database
    file's mode.  mknod() opens nothing: no descriptor of ours whose close
    could drop another connection's locks.  It never follows a symlink."""
    try:
        os.mknod(target, 0o666 | stat.S_IFREG)
        return
    except AttributeError:
        pass  # no mknod() at all (Windows)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EINVAL, errno.ENOSYS):
            return  # there already, or cannot be made: SQLite says so as before
    # No mknod() for files here (macOS): open and close at once, before any
    # connection of ours has the file.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        os.close(os.open(target, flags | getattr(os, "O_CLOEXEC", 0), 0o666))
    except OSError:
        pass
