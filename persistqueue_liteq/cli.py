"""The command line: see and steer a queue file from a shell or from monitoring.

``python -m persistqueue_liteq`` (installed as ``persistqueue-liteq``)::

    stats DB [--json | --prometheus] [--watch [SECONDS]]
    peek DB [--queue Q] [-n N]             put DB [--queue Q] (TEXT | --json J | --file P | --stdin)
    purge DB --queue Q [--dead]            delete-queue DB --queue Q
    dlq list|show|redrive|purge DB ...     import-jsonl DB FILE [--format F]
    export-jsonl DB [FILE|-] [--dead | --all]
    checkpoint DB   vacuum DB   check DB   worker DB [--queue NAME] [--workers N]
    consume DB [--queue Q] [--until-empty] -- COMMAND [ARG ...]

DB may be left out when ``$PERSISTQUEUE_LITEQ_DB`` names the file (a DB
given wins; see :func:`_resolve_db` for the commands with more positionals).

The modules beside this one hold the parts with a job of their own:
:mod:`._cli_jsonl` (the export record and the import formats, simple_local_mq's
among them), :mod:`._cli_codec` (what ``put`` stores in, and ``peek`` shows of,
a queue that records its codec: pickle and JSON queues get items encoded to
match) and :mod:`._cli_consume` (the ``consume`` loop).

Everything goes through the engine (:class:`~persistqueue_liteq.sqlite.engine.
SQLiteEngine` and :class:`~persistqueue_liteq.LiteQueue`), and ``checkpoint``,
``vacuum`` and ``check`` through its optional maintenance interface
(:class:`~persistqueue_liteq.engine.Maintenance`): there is no SQL and no
driver here.  An error is one line on stderr, ``persistqueue-liteq: error: ...``,
with exit status 2 for a usage error and 1 for any other.

What "a read-only command never changes a file" means.  ``stats``, ``peek``,
``dlq list``, ``dlq show``, ``export-jsonl`` and ``check`` never create a file
that is missing (they stop with "no such queue file") and never write the
database file: they open it through SQLite's ``mode=ro`` URI, so the OS
itself refuses a write, and its bytes, size and mtime stay as they were; a
file without queue tables is reported, not given tables.  One thing SQLite
does on its own: to read a database in WAL mode it needs the ``-wal`` and
``-shm`` side files, and if no other connection has them open it creates them
(an empty ``-wal`` and the shared-memory index) and, being read-only, cannot
remove them when it closes.  They hold no data; the next connection that
writes uses them and removes them when it closes.  Removing them here instead
would be unsafe: a writer that opened the file a moment before may be using
them.

The read-only commands open the file with ``SQLiteEngine(..., readonly=True)``.
"""

import argparse
import contextlib
import json
import logging
import math
import os
import re
import signal
import sys
import threading
import time

from . import __version__
from . import _cli_consume, _cli_jsonl
from ._cli_codec import QueueCodec, Unshowable
from ._policy import redrive_tasks
from .backends import open_engine
from .engine import METRIC_NAMES, Maintenance, maintenance_of
from .exceptions import LiteQueueError
from .liteq import LiteQueue
from .engine import DEFAULT_PREFIX
from ._checks import table_prefix as check_table_prefix

__all__ = ["main"]

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

@contextlib.contextmanager
def _reading(args):
    """The engine on ``args.db``, read-only (see the module docstring)."""
    log.debug("opening %s read-only", args.db)
    if os.path.isdir(args.db):
        raise CLIError("%s is a directory, not a queue file" % args.db)
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
def _writing(args, create=False):
    """A LiteQueue on ``args.db``.  Unless ``create``, the file must already
    be a queue file: a maintenance command does not make one."""
    if not create:
        with _reading(args):
            pass
    log.debug("opening %s read-write", args.db)
    queue = LiteQueue(args.db, timeout_seconds=args.timeout, table_prefix=args.table_prefix,
                      journal_mode=args.journal_mode)
    try:
        yield queue
    finally:
        queue.close()


def _queues_with(engine, what):
    """Names of the queues that hold ``what`` ("live" or "dead") messages."""
    return [s.name for s in engine.queues() if (s.dead if what == "dead" else s.live)]


def _peek_many(engine, queue, n):
    return engine.peek_many(queue, n)


# -- formatting --------------------------------------------------------------------

def _age(seconds):
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


def _when(timestamp):
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _preview(data, width=48):
    """Message data for a table cell: quoted text, or a hex sketch of bytes.

    >>> _preview(b"hello"), _preview(b"\\xff\\x00")
    ("'hello'", '<2 bytes: ff00>')
    """
    try:
        shown = repr(data.decode("utf-8"))
    except UnicodeDecodeError:
        shown = "<%d bytes: %s%s>" % (len(data), data[:12].hex(), "..." if len(data) > 12 else "")
    return shown if len(shown) <= width else shown[: width - 3] + "..."


