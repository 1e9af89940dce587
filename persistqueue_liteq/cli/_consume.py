"""``consume``: run a shell command once per message, the message on its stdin.

For each message leased from the queue, the command runs with the message on
its stdin (decoded by the queue's codec, see :mod:`._codec`) and with
``PERSISTQUEUE_LITEQ_QUEUE``, ``PERSISTQUEUE_LITEQ_MESSAGE_ID`` and
``PERSISTQUEUE_LITEQ_ATTEMPT`` in its environment; its stdout is ours.

* exit status 0: the message is acknowledged (deleted);
* a message of a signed queue (give its key with ``--hmac-key-file``) whose
  signature does not match: dead-lettered at once, never given to the
  command;
* anything else (or a message that cannot be given to a command): released
  with ``--retry-delay`` seconds of delay and the command's exit status and
  the end of its stderr as the message's last error; past ``--max-retries``
  retries it is dead-lettered with that reason instead.

While the command runs, its lease is extended every third of
``--lease-seconds``, so a long command keeps its message; if this process
dies, the lease runs out and the message is delivered again (one attempt
counted).  The first SIGINT or SIGTERM stops after the running command; the
message it was given is settled as above.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, TextIO, Tuple

from ._codec import BadSignature, QueueCodec, Unshowable
from ..engine import lease_waiting

if TYPE_CHECKING:
    import argparse

    from ..engine import Engine, Message

__all__ = ["consume"]

# How much of a failed command's stderr is kept as the message's last error.
_STDERR_KEPT = 4000


def _run(command: List[str], data: bytes, env: Dict[str, str], extend: Callable[[], object],
         every: float) -> Tuple[int, bytes]:
    """Run ``command`` with ``data`` on stdin, calling ``extend()`` every
    ``every`` seconds while it runs; return (exit status, stderr bytes)."""
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    given: Optional[bytes] = data
    while True:
        try:
            _, err = proc.communicate(given, timeout=every)
            return proc.returncode, err or b""
        except subprocess.TimeoutExpired:
            given = None  # already being written: communicate goes on with it
            extend()


def _failure(status: int, err: bytes) -> Tuple[str, str]:
    why = ("killed by signal %d" % -status) if status < 0 else "exit status %d" % status
    tail = err[-_STDERR_KEPT:].decode("utf-8", "replace").strip()
    return why, ("%s\n%s" % (why, tail) if tail else why)


def consume(engine: Engine, args: argparse.Namespace, command: List[str],
            out: TextIO = sys.stdout) -> Tuple[int, int]:
    """Consume ``args.queue`` of ``engine`` with ``command`` (a list);
    returns (done, failed)."""
    codec = QueueCodec(engine, args.queue, args.hmac_key_file)
    codec.check_readable()
    stop: List[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: stop.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    done = failed = 0
    try:
        while not stop:
            # --until-empty: stop when nothing is ready.  Otherwise wait, a
            # second at a time, so that a signal is noticed.
            timeout = 0 if args.until_empty else 1.0
            leased = lease_waiting(engine, args.queue, 1, args.lease_seconds, "fifo",
                                   args.max_retries + 1, timeout)
            if not leased:
                if args.until_empty:
                    break
                continue
            ok = _one(engine, codec, args, command, leased[0])
            done, failed = done + ok, failed + (not ok)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return done, failed


def _one(engine: Engine, codec: QueueCodec, args: argparse.Namespace, command: List[str],
         msg: Message) -> bool:
    """Run the command on one leased message and settle it; True if it
    succeeded."""
    env = dict(os.environ, PERSISTQUEUE_LITEQ_QUEUE=args.queue,
               PERSISTQUEUE_LITEQ_MESSAGE_ID=str(msg.id),
               PERSISTQUEUE_LITEQ_ATTEMPT=str(msg.attempts))
    try:
        data = codec.text(msg)
    except BadSignature as exc:
        # Written without the key (or altered): never given to the command.
        engine.dead_letter(msg.id, msg.lease, "refused: %s" % exc)
        return False
    except Unshowable as exc:
        why, error = "cannot be given to a command: %s" % exc, None
    else:
        sys.stdout.flush()  # our lines before the command's
        status, err = _run(command, data, env,
                           lambda: engine.set_visibility(msg.id, msg.lease, args.lease_seconds),
                           max(args.lease_seconds / 3.0, 0.05))
        if status == 0:
            engine.ack(msg.id, msg.lease)
            return True
        why, error = _failure(status, err)
        sys.stderr.buffer.write(err)
        sys.stderr.flush()
    if msg.attempts > args.max_retries:
        engine.dead_letter(msg.id, msg.lease, "command failed %d time%s, the last with %s" % (
            msg.attempts, "" if msg.attempts == 1 else "s", why), error)
    else:
        engine.release(msg.id, msg.lease, delay=args.retry_delay, error=error or why)
    return False
