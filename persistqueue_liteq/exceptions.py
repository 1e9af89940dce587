"""The exceptions of persistqueue_liteq.

Where the standard library already has the meaning (``queue.Empty``,
``queue.Full``, ``concurrent.futures.BrokenExecutor``) it is reused; what is
here is what is new: a database that stayed busy, a file that is not a queue
database of ours, a lease that no longer holds.  Every message names the file
and the numbers involved.

Storage faults (what the disk, the file system or the process's limits did)
are :class:`StorageError`, which is also an ``OSError``; one subclass each
for the faults a caller may act on.  When one is raised the operation did not
happen (SQLite rolled it back) and nothing committed before it is lost::

    LiteQueueError
     +-- DatabaseBusy                (also TimeoutError)
     +-- IncompatibleDatabase
     +-- PayloadTooLarge             (also ValueError)
     +-- UnsafePath                  (also PermissionError)
     +-- Unsupported                 (also NotImplementedError)
     +-- StorageError                (also OSError)
     |    +-- DiskFull
     |    +-- OutOfFileDescriptors
     |    +-- ReadOnlyDatabase       (also PermissionError)
     |    +-- DatabaseReplaced
     +-- WorkerDied
     |    +-- TaskTimeout            (also TimeoutError)
     +-- SerializationError
"""

__all__ = [
    "LiteQueueError",
    "DatabaseBusy",
    "IncompatibleDatabase",
    "ReadOnlyDatabase",
    "StorageError",
    "DiskFull",
    "OutOfFileDescriptors",
    "DatabaseReplaced",
    "PayloadTooLarge",
    "UnsafePath",
    "WorkerDied",
    "TaskTimeout",
    "SerializationError",
    "CodecMismatch",
    "UnboundSignatures",
    "StorageFault",
    "Unsupported",
]


class LiteQueueError(Exception):
    """Base class of every error raised by persistqueue_liteq itself."""


class DatabaseBusy(LiteQueueError, TimeoutError):
    """Another connection held the database lock for longer than the timeout.

    Raised instead of answering "empty": a busy queue is not an empty one.
    """


class IncompatibleDatabase(LiteQueueError):
    """The file is not SQLite, is SQLite but not a queue database of ours, or
    was written by a newer schema version than this library reads."""


class PayloadTooLarge(LiteQueueError, ValueError):
    """A message, task or result is longer than SQLite stores in one value
    (its length limit, 1,000,000,000 bytes unless the build says otherwise)."""


class UnsafePath(LiteQueueError, PermissionError):
    """The database path is a symbolic link or not a regular file, or its
    ``-wal``/``-shm`` is, or belongs to another user in a directory others
    may write: refused rather than followed or trusted, since SQLite would
    create files where the link points, or read another user's WAL frames
    as committed data."""


class StorageError(LiteQueueError, OSError):
    """The database file could not be read or written (the message says what
    the disk, the file system or SQLite reported).  The operation that raised
    did not happen; what was committed before it is kept."""


class DiskFull(StorageError):
    """The file system (or SQLite's ``max_page_count``) has no room for the
    write; it was rolled back, and the queue works again once there is room."""


class OutOfFileDescriptors(StorageError):
    """This process (or the system) ran out of file descriptors, so SQLite
    could not open the database or its ``-wal``/``-shm`` file."""


class ReadOnlyDatabase(StorageError, PermissionError):
    """The database file (or its directory) cannot be written."""


class DatabaseReplaced(StorageError):
    """The database file or its ``-shm`` index was deleted or replaced by
    another file while the queue had it open.  Writing on would lose or
    corrupt what other processes commit, so the queue refuses: close it
    (and every other process's) and open the file again."""


class WorkerDied(LiteQueueError):
    """A pool's worker died (a signal, ``os._exit``, a crash) while running
    the task, on its last allowed attempt.  The pool itself goes on."""


class TaskTimeout(WorkerDied, TimeoutError):
    """A pool's task ran longer than ``task_timeout`` on its last allowed
    attempt; its worker was killed."""


class SerializationError(LiteQueueError):
    """A task, its arguments, its result or its exception could not be
    pickled or unpickled; the message says which and why."""


class CodecMismatch(LiteQueueError, ValueError):
    """A queue object's serializer or ``hmac_key`` is not the one its queue
    was written with (as recorded in the file): nothing was stored, and the
    message it was about to read was handed back untouched."""


class UnboundSignatures(LiteQueueError, ValueError):
    """A queue holds messages signed by persistqueue_liteq 0.1.0, whose
    signature does not bind a message to its id and queue: refused until
    re-signed once with the queue's ``upgrade_signatures()``."""


class StorageFault(LiteQueueError):
    """A pool could not write (or read) what it needed in its queue file for
    longer than it waits out a passing fault: a result too big to store, a
    disk that stayed full, a lock that another program held too long.  The
    futures it held up fail with it (the cause is chained); the pool goes on
    and works again once the file does."""


class Unsupported(LiteQueueError, NotImplementedError):
    """The engine's backend does not offer the operation (maintenance such as
    a checkpoint or a vacuum, on a backend without it); the message names
    the backend and the operation.  Nothing was done."""