def _table(headers, rows, align):
    """Aligned lines; ``align`` has one "l" or "r" per column."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(row):
        parts = [c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(row, widths, align)]
        return "  ".join(parts).rstrip()

    return [line(headers)] + [line(r) for r in cells]


def _record(msg, wall):
    """A message as one JSON object (see :mod:`._cli_jsonl`)."""
    return _cli_jsonl.record(msg, wall)


def _codecs(engine, hmac_key=None):
    """{queue: QueueCodec}, made as needed."""
    class Codecs(dict):
        def __missing__(self, queue):
            codec = self[queue] = QueueCodec(engine, queue, hmac_key)
            return codec
    return Codecs()


def _shown_record(msg, engine, codecs):
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


def _shown_preview(msg, codecs, width=48):
    codec = codecs[msg.queue_name]
    if not codec.decoded():
        return _preview(msg.data, width)
    try:
        shown = repr(codec.value(msg.data))
    except Unshowable as exc:
        shown = str(exc)
    return shown if len(shown) <= width else shown[: width - 3] + "..."


def _print_json(obj):
    print(json.dumps(obj, indent=2, sort_keys=False))


def _state(msg, now):
    """"dead", "ready" or "waiting" (delayed, or leased: a stored message
    does not say which)."""
    if msg.dead_at is not None:
        return "dead"
    if msg.visible_at is not None and msg.visible_at <= now:
        return "ready"
    return "waiting"


# -- stats -------------------------------------------------------------------------

_COUNTER_HELP = {
    "puts": "Messages put.",
    "gets": "Deliveries (leases) of messages.",
    "acks": "Messages acknowledged (done).",
    "retries": "Deliveries of a message that was delivered before.",
    "expired": "Messages dropped undelivered after their TTL.",
    "dead_lettered": "Messages moved to the dead-letter queue.",
}

# The rates of stats: per second over about the last minute.
_RATE_WINDOW = 60.0


def _snapshot(engine):
    """{queue: numbers} for every queue that has messages or counters.

    Counters are the lasting totals of every process, as flushed (a working
    process adds its counts within a second); rates come from the counts of
    about the last minute.  Times are the wall clock's; ages are measured
    on the engine's clock, which steps of the wall clock do not move.
    """
    now = engine.now()
    stats = {s.name: s for s in engine.queues()}
    counters = engine.counters()
    window, recent = engine.activity(_RATE_WINDOW)
    snapshot = {}
    for name in sorted(set(stats) | set(counters)):
        s = stats.get(name)
        oldest = None if s is None else s.oldest_created_at
        queue_counters = dict.fromkeys(METRIC_NAMES, 0)
        queue_counters.update(counters.get(name, {}))
        counts = recent.get(name, {})
        snapshot[name] = {
            "ready": s.ready if s else 0,
            "delayed": s.delayed if s else 0,
            "in_flight": s.in_flight if s else 0,
            "dead": s.dead if s else 0,
            "live": s.live if s else 0,
            "oldest_created_at": engine.wall_time(oldest),
            "oldest_age_seconds": None if oldest is None else max(now - oldest, 0.0),
            "counters": queue_counters,
            "throughput": dict(
                window_seconds=window,
                **{"%s_per_second" % what: counts.get(what, 0) / window
                   for what in ("puts", "gets", "acks")}),
        }
    return engine.wall_time(now), snapshot


def _rate(per_second):
    """A rate for people: "0", "0.05", "12.3", "1,234"."""
    if per_second >= 100:
        return "{:,.0f}".format(per_second)
    return ("%.3g" % per_second) if per_second else "0"


def _stats_lines(path, snapshot):
    if not snapshot:
        return ["%s: no queue holds messages" % path]
    headers = ["QUEUE", "READY", "DELAYED", "IN FLIGHT", "DEAD", "OLDEST",
               "EXPIRED", "DEAD-LETTERED", "PUTS/S", "ACKS/S"]
    rows = [
        [name, q["ready"], q["delayed"], q["in_flight"], q["dead"], _age(q["oldest_age_seconds"]),
         q["counters"]["expired"], q["counters"]["dead_lettered"],
         _rate(q["throughput"]["puts_per_second"]), _rate(q["throughput"]["acks_per_second"])]
        for name, q in snapshot.items()
    ]
    return _table(headers, rows, "lrrrrrrrrr") + [
        "(PUTS/S, ACKS/S: per second over the last minute)"
    ]


def _label(value):
    """A Prometheus label value, escaped.

    >>> print(_label('a"b\\\\c'))
    "a\\"b\\\\c"
    """
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"%s"' % escaped


def _prometheus(snapshot):
    """The Prometheus text exposition format (version 0.0.4)."""
    out = [
        "# HELP persistqueue_liteq_messages Messages in the queue file, by state.",
        "# TYPE persistqueue_liteq_messages gauge",
    ]
    for name, q in snapshot.items():
        for state in ("ready", "delayed", "in_flight", "dead"):
            out.append("persistqueue_liteq_messages{queue=%s,state=\"%s\"} %d"
                       % (_label(name), state, q[state]))
    out += [
        "# HELP persistqueue_liteq_oldest_message_age_seconds Age of the oldest live "
        "message (0 when there is none).",
        "# TYPE persistqueue_liteq_oldest_message_age_seconds gauge",
    ]
    for name, q in snapshot.items():
        out.append("persistqueue_liteq_oldest_message_age_seconds{queue=%s} %.3f"
                   % (_label(name), q["oldest_age_seconds"] or 0.0))
    names = sorted({c for q in snapshot.values() for c in q["counters"]})
    for counter in names:
        metric = "persistqueue_liteq_%s_total" % re.sub(r"[^A-Za-z0-9_]", "_", counter)
        out += ["# HELP %s %s" % (metric, _COUNTER_HELP.get(counter, "Counter %s." % counter)),
                "# TYPE %s counter" % metric]
        for name, q in snapshot.items():
            out.append("%s{queue=%s} %d" % (metric, _label(name), q["counters"].get(counter, 0)))
    return out


def _cmd_stats(args):
    if args.watch is not None and (args.json or args.prometheus):
        args.parser.error("--watch is a view for people: not with --json or --prometheus")
    with _reading(args) as engine:
        if args.watch is not None:
            return _watch(args, engine)
        now, snapshot = _snapshot(engine)
    if args.json:
        _print_json({"file": os.path.abspath(args.db), "time": now, "queues": snapshot})
    elif args.prometheus:
        print("\n".join(_prometheus(snapshot)))
    else:
        print("\n".join(_stats_lines(args.db, snapshot)))
    return 0


def _watch(args, engine):
    """Redraw the stats every ``args.watch`` seconds until Ctrl-C."""
    try:
        while True:
            header = "%s stats %s  %s  (every %gs; Ctrl-C to stop)" % (
                PROG, args.db, time.strftime("%H:%M:%S"), args.watch)
            try:
                lines = _stats_lines(args.db, _snapshot(engine)[1])
            except LiteQueueError as exc:  # busy for a moment: say so, go on
                lines = ["error: %s" % exc]
            sys.stdout.write(CLEAR + "\n".join([header, ""] + lines) + "\n")
            sys.stdout.flush()
            time.sleep(args.watch)
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        return 0


# -- looking at messages -----------------------------------------------------------------

def _message_rows(messages, engine, dead):
    now = engine.now()
    codecs = _codecs(engine)
    if dead:
        headers = ["ID", "QUEUE", "ATTEMPTS", "DEAD AT", "REASON"]
        rows = [[m.id, m.queue_name, m.attempts, _when(engine.wall_time(m.dead_at)),
                 m.dead_reason or ""]
                for m in messages]
        return _table(headers, rows, "rlrll")
    headers = ["ID", "QUEUE", "ATTEMPTS", "AGE", "SIZE", "DATA"]
    rows = [[m.id, m.queue_name, m.attempts, _age(now - m.created_at), len(m.data),
             _shown_preview(m, codecs)] for m in messages]
    return _table(headers, rows, "rlrrrl")


def _cmd_peek(args):
    with _reading(args) as engine:
        messages = _peek_many(engine, args.queue, args.n)
        codecs = _codecs(engine)
        records = [_shown_record(m, engine, codecs) for m in messages]
        rows = _message_rows(messages, engine, dead=False)
    if args.json:
        _print_json(records)
    elif not messages:
        print("queue %r has no ready message" % args.queue)
    else:
        print("\n".join(rows))
    return 0


def _cmd_dlq_list(args):
    with _reading(args) as engine:
        queues = [args.queue] if args.queue else _queues_with(engine, "dead")
        messages = [m for q in queues for m in engine.dead_letters(q)]
        codecs = _codecs(engine)
        records = [_shown_record(m, engine, codecs) for m in messages]
        rows = _message_rows(messages, engine, dead=True)
    if args.json:
        _print_json(records)
    elif not messages:
        print("no dead letters" + (" in queue %r" % args.queue if args.queue else ""))
    else:
        print("\n".join(rows))
    return 0


def _cmd_dlq_show(args):
    with _reading(args) as engine:
        msg = engine.get(args.id)
        codecs = _codecs(engine)
        if msg is not None:
            record, preview = _shown_record(msg, engine, codecs), _shown_preview(msg, codecs, 200)
    if msg is None:
        raise CLIError("no message with id %d in %s" % (args.id, args.db))
    now, wall = engine.now(), engine.wall_time
    if args.json:
        _print_json(dict(record, state=_state(msg, now),
                         visible_at=wall(msg.visible_at)))
        return 0
    state = _state(msg, now)
    if state == "waiting":
        state = "delayed or in flight until %s" % _when(wall(msg.visible_at))
    fields = [
        ("id", msg.id), ("queue", msg.queue_name), ("state", state),
        ("attempts", msg.attempts),
        ("created at", "%s (%s ago)" % (_when(wall(msg.created_at)), _age(now - msg.created_at))),
    ]
    if msg.key is not None:
        fields.append(("key", msg.key))
    if msg.dead_at is not None:
        fields += [("dead at", _when(wall(msg.dead_at))), ("dead reason", msg.dead_reason)]
    fields.append(("data", "%s (%d bytes)" % (preview, len(msg.data))))
    width = max(len(name) for name, _ in fields) + 2
    for name, value in fields:
        print((name + ":").ljust(width) + str(value))
    if msg.last_error:
        print("last error:")
        for line in msg.last_error.splitlines():
            print("  " + line)
    return 0


# -- changing messages ----------------------------------------------------------------

def _put_sources(args):
    """The messages ``put`` was given: (kind, value, raw) for each, ``raw``
    being what a queue without a codec stores (see :mod:`._cli_codec`)."""
    if args.text is not None:
        yield "text", args.text, args.text.encode("utf-8", "surrogateescape")
    elif args.json_text is not None:
        try:
            value = json.loads(args.json_text)
        except ValueError as exc:
            raise CLIError("--json: not valid JSON: %s" % exc) from None
        yield "json", value, args.json_text.strip().encode("utf-8", "surrogateescape")
    elif args.file is not None:
        with open(args.file, "rb") as f:
            data = f.read()
        yield "bytes", data, data
    else:
        for line in sys.stdin.buffer:
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield "text", line.decode("utf-8", "surrogateescape"), line


def _cmd_put(args):
    given = [args.text is not None, args.json_text is not None, args.file is not None, args.stdin]
    if sum(given) != 1:
        args.parser.error("give exactly one of TEXT, --json, --file or --stdin")
    with _writing(args, create=True) as q:
        engine = q.engine
        encode, seal = QueueCodec(engine, args.queue, args.hmac_key_file).writer()
        ids = []
        for kind, value, raw in _put_sources(args):
            # One put each, committed at once: a shell producer's lines are
            # consumable as they come.
            ids.append(engine.put(args.queue, encode(kind, value, raw), delay=args.delay,
                                  seal=seal))
    if not args.stdin:
        print(ids[0])
    else:
        print("put %d message%s in queue %r" % (len(ids), "" if len(ids) == 1 else "s", args.queue))
    return 0


def _cmd_purge(args):
    with _writing(args) as q:
        removed = q.purge(args.queue, dlq=args.dead)
    what = "dead letters" if args.dead else "live messages"
    print("purged %d %s from queue %r" % (removed, what, args.queue))
    return 0


def _cmd_delete_queue(args):
    with _writing(args) as q:
        removed = q.delete_queue(args.queue)
    print("deleted queue %r: %d message%s" % (args.queue, removed, "" if removed == 1 else "s"))
    return 0


def _redrive_targets(engine, args):
    """{queue: ids or None (all)} to redrive, checked before anything moves."""
    if not args.ids:
        queues = [args.queue] if args.queue else _queues_with(engine, "dead")
        return {q: None for q in queues}
    targets = {}
    for msg_id in args.ids:
        msg = engine.get(msg_id)
        if msg is None:
            raise CLIError("no message with id %d" % msg_id)
        if msg.dead_at is None:
            raise CLIError("message %d of queue %r is not a dead letter" % (msg_id, msg.queue_name))
        if args.queue and msg.queue_name != args.queue:
            raise CLIError(
                "message %d is in queue %r, not %r" % (msg_id, msg.queue_name, args.queue))
        targets.setdefault(msg.queue_name, []).append(msg_id)
    return targets


def _cmd_dlq_redrive(args):
    with _writing(args) as q:
        engine = q.engine
        moved = 0
        for queue, ids in _redrive_targets(engine, args).items():
            moved += redrive_tasks(engine, queue, ids)  # as the pools' redrive does
    print("redrove %d dead letter%s" % (moved, "" if moved == 1 else "s"))
    return 0


def _cmd_dlq_purge(args):
    with _writing(args) as q:
        queues = [args.queue] if args.queue else _queues_with(q.engine, "dead")
        removed = sum(q.purge(name, dlq=True) for name in queues)
    print("purged %d dead letter%s" % (removed, "" if removed == 1 else "s"))
    return 0


# -- import and export -------------------------------------------------------------------

class _Progress:
    """"imported N lines (P%)" on stderr, redrawn in place; only on a terminal."""

    def __init__(self, total_bytes):
        self.shown = sys.stderr.isatty()
        self.total = total_bytes

    def update(self, lines, done_bytes):
        if not self.shown or lines % _PROGRESS_EVERY:
            return
        percent = " (%d%%)" % (100 * done_bytes // self.total) if self.total else ""
        sys.stderr.write("\rimported %d lines%s" % (lines, percent))
        sys.stderr.flush()

    def finish(self):
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def _import_items(lines, args):
    """(line number, queue, item) for every non-blank line; ``item`` is
    (kind, value, raw) or, for ``--format exported``, (Message, codec)."""
    for line_no, line in enumerate(lines, 1):
        text = line.rstrip(b"\r\n")
        if not text.strip():
            continue
        if args.format == "exported":
            try:
                record = json.loads(text)
            except ValueError as exc:
                raise CLIError("line %d: not JSON: %s" % (line_no, exc)) from None
            if not isinstance(record, dict):
                raise CLIError('line %d: not an export-jsonl record (an object with a "data" '
                               'string)' % line_no)
            queue = args.queue or record.get("queue") or DEFAULT_QUEUE
            if not isinstance(queue, str):
                raise CLIError("line %d: the queue must be a string" % line_no)
            yield line_no, queue, record
        elif args.format == "simple_local_mq":
            topic, item = _cli_jsonl.simple_local_mq_item(text, line_no)
            yield line_no, topic or args.queue or DEFAULT_QUEUE, item
        else:
            yield line_no, args.queue or DEFAULT_QUEUE, _cli_jsonl.lines_item(text)


def _cmd_import(args):
    if args.exported:
        args.format = "exported"
    source = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")
    total = 0 if args.file == "-" else os.fstat(source.fileno()).st_size
    progress, imported = _Progress(total), 0
    try:
        with _writing(args, create=True) as q:
            importer = _Importer(q.engine, args)
            try:
                for line_no, queue, item in _import_items(_counting(source, progress), args):
                    importer.add(line_no, queue, item)
                    if len(importer.chunk) >= _IMPORT_CHUNK:
                        imported += importer.commit()
                imported += importer.commit()
            except (CLIError, LiteQueueError, _cli_jsonl.ImportError_) as exc:
                if not isinstance(exc, LiteQueueError):
                    # What came before a bad line is kept: fix it, import the rest.
                    imported += importer.commit()
                progress.finish()
                raise CLIError("%s; the %d message%s before it %s imported" % (
                    exc, imported, "" if imported == 1 else "s",
                    "was" if imported == 1 else "were")) from None
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    progress.finish()
    print("imported %d message%s" % (imported, "" if imported == 1 else "s"))
    return 0


class _Importer:
    """Lines to store, committed a chunk at a time: plain items encoded by
    their queue's codec, exported records restored with their state."""

    def __init__(self, engine, args):
        self.engine = engine
        self.hmac_key = args.hmac_key_file
        self.exported = args.format == "exported"
        self.chunk = []  # (queue, payload or Message)
        self._writers = {}  # queue -> (encode, seal)
        self._claimed = {}  # queue -> codec record claimed for it
        now = engine.now()
        self.now = now
        offset = engine.wall_time(now) - now  # wall clock minus the engine's
        self.to_engine = lambda t: t - offset

    def add(self, line_no, queue, item):
        if self.exported:
            msg, codec = _cli_jsonl.restored(item, line_no, self.to_engine, self.engine.now())
            if codec is not None:
                self._claim(line_no, queue, codec)
            self.chunk.append((queue, msg))
            return
        writer = self._writers.get(queue)
        if writer is None:
            writer = self._writers[queue] = QueueCodec(self.engine, queue, self.hmac_key).writer()
        encode, seal = writer
        self.chunk.append((queue, (encode(*item), seal)))

    def _claim(self, line_no, queue, codec):
        if self._claimed.get(queue) == codec:
            return
        if "key=none" not in codec.split(";"):
            raise CLIError(
                "line %d: a record of queue %r, whose items are signed: the signature binds "
                "the message's id, which an import changes, so it would be refused; copy the "
                "file itself, or move the items with a PersistentQueue that has the key"
                % (line_no, queue))
        held = self.engine.claim_codec(queue, codec)
        if held != codec:
            raise CLIError("line %d: queue %r records codec %s, the record says %s"
                           % (line_no, queue, held, codec))
        self._claimed[queue] = codec

    def commit(self):
        """Store the chunk; empty it; return how many."""
        chunk, self.chunk = self.chunk, []
        if not chunk:
            return 0
        if self.exported:
            by_queue = {}
            for queue, msg in chunk:
                by_queue.setdefault(queue, []).append(msg)
            for queue, messages in by_queue.items():
                self.engine.restore(queue, messages)
            return len(chunk)
        with self.engine.transaction() as tx:
            for queue, (data, seal) in chunk:
                tx.put(queue, data, seal=seal)
        return len(chunk)


