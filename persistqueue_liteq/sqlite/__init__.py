"""The SQLite backend: paths and ``sqlite://`` locations (see :mod:`.engine`).

Statements in :mod:`.sql`, connections (one per thread, reopened after a
fork) in :mod:`.connections`, wake-ups over Unix sockets in :mod:`.wakeup`;
:mod:`.engine` holds the algorithm on top of them.  Standard library only.
"""

from .engine import SQLiteEngine

__all__ = ["SQLiteEngine"]
