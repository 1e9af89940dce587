"""persist-queue's SQLite queues, on this library's storage: change one import.

::

    # import persistqueue
    from persistqueue_liteq import persistqueue_compat as persistqueue

    q = persistqueue.SQLiteAckQueue("path")      # a directory, as theirs
    q.put("str1")                                 # -> its id
    item = q.get()                                # leased, not deleted
    q.ack(item)                                   # done: deleted
    # or q.nack(item): ready again;  q.ack_failed(item): a dead letter

The classes keep persist-queue's names, arguments, methods and return shapes:
``SQLiteQueue``/``FIFOSQLiteQueue``, ``FILOSQLiteQueue``, ``UniqueQ``,
``SQLiteAckQueue``/``FIFOSQLiteAckQueue``, ``FILOSQLiteAckQueue``,
``UniqueAckQ``; ``put`` returns the id, ``get(raw=True)`` returns
``{"pqid": id, "data": item, "timestamp": t}``, ``get(id=...)``,
``update``, ``queue()``, ``size``, ``qsize``, ``empty``, ``full``,
``shrink_disk_usage``, ``task_done``, and for the ack queues ``ack``, ``nack``,
``ack_failed`` (by item, raw item or ``id=``), ``resume_unack_tasks``,
``unack_count``, ``ready_count``, ``acked_count``, ``ack_failed_count``,
``active_size`` and ``clear_acked_data``.  ``Empty`` is ``queue.Empty``.

Each class is a :class:`~persistqueue_liteq.PersistentQueue`, so what the rest
of this library does holds: any number of threads and processes share a
queue, every item is committed when ``put`` returns, an item got and not acked
is held under a lease that this process renews while it lives, and comes back
(once) when the process dies.  Where persist-queue behaves otherwise:

* ``path`` is a directory, created if missing, holding ``db_file_name``
  (default ``data.db``) as theirs; a path that is an existing file is used as
  the database itself.  ``":memory:"`` is a private file in a temporary
  directory, removed at ``close`` (as private to the object as theirs).  The tables are this library's, not persist-queue's: a
  file written by persist-queue is not read (move its items with a loop of
  ``get``/``put``).
* ``multithreading`` is accepted and changes nothing: every queue is safe to
  share between threads.
* ``SQLiteQueue(auto_commit=False)``: ``get`` leases the item and
  ``task_done()`` deletes every item this object got (persist-queue's meaning);
  but each ``put`` is committed at once, not at ``task_done``.
* The ack queues delete an acked item at once (persist-queue keeps it, status
  "acked", until ``clear_acked_data``): ``acked_count()`` is 0 and
  ``clear_acked_data()`` deletes only ack-failed items, when asked to.  An
  ``ack_failed`` item is a dead letter (``dead_letters()``, ``redrive()``).
* ``resume_unack_tasks()`` makes this object's own unacked items ready at
  once.  Items that another process got and never acked come back by
  themselves when its lease runs out (``visibility_timeout``, 30 s after that
  process's last renewal, or at once after a reboot): persist-queue's
  resume at open would hand out again the items that a live process is
  working on.
* ``UniqueQ``/``UniqueAckQ``: an item is refused (``put`` returns None) while
  an equal one (same serialized bytes, dict keys sorted) is in the queue,
  ready or unacked; once acked (deleted) it may be put again.  persist-queue
  also refuses it while the acked row is kept.
* An item handed back (``nack``, a lease that ran out, an unacked item at
  ``close``) queues again as if put at that moment, behind the items put
  before (persist-queue gives it back its place by id).  An item got and not
  acked when the queue is closed or garbage-collected is ready again at once.
* ``nack`` and a lease that runs out count an attempt; with ``max_retries``
  (default: no limit, as persist-queue) an item past it becomes a dead letter.
* ``serializer``: a persist-queue serializer module (``dumps``/``loads``),
  ``"json"``, ``"pickle"`` or any object with ``dumps``/``loads``; the queue
  records it, so a reader with another one gets CodecMismatch instead of
  garbage.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from queue import Empty
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from .engine import maintenance_of
from ._queue_base import _deadline
from .queues import PersistentQueue
from .serializers import PickleSerializer

if TYPE_CHECKING:
    from typing import Literal

    from _typeshed import StrPath

    from .engine import Message
    from ._leases import _Lease
    from .serializers import SerializerArg

    #: How :meth:`_Compat._settle` settles an item.
    How = Literal["ack", "nack", "failed"]

__all__ = ["Empty", "SQLiteQueue", "FIFOSQLiteQueue", "FILOSQLiteQueue", "UniqueQ",
           "SQLiteAckQueue", "FIFOSQLiteAckQueue", "FILOSQLiteAckQueue", "UniqueAckQ",
           "AckStatus"]

#: persist-queue pickles with protocol 4; so do these queues by default.
_PICKLE_PROTOCOL = 4

# No retry limit, as persist-queue: fits the engine's attempt counter.
_NO_LIMIT = 2 ** 31


class AckStatus:
    """persist-queue's status values, as :meth:`SQLiteAckQueue.queue` reports them."""

    inited = "0"
    ready = "1"
    unack = "2"
    acked = "5"
    ack_failed = "9"