def _counting(source, progress):
    done = 0
    for n, line in enumerate(source, 1):
        done += len(line)
        progress.update(n, done)
        yield line


def _cmd_export(args):
    with _reading(args) as engine:
        what = "all" if args.all else "dead" if args.dead else "live"
        if args.queue:
            queues = [args.queue]
        elif args.all:
            queues = [s.name for s in engine.queues()]
        else:
            queues = _queues_with(engine, what)
        if args.file == "-":
            count = _write_records(sys.stdout.buffer, engine, queues, what)
            sys.stdout.buffer.flush()
        else:
            # Written beside the target and renamed: a failed export leaves
            # no half file behind.
            partial = args.file + ".partial"
            try:
                with open(partial, "wb") as out:
                    count = _write_records(out, engine, queues, what)
                os.replace(partial, args.file)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(partial)
                raise
    log.info("exported %d %s messages", count, what)
    if args.file != "-":
        print("exported %d message%s to %s" % (count, "" if count == 1 else "s", args.file))
    return 0


def _snapshot_of(engine, queue, what):
    """Every message of ``queue`` ("live", "dead" or "all"), in id order."""
    after = 0
    while True:
        batch = engine.snapshot(queue, after_id=after, limit=500)
        if not batch:
            return
        for msg in batch:
            dead = msg.dead_at is not None or msg.visible_at is None
            if what == "all" or (what == "dead") == dead:
                yield msg
        after = batch[-1].id


