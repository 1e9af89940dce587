"""Wake-ups between the threads and processes that share one queue file.

A consumer that finds its queue empty sleeps until a producer, in this process
or in another, commits a message.  SQLite has no way to say "something
changed", so the engine says it itself, through the file system::

    waiting thread                        notifying thread (after COMMIT)
    --------------                        -------------------------------
    bind a datagram socket in             no channel directory: nobody waits,
      <TMPDIR>/pqlq-<euid>/                 done (one access(), the usual case)
      <file>/<channel>/                   lstat the channel's directory, and
                                            list it again if it changed (or
                                            changed too recently to trust)
    look at the queue once more    <----  send an empty datagram to every
    block in recv() until woken             socket listed there
      or the deadline
    close and unlink the socket

Binding comes before the last look at the queue, so a message committed after
that look is always followed by a datagram: no wake-up is lost.  A waiter
blocked in recv() uses no CPU; as a safety net against a notification that
could not be delivered (a producer running as another user, say) it looks at
the queue again every ``SAFETY_INTERVAL`` seconds anyway.  A socket left
behind by a killed process is refused on the next send and removed then.

Who can wake whom
-----------------
Only processes of the same effective user wake each other: everything lives
in one directory per user, ``<TMPDIR>/pqlq-<euid>``, and that directory is
used only once it is known to be ours.  It is made with mode 0700, or found,
then opened with ``O_NOFOLLOW | O_DIRECTORY`` and checked with ``fstat``: a
real directory (not a symlink, not a file), owned by our effective uid; its
group and other permission bits are taken away if it has any (older versions
made it 0755, or 0777 under umask 000).  Its parent must belong to root or to
us, and be writable by no one else or sticky (as ``/tmp`` is), so that no
other user can rename it away and put one of theirs in its place; tmux and
ssh-agent check their socket directories the same way.  Every use compares
it (``lstat``: device, inode, owner, mode) with the one checked, so a
directory removed by a cleaner of ``/tmp`` and made again by someone else is
checked again, and refused.

No other user can create anything inside a directory that passes, so what is
below it is ours.  It is still checked as it is used, against accidents:
directories below it must be real directories of ours (``lstat``), nothing
that the listing says is a link, a file or a directory is sent to, and only
a socket of ours (``lstat``) that refuses a datagram is ever unlinked.
Nothing outside the directory is followed, listed or removed.  Processes of
one user meet only if they agree on TMPDIR.

Why not elsewhere: ``$XDG_RUNTIME_DIR`` is private by construction, but only
login sessions have it, so a service (systemd unit, cron job) and a shell of
the same user would pick different directories and stop waking each other.
Linux's abstract socket names have no files, but no permissions either: any
user may bind the names we would use, and a notifier could only find the
waiters of a channel in ``/proc/net/unix`` (global, slow, Linux only).
Sockets beside the database file let the file's own permissions decide who
wakes whom, but that directory may be ``/tmp`` itself or on NFS, deep paths
overflow the 108 bytes of a socket address, and a directory shared by a group
would need all the checks above anyway.

When wake-ups cannot be used
----------------------------
A directory that fails its checks (another user's, a file or a symlink in the
way, a parent anyone may write), or any error on the way (EACCES, EMFILE,
ENAMETOOLONG, ...), never fails the operation: a waiter polls instead (every
``POLL_INTERVAL`` seconds at first, then less often, up to every
``DEGRADED_POLL_INTERVAL``), and a notifier sends nothing; a put or ack that
committed never raises because of a wake-up.  The process logs one warning
per directory and cause on the "persistqueue_liteq" logger.  A log record
rather than ``warnings.warn``: this is the operator's business, not the
calling code's, and a warnings filter set to "error" (``-W error``, pytest's
``filterwarnings``) would turn it into an exception after a commit.  Each
wait checks again, so fixing the directory brings wake-ups back.

Directories
-----------
Making and removing a channel's directory for every wait costs 0.1 ms on an
idle ext4 and over a millisecond on a busy one (``benchmarks/bench_engine.py
--wakeups``), so directories stay while waiters come and go.  But
not without end: a process keeps the directories of the ``_KEEP`` channels
its waiters used last; one that falls out of that list is removed (if no
waiter is in it), and so are all of them when the process exits.  So that the
temporary directory does not fill up with one per queue file ever used, the
first queue opened in a process that finds more than ``_CROWDED`` of them
removes the empty ones; a waiter that finds its directory removed between
making it and binding in it makes it again.

Where Unix datagram sockets do not exist (Windows) waiting falls back to
polling every ``POLL_INTERVAL`` seconds.
"""

