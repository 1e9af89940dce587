"""Wake-ups between the threads and processes that share one queue file.

A consumer that finds its queue empty sleeps until a producer, in this process
or in another, commits a message.  SQLite has no way to say "something
changed", so the engine says it itself, through the file system::

    waiting thread                        notifying thread (after COMMIT)
    --------------                        -------------------------------
    bind a datagram socket in             stat the channel's directory, and
      <tmp>/persistqueue_liteq-<uid>/       list it again if it changed (or
      <file>/<channel>/                     changed too recently to trust)
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

Directories stay while waiters come and go (making and removing them each
time cost half a millisecond of latency on ext4).  So that the temporary
directory does not fill up with one per queue file ever used, the first
queue opened in a process that finds more than ``_CROWDED`` of them removes
the empty ones; a waiter that finds its directory removed between making it
and binding in it makes it again.

Where Unix datagram sockets do not exist (Windows) waiting falls back to
polling every ``POLL_INTERVAL`` seconds.
"""

import hashlib
import itertools
import os
import socket
import sys
import tempfile
import time

HAVE_SOCKETS = hasattr(socket, "AF_UNIX") and sys.platform != "win32"

#: Longest sleep between two looks at the queue when nothing arrives.
SAFETY_INTERVAL = 1.0
#: Sleep between two looks where there are no Unix sockets.
POLL_INTERVAL = 0.005

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

_counter = itertools.count()
_sender = None
_sender_pid = None


def _get_sender():
    global _sender, _sender_pid
    if _sender_pid != os.getpid():
        _sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        _sender.setblocking(False)
        _sender_pid = os.getpid()
    return _sender


def _base_dir():
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return os.path.join(tempfile.gettempdir(), "pqlq-%d" % uid)


def _digest(text, size):
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=size).hexdigest()


class Notifier:
    """Wake-up channels of one queue file: one per (kind, queue name).

    ``kind`` is "put" (something may have become ready) or "done" (something
    was acknowledged or removed).  Channel listings are cached per channel as
    one tuple, replaced whole, so concurrent notifiers need no lock: a race
    costs at most one extra listing.
    """

    def __init__(self, path, prefix):
        st = os.stat(path)
        key = "%d:%d:%s" % (st.st_dev, st.st_ino, prefix)
        self._root = os.path.join(_base_dir(), _digest(key, 8))
        _sweep_once(os.path.dirname(self._root))
        self._cache = {}  # directory -> (mtime_ns, trusted, targets)
        self._directories = {}  # (kind, queue) -> directory

    def _directory(self, kind, queue):
        """The channel's directory (made by its first waiter)."""
        try:
            return self._directories[kind, queue]
        except KeyError:
            directory = os.path.join(self._root, "%s-%s" % (kind, _digest(queue, 6)))
            if len(self._directories) < 10_000:
                self._directories[kind, queue] = directory
            return directory

    def notify(self, kind, queue):
        """Wake every thread waiting on (kind, queue), in any process."""
        if not HAVE_SOCKETS:
            return
        directory = self._directory(kind, queue)
        try:
            mtime = os.stat(directory).st_mtime_ns
        except FileNotFoundError:  # no waiter
            return
        cached = self._cache.get(directory)
        if cached is None or cached[0] != mtime or not cached[1]:
            trusted = time.time_ns() - mtime > _TRUST_AFTER_NS
            try:
                targets = [os.path.join(directory, n) for n in os.listdir(directory)]
            except FileNotFoundError:
                return
            cached = self._cache[directory] = (mtime, trusted, targets)
        sender = _get_sender()
        for target in cached[2]:
            try:
                sender.sendto(b"", target)
            except (BlockingIOError, InterruptedError):
                pass  # its buffer is full: it has wake-ups enough
            except (ConnectionRefusedError, FileNotFoundError):
                self._cache.pop(directory, None)
                try:  # left behind by a process that died
                    os.unlink(target)
                except OSError:
                    pass
                _remove_if_empty(directory)
            except OSError:
                pass

    def waiter(self, kind, queue):
        """A context manager whose ``wait(timeout)`` sleeps until notified."""
        directory = self._directory(kind, queue)
        if not HAVE_SOCKETS or len(directory) > _MAX_DIRECTORY:
            return _PollingWaiter()
        return _SocketWaiter(directory)


class _SocketWaiter:
    def __init__(self, directory):
        self._directory = directory
        self._sock = None
        self._name = None

    def __enter__(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        name = os.path.join(
            self._directory, "%d-%d" % (os.getpid(), next(_counter))
        )
        try:
            for attempt in itertools.count():
                try:
                    os.makedirs(self._directory, exist_ok=True)
                    sock.bind(name)
                    break
                # A sweep, or a notifier that removed a dead waiter's socket,
                # removed a part of it meanwhile (makedirs says "exists" when
                # that happens between its two looks).
                except (FileNotFoundError, FileExistsError):
                    if attempt == 100:
                        raise
        except BaseException:
            sock.close()
            raise
        self._sock, self._name = sock, name
        return self

    def wait(self, timeout):
        """Sleep until notified or ``timeout`` seconds pass; True if notified."""
        sock = self._sock
        sock.settimeout(max(min(timeout, SAFETY_INTERVAL), 1e-6))
        try:
            sock.recv(1)
        except (socket.timeout, BlockingIOError, InterruptedError):
            return False
        sock.setblocking(False)
        try:  # one look at the queue answers every wake-up queued so far
            while True:
                sock.recv(1)
        except (BlockingIOError, InterruptedError):
            pass
        return True

    def __exit__(self, *exc_info):
        self._sock.close()
        try:
            os.unlink(self._name)
        except OSError:
            pass


def _sweep_once(base):
    """Remove the empty directories of queue files, once per process, if
    there are many."""
    global _swept
    if _swept:
        return
    _swept = True
    try:
        roots = os.listdir(base)
    except OSError:
        return
    if len(roots) <= _CROWDED:
        return
    for root in roots:
        try:
            channels = os.listdir(os.path.join(base, root))
        except OSError:
            continue
        for channel in channels:
            _remove_if_empty(os.path.join(base, root, channel))
        if not channels:
            try:
                os.rmdir(os.path.join(base, root))
            except OSError:
                pass


def _remove_if_empty(directory):
    """Remove a channel's directory, and its file's, unless waiters are there."""
    for path in (directory, os.path.dirname(directory)):
        try:
            os.rmdir(path)
        except OSError:  # not empty (or gone already)
            return


class _PollingWaiter:
    def __enter__(self):
        return self

    def wait(self, timeout):
        time.sleep(max(min(timeout, POLL_INTERVAL), 0))
        return False

    def __exit__(self, *exc_info):
        pass
