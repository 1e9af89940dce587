"""What every command shares: opening a file read-only or for writing, the
formatting of times, previews and tables, and the one error a user can act on."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Dict, Iterable, Iterator, List, Optional, Sequence

from . import _jsonl
from ._codec import QueueCodec, Unshowable
from ..backends import open_engine, redact
from ..liteq import LiteQueue

if TYPE_CHECKING:
    import argparse

    from ..engine import Engine, Message
    from ._jsonl import Record, WallTime

PROG = "persistqueue-liteq"
#: Where the database is when a command is given none.
DB_VARIABLE = "PERSISTQUEUE_LITEQ_DB"
DEFAULT_QUEUE = "default"
DEFAULT_TASK_QUEUE = "tasks"  # the pools' default name

log = logging.getLogger("persistqueue_liteq.cli")

# Clear the screen and move to its top-left corner: one refresh of --watch.
CLEAR = "\x1b[H\x1b[2J"

# Lines of an import between two commits, and between two progress updates.
_IMPORT_CHUNK = 500
_PROGRESS_EVERY = 10_000


class CLIError(Exception):
    """A failure the user can act on; printed as one line, exit status 1."""


# -- opening a file ------------------------------------------------------------------

def _shown(args: argparse.Namespace) -> str:
    """``args.db`` as output and messages show it: a URL without its password."""
    return redact(args.db)


def _where(args: argparse.Namespace) -> str:
    """``args.db`` for a report: a path made absolute, a URL without its
    password."""
    return redact(args.db) if "://" in args.db else os.path.abspath(args.db)


@contextlib.contextmanager
def _reading(args: argparse.Namespace) -> Iterator[Engine]:
    """The engine on ``args.db``, read-only (see the module docstring)."""
    log.debug("opening %s read-only", _shown(args))
    if os.path.isdir(args.db):
        raise CLIError("%s is a directory, not a queue file" % _shown(args))
    try:
        engine = open_engine(args.db, timeout=args.timeout, table_prefix=args.table_prefix,
                             readonly=True)
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from exc
    try:
        yield engine
    finally:
        engine.close()


@contextlib.contextmanager
def _writing(args: argparse.Namespace, create: bool = False) -> Iterator[LiteQueue]:
    """A LiteQueue on ``args.db``.  Unless ``create``, the file must already
    be a queue file: a maintenance command does not make one."""
    if not create:
        with _reading(args):
            pass
    log.debug("opening %s read-write", _shown(args))
    queue = LiteQueue(args.db, timeout_seconds=args.timeout, table_prefix=args.table_prefix,
                      journal_mode=args.journal_mode)
    try:
        yield queue
    finally:
        queue.close()


def _queues_with(engine: Engine, what: str) -> List[str]:
    """Names of the queues that hold ``what`` ("live" or "dead") messages."""
    return [s.name for s in engine.queues() if (s.dead if what == "dead" else s.live)]


def _peek_many(engine: Engine, queue: str, n: int) -> List[Message]:
    return engine.peek_many(queue, n)


# -- formatting --------------------------------------------------------------------

def _age(seconds: Optional[float]) -> str:
    """A duration, short.

    >>> [_age(s) for s in (None, 0.25, 42, 185, 7500, 180000)]
    ['-', '0.2s', '42s', '3m05s', '2h05m', '2d02h']
    """
    if seconds is None:
        return "-"
    if seconds < 10:
        return "%.1fs" % max(seconds, 0.0)
    s = int(seconds)
    if s < 60:
        return "%ds" % s
    if s < 3600:
        return "%dm%02ds" % divmod(s, 60)
    if s < 86400:
        return "%dh%02dm" % (s // 3600, s % 3600 // 60)
    return "%dd%02dh" % (s // 86400, s % 86400 // 3600)


def _when(timestamp: Optional[float]) -> str:
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _preview(data: bytes, width: int = 48) -> str:
    """Message data for a table cell: quoted text, or a hex sketch of bytes.

    >>> _preview(b"hello"), _preview(b"\\xff\\x00")
    ("'hello'", '<2 bytes: ff00>')
    """
    try:
        shown = repr(data.decode("utf-8"))
    except UnicodeDecodeError:
        shown = "<%d bytes: %s%s>" % (len(data), data[:12].hex(), "..." if len(data) > 12 else "")
    return shown if len(shown) <= width else shown[: width - 3] + "..."


def _table(headers: Sequence[str], rows: Iterable[Iterable[object]], align: str) -> List[str]:
    """Aligned lines; ``align`` has one "l" or "r" per column."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(row: Sequence[str]) -> str:
        parts = [c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(row, widths, align)]
        return "  ".join(parts).rstrip()

    return [line(headers)] + [line(r) for r in cells]


def _record(msg: Message, wall: WallTime) -> Record:
    """A message as one JSON object (see :mod:`._jsonl`)."""
    return _jsonl.record(msg, wall)


def _codecs(engine: Engine, hmac_key: Optional[bytes] = None) -> Dict[str, QueueCodec]:
    """{queue: QueueCodec}, made as needed."""
    class Codecs(dict[str, QueueCodec]):  # (PEP 585: a plain dict at run time)
        def __missing__(self, queue: str) -> QueueCodec:
            codec = self[queue] = QueueCodec(engine, queue, hmac_key)
            return codec
    return Codecs()


def _shown_record(msg: Message, engine: Engine, codecs: Dict[str, QueueCodec]) -> Record:
    """An export record of ``msg`` and, for a queue whose codec the command
    line reads, its item as "value" (or "value_error")."""
    out = _record(msg, engine.wall_time)
    codec = codecs[msg.queue_name]
    if codec.decoded():
        try:
            value = codec.value(msg.data)
            json.dumps(value)
            out["value"] = value
        except (Unshowable, TypeError, ValueError) as exc:
            out["value_error"] = str(exc) if isinstance(exc, Unshowable) else (
                "<a %s that has no JSON text>" % type(value).__name__)
    return out


def _shown_preview(msg: Message, codecs: Dict[str, QueueCodec], width: int = 48) -> str:
    codec = codecs[msg.queue_name]
    if not codec.decoded():
        return _preview(msg.data, width)
    try:
        shown = repr(codec.value(msg.data))
    except Unshowable as exc:
        shown = str(exc)
    return shown if len(shown) <= width else shown[: width - 3] + "..."


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False))


def _state(msg: Message, now: float) -> str:
    """"dead", "ready" or "waiting" (delayed, or leased: a stored message
    does not say which)."""
    if msg.dead_at is not None:
        return "dead"
    if msg.visible_at is not None and msg.visible_at <= now:
        return "ready"
    return "waiting"


# -- logging ---------------------------------------------------------------------------

def _configure_logging(verbosity: int) -> None:
    """The package's log to stderr: its warnings always, as one line each;
    with -v its INFO records too, with -vv DEBUG, timestamped."""
    logger = logging.getLogger("persistqueue_liteq")
    handler = logging.StreamHandler(sys.stderr)
    if verbosity:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    else:
        handler.setFormatter(_PlainFormatter())
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel((logging.WARNING, logging.INFO)[verbosity] if verbosity < 2 else logging.DEBUG)


class _PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return "%s: %s: %s" % (PROG, record.levelname.lower(), " ".join(
            record.getMessage().split()))
