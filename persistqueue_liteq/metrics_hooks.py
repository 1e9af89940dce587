"""Metrics as they happen: hooks, and a statsd emitter built on them.

Every engine counts what it does per queue (see
:data:`~persistqueue_liteq.engine.METRIC_NAMES`: puts, gets, acks, retries,
dead_lettered, expired) and keeps the counts in the file, for ``stats`` and
the Prometheus text.  A *hook* gets each count as it is made, in the process
that made it, after the operation committed::

    from persistqueue_liteq.metrics_hooks import add_metrics_hook, StatsdHook

    add_metrics_hook(lambda location, queue, name, n: print(queue, name, n))
    add_metrics_hook(StatsdHook("127.0.0.1", 8125, prefix="shop"))  # UDP, stdlib only

A hook is ``hook(location, queue, name, n)``: the database's path, the
queue's name, the metric's name and how many.  It runs in the thread of the
operation, so it must be quick (StatsdHook sends one UDP datagram); an
exception it raises is logged on the "persistqueue_liteq" logger and
otherwise ignored: the operation it reports on has committed already.
Hooks are process-wide: registered once, they see every queue of the
process.  An OpenTelemetry counter plugs in the same way
(``lambda location, queue, name, n: counters[name].add(n, {"queue": queue})``).
"""

from __future__ import annotations

import logging
import re
import socket
from typing import TYPE_CHECKING, Callable, Optional, Tuple

if TYPE_CHECKING:
    #: ``hook(location, queue, name, n)``: the database (None for an engine
    #: that names none), the queue, the metric's name and how many; what it
    #: returns is ignored.
    MetricsHook = Callable[[Optional[str], str, str, int], object]

__all__ = ["add_metrics_hook", "remove_metrics_hook", "StatsdHook"]

logger = logging.getLogger("persistqueue_liteq")

# The hooks, as a tuple: replaced whole, read without a lock on the hot path.
_hooks: Tuple[MetricsHook, ...] = ()


def add_metrics_hook(hook: MetricsHook) -> None:
    """Call ``hook(location, queue, name, n)`` for every count from now on."""
    global _hooks
    if not callable(hook):
        raise TypeError("a metrics hook must be callable, not %r" % (hook,))
    _hooks = _hooks + (hook,)


def remove_metrics_hook(hook: MetricsHook) -> None:
    """Stop calling ``hook``; ValueError if it was not added."""
    global _hooks
    hooks = list(_hooks)
    hooks.remove(hook)
    _hooks = tuple(hooks)


def emit(location: Optional[str], queue: str, name: str, n: int) -> None:
    """Hand one count to every hook (called by the engine's Metrics)."""
    for hook in _hooks:
        try:
            hook(location, queue, name, n)
        except Exception as exc:
            logger.warning("metrics hook %r failed on %s %s of queue %r: %s",
                           hook, n, name, queue, exc)


class StatsdHook:
    """Send each count as a statsd counter, ``<prefix>.<queue>.<name>:<n>|c``,
    in one UDP datagram (lost datagrams are statsd's way: nothing waits)."""

    _UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")

    def __init__(self, host: str = "127.0.0.1", port: int = 8125,
                 prefix: Optional[str] = "persistqueue_liteq") -> None:
        self.address = (host, port)
        self.prefix = prefix
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    @classmethod
    def metric_name(cls, prefix: Optional[str], queue: str, name: str) -> str:
        """statsd's name of a count: characters statsd would misread become _."""
        return ".".join(cls._UNSAFE.sub("_", part) for part in (prefix, queue, name) if part)

    def __call__(self, location: Optional[str], queue: str, name: str, n: int) -> None:
        line = "%s:%d|c" % (self.metric_name(self.prefix, queue, name), n)
        try:
            self._socket.sendto(line.encode("ascii", "replace"), self.address)
        except OSError as exc:  # nobody listening, buffer full: a counter is lost
            logger.debug("statsd: %s", exc)

    def close(self) -> None:
        self._socket.close()

    def __repr__(self) -> str:
        return "StatsdHook(%r, %r, prefix=%r)" % (self.address[0], self.address[1], self.prefix)
