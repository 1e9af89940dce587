"""What the command line stores in, and shows of, a queue that records a codec.

A queue written by :class:`~persistqueue_liteq.PersistentQueue` (or a pool)
records its codec: the serializer's name and whether its payloads are signed
(see :meth:`~persistqueue_liteq.serializers.Codec.fingerprint`).  The command
line reads that record so that a shell and a Python consumer agree:

* ``put`` and ``import-jsonl`` *encode to match*: into a pickle queue, TEXT is
  stored as the pickle of a str, ``--json`` as the pickle of the parsed value,
  ``--file`` as the pickle of bytes; into a JSON queue, TEXT as a JSON string
  and ``--json`` as the value (``--file``'s bytes are refused: JSON has no
  bytes).  A signed queue needs its key (``--hmac-key-file``); a queue of any
  other serializer (``marshal``, a class of the application) is refused.  A
  queue without a record (LiteQueue's, the command line's own) stores the
  bytes as given, as before.
* ``peek``, ``dlq list/show`` and ``consume`` *decode* what they show: JSON
  as its value; a pickle with a restricted unpickler that builds only the
  built-in containers and scalars and never imports anything (so a hostile
  pickle runs nothing: it is shown as ``<pickle of module.name>``).  A signed
  payload's signature is skipped for showing, not checked.
"""

from __future__ import annotations

import io
import json
import pickle
from typing import TYPE_CHECKING, Callable, Dict, NoReturn, Optional, Tuple

from ..exceptions import LiteQueueError
from ..serializers import BytesSerializer, Codec, JSONSerializer, PickleSerializer, SignatureError

if TYPE_CHECKING:
    from ..engine import Engine, Message, Sealer
    from ..serializers import Serializer

    #: ``encode(kind, value, raw)``: the payload of an item of the command
    #: line (see :meth:`QueueCodec.writer`).
    Encoder = Callable[[str, object, bytes], bytes]

__all__ = ["QueueCodec", "Unshowable", "BadSignature"]

# The serializers whose bytes the command line can write and read.
_KNOWN: Dict[str, Callable[[], Serializer]] = {
    "pickle": PickleSerializer, "json": JSONSerializer, "bytes": BytesSerializer}


class Unshowable(Exception):
    """A stored item that the command line cannot turn into text."""


class BadSignature(Unshowable):
    """A signed queue's item whose signature does not match the key."""


def _fields(fingerprint: str) -> Dict[str, str]:
    return dict(part.split("=", 1) for part in fingerprint.split(";") if "=" in part)


class _Global(Exception):
    def __init__(self, module: str, name: str) -> None:
        super().__init__("%s.%s" % (module, name))


class _BuiltinsOnly(pickle.Unpickler):
    """Loads dicts, lists, tuples, sets, str, bytes and numbers; any global
    (a class, a function: what makes unpickling run code) stops it."""

    def find_class(self, module: str, name: str) -> NoReturn:
        raise _Global(module, name)


def _safe_unpickle(data: bytes) -> object:
    try:
        return _BuiltinsOnly(io.BytesIO(data)).load()
    except _Global as exc:
        raise Unshowable("<pickle of %s, %d bytes>" % (exc, len(data))) from None
    except Exception as exc:
        raise Unshowable("<%d bytes that do not unpickle: %s>" % (len(data), exc)) from None


