"""persistqueue_liteq: queues and process pools that survive crashes.

* :class:`LiteQueue`: an SQS-style message queue on one SQLite file, with
  Liteq's API (leases, retries, dead letters, delays, batches).
* The engine interface (:mod:`.engine`) and its SQLite implementation
  (:mod:`.sqlite_engine`), on which everything else is built.
"""

from .engine import Message, QueueStats
from .exceptions import DatabaseBusy, IncompatibleDatabase, LiteQueueError, ReadOnlyDatabase
from .liteq import LiteQueue

__version__ = "0.1.0"

__all__ = [
    "LiteQueue",
    "Message",
    "QueueStats",
    "LiteQueueError",
    "DatabaseBusy",
    "IncompatibleDatabase",
    "ReadOnlyDatabase",
]
