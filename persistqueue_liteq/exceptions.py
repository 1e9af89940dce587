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
    "CodecMismatch",
    "UnboundSignatures",
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


class CodecMismatch(LiteQueueError, ValueError):
    """A queue object's serializer or ``hmac_key`` is not the one its queue
    was written with (as recorded in the file): nothing was stored, and the
    message it was about to read was handed back untouched."""


class UnboundSignatures(LiteQueueError, ValueError):
    """A queue holds messages signed by persistqueue_liteq 0.1.0, whose
    signature does not bind a message to its id and queue: refused until
    re-signed once with the queue's ``upgrade_signatures()``."""