def _write_records(out, engine, queues, what):
    count = 0
    for queue in queues:
        codec = engine.codec_of(queue)
        for msg in _snapshot_of(engine, queue, what):
            record = _cli_jsonl.record(msg, engine.wall_time, engine.now(), codec)
            out.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
            count += 1
    return count


# -- maintenance -----------------------------------------------------------------

# All through the engine's maintenance interface (engine.Maintenance): a
# backend without one stops these commands with Unsupported, one line.

def _cmd_checkpoint(args):
    with _writing(args) as q:
        upkeep = maintenance_of(q.engine, "checkpoint")
        busy, wal_pages, copied = upkeep.checkpoint(args.mode)
    # Once closed: the last connection to close removes the WAL.
    print("checkpoint %s: %d of %d WAL pages copied%s; WAL file now %s bytes" % (
        args.mode, max(copied, 0), max(wal_pages, 0),
        " (busy: a reader kept the rest)" if busy else "", upkeep.sizes().log or 0))
    return 0


def _cmd_vacuum(args):
    if args.auto is not None:
        with _writing(args) as q:
            maintenance_of(q.engine, "vacuum --auto").set_auto_vacuum(
                None if args.auto == "off" else args.auto)
        print("%s: automatic vacuum: %s" % (args.db, "off" if args.auto == "off" else
                                            "past %d free pages" % args.auto))
        return 0
    with _writing(args) as q:
        upkeep = maintenance_of(q.engine, "vacuum")
        before = upkeep.sizes_at_open.total
        upkeep.vacuum()
        upkeep.checkpoint("TRUNCATE")  # so that the smaller file shows now
    after = upkeep.sizes().total
    print("vacuumed %s: %d bytes before, %d after" % (args.db, before, after))
    return 0


