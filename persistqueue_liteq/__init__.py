"""persistqueue_liteq: queues and process pools that survive crashes.

* :class:`LiteQueue`: an SQS-style message queue on one SQLite file, with
  Liteq's API (leases, retries, dead letters, delays, batches).
* :class:`PersistentProcessPoolExecutor`, :class:`PersistentThreadPoolExecutor`:
  ``concurrent.futures`` pools whose tasks live in the queue file.
* :class:`AsyncPersistentQueue` (and Lifo, Priority), :class:`AsyncLiteQueue`:
  the same for asyncio (:mod:`.aio`).
* The engine interface (:mod:`.engine`) and its SQLite implementation
  (:mod:`.sqlite`), on which everything else is built.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .engine import Message, QueueStats
from .exceptions import (
    CodecMismatch,
    DatabaseBusy,
    DatabaseReplaced,
    DiskFull,
    IncompatibleDatabase,
    LiteQueueError,
    OutOfFileDescriptors,
    PayloadTooLarge,
    ReadOnlyDatabase,
    SerializationError,
    StorageError,
    TaskTimeout,
    UnboundSignatures,
    UnsafePath,
    Unsupported,
    WorkerDied,
)
from .liteq import DeadLetterQueue, LiteQueue, QueueHandle
from .queues import (
    PersistentLifoQueue,
    PersistentPriorityQueue,
    PersistentQueue,
    PersistentSimpleQueue,
    ShutDown,
)

if TYPE_CHECKING:  # imported on first use: see __getattr__
    from .aio import (
        AsyncLiteQueue,
        AsyncPersistentLifoQueue,
        AsyncPersistentPriorityQueue,
        AsyncPersistentQueue,
        QueueShutDown,
    )
    from .pool import PersistentProcessPoolExecutor, PersistentThreadPoolExecutor

__version__ = "0.1.0"

# A library logs, the application decides where it goes (logging HOWTO).
logging.getLogger("persistqueue_liteq").addHandler(logging.NullHandler())

__all__ = [
    "LiteQueue",
    "QueueHandle",
    "DeadLetterQueue",
    "Message",
    "QueueStats",
    "LiteQueueError",
    "CodecMismatch",
    "UnboundSignatures",
    "DatabaseBusy",
    "IncompatibleDatabase",
    "ReadOnlyDatabase",
    "StorageError",
    "DiskFull",
    "OutOfFileDescriptors",
    "DatabaseReplaced",
    "PayloadTooLarge",
    "UnsafePath",
    "Unsupported",
    "SerializationError",
    "TaskTimeout",
    "WorkerDied",
    "PersistentProcessPoolExecutor",
    "PersistentThreadPoolExecutor",
    "PersistentQueue",
    "PersistentLifoQueue",
    "PersistentPriorityQueue",
    "PersistentSimpleQueue",
    "ShutDown",
    "AsyncPersistentQueue",
    "AsyncPersistentLifoQueue",
    "AsyncPersistentPriorityQueue",
    "AsyncLiteQueue",
    "QueueShutDown",
]

_LAZY = {
    "PersistentProcessPoolExecutor": "pool",
    "PersistentThreadPoolExecutor": "pool",
    "AsyncPersistentQueue": "aio",
    "AsyncPersistentLifoQueue": "aio",
    "AsyncPersistentPriorityQueue": "aio",
    "AsyncLiteQueue": "aio",
    "QueueShutDown": "aio",
}


def __getattr__(name: str) -> object:
    # The pools import multiprocessing and concurrent.futures, and the async
    # queues asyncio: only on use.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module("." + _LAZY[name], __name__), name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