class QueueCodec:
    """The codec recorded for one queue, as the command line uses it.

    ``fingerprint`` is None for a queue without a record: bytes in, bytes out.
    """

    def __init__(self, engine: Engine, queue: str, hmac_key: Optional[bytes] = None) -> None:
        self.queue = queue
        self.location = engine.location
        self.fingerprint = engine.codec_of(queue)
        fields = _fields(self.fingerprint) if self.fingerprint else {}
        self.serializer = fields.get("serializer")
        self.signed = fields.get("key", "none") != "none"
        self.hmac_key = hmac_key
        self._codec: Optional[Codec] = None
        if self.serializer in _KNOWN:
            self._codec = Codec(_KNOWN[self.serializer](), hmac_key, queue)

    def _refuse(self, why: str) -> LiteQueueError:
        return LiteQueueError("queue %r in %s: %s; nothing was stored" % (
            self.queue, self.location, why))

    def writer(self) -> Tuple[Encoder, Optional[Sealer]]:
        """``(encode, seal)`` for this queue: ``encode(kind, value, raw)``
        turns an item of the command line ("text", "json" or "bytes"; ``raw``
        is what a queue without a codec stores) into the payload; ``seal`` is
        for the engine's ``put(seal=...)``.  Raises LiteQueueError for a queue
        it cannot write."""
        if self.fingerprint is None or (self.serializer == "bytes" and not self.signed):
            return (lambda kind, value, raw: raw), None
        if self._codec is None:
            raise self._refuse(
                "it records serializer %s, which the command line cannot write (only pickle "
                "and json)" % self.serializer)
        if self.signed:
            if self.hmac_key is None:
                raise self._refuse("its items are signed with an hmac_key; give it with "
                                    "--hmac-key-file")
            if self._codec.fingerprint() != self.fingerprint:
                raise self._refuse("its items are signed with another hmac_key than the one "
                                   "of --hmac-key-file")
        codec = self._codec
        if self.serializer == "bytes":
            return (lambda kind, value, raw: raw), codec.sealer
        if self.serializer == "json":
            def encode(kind: str, value: object, raw: bytes) -> bytes:
                if kind == "bytes":
                    raise self._refuse("it records serializer json, which has no bytes: give "
                                       "TEXT or --json instead of --file")
                return codec.dumps(value)
        else:
            def encode(kind: str, value: object, raw: bytes) -> bytes:
                return codec.dumps(value)
        return encode, codec.sealer

    def payload(self, data: bytes) -> bytes:
        """The serialized item of stored bytes (a signature skipped)."""
        if self.signed:
            return data[Codec.SIGNATURE_SIZE:]
        return data

    def value(self, data: bytes) -> object:
        """The item stored as ``data`` (its signature skipped, not checked);
        Unshowable if it is not plain data.  For a queue without a record:
        the bytes themselves."""
        return self._loads(self.payload(data))

    def _loads(self, payload: bytes) -> object:
        if self.serializer == "json":
            try:
                return json.loads(payload.decode("utf-8"))
            except ValueError as exc:
                raise Unshowable("<%d bytes that are not JSON: %s>" % (len(payload), exc)) from None
        if self.serializer == "pickle":
            return _safe_unpickle(payload)
        return payload

    def decoded(self) -> bool:
        """True if :meth:`value` gives items rather than stored bytes."""
        return self.serializer in ("pickle", "json")

    def check_readable(self) -> None:
        """Before handing items to a command: a signed queue needs its key
        (LiteQueueError otherwise, nothing read)."""
        if not self.signed:
            return
        if self.hmac_key is None:
            raise LiteQueueError("queue %r in %s: its items are signed with an hmac_key; give "
                                 "it with --hmac-key-file; nothing was read"
                                 % (self.queue, self.location))
        if self._codec is None or self._codec.fingerprint() != self.fingerprint:
            raise LiteQueueError("queue %r in %s: its items are signed with another hmac_key "
                                 "than the one of --hmac-key-file (or a serializer the command "
                                 "line cannot read, %s); nothing was read"
                                 % (self.queue, self.location, self.serializer))

    def text(self, msg: Message) -> bytes:
        """The item of a stored message for a shell command's stdin: bytes
        as they are, a str as UTF-8, anything else as its JSON text; its
        signature checked first (:meth:`check_readable`).  BadSignature or
        Unshowable if it cannot be given."""
        payload = msg.data
        if self.signed:
            try:
                payload = self._codec.unseal(  # type: ignore[union-attr]  # (check_readable)
                    msg.queue_name, msg.id, payload)
            except SignatureError as exc:
                raise BadSignature(str(exc)) from None
        value = self._loads(payload)
        if isinstance(value, bytes):
            return value
        if isinstance(value, str):
            return value.encode("utf-8", "surrogatepass")
        if self.serializer == "json":
            return payload
        try:
            return json.dumps(value, ensure_ascii=False).encode("utf-8")
        except (TypeError, ValueError):
            raise Unshowable("<a %s that has no JSON text>" % type(value).__name__) from None