def _database_file(path: StrPath, db_file_name: Optional[str]) -> str:
    """persist-queue's directory convention: ``path/db_file_name``, the
    directory made if missing; an existing file is the database itself."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return path
    os.makedirs(path, exist_ok=True)
    return os.path.join(path, db_file_name or "data.db")


def _sorted_dicts(item: object) -> object:
    if isinstance(item, dict):
        return {key: item[key] for key in sorted(item)}
    return item


class _Compat(PersistentQueue[Any]):
    """What both families share: construction, put returning the id, get
    with id/raw, update, queue(), sizes."""

    _unique = False

    def __init__(self, path: StrPath, name: str = "default", multithreading: bool = False,
                 timeout: float = 10.0, auto_commit: bool = True,
                 serializer: SerializerArg = None, db_file_name: Optional[str] = None, *,
                 visibility_timeout: float = 30.0, max_retries: Optional[int] = None,
                 **options: Any) -> None:
        self.path_dir = os.fspath(path)
        self.db_file_name = db_file_name or "data.db"
        self.multithreading = multithreading
        self.auto_commit = bool(auto_commit)
        self.timeout = timeout
        if serializer is None:
            # persist-queue's protocol; recorded as "pickle", as PersistentQueue's.
            serializer = PickleSerializer(protocol=_PICKLE_PROTOCOL)
        self._serializer = serializer
        # id -> the item got (the object itself, found by identity as
        # persist-queue does) and its lease; guarded by _cache_lock.
        self._cache_lock = threading.Lock()
        self._unack_cache: Dict[int, object] = {}
        # ":memory:": a private file in a temporary directory, removed at close.
        self._memory_dir: Optional[str] = None
        if os.fspath(path) == ":memory:":
            path = self._memory_dir = tempfile.mkdtemp(prefix="persistqueue_compat-")
        super().__init__(
            _database_file(path, db_file_name), name=name,
            visibility_timeout=visibility_timeout,
            max_retries=_NO_LIMIT if max_retries is None else max_retries,
            serializer=serializer, timeout_seconds=timeout, **options)

    def __getstate__(self) -> Dict[str, Any]:
        """PersistentQueue's state and persist-queue's options: a process
        that unpickles the queue opens the same file (``:memory:`` too: the
        sender's temporary file, which the sender removes at its close)."""
        return dict(super().__getstate__(), compat=(
            self.path_dir, self.db_file_name, self.multithreading, self.auto_commit,
            self.timeout, getattr(self, "auto_resume", None)))

    def __setstate__(self, state: Dict[str, Any]) -> None:
        state = dict(state)
        (self.path_dir, self.db_file_name, self.multithreading, auto_commit,
         self.timeout, auto_resume) = state.pop("compat")
        self._serializer = state["serializer"]
        self._cache_lock = threading.Lock()
        self._unack_cache = {}
        self._memory_dir = None
        super().__setstate__(state)
        self.auto_commit = auto_commit
        if auto_resume is not None:
            self.auto_resume = auto_resume

    # -- putting --------------------------------------------------------------------

    # persist-queue's put returns the id (None: refused by a unique queue)
    # and has no timeout: not queue.Queue's signature.
    def put(self, item: Any, block: bool = True) -> Optional[int]:  # type: ignore[override]
        """Store ``item``; return its id (None from a unique queue that already
        holds an equal item).  ``block`` is accepted, as persist-queue's."""
        with self.mutex:
            codec = self._codec
            data = codec.dumps(item)
            if not self._codec_ok:
                self._claim_codec()
            if self._unique:
                return self._put_unique(item, data)
            if codec.sealer is None:
                msg_id = self._engine.put(self.name, data)
            else:
                msg_id = self._engine.put(self.name, data, seal=codec.sealer)
            self.not_empty.notify()
            return msg_id

    def put_nowait(self, item: Any) -> Optional[int]:  # type: ignore[override]  # the id
        return self.put(item, block=False)

    def _put_unique(self, item: object, data: bytes) -> Optional[int]:
        if self._codec.signed:
            raise TypeError("%s does not sign items: give no hmac_key" % type(self).__name__)
        key_data = data if not isinstance(item, dict) else self._codec.dumps(_sorted_dicts(item))
        key = "unique:" + hashlib.sha256(key_data).hexdigest()
        ((status, msg_id),) = self._engine.put_keyed(self.name, [(key, data)])
        return msg_id if status == "new" else None

    # -- getting --------------------------------------------------------------------

    def get(self, block: bool = True, timeout: Optional[float] = None, id: Any = None,
            next_in_order: bool = False, raw: bool = False) -> Any:
        """The next item (or the item ``id``: an int, or a raw item); with
        ``raw``, ``{"pqid": id, "data": item, "timestamp": created}``.
        Blocks as queue.Queue.get; raises Empty."""
        rowid = self._id_of(id)
        if next_in_order and rowid is None:
            raise ValueError("'next_in_order' requires the preceding 'id' be specified.")
        if timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        return self._wait_for(lambda: self._get_one(rowid, next_in_order, raw),
                              block, _deadline(block, timeout))

    def get_nowait(self, id: Any = None, raw: bool = False) -> Any:
        return self.get(block=False, id=id, raw=raw)

    @staticmethod
    def _id_of(id: object) -> Optional[int]:
        if isinstance(id, dict) and "pqid" in id:
            return id["pqid"]  # type: ignore[no-any-return]  # a raw item's id
        if isinstance(id, bool):
            return None
        if isinstance(id, int):
            return id
        if isinstance(id, str) and id.isdigit():
            return int(id)
        return None

    def _get_one(self, rowid: Optional[int], next_in_order: bool, raw: bool) -> Any:
        with self.mutex:
            if self._closed:
                raise ValueError("operation on a closed queue (%s)" % self.path)
            got = self._take_message(rowid, next_in_order)
            if got is None:
                raise Empty
            msg, item = got
            self._got(msg, item)
            if raw:
                return {"pqid": msg.id, "data": item, "timestamp": self._engine.wall_time(
                    msg.created_at)}
            return item

    def _candidates(self, rowid: int, next_in_order: bool) -> List[int]:
        """Ids to try, in order: the next ready one after ``rowid`` (then from
        the start), or ``rowid`` itself."""
        if not next_in_order:
            return [rowid]
        now = self._engine.now()
        after = [m.id for m in self._engine.messages(self.name, after_id=rowid, limit=100)
                 if m.visible_at is not None and m.visible_at <= now]
        before = [m.id for m in self._engine.messages(self.name, after_id=0, limit=100)
                  if m.visible_at is not None and m.visible_at <= now and m.id <= rowid]
        if self._order == "lifo":
            after, before = sorted(before, reverse=True), sorted(after, reverse=True)
            after = [i for i in after if i != rowid] + [i for i in before]
            return after
        return after + before

    def _take_message(self, rowid: Optional[int],
                      next_in_order: bool) -> Optional[Tuple[Message, Any]]:
        """Lease the next item (or one chosen by id); (Message, item) or None.
        A payload that does not load is dead-lettered, as PersistentQueue's."""
        if rowid is None:
            try:
                item = self._take()
            except Empty:
                return None
            return self._last_taken, item
        for candidate in self._candidates(rowid, next_in_order):
            if not self._codec_ok:
                self._check_codec()
            msg = self._engine.lease_id(self.name, candidate, self.visibility_timeout)
            if msg is None:
                continue
            try:
                item = self._codec.load_message(msg)
            except Exception as exc:
                self._engine.dead_letter(msg.id, msg.lease, "cannot be deserialized: %s" % exc)
                continue
            self._hold(msg)
            return msg, item
        return None

    def _hold(self, msg: Message) -> None:
        self._last_taken = msg
        super()._hold(msg)

    def _got(self, msg: Message, item: object) -> None:
        """An item was leased and is held: remember it for ack by identity."""
        with self._cache_lock:
            self._unack_cache[msg.id] = item

    def _lease_of(self, msg_id: int) -> Optional[_Lease]:
        """The lease this object holds on ``msg_id``, or None."""
        with self._leases_lock:
            for lease in self._held.values():
                if lease.id == msg_id and not lease.settling:
                    lease.settling = True
                    return lease
        return None

    def _settled(self, msg_id: int, how: How, reason: Optional[str] = None) -> bool:
        """:meth:`_settle` from a caller that does not hold the mutex; wakes
        a join() waiting for this object's items."""
        with self.all_tasks_done:
            done = self._settle(msg_id, how, reason)
            if not self._unfinished_here():
                self.all_tasks_done.notify_all()
        return done

    def _settle(self, msg_id: int, how: How, reason: Optional[str] = None) -> bool:
        """Settle ``msg_id``: "ack" (delete), "nack" (ready again) or "failed"
        (dead letter).  True if it was settled.  The mutex is held."""
        lease = self._lease_of(msg_id)
        with self._cache_lock:
            self._unack_cache.pop(msg_id, None)
        if lease is None:
            # Not held here (got by an earlier run): act on the stored message.
            msg = self._engine.get(msg_id)
            if msg is None or msg.queue_name != self.name:
                return False
            if how == "ack":
                return self._engine.delete(msg_id)
            held = self._engine.lease_id(self.name, msg_id, self.visibility_timeout)
            if held is None:
                return False
            token = held.lease
        else:
            token = lease.token
        try:
            if how == "ack":
                done = self._engine.ack(msg_id, token, self.name)
            elif how == "nack":
                done = self._engine.release(msg_id, token)
            else:
                # A reason comes with every "failed" (ack_failed's).
                done = self._engine.dead_letter(msg_id, token, reason)  # type: ignore[arg-type]
        finally:
            if lease is not None:
                with self._leases_lock:
                    self._forget(lease)
        return done

    # -- the rest of persist-queue's surface -------------------------------------------

    def update(self, item: Any, id: Optional[int] = None) -> int:
        """Replace the data of item ``id`` (or of a raw item); return the id."""
        msg_id: Optional[int] = None
        if isinstance(item, dict) and "pqid" in item:
            msg_id, item = item["pqid"], item.get("data")
        if id is not None:
            msg_id = id
        if msg_id is None:
            raise ValueError("Provide an id or raw item")
        with self.mutex:
            old = self._engine.get(msg_id)
            if old is None or old.queue_name != self.name:
                raise KeyError("no item with id %r in queue %r of %s" % (msg_id, self.name,
                                                                         self.path))
            new = self._codec.seal(self.name, msg_id, self._codec.dumps(item))
            if not self._engine.replace_data(msg_id, old.data, new):
                raise RuntimeError("item %d of queue %r changed while it was updated"
                                   % (msg_id, self.name))
        return msg_id

    def queue(self) -> List[Dict[str, Any]]:
        """Every item stored, in id order: dicts with id, data, timestamp and
        (ack queues) status."""
        rows: List[Dict[str, Any]] = []
        after = 0
        now = self._engine.now()
        while True:
            with self.mutex:
                batch = self._engine.snapshot(self.name, after_id=after, limit=500)
            if not batch:
                return rows
            for msg in batch:
                row: Dict[str, Any] = {"id": msg.id, "data": self._codec.load_message(msg),
                       "timestamp": self._engine.wall_time(msg.created_at)}
                if isinstance(self, SQLiteAckQueue):
                    row["status"] = int(
                        AckStatus.ack_failed if msg.visible_at is None
                        else AckStatus.unack if msg.lease is not None and msg.visible_at > now
                        else AckStatus.ready)
                rows.append(row)
            after = batch[-1].id

    def shrink_disk_usage(self) -> None:
        """VACUUM the file (give its free pages back)."""
        with self.mutex:
            maintenance_of(self._engine, "shrink_disk_usage").vacuum()

    @property
    def size(self) -> int:
        """Items ready to get (across processes)."""
        return self.qsize()

    @property
    def total(self) -> int:
        return self.qsize()

    def __len__(self) -> int:
        return self.qsize()

    def full(self) -> bool:
        return False

    def close(self) -> None:
        super().close()
        if self._memory_dir is not None:
            shutil.rmtree(self._memory_dir, ignore_errors=True)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class SQLiteQueue(_Compat):
    """persist-queue's SQLiteQueue: ``get`` deletes the item
    (``auto_commit=True``), or leases it until ``task_done()``
    (``auto_commit=False``)."""

    def _got(self, msg: Message, item: object) -> None:
        if self.auto_commit:
            self._settle(msg.id, "ack")

    def task_done(self) -> None:
        """With ``auto_commit=False``: delete every item this object got."""
        if self.auto_commit:
            return
        with self._leases_lock:
            ids = [lease.id for lease in self._held.values()]
        for msg_id in ids:
            self._settled(msg_id, "ack")


FIFOSQLiteQueue = SQLiteQueue


class FILOSQLiteQueue(SQLiteQueue):
    """persist-queue's FILOSQLiteQueue: the newest item first."""

    _order = "lifo"


class UniqueQ(SQLiteQueue):
    """persist-queue's UniqueQ: an item equal to one in the queue is not put."""

    _unique = True


class SQLiteAckQueue(_Compat):
    """persist-queue's SQLiteAckQueue: ``get`` leases, ``ack`` deletes,
    ``nack`` makes ready again, ``ack_failed`` dead-letters."""

    def __init__(self, path: StrPath, auto_resume: bool = True, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.auto_commit = True  # as persist-queue: the ack queue always commits
        # auto_resume: an earlier run's unacked items come back by themselves
        # when their leases run out (see the module docstring).
        self.auto_resume = auto_resume

    def _item_id(self, item: object, id: object) -> Optional[int]:
        if id is not None and item is not None:
            raise ValueError("Specify an id or an item, not both.")
        if id is None and item is None:
            raise ValueError("Specify an id or an item.")
        if id is not None:
            return self._id_of(id)
        if isinstance(item, dict) and "pqid" in item:
            return item["pqid"]  # type: ignore[no-any-return]  # a raw item's id
        with self._cache_lock:
            for msg_id, value in self._unack_cache.items():
                if value is item:
                    return msg_id
        return None

    def ack(self, item: Any = None, id: Optional[int] = None) -> Optional[int]:
        """Done: delete it.  Returns its id, or None for an unknown item."""
        msg_id = self._item_id(item, id)
        if msg_id is None or not self._settled(msg_id, "ack"):
            return None
        return msg_id

    def nack(self, item: Any = None, id: Optional[int] = None) -> Optional[int]:
        """Not done: ready again at once.  Returns its id, or None."""
        msg_id = self._item_id(item, id)
        if msg_id is None or not self._settled(msg_id, "nack"):
            return None
        return msg_id

    def ack_failed(self, item: Any = None, id: Optional[int] = None) -> Optional[int]:
        """Failed for good: a dead letter (reason "ack_failed").  Returns its id."""
        msg_id = self._item_id(item, id)
        if msg_id is None or not self._settled(msg_id, "failed", reason="ack_failed"):
            return None
        return msg_id

    def resume_unack_tasks(self) -> None:
        """Make this object's unacked items ready again now."""
        with self._leases_lock:
            ids = [lease.id for lease in self._held.values()]
        for msg_id in ids:
            self._settled(msg_id, "nack")

    def task_done(self) -> None:
        """Nothing to do: as persist-queue's ack queue, every change is
        committed at once (settle items with ack/nack/ack_failed)."""

    def unack_count(self) -> int:
        """Items got and not yet acked, by any process."""
        with self.mutex:
            return self._engine.count(self.name, "live") - self._engine.count(
                self.name, "waiting")

    def ready_count(self) -> int:
        with self.mutex:
            return self._engine.count(self.name, "ready")

    def acked_count(self) -> int:
        """0: an acked item is deleted at once (persist-queue keeps it)."""
        return 0

    def ack_failed_count(self) -> int:
        with self.mutex:
            return self._engine.count(self.name, "dead")

    def active_size(self) -> int:
        """Items ready or got and not acked."""
        return self.qsize() + self.unack_count()

    def clear_acked_data(self, max_delete: int = 1000, keep_latest: int = 1000,
                         clear_ack_failed: bool = False) -> None:
        """Acked items are already gone; with ``clear_ack_failed``, delete the
        ack-failed ones (every one: ``max_delete`` and ``keep_latest`` are
        accepted for compatibility)."""
        if clear_ack_failed:
            with self.mutex:
                self._engine.purge(self.name, dead=True)


FIFOSQLiteAckQueue = SQLiteAckQueue


class FILOSQLiteAckQueue(SQLiteAckQueue):
    """persist-queue's FILOSQLiteAckQueue: the newest item first."""

    _order = "lifo"


class UniqueAckQ(SQLiteAckQueue):
    """persist-queue's UniqueAckQ: an item equal to one in the queue (ready or
    unacked) is not put."""

    _unique = True
