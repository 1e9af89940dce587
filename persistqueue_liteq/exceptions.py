"""The exceptions of persistqueue_liteq.

Where the standard library already has the meaning (``queue.Empty``,
``queue.Full``, ``concurrent.futures.BrokenExecutor``) it is reused; what is
here is what is new: a database that stayed busy, a file that is not a queue
database of ours, a lease that no longer holds.  Every message names the file
and the numbers involved.
"""

__all__ = [
    "LiteQueueError",
    "DatabaseBusy",
    "IncompatibleDatabase",
    "ReadOnlyDatabase",
    "WorkerDied",
    "TaskTimeout",
    "SerializationError",
    "StorageFault",
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


class ReadOnlyDatabase(LiteQueueError, PermissionError):
    """The database file (or its directory) cannot be written."""


class WorkerDied(LiteQueueError):
    """A pool's worker died (a signal, ``os._exit``, a crash) while running
    the task, on its last allowed attempt.  The pool itself goes on."""


class TaskTimeout(WorkerDied, TimeoutError):
    """A pool's task ran longer than ``task_timeout`` on its last allowed
    attempt; its worker was killed."""


class SerializationError(LiteQueueError):
    """A task, its arguments, its result or its exception could not be
    pickled or unpickled; the message says which and why."""


class StorageFault(LiteQueueError):
    """A pool could not write (or read) what it needed in its queue file for
    longer than it waits out a passing fault: a result too big to store, a
    disk that stayed full, a lock that another program held too long.  The
    futures it held up fail with it (the cause is chained); the pool goes on
    and works again once the file does."""
