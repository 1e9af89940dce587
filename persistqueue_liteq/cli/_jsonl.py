"""The JSON lines that ``export-jsonl`` writes and ``import-jsonl`` reads.

``import-jsonl --format`` reads three kinds of file:

``lines`` (the default)
    one message per line: a JSON line is stored as its JSON text, any other
    line as its text (both are the line's bytes).
``simple_local_mq``
    simple_local_mq's lines: ``{"topic": T, "payload": P}`` or
    ``{"topic": T, "message": P}`` go to queue T (a str P as its text, any
    other P as its JSON text); a JSON string as its text; any other line as
    in ``lines``.  Lines without a topic go to ``--queue`` (default
    ``default``).
``exported`` (also ``--exported``)
    what ``export-jsonl`` wrote: every message comes back in its queue with
    its state (ready, delayed until the same time, dead with its reason; one
    that was in flight comes back ready), its attempts, creation time, TTL,
    last error, priority key and task key, under a new id.  A record that
    names the codec its queue recorded gives the new queue that record too.

An export record::

    {"id": 7, "queue": "jobs", "data": "...", "encoding": "base64" (bytes that
     are not UTF-8), "state": "ready" | "delayed" | "in_flight" | "dead",
     "attempts": 2, "created_at": T, "visible_at": T, "expires_at": T,
     "priority": base64, "key": "...", "dead_at": T, "dead_reason": "...",
     "last_error": "...", "codec": "serializer=pickle;key=none"}

Times are the wall clock's (seconds since the epoch); absent fields are
null or left out.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple

from ..engine import Message

if TYPE_CHECKING:
    #: A JSON object: an export record, written or read.
    Record = Dict[str, Any]
    #: ``engine.wall_time``: an engine's time as the wall clock's.
    WallTime = Callable[[Optional[float]], Optional[float]]
    #: ``(kind, value, raw)``: a message of the command line, "text", "json"
    #: or "bytes", its value, and the bytes a queue without a codec stores.
    Item = Tuple[str, object, bytes]

__all__ = ["record", "restored", "lines_item", "simple_local_mq_item", "ImportError_"]


class ImportError_(Exception):
    """A line that cannot be imported; the message says which and why."""


def _base64(text: str, line_no: int, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as exc:
        raise ImportError_("line %d: bad base64 %s: %s" % (line_no, what, exc)) from None


def _state(msg: Message, now: float) -> str:
    if msg.dead_at is not None or msg.visible_at is None:
        return "dead"
    if msg.lease is not None and msg.visible_at > now:
        return "in_flight"
    return "ready" if msg.visible_at <= now else "delayed"


def record(msg: Message, wall: WallTime, now: Optional[float] = None,
           codec: Optional[str] = None) -> Record:
    """A message as one JSON object; ``wall`` turns the engine's times into
    wall-clock ones (``engine.wall_time``), ``now`` is the engine's time (for
    the state), ``codec`` the queue's codec record."""
    out: Record = {"id": msg.id, "queue": msg.queue_name}
    try:
        out["data"] = msg.data.decode("utf-8")
    except UnicodeDecodeError:
        out["data"] = base64.b64encode(msg.data).decode("ascii")
        out["encoding"] = "base64"
    if now is not None:
        out["state"] = _state(msg, now)
    out["attempts"] = msg.attempts
    out["created_at"] = wall(msg.created_at)
    if now is not None and out["state"] in ("delayed", "in_flight"):
        out["visible_at"] = wall(msg.visible_at)
    if msg.expires_at is not None:
        out["expires_at"] = wall(msg.expires_at)
    if msg.priority is not None:
        out["priority"] = base64.b64encode(msg.priority).decode("ascii")
    if msg.key is not None:
        out["key"] = msg.key
    if msg.dead_at is not None:
        out["dead_at"] = wall(msg.dead_at)
        out["dead_reason"] = msg.dead_reason
    if msg.last_error is not None:
        out["last_error"] = msg.last_error
    if codec is not None:
        out["codec"] = codec
    return out