def _cmd_check(args):
    with _reading(args) as engine:
        upkeep = maintenance_of(engine, "check")
        # As it was before the engine opened it: a read-only open may
        # create an empty WAL file.
        wal = upkeep.sizes_at_open.log
        problems = upkeep.integrity_check()
        size = upkeep.sizes().database
    ok = problems == ["ok"]
    print("file:       %s (%d bytes)" % (os.path.abspath(args.db), size or 0))
    print("WAL file:   %s" % ("none" if wal is None else "%d bytes" % wal))
    print("integrity:  %s" % ("ok" if ok else "%d problem(s)" % len(problems)))
    if ok:
        return 0
    for problem in problems:
        for line in problem.splitlines():
            print("  " + line)
    raise CLIError("integrity check of %s failed: %s" % (args.db, " ".join(problems[0].split())))


# -- worker -------------------------------------------------------------------------

def _init_worker_process(verbosity):
    """In each worker: leave SIGINT and SIGTERM to the command's process, which
    stops the pool gracefully on the first and kills the workers on the
    second; a Ctrl-C on the terminal reaches every process of the group."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _configure_logging(verbosity)


def _cmd_worker(args):
    from .pool import PersistentProcessPoolExecutor  # multiprocessing only when needed

    if os.getcwd() not in sys.path:  # tasks are imported by module name
        sys.path.insert(0, os.getcwd())
    signals = []
    signalled = threading.Event()

    def on_signal(signum, frame):
        signals.append(signum)
        signalled.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        executor = PersistentProcessPoolExecutor(
            args.db, max_workers=args.workers, name=args.queue,
            initializer=_init_worker_process, initargs=(args.verbose,),
            max_retries=args.max_retries, retry_backoff=args.retry_backoff,
            task_timeout=args.task_timeout, lease_seconds=args.lease_seconds,
            max_tasks_per_child=args.max_tasks_per_child,
            timeout_seconds=args.timeout, table_prefix=args.table_prefix,
            hmac_key=args.hmac_key_file,
        )
        print("%s: worker %d started: %d process%s running queue %r of %s" % (
            PROG, os.getpid(), args.workers, "" if args.workers == 1 else "es", args.queue,
            os.path.abspath(args.db)), flush=True)
        signalled.wait()  # the handler runs in this thread and wakes it
        return _stop_worker(args, executor, signals)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _stop_worker(args, executor, signals):
    """First signal: let the running tasks finish.  A second one: kill the
    workers; the pool hands their tasks back to the queue (each killed run
    counts as an attempt, as any worker's death does)."""
    print("%s: %s: stopping once the running tasks finish; send it again to stop at once"
          % (PROG, signal.Signals(signals[0]).name), file=sys.stderr, flush=True)
    stopper = threading.Thread(target=executor.shutdown, kwargs={"wait": True}, daemon=True)
    stopper.start()
    while stopper.is_alive() and len(signals) < 2:
        stopper.join(0.1)
    if not stopper.is_alive():
        with _reading(args) as engine:
            left = engine.count(args.queue, "live")
        print("%s: worker %d stopped: %d task%s left in queue %r" % (
            PROG, os.getpid(), left, "" if left == 1 else "s", args.queue), flush=True)
        return 0
    import multiprocessing

    killed = multiprocessing.active_children()  # the pool's workers, wherever forked
    for process in killed:
        process.kill()
    stopper.join(5.0)  # the pool reaps them and releases their tasks
    print("%s: worker %d stopped at once by a second %s: %d worker process%s killed, their "
          "tasks back in queue %r" % (
              PROG, os.getpid(), signal.Signals(signals[1]).name, len(killed),
              "" if len(killed) == 1 else "es", args.queue), flush=True)
    if stopper.is_alive():  # should not happen; do not hang on it
        sys.stderr.flush()
        os._exit(1)
    return 1


# -- consume ------------------------------------------------------------------------

def _cmd_consume(args):
    if not args.command_line:
        args.parser.error("give the command to run after --, e.g. consume DB -- sh -c 'cat'")
    with _writing(args, create=True) as q:
        done, failed = _cli_consume.consume(q.engine, args, args.command_line)
    print("%s: consumed %d message%s of queue %r: %d done, %d failed" % (
        PROG, done + failed, "" if done + failed == 1 else "s", args.queue, done, failed),
        flush=True)
    return 0


# -- the parser ----------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, exit status 2, and
    whose commands take options between their positionals, as in
    ``put DB --queue jobs TEXT`` (plain argparse would refuse TEXT there)."""

    #: False for a parser with subcommands, which intermixed parsing refuses.
    intermixed = True
    _parsing = False

    def parse_known_args(self, args=None, namespace=None):
        if not self.intermixed or self._parsing:
            return super().parse_known_args(args, namespace)
        self._parsing = True  # parse_known_intermixed_args calls us back
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._parsing = False

    def error(self, message):
        command = self.prog[len(PROG):].strip()
        where = "%s: " % command if command else ""
        self.exit(2, "%s: error: %s%s (see %s --help)\n" % (PROG, where, message, self.prog))


def _key_file(path):
    """The key in a file (not on the command line, which ``ps`` shows)."""
    try:
        with open(path, "rb") as f:
            key = f.read()
    except OSError as exc:
        raise argparse.ArgumentTypeError("cannot read the key file: %s" % exc) from None
    key = key[:-1] if key.endswith(b"\n") else key
    if not key:
        raise argparse.ArgumentTypeError("the key file %s is empty" % path)
    return key


def _number(kind, minimum, inclusive=True, name="a number"):
    def convert(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError("%r is not %s" % (text, name)) from None
        if (isinstance(value, float) and not math.isfinite(value)) or value < minimum or (
                not inclusive and value == minimum):
            raise argparse.ArgumentTypeError("%r must be %s %s" % (
                text, "at least" if inclusive else "more than", minimum))
        return value
    return convert


def _auto_pages(text):
    if text == "off":
        return text
    return _number(int, 0, name="a number of pages or off")(text)


def _queue_name(text):
    if not text:
        raise argparse.ArgumentTypeError("a queue name must not be empty")
    return text


def _table_prefix(text):
    try:
        check_table_prefix(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _add_common(parser, defaults):
    """Options accepted before and after the command name; given after it,
    they override (SUPPRESS keeps a subcommand from resetting them)."""
    keep = argparse.SUPPRESS
    parser.add_argument("--table-prefix", type=_table_prefix, metavar="PREFIX",
                        default=DEFAULT_PREFIX if defaults else keep,
                        help="prefix of the queue tables (default %(default)s)"
                        if defaults else argparse.SUPPRESS)
    parser.add_argument("--timeout", type=_number(float, 0.0), metavar="SECONDS",
                        default=5.0 if defaults else keep,
                        help="how long to wait for another connection's lock (default 5)"
                        if defaults else argparse.SUPPRESS)
    parser.add_argument("--journal-mode", choices=["wal", "keep"], default=None if defaults else keep,
                        help="for an application's database not in WAL mode: switch it to WAL, "
                        "or keep its mode (by default such a file is refused)"
                        if defaults else argparse.SUPPRESS)
    parser.add_argument("-v", "--verbose", action="count", default=0 if defaults else keep,
                        help="log to stderr: -v at INFO, -vv at DEBUG")


def _add_db(parser):
    parser.add_argument("db", metavar="DB", nargs="?",
                        help="the queue file (default: $%s)" % DB_VARIABLE)


def _resolve_db(args, environ=os.environ):
    """Fill in ``args.db`` from $PERSISTQUEUE_LITEQ_DB when the command was
    given none.  DB is always the first positional; with the variable set, a
    command whose DB was left out reads its positionals as the ones after DB:
    ``put TEXT``, ``import-jsonl FILE``, ``dlq show ID``, ``dlq redrive ID...``
    (an ID is all digits).  ``export-jsonl X`` reads X as DB: give the output
    file with ``-o``."""
    env = environ.get(DB_VARIABLE) or None
    shift = getattr(args, "db_shift", None)
    if env is not None and args.db is not None and shift is not None:
        shift(args, env)
    if args.db is None:
        if env is None:
            args.parser.error("give DB, the queue file, or set $%s" % DB_VARIABLE)
        args.db = env


def _shift_put(args, env):
    if args.text is None and args.json_text is None and args.file is None and not args.stdin:
        args.text, args.db = args.db, env


def _shift_import(args, env):
    if args.file is None:
        args.file, args.db = args.db, env


def _shift_ids(name):
    """For ``dlq show ID`` and ``dlq redrive ID...``: a first positional of
    digits only is an ID when DB comes from the environment."""
    def shift(args, env):
        if not args.db.isdigit():
            return
        value = getattr(args, name)
        if isinstance(value, list):
            setattr(args, name, [int(args.db)] + value)
        elif value is None:
            setattr(args, name, int(args.db))
        else:
            return
        args.db = env
    return shift


def _command(subparsers, name, func, help, **kwargs):
    parser = subparsers.add_parser(name, help=help, description=help, **kwargs)
    _add_common(parser, defaults=False)
    parser.set_defaults(func=func, parser=parser)
    _add_db(parser)
    return parser


def _build_parser():
    parser = _Parser(prog=PROG, description="See and steer persistqueue_liteq queue files.",
                     epilog="put, import-jsonl and worker create the file (or its queue tables) "
                            "if missing; every other command needs an existing queue file, and "
                            "those that only read (stats, peek, dlq list/show, export-jsonl, "
                            "check) never write it.")
    parser.intermixed = False
    parser.add_argument("--version", action="version", version="%(prog)s " + __version__)
    _add_common(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = _command(commands, "stats", _cmd_stats, "counts per queue, for people and monitoring")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON object")
    fmt.add_argument("--prometheus", action="store_true", help="Prometheus text format")
    p.add_argument("--watch", nargs="?", const=2.0, type=_number(float, 0.0, False),
                   metavar="SECONDS", help="redraw every SECONDS (default 2) until Ctrl-C; "
                   "put it after DB")

    p = _command(commands, "peek", _cmd_peek, "the next message(s), without leasing them")
    p.add_argument("--queue", default=DEFAULT_QUEUE, type=_queue_name)
    p.add_argument("-n", type=_number(int, 1, name="an integer"), default=1, metavar="N")
    p.add_argument("--json", action="store_true")

    p = _command(commands, "put", _cmd_put, "store messages")
    p.add_argument("text", nargs="?", metavar="TEXT", help="the message, stored as UTF-8")
    p.add_argument("--json", dest="json_text", metavar="JSON", help="a JSON text, checked")
    p.add_argument("--file", metavar="PATH", help="the bytes of a file as one message")
    p.add_argument("--stdin", action="store_true", help="one message per line of stdin "
                   "(blank lines skipped), each stored as it comes")
    p.add_argument("--queue", default=DEFAULT_QUEUE, type=_queue_name)
    p.add_argument("--delay", type=_number(float, 0.0), default=0.0, metavar="SECONDS")
    _add_key_file(p)
    p.set_defaults(db_shift=_shift_put)

    p = _command(commands, "purge", _cmd_purge, "delete a queue's live messages (or dead letters)")
    p.add_argument("--queue", required=True, type=_queue_name)
    p.add_argument("--dead", action="store_true", help="the dead letters instead")

    p = _command(commands, "delete-queue", _cmd_delete_queue, "delete every message of a queue")
    p.add_argument("--queue", required=True, type=_queue_name)

    _build_dlq(commands)

    p = _command(commands, "import-jsonl", _cmd_import,
                 "store one message per line of FILE: JSON as its text, other lines as text")
    p.add_argument("file", metavar="FILE", nargs="?", help="the file, or - for stdin")
    p.add_argument("--queue", type=_queue_name, help="default: %s, or with --exported the "
                   "queue of each record" % DEFAULT_QUEUE)
    p.add_argument("--format", choices=["lines", "simple_local_mq", "exported"],
                   default="lines",
                   help="lines (default): one message per line, JSON or text; simple_local_mq: "
                        'its {"topic", "payload"|"message"} lines (topic: the queue) and JSON '
                        "strings; exported: what export-jsonl wrote, restored with its state")
    p.add_argument("--exported", action="store_true", help="the same as --format exported")
    _add_key_file(p)
    p.set_defaults(db_shift=_shift_import)

    p = _command(commands, "export-jsonl", _cmd_export, "write messages as JSON lines")
    p.add_argument("file", nargs="?", default="-", metavar="FILE", help="default: - (stdout)")
    p.add_argument("-o", "--output", dest="file", metavar="FILE", help="the same as FILE")
    p.add_argument("--queue", type=_queue_name, help="default: every queue")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--dead", action="store_true", help="the dead letters")
    which.add_argument("--all", action="store_true",
                       help="live messages and dead letters, each with its state (for a "
                            "full copy: import-jsonl --exported restores it)")

    p = _command(commands, "checkpoint", _cmd_checkpoint, "copy the WAL into the file")
    p.add_argument("--mode", default="TRUNCATE", type=str.upper,
                   choices=Maintenance.CHECKPOINT_MODES)
    p = _command(commands, "vacuum", _cmd_vacuum, "give free pages back to the file system")
    p.add_argument("--auto", type=_auto_pages, metavar="PAGES|off",
                   help="instead: store in the file that a process finding more than PAGES "
                        "free pages vacuums it (off: never, the default)")
    _command(commands, "check", _cmd_check, "integrity check and WAL size (exit 1 if not ok)")

    p = _command(commands, "worker", _cmd_worker,
                 "run a PersistentProcessPoolExecutor's workers on a queue of tasks "
                 "until SIGTERM/SIGINT (twice: at once)")
    p.add_argument("--queue", default=DEFAULT_TASK_QUEUE, type=_queue_name,
                   help="the pool's name (default %(default)s)")
    p.add_argument("--workers", type=_number(int, 1, name="an integer"),
                   default=os.cpu_count() or 1, metavar="N")
    p.add_argument("--max-retries", type=_number(int, 0, name="an integer"), default=3)
    p.add_argument("--retry-backoff", type=_number(float, 0.0), default=0.5, metavar="SECONDS")
    p.add_argument("--task-timeout", type=_number(float, 0.0, False), metavar="SECONDS")
    p.add_argument("--lease-seconds", type=_number(float, 0.0, False), default=30.0,
                   metavar="SECONDS")
    p.add_argument("--max-tasks-per-child", type=_number(int, 1, name="an integer"), metavar="N")
    p.add_argument("--hmac-key-file", type=_key_file, metavar="PATH",
                   help="the pool's hmac_key: the bytes of PATH, less one trailing newline; "
                        "tasks and results are signed, and a task whose signature does not "
                        "match is never unpickled")

    p = _command(commands, "consume", _cmd_consume,
                 "run a shell command per message (the message on its stdin): ack on exit "
                 "status 0, else release it with a delay (dead-letter it past --max-retries)")
    p.add_argument("--queue", default=DEFAULT_QUEUE, type=_queue_name)
    p.add_argument("--max-retries", type=_number(int, 0, name="an integer"), default=3)
    p.add_argument("--retry-delay", type=_number(float, 0.0), default=10.0, metavar="SECONDS",
                   help="delay of a failed message before its next try (default 10)")
    p.add_argument("--lease-seconds", type=_number(float, 0.0, False), default=60.0,
                   metavar="SECONDS", help="lease of a message, extended while its command "
                   "runs (default 60)")
    p.add_argument("--until-empty", action="store_true",
                   help="stop when no message is ready instead of waiting for more")
    _add_key_file(p)
    p.epilog = "The command follows --: consume DB [options] -- COMMAND [ARG ...]"
    return parser


def _add_key_file(p):
    p.add_argument("--hmac-key-file", type=_key_file, metavar="PATH",
                   help="the hmac_key of a queue whose items are signed: the bytes of PATH, "
                        "less one trailing newline")


def _build_dlq(commands):
    dlq = commands.add_parser("dlq", help="dead letters: list, show, redrive, purge",
                              description="Dead letters, with their reasons and tracebacks.")
    dlq.intermixed = False
    _add_common(dlq, defaults=False)
    verbs = dlq.add_subparsers(dest="verb", metavar="VERB", required=True)
    p = _command(verbs, "list", _cmd_dlq_list, "dead letters with their reasons")
    p.add_argument("--queue", type=_queue_name, help="default: every queue")
    p.add_argument("--json", action="store_true")
    p = _command(verbs, "show", _cmd_dlq_show, "one message with its reason and traceback")
    p.add_argument("id", type=_number(int, 1, name="a message id"), metavar="ID", nargs="?")
    p.add_argument("--json", action="store_true")
    p.set_defaults(db_shift=_shift_ids("id"))
    p = _command(verbs, "redrive", _cmd_dlq_redrive, "make dead letters ready again")
    p.add_argument("ids", nargs="*", type=_number(int, 1, name="a message id"), metavar="ID")
    p.set_defaults(db_shift=_shift_ids("ids"))
    p.add_argument("--queue", type=_queue_name, help="default: every queue")
    p = _command(verbs, "purge", _cmd_dlq_purge, "delete dead letters")
    p.add_argument("--queue", type=_queue_name, help="default: every queue")


# -- main ------------------------------------------------------------------------------

def _configure_logging(verbosity):
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
    def format(self, record):
        return "%s: %s: %s" % (PROG, record.levelname.lower(), " ".join(
            record.getMessage().split()))


def main(argv=None):
    """Run the command line; return the exit status."""
    for stream in (sys.stdout, sys.stderr):  # any message text must print
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    argv, command_line = _split_command(sys.argv[1:] if argv is None else list(argv))
    args = _build_parser().parse_args(argv)
    args.command_line = command_line
    _resolve_db(args)
    if getattr(args, "func", None) is _cmd_dlq_show and args.id is None:
        args.parser.error("give the ID of the message")
    _configure_logging(args.verbose)
    try:
        return args.func(args)
    except BrokenPipeError:  # e.g. | head: the reader has all it wants
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print("%s: interrupted" % PROG, file=sys.stderr)
        return 130
    except (CLIError, LiteQueueError, OSError, ValueError) as exc:
        log.debug("failed", exc_info=True)
        print("%s: error: %s" % (PROG, _one_line(exc)), file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: still one line, the traceback with -vv
        log.debug("failed", exc_info=True)
        print("%s: error: %s: %s" % (PROG, type(exc).__name__, _one_line(exc)), file=sys.stderr)
        return 1


def _split_command(argv):
    """``consume ... -- COMMAND ...``: (the arguments before --, COMMAND ...).
    Split here, not by argparse: an optional DB and a command of any
    arguments cannot both be positionals."""
    if "--" in argv and "consume" in argv[:argv.index("--")]:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1:]
    return argv, []


def _one_line(exc):
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())
