"""``stats``: the counts of every queue, as a table, JSON or Prometheus text,
once or every few seconds (``--watch``)."""

from __future__ import annotations

import re
import sys
import time
from typing import TYPE_CHECKING, Any, Dict, List, Tuple

from ..engine import METRIC_NAMES
from ..exceptions import LiteQueueError
from ._common import CLEAR, PROG, _age, _print_json, _reading, _shown, _table, _where

if TYPE_CHECKING:
    import argparse

    from ..engine import Engine

    #: {queue: its numbers}: the JSON of ``stats --json`` (see _snapshot).
    Snapshot = Dict[str, Dict[str, Any]]

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


def _snapshot(engine: Engine) -> Tuple[float, Snapshot]:
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
    snapshot: Snapshot = {}
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


def _rate(per_second: float) -> str:
    """A rate for people: "0", "0.05", "12.3", "1,234"."""
    if per_second >= 100:
        return "{:,.0f}".format(per_second)
    return ("%.3g" % per_second) if per_second else "0"


def _stats_lines(path: str, snapshot: Snapshot) -> List[str]:
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


def _label(value: str) -> str:
    """A Prometheus label value, escaped.

    >>> print(_label('a"b\\\\c'))
    "a\\"b\\\\c"
    """
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"%s"' % escaped


def _prometheus(snapshot: Snapshot) -> List[str]:
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


def _cmd_stats(args: argparse.Namespace) -> int:
    if args.watch is not None and (args.json or args.prometheus):
        args.parser.error("--watch is a view for people: not with --json or --prometheus")
    with _reading(args) as engine:
        if args.watch is not None:
            return _watch(args, engine)
        now, snapshot = _snapshot(engine)
    if args.json:
        _print_json({"file": _where(args), "time": now, "queues": snapshot})
    elif args.prometheus:
        print("\n".join(_prometheus(snapshot)))
    else:
        print("\n".join(_stats_lines(_shown(args), snapshot)))
    return 0


def _watch(args: argparse.Namespace, engine: Engine) -> int:
    """Redraw the stats every ``args.watch`` seconds until Ctrl-C."""
    try:
        while True:
            header = "%s stats %s  %s  (every %gs; Ctrl-C to stop)" % (
                PROG, _shown(args), time.strftime("%H:%M:%S"), args.watch)
            try:
                lines = _stats_lines(_shown(args), _snapshot(engine)[1])
            except LiteQueueError as exc:  # busy for a moment: say so, go on
                lines = ["error: %s" % exc]
            sys.stdout.write(CLEAR + "\n".join([header, ""] + lines) + "\n")
            sys.stdout.flush()
            time.sleep(args.watch)
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        return 0