def record_data(rec: Record, line_no: int) -> bytes:
    """The bytes of an export record's data."""
    if not isinstance(rec, dict) or not isinstance(rec.get("data"), str):
        raise ImportError_(
            'line %d: not an export-jsonl record (an object with a "data" string)' % line_no)
    encoding = rec.get("encoding")
    if encoding is None:
        text: str = rec["data"]
        return text.encode("utf-8", "surrogatepass")
    if encoding != "base64":
        raise ImportError_("line %d: unknown encoding %r (only base64)" % (line_no, encoding))
    return _base64(rec["data"], line_no, "data")


def _time(rec: Record, name: str, line_no: int, to_engine: Callable[[float], float],
          required: bool = False) -> Optional[float]:
    value = rec.get(name)
    if value is None:
        if required:
            raise ImportError_("line %d: %s is missing" % (line_no, name))
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ImportError_("line %d: %s must be a number of seconds, not %r"
                           % (line_no, name, value))
    return to_engine(float(value))


def _text(rec: Record, name: str, line_no: int) -> Optional[str]:
    value = rec.get(name)
    if value is not None and not isinstance(value, str):
        raise ImportError_("line %d: %s must be a string" % (line_no, name))
    return value


def restored(rec: Record, line_no: int, to_engine: Callable[[float], float],
             now: float) -> Tuple[Message, Optional[str]]:
    """``(Message, codec)`` of an export record, its times on the engine's
    clock (``to_engine`` converts wall-clock times); a record of an older
    export (no "state") is ready, or dead if it has "dead_at"."""
    data = record_data(rec, line_no)
    attempts = rec.get("attempts", 0)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
        raise ImportError_("line %d: attempts must be a whole number, not %r"
                           % (line_no, attempts))
    state = rec.get("state")
    if state is None:
        state = "dead" if rec.get("dead_at") is not None else "ready"
    if state not in ("ready", "delayed", "in_flight", "dead"):
        raise ImportError_("line %d: unknown state %r" % (line_no, state))
    created = _time(rec, "created_at", line_no, to_engine) or now
    msg = Message(id=0, data=data, queue_name="", retry_count=max(attempts - 1, 0),
                  created_at=created, attempts=attempts,
                  expires_at=_time(rec, "expires_at", line_no, to_engine),
                  last_error=_text(rec, "last_error", line_no), key=_text(rec, "key", line_no))
    if rec.get("priority") is not None:
        msg.priority = _base64(rec["priority"], line_no, "priority")
    if state == "dead":
        msg.dead_at = _time(rec, "dead_at", line_no, to_engine) or now
        msg.dead_reason = _text(rec, "dead_reason", line_no) or "imported dead letter"
    elif state == "delayed":
        msg.visible_at = _time(rec, "visible_at", line_no, to_engine, required=True)
    else:
        msg.visible_at = now
    codec = _text(rec, "codec", line_no)
    return msg, codec


def lines_item(text: bytes) -> Item:
    """``(kind, value, raw)`` of a line of the ``lines`` format: a JSON line
    is the JSON value (stored, in a queue without a codec, as the line's
    bytes), any other line its text."""
    try:
        return "json", json.loads(text), text
    except ValueError:
        return "text", text.decode("utf-8", "surrogateescape"), text


def simple_local_mq_item(text: bytes, line_no: int) -> Tuple[Optional[str], Item]:
    """``(topic or None, (kind, value, raw))`` of a simple_local_mq line."""
    try:
        value = json.loads(text)
    except ValueError:
        return None, ("text", text.decode("utf-8", "surrogateescape"), text)
    if isinstance(value, str):
        return None, ("text", value, value.encode("utf-8", "surrogatepass"))
    if isinstance(value, dict) and "topic" in value and ("payload" in value or "message" in value):
        topic = value["topic"]
        if not isinstance(topic, str) or not topic:
            raise ImportError_("line %d: the topic must be a non-empty string, not %r"
                               % (line_no, topic))
        payload = value["payload"] if "payload" in value else value["message"]
        if isinstance(payload, str):
            return topic, ("text", payload, payload.encode("utf-8", "surrogatepass"))
        raw = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        return topic, ("json", payload, raw)
    return None, ("json", value, text)
