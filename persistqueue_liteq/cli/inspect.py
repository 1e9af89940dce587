"""``peek``, ``dlq list`` and ``dlq show``: looking at messages without
changing anything (the file is opened read-only)."""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Sequence, Tuple

from ._common import (CLIError, _age, _codecs, _peek_many, _print_json, _queues_with, _reading,
                      _shown, _shown_preview, _shown_record, _state, _table, _when)

if TYPE_CHECKING:
    import argparse

    from ..engine import Engine, Message


# -- looking at messages -----------------------------------------------------------------

def _message_rows(messages: Sequence[Message], engine: Engine, dead: bool) -> List[str]:
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


def _cmd_peek(args: argparse.Namespace) -> int:
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


def _cmd_dlq_list(args: argparse.Namespace) -> int:
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


def _cmd_dlq_show(args: argparse.Namespace) -> int:
    with _reading(args) as engine:
        msg = engine.get(args.id)
        codecs = _codecs(engine)
        if msg is not None:
            record, preview = _shown_record(msg, engine, codecs), _shown_preview(msg, codecs, 200)
    if msg is None:
        raise CLIError("no message with id %d in %s" % (args.id, _shown(args)))
    now, wall = engine.now(), engine.wall_time
    if args.json:
        _print_json(dict(record, state=_state(msg, now),
                         visible_at=wall(msg.visible_at)))
        return 0
    state = _state(msg, now)
    if state == "waiting":
        state = "delayed or in flight until %s" % _when(wall(msg.visible_at))
    fields: List[Tuple[str, object]] = [
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
