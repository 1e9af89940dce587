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

This module holds :func:`main`; the commands live by group beside it:
:mod:`.stats` (``stats``, ``--prometheus``, ``--watch``), :mod:`.inspect`
(``peek``, ``dlq list``, ``dlq show``), :mod:`.messages` (``put``, ``purge``,
``delete-queue``, ``dlq redrive``, ``dlq purge``), :mod:`.transfer`
(``import-jsonl``, ``export-jsonl``), :mod:`.maintenance` (``checkpoint``,
``vacuum``, ``check``), :mod:`.worker` (``worker``, ``consume``), with the
parser in :mod:`._parser` and what they share in :mod:`._common`.  The parts
with a job of their own: :mod:`._jsonl` (the export record and the import
formats, simple_local_mq's among them), :mod:`._codec` (what ``put`` stores
in, and ``peek`` shows of, a queue that records its codec: pickle and JSON
queues get items encoded to match) and :mod:`._consume` (the ``consume`` loop).

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

from __future__ import annotations

import contextlib
import os
import sys
from typing import List, Optional, Sequence, Tuple

from ..exceptions import LiteQueueError
from ._common import CLIError, PROG, _configure_logging, log
from ._parser import _build_parser, _resolve_db
from .inspect import _cmd_dlq_show

__all__ = ["main"]


# -- main ------------------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; return the exit status."""
    for stream in (sys.stdout, sys.stderr):  # any message text must print
        with contextlib.suppress(AttributeError, ValueError):  # (TextIOWrapper's method)
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    argv, command_line = _split_command(sys.argv[1:] if argv is None else list(argv))
    args = _build_parser().parse_args(argv)
    args.command_line = command_line
    _resolve_db(args)
    if getattr(args, "func", None) is _cmd_dlq_show and args.id is None:
        args.parser.error("give the ID of the message")
    _configure_logging(args.verbose)
    try:
        status: int = args.func(args)  # every command returns its exit status
        return status
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


def _split_command(argv: List[str]) -> Tuple[List[str], List[str]]:
    """``consume ... -- COMMAND ...``: (the arguments before --, COMMAND ...).
    Split here, not by argparse: an optional DB and a command of any
    arguments cannot both be positionals."""
    if "--" in argv and "consume" in argv[:argv.index("--")]:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1:]
    return argv, []


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())