from __future__ import annotations

import atexit
import collections
import hashlib
import itertools
import logging
import os
import socket
import stat
import sys
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Dict, List, Optional, Set, Tuple, Union

from .. import engine as _engine

HAVE_SOCKETS = hasattr(socket, "AF_UNIX") and sys.platform != "win32"

#: Longest sleep between two looks at the queue when nothing arrives (the
#: backend-neutral figure; tests may change this module's copy).
SAFETY_INTERVAL = _engine.SAFETY_INTERVAL
#: Sleep between two looks where there are no Unix sockets.
POLL_INTERVAL = 0.005
#: Longest sleep between two looks where wake-ups cannot be used safely.
DEGRADED_POLL_INTERVAL = 0.05

logger = logging.getLogger("persistqueue_liteq")

if TYPE_CHECKING:
    #: What _checked keeps of a directory: device, inode, owner, mode.
    _Identity = Tuple[int, int, int, int]
    #: Why wake-ups are unusable, for one warning each: an errno or a name.
    _Cause = Union[int, str]

# A directory's mtime has the resolution of the kernel's coarse clock (a few
# milliseconds); a listing taken less than this long after the last change may
# have missed a waiter that arrived in the same tick, so it is taken again.
_TRUST_AFTER_NS = 50_000_000

# Socket addresses are limited to 108 bytes; a longer TMPDIR means polling.
_MAX_DIRECTORY = 80

# More queue files' directories than this, and the first Notifier of a
# process removes those without waiters.
_CROWDED = 256
_swept = False

# Channel directories a process keeps for its waiters (see "Directories").
_KEEP = 64

_counter = itertools.count()
_sender: Optional[socket.socket] = None
_sender_pid: Optional[int] = None


def _get_sender() -> socket.socket:
    global _sender, _sender_pid
    if _sender_pid != os.getpid():
        _sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        _sender.setblocking(False)
        _sender_pid = os.getpid()
    return _sender  # type: ignore[return-value]  # made above on this process's first use


def _euid() -> int:
    return os.geteuid() if hasattr(os, "geteuid") else 0


def _base_dir() -> str:
    return os.path.join(tempfile.gettempdir(), "pqlq-%d" % _euid())


def _digest(text: str, size: int) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=size).hexdigest()


# -- trusting the directory ------------------------------------------------------


class _Unusable(Exception):
    """The wake-up directory, or something in it, is not safe to use."""


# base directory -> identity it had when it passed its checks.  Replaced
# whole per key (a dict store is atomic): threads need no lock.
_checked: Dict[str, _Identity] = {}


def _identity(st: os.stat_result) -> _Identity:
    return st.st_dev, st.st_ino, st.st_uid, st.st_mode


