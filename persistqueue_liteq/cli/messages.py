"""``put``, ``purge``, ``delete-queue``, ``dlq redrive`` and ``dlq purge``:
the commands that change messages."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Dict, Iterator, List, Mapping, Optional

from ._codec import QueueCodec
from .._policy import redrive_tasks
from ._common import CLIError, _queues_with, _writing

if TYPE_CHECKING:
    import argparse

    from ..engine import Engine
    from ._jsonl import Item

# -- changing messages ----------------------------------------------------------------

def _put_sources(args: argparse.Namespace) -> Iterator[Item]:
    """The messages ``put`` was given: (kind, value, raw) for each, ``raw``
    being what a queue without a codec stores (see :mod:`._codec`)."""
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


def _cmd_put(args: argparse.Namespace) -> int:
    given = [args.text is not None, args.json_text is not None, args.file is not None, args.stdin]
    if sum(given) != 1:
        args.parser.error("give exactly one of TEXT, --json, --file or --stdin")
    with _writing(args, create=True) as q:
        engine = q.engine
        encode, seal = QueueCodec(engine, args.queue, args.hmac_key_file).writer()
        ids: List[int] = []
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


def _cmd_purge(args: argparse.Namespace) -> int:
    with _writing(args) as q:
        removed = q.purge(args.queue, dlq=args.dead)
    what = "dead letters" if args.dead else "live messages"
    print("purged %d %s from queue %r" % (removed, what, args.queue))
    return 0


def _cmd_delete_queue(args: argparse.Namespace) -> int:
    with _writing(args) as q:
        removed = q.delete_queue(args.queue)
    print("deleted queue %r: %d message%s" % (args.queue, removed, "" if removed == 1 else "s"))
    return 0


def _redrive_targets(engine: Engine, args: argparse.Namespace
                     ) -> Mapping[str, Optional[List[int]]]:
    """{queue: ids or None (all)} to redrive, checked before anything moves."""
    if not args.ids:
        queues = [args.queue] if args.queue else _queues_with(engine, "dead")
        return {q: None for q in queues}
    targets: Dict[str, List[int]] = {}
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


def _cmd_dlq_redrive(args: argparse.Namespace) -> int:
    with _writing(args) as q:
        engine = q.engine
        moved = 0
        for queue, ids in _redrive_targets(engine, args).items():
            moved += redrive_tasks(engine, queue, ids)  # as the pools' redrive does
    print("redrove %d dead letter%s" % (moved, "" if moved == 1 else "s"))
    return 0


def _cmd_dlq_purge(args: argparse.Namespace) -> int:
    with _writing(args) as q:
        queues = [args.queue] if args.queue else _queues_with(q.engine, "dead")
        removed = sum(q.purge(name, dlq=True) for name in queues)
    print("purged %d dead letter%s" % (removed, "" if removed == 1 else "s"))
    return 0
