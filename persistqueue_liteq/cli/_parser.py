"""The argument parser: every command, its options and checks, and where DB
comes from when it is left out."""

from __future__ import annotations

import argparse
import math
import os
import re
from typing import TYPE_CHECKING, Any, Callable, List, Mapping, NoReturn, Optional, Sequence, Tuple
from typing import TypeVar, Union

from .. import __version__
from ..engine import DEFAULT_PREFIX, Maintenance
from .._checks import table_prefix as check_table_prefix
from ._common import DB_VARIABLE, DEFAULT_QUEUE, DEFAULT_TASK_QUEUE, PROG
from .inspect import _cmd_dlq_list, _cmd_dlq_show, _cmd_peek
from .maintenance import _cmd_check, _cmd_checkpoint, _cmd_vacuum
from .messages import _cmd_delete_queue, _cmd_dlq_purge, _cmd_dlq_redrive, _cmd_purge, _cmd_put
from .stats import _cmd_stats
from .transfer import _cmd_export, _cmd_import
from .worker import _cmd_consume, _cmd_worker

if TYPE_CHECKING:
    #: A command: runs on the parsed arguments, returns the exit status.
    _Command = Callable[[argparse.Namespace], int]
    _Subparsers = argparse._SubParsersAction["_Parser"]

#: What a number option holds: an int or a float.
_Num = TypeVar("_Num", int, float)

# -- the parser ----------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, exit status 2, and
    whose commands take options between their positionals, as in
    ``put DB --queue jobs TEXT`` (plain argparse would refuse TEXT there)."""

    #: False for a parser with subcommands, which intermixed parsing refuses.
    intermixed = True
    _parsing = False

    def parse_known_args(  # type: ignore[override]  # one signature for typeshed's overloads
            self, args: Optional[Sequence[str]] = None,
            namespace: Optional[argparse.Namespace] = None
    ) -> Tuple[argparse.Namespace, List[str]]:
        if not self.intermixed or self._parsing:
            return super().parse_known_args(args, namespace)
        self._parsing = True  # parse_known_intermixed_args calls us back
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._parsing = False

    def error(self, message: str) -> NoReturn:
        command = self.prog[len(PROG):].strip()
        where = "%s: " % command if command else ""
        message = _PASSWORD.sub(r"\1***@", message)  # a URL given where it does not go
        self.exit(2, "%s: error: %s%s (see %s --help)\n" % (PROG, where, message, self.prog))


# The password of a URL ("scheme://user:password@"), wherever it is quoted.
_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)[^@\s]*@")


def _key_file(path: str) -> bytes:
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


def _number(kind: Callable[[str], _Num], minimum: _Num, inclusive: bool = True,
            name: str = "a number") -> Callable[[str], _Num]:
    def convert(text: str) -> _Num:
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


def _auto_pages(text: str) -> Union[str, int]:
    if text == "off":
        return text
    return _number(int, 0, name="a number of pages or off")(text)


def _queue_name(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("a queue name must not be empty")
    return text


def _table_prefix(text: str) -> str:
    try:
        check_table_prefix(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _add_common(parser: argparse.ArgumentParser, defaults: bool) -> None:
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


def _add_db(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("db", metavar="DB", nargs="?",
                        help="the queue file (default: $%s)" % DB_VARIABLE)


def _resolve_db(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> None:
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


def _shift_put(args: argparse.Namespace, env: str) -> None:
    if args.text is None and args.json_text is None and args.file is None and not args.stdin:
        args.text, args.db = args.db, env


def _shift_import(args: argparse.Namespace, env: str) -> None:
    if args.file is None:
        args.file, args.db = args.db, env


def _shift_ids(name: str) -> Callable[[argparse.Namespace, str], None]:
    """For ``dlq show ID`` and ``dlq redrive ID...``: a first positional of
    digits only is an ID when DB comes from the environment."""
    def shift(args: argparse.Namespace, env: str) -> None:
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


def _command(subparsers: _Subparsers, name: str, func: _Command, help: str,
             **kwargs: Any) -> _Parser:
    parser = subparsers.add_parser(name, help=help, description=help, **kwargs)
    _add_common(parser, defaults=False)
    parser.set_defaults(func=func, parser=parser)
    _add_db(parser)
    return parser


def _build_parser() -> _Parser:
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


def _add_key_file(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hmac-key-file", type=_key_file, metavar="PATH",
                   help="the hmac_key of a queue whose items are signed: the bytes of PATH, "
                        "less one trailing newline")


def _build_dlq(commands: _Subparsers) -> None:
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