def _what(st: os.stat_result) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISREG, "a file"),
                       (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket")):
        if test(st.st_mode):
            return name
    return "not a directory"


def _checked_base(base: str, create: bool) -> Optional[str]:
    """``base`` once it is known to be ours, or None if it does not exist
    (and ``create`` is false).  Raises _Unusable saying why it is not."""
    try:
        st = os.lstat(base)
    except FileNotFoundError:
        if not create:
            return None
        _check_parent(base)
        try:
            os.mkdir(base, 0o700)
        except FileExistsError:  # another process of ours, or not: see below
            pass
    else:
        if _checked.get(base) == _identity(st):
            return base
    _check_base(base)
    return base


def _check_parent(base: str) -> None:
    parent = os.path.dirname(base)
    st = os.stat(parent)  # followed: /tmp may be a link (macOS), its target counts
    if st.st_uid not in (0, _euid()):
        raise _Unusable("%s belongs to uid %d, who could replace %s" % (parent, st.st_uid, base))
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        raise _Unusable("%s is writable by other users and not sticky, so they could "
                        "replace %s" % (parent, base))


def _check_base(base: str) -> None:
    _check_parent(base)
    try:
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        try:
            st = os.lstat(base)
            found = "%s of uid %d" % (_what(st), st.st_uid)
        except OSError:
            found = "unusable"
        raise _Unusable("%s is %s, not a private directory of ours (%s)"
                        % (base, found, exc.strerror)) from exc
    try:
        st = os.fstat(fd)
        if st.st_uid != _euid():
            raise _Unusable("%s belongs to uid %d, not to us (uid %d)"
                            % (base, st.st_uid, _euid()))
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
            st = os.fstat(fd)
    finally:
        os.close(fd)
    _checked[base] = _identity(st)


def _check_ours(path: str, st: Optional[os.stat_result] = None) -> None:
    """Raise _Unusable unless ``path`` (below a checked base) is a real
    directory of ours.  FileNotFoundError if it is gone."""
    st = os.lstat(path) if st is None else st
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != _euid():
        raise _Unusable("%s is %s of uid %d, not a directory of ours"
                        % (path, _what(st), st.st_uid))


def _may_be_socket(entry: os.DirEntry[str]) -> bool:
    """False for what cannot be a waiter: directories, files and links
    (by the type the listing gave, without following anything)."""
    return not (entry.is_symlink() or entry.is_dir(follow_symlinks=False)
                or entry.is_file(follow_symlinks=False))


def _unlink_socket(path: str) -> bool:
    """Unlink ``path`` if it is a socket of ours; True if it was."""
    try:
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != _euid():
            return False
        os.unlink(path)
    except OSError:
        return False
    return True


# One warning per (base directory, cause) per process; later ones are debug.
_warned: Set[Tuple[str, _Cause]] = set()


def _degraded(base: str, cause: _Cause, message: str) -> None:
    """Say, once per ``base`` and ``cause``, that wake-ups do not work."""
    key = (base, cause)
    if key in _warned:
        logger.debug("wake-ups unusable: %s", message)
        return
    if len(_warned) < 1000:
        _warned.add(key)
    logger.warning("wake-ups unusable: %s", message)


def _polling(base: str, cause: _Cause, problem: str) -> _PollingWaiter:
    """What a waiter that cannot bind gives instead (and says so)."""
    _degraded(base, cause, "%s; blocking waits of this process poll instead (every %g s "
              "at most)" % (problem, DEGRADED_POLL_INTERVAL))
    return _PollingWaiter(DEGRADED_POLL_INTERVAL)


def _cause(exc: BaseException) -> _Cause:
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno
    return type(exc).__name__


# -- the channel directories a process keeps ------------------------------------

# Keys are the directories, in order of last use.  The lock guards the order
# only (the directories themselves are shared with other processes anyway).
_kept: collections.OrderedDict[str, None] = collections.OrderedDict()
_kept_lock = threading.Lock()


def _keep(directory: str) -> None:
    """Note a use of ``directory``; remove the one forgotten to make room."""
    with _kept_lock:
        _kept[directory] = None
        _kept.move_to_end(directory)
        forgotten = _kept.popitem(last=False)[0] if len(_kept) > _KEEP else None
    if forgotten is not None:
        _remove_if_empty(forgotten)


@atexit.register
def _remove_kept() -> None:
    with _kept_lock:
        directories = list(_kept)
        _kept.clear()
    for directory in directories:
        _remove_if_empty(directory)


def _after_fork() -> None:
    global _kept_lock
    _kept_lock = threading.Lock()  # a thread of the parent may have held it


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


# -- notifying ---------------------------------------------------------------------


class Notifier:
    """Wake-up channels of one queue file: one per (kind, queue name).

    ``kind`` is "put" (something may have become ready) or "done" (something
    was acknowledged or removed).  Channel listings are cached per channel as
    one tuple, replaced whole, so concurrent notifiers need no lock: a race
    costs at most one extra listing.
    """

    def __init__(self, path: str, prefix: str) -> None:
        st = os.stat(path)
        key = "%d:%d:%s" % (st.st_dev, st.st_ino, prefix)
        self._base = _base_dir()
        self._root = os.path.join(self._base, _digest(key, 8))
        _sweep_once(self._base)
        # directory -> ((inode, mtime_ns), trusted, targets)
        self._cache: Dict[str, Tuple[Tuple[int, int], bool, List[str]]] = {}
        self._directories: Dict[Tuple[str, str], str] = {}  # (kind, queue) -> directory

    def _directory(self, kind: str, queue: str) -> str:
        """The channel's directory (made by its first waiter)."""
        try:
            return self._directories[kind, queue]
        except KeyError:
            directory = os.path.join(self._root, "%s-%s" % (kind, _digest(queue, 6)))
            if len(self._directories) < 10_000:
                self._directories[kind, queue] = directory
            return directory

    def notify(self, kind: str, queue: str) -> None:
        """Wake every thread waiting on (kind, queue), in any process.

        Never raises: it runs after a commit, and a wake-up that cannot be
        sent only means waiters look again a little later."""
        if not HAVE_SOCKETS:
            return
        try:
            self._notify(self._directory(kind, queue))
        except Exception as exc:
            cause = "unsafe" if isinstance(exc, _Unusable) else _cause(exc)
            _degraded(self._base, cause, "%s; wake-ups for queue %r not sent (waiters look again "
                      "within %g s anyway)" % (exc, queue, SAFETY_INTERVAL))

    def _notify(self, directory: str) -> None:
        # No channel directory, no waiter: its first waiter makes it before
        # its last look at the queue, so that look sees what we committed.
        # One access() and no exception: the cost of most notifications.
        # Nothing is trusted from this look; what is sent is found below,
        # once the base directory is checked.
        if not os.access(directory, os.F_OK):
            return
        if _checked_base(self._base, create=False) is None:
            return  # no waiter of ours anywhere
        try:
            st = os.lstat(directory)
        except FileNotFoundError:  # no waiter
            return
        _check_ours(directory, st)
        version = (st.st_ino, st.st_mtime_ns)
        cached = self._cache.get(directory)
        if cached is None or cached[0] != version or not cached[1]:
            trusted = time.time_ns() - st.st_mtime_ns > _TRUST_AFTER_NS
            try:
                with os.scandir(directory) as entries:
                    targets = [e.path for e in entries if _may_be_socket(e)]
            except FileNotFoundError:
                return
            cached = self._cache[directory] = (version, trusted, targets)
        sender = _get_sender()
        for target in cached[2]:
            try:
                sender.sendto(b"", target)
            except (BlockingIOError, InterruptedError):
                pass  # its buffer is full: it has wake-ups enough
            except ConnectionRefusedError:  # left behind by a process that died
                self._cache.pop(directory, None)
                if _unlink_socket(target):
                    _remove_if_empty(directory)
            except FileNotFoundError:  # its waiter left
                self._cache.pop(directory, None)
            except OSError:
                pass

    def waiter(self, kind: str, queue: str) -> Union[_PollingWaiter, _SocketWaiter]:
        """A context manager whose ``wait(timeout)`` sleeps until notified."""
        directory = self._directory(kind, queue)
        if not HAVE_SOCKETS:
            return _PollingWaiter()
        if len(directory) > _MAX_DIRECTORY:
            return _polling(self._base, "long", "%s is too long for a socket address (%d "
                            "characters at most: use a shorter TMPDIR)"
                            % (directory, _MAX_DIRECTORY))
        return _SocketWaiter(self._base, directory)


# -- waiting -----------------------------------------------------------------------


class _SocketWaiter:
    """Bound in the channel's directory while entered.  ``__enter__`` gives
    a polling waiter instead where wake-ups cannot be used (and says so)."""

    def __init__(self, base: str, directory: str) -> None:
        self._base = base
        self._directory = directory
        self._sock: Optional[socket.socket] = None
        self._name: Optional[str] = None

    def __enter__(self) -> Union[_SocketWaiter, _PollingWaiter]:
        try:
            self._sock, self._name = _bind(self._base, self._directory)
        except _Unusable as exc:
            return _polling(self._base, "unsafe", str(exc))
        except OSError as exc:
            return _polling(self._base, _cause(exc), "cannot bind a socket in %s: %s"
                            % (self._directory, exc))
        return self

    def wait(self, timeout: float) -> bool:
        """Sleep until notified or ``timeout`` seconds pass; True if notified."""
        sock: socket.socket = self._sock  # type: ignore[assignment]  # bound: entered
        sock.settimeout(max(min(timeout, SAFETY_INTERVAL), 1e-6))
        try:
            sock.recv(1)
        except (socket.timeout, BlockingIOError, InterruptedError):
            return False
        self.drain()  # one look at the queue answers every wake-up queued so far
        return True

    def fileno(self) -> int:
        """The socket's descriptor, readable when notified: for an event
        loop to watch (``loop.add_reader``) instead of calling wait(); call
        drain() when it is readable."""
        return self._sock.fileno()  # type: ignore[union-attr]  # bound: entered

    def drain(self) -> None:
        """Consume every wake-up received so far, without blocking."""
        self._sock.setblocking(False)  # type: ignore[union-attr]  # bound: entered
        try:
            while True:
                self._sock.recv(1)  # type: ignore[union-attr]  # bound: entered
        except (BlockingIOError, InterruptedError):
            pass

    def __exit__(self, *exc_info: object) -> None:
        if self._sock is None:
            return
        self._sock.close()
        _unlink_socket(self._name)  # type: ignore[arg-type]  # bound with _sock
        self._sock = self._name = None
        _keep(self._directory)


def _bind(base: str, directory: str) -> Tuple[socket.socket, str]:
    """A datagram socket bound in ``directory``, made if need be, and its name.

    Raises _Unusable (or OSError) if the directories are not ours."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        for attempt in itertools.count():
            name = os.path.join(directory, "%d-%d" % (os.getpid(), next(_counter)))
            try:
                _checked_base(base, create=True)
                try:
                    _check_ours(directory)
                except FileNotFoundError:
                    os.makedirs(directory, 0o700, exist_ok=True)
                    _check_ours(directory)
                _check_ours(os.path.dirname(directory))
                sock.bind(name)
                break
            # A sweep, or a notifier that removed a dead waiter's socket,
            # removed a part of it meanwhile (makedirs says "exists" when
            # that happens between its two looks).
            except (FileNotFoundError, FileExistsError):
                if attempt == 100:
                    raise
        # Still the directory checked, not one made by someone else after a
        # cleaner of /tmp removed ours between the check and the bind.
        if _checked_base(base, create=False) is None:
            raise _Unusable("%s was removed while a waiter bound in it" % base)
    except BaseException:
        sock.close()
        raise
    return sock, name


def _sweep_once(base: str) -> None:
    """Remove the empty directories of queue files, once per process, if
    there are many."""
    global _swept
    if _swept:
        return
    _swept = True
    try:
        if _checked_base(base, create=False) is None:
            return
        roots = os.listdir(base)
        if len(roots) <= _CROWDED:
            return
        for root in roots:
            root = os.path.join(base, root)
            try:
                _check_ours(root)
                channels = os.listdir(root)
                for channel in channels:
                    _check_ours(os.path.join(root, channel))
                    _remove_if_empty(os.path.join(root, channel))
            except (OSError, _Unusable):
                continue
            if not channels:
                try:
                    os.rmdir(root)
                except OSError:
                    pass
    except Exception as exc:  # tidying up never fails opening a queue
        logger.debug("wake-up directories not swept: %s", exc)


def _remove_if_empty(directory: str) -> None:
    """Remove a channel's directory, and its file's, unless waiters are there."""
    for path in (directory, os.path.dirname(directory)):
        try:
            os.rmdir(path)
        except OSError:  # not empty (or gone already)
            return


class _PollingWaiter:
    """Looks again every ``POLL_INTERVAL`` seconds, then less often, up to
    every ``longest`` seconds."""

    def __init__(self, longest: float = POLL_INTERVAL) -> None:
        self._longest = longest
        self._interval = POLL_INTERVAL

    def __enter__(self) -> _PollingWaiter:
        return self

    #: Nothing to watch: an event loop looks again every ``interval``.
    fileno = None

    @property
    def interval(self) -> float:
        return self._longest

    def wait(self, timeout: float) -> bool:
        time.sleep(max(min(timeout, self._interval), 0))
        self._interval = min(self._interval * 2, self._longest)
        return False

    def __exit__(self, *exc_info: object) -> None:
        pass
