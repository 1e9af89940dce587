"""``checkpoint``, ``vacuum`` and ``check``: maintenance, through the
engine's optional maintenance interface only (SQLite has one; a backend
without one gives Unsupported)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..engine import maintenance_of
from ..exceptions import Unsupported
from ._common import CLIError, _reading, _shown, _where, _writing

if TYPE_CHECKING:
    import argparse

# -- maintenance -----------------------------------------------------------------

# All through the engine's maintenance interface (engine.Maintenance): a
# backend without one stops these commands with Unsupported, one line.

def _cmd_checkpoint(args: argparse.Namespace) -> int:
    with _writing(args) as q:
        upkeep = maintenance_of(q.engine, "checkpoint")
        busy, wal_pages, copied = upkeep.checkpoint(args.mode)
    # Once closed: the last connection to close removes the WAL.
    print("checkpoint %s: %d of %d WAL pages copied%s; WAL file now %s bytes" % (
        args.mode, max(copied, 0), max(wal_pages, 0),
        " (busy: a reader kept the rest)" if busy else "", upkeep.sizes().log or 0))
    return 0


def _cmd_vacuum(args: argparse.Namespace) -> int:
    if args.auto is not None:
        with _writing(args) as q:
            maintenance_of(q.engine, "vacuum --auto").set_auto_vacuum(
                None if args.auto == "off" else args.auto)
        print("%s: automatic vacuum: %s" % (_shown(args), "off" if args.auto == "off" else
                                            "past %d free pages" % args.auto))
        return 0
    with _writing(args) as q:
        upkeep = maintenance_of(q.engine, "vacuum")
        before = upkeep.sizes_at_open.total
        upkeep.vacuum()
        try:
            upkeep.checkpoint("TRUNCATE")  # so that the smaller file shows now
        except Unsupported:
            pass  # no log of ours to copy (PostgreSQL)
    after = upkeep.sizes().total
    print("vacuumed %s: %d bytes before, %d after" % (_shown(args), before, after))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    with _reading(args) as engine:
        upkeep = maintenance_of(engine, "check")
        # As it was before the engine opened it: a read-only open may
        # create an empty WAL file.
        wal = upkeep.sizes_at_open.log
        problems = upkeep.integrity_check()
        size = upkeep.sizes().database
        health = upkeep.health()
        sqlite = engine.spec.scheme == "sqlite"
        location = engine.location
    ok = problems == ["ok"]
    if sqlite:
        print("file:       %s (%d bytes)" % (_where(args), size or 0))
        print("WAL file:   %s" % ("none" if wal is None else "%d bytes" % wal))
    else:
        print("database:   %s (%d bytes of queue tables)" % (location, size or 0))
    for label, text in health:
        print("%-11s %s" % (label + ":", text))
    print("integrity:  %s" % ("ok" if ok else "%d problem(s)" % len(problems)))
    if ok:
        return 0
    for problem in problems:
        for line in problem.splitlines():
            print("  " + line)
    raise CLIError("integrity check of %s failed: %s" % (_shown(args), " ".join(problems[0].split())))
