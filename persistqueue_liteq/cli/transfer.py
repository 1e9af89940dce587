"""``import-jsonl`` and ``export-jsonl``: messages in and out as JSON lines
(the record and the formats are in :mod:`._jsonl`)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import (TYPE_CHECKING, BinaryIO, Callable, Dict, Iterable, Iterator, List, Optional,
                    Tuple, Union)

from . import _jsonl
from ._codec import QueueCodec
from ..exceptions import LiteQueueError
from ._common import (CLIError, DEFAULT_QUEUE, _IMPORT_CHUNK, _PROGRESS_EVERY, _queues_with,
                      _reading, _writing, log)

if TYPE_CHECKING:
    import argparse

    from ..engine import Engine, Message, Sealer
    from ._codec import Encoder
    from ._jsonl import Item, Record

# -- import and export -------------------------------------------------------------------

class _Progress:
    """"imported N lines (P%)" on stderr, redrawn in place; only on a terminal."""

    def __init__(self, total_bytes: int) -> None:
        self.shown = sys.stderr.isatty()
        self.total = total_bytes

    def update(self, lines: int, done_bytes: int) -> None:
        if not self.shown or lines % _PROGRESS_EVERY:
            return
        percent = " (%d%%)" % (100 * done_bytes // self.total) if self.total else ""
        sys.stderr.write("\rimported %d lines%s" % (lines, percent))
        sys.stderr.flush()

    def finish(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def _import_items(lines: Iterable[bytes], args: argparse.Namespace
                  ) -> Iterator[Tuple[int, str, Union[Item, Record]]]:
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
            topic, item = _jsonl.simple_local_mq_item(text, line_no)
            yield line_no, topic or args.queue or DEFAULT_QUEUE, item
        else:
            yield line_no, args.queue or DEFAULT_QUEUE, _jsonl.lines_item(text)


def _cmd_import(args: argparse.Namespace) -> int:
    if args.file is None:  # FILE is optional only so that DB can come from the environment
        args.parser.error("give FILE, the file to import, or - for standard input")
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
            except (CLIError, LiteQueueError, _jsonl.ImportError_) as exc:
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

    def __init__(self, engine: Engine, args: argparse.Namespace) -> None:
        self.engine = engine
        self.hmac_key = args.hmac_key_file
        self.exported = args.format == "exported"
        # (queue, (payload, seal) or Message)
        self.chunk: List[Tuple[str, Union[Tuple[bytes, Optional[Sealer]], Message]]] = []
        self._writers: Dict[str, Tuple[Encoder, Optional[Sealer]]] = {}  # queue -> (encode, seal)
        self._claimed: Dict[str, str] = {}  # queue -> codec record claimed for it
        now = engine.now()
        self.now = now
        offset = engine.wall_time(now) - now  # wall clock minus the engine's
        self.to_engine: Callable[[float], float] = lambda t: t - offset

    def add(self, line_no: int, queue: str, item: Union[Item, Record]) -> None:
        if self.exported:
            msg, codec = _jsonl.restored(item,  # type: ignore[arg-type]  # exported: a record
                                         line_no, self.to_engine, self.engine.now())
            if codec is not None:
                self._claim(line_no, queue, codec)
            self.chunk.append((queue, msg))
            return
        writer = self._writers.get(queue)
        if writer is None:
            writer = self._writers[queue] = QueueCodec(self.engine, queue, self.hmac_key).writer()
        encode, seal = writer
        self.chunk.append((queue, (encode(*item), seal)))

    def _claim(self, line_no: int, queue: str, codec: str) -> None:
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

    def commit(self) -> int:
        """Store the chunk; empty it; return how many."""
        chunk, self.chunk = self.chunk, []
        if not chunk:
            return 0
        if self.exported:
            by_queue: Dict[str, List[Message]] = {}
            for queue, msg in chunk:  # (exported: Messages)
                by_queue.setdefault(queue, []).append(msg)  # type: ignore[arg-type]
            for queue, messages in by_queue.items():
                self.engine.restore(queue, messages)
            return len(chunk)
        with self.engine.transaction() as tx:
            for queue, (data, seal) in chunk:  # type: ignore[misc]  # (payload, seal) pairs
                tx.put(queue, data, seal=seal)
        return len(chunk)


def _counting(source: Iterable[bytes], progress: _Progress) -> Iterator[bytes]:
    done = 0
    for n, line in enumerate(source, 1):
        done += len(line)
        progress.update(n, done)
        yield line


def _cmd_export(args: argparse.Namespace) -> int:
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


def _snapshot_of(engine: Engine, queue: str, what: str) -> Iterator[Message]:
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


def _write_records(out: BinaryIO, engine: Engine, queues: Iterable[str], what: str) -> int:
    count = 0
    for queue in queues:
        codec = engine.codec_of(queue)
        for msg in _snapshot_of(engine, queue, what):
            record = _jsonl.record(msg, engine.wall_time, engine.now(), codec)
            out.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
            count += 1
    return count
