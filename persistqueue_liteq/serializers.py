"""How a queue item becomes the bytes that are stored, and back again.

A serializer is any object with ``dumps(item) -> bytes`` and
``loads(data) -> item``.  Three are built in:

* :class:`PickleSerializer` (the default): any picklable object, highest
  pickle protocol.
* :class:`JSONSerializer`: JSON values, stored as UTF-8.
* :class:`BytesSerializer`: bytes only, stored as they are.

Modules with ``dumps``/``loads`` (``pickle``, ``json``, ``marshal``...) plug
in as they are; a ``str`` that ``dumps`` returns is stored as UTF-8 and handed
back to ``loads`` as bytes (``json.loads`` takes either).

.. warning::

   Unpickling data runs code: a pickle can call any function with any
   arguments.  A queue file that someone else could have written is as
   dangerous as a script they wrote.  Use the JSON or bytes serializer for
   such files, or pass ``hmac_key=`` so that every payload is signed with
   HMAC-SHA256 and a payload without a valid signature is refused *before*
   it is unpickled (:class:`Codec`).  The signature of a queue's message
   covers its queue and its id as well, so that a signed row copied (it gets
   a new id) or moved to another queue is refused too.

The module also holds :func:`order_key`, the order-preserving encoding with
which :class:`~persistqueue_liteq.PersistentPriorityQueue` stores an item's
priority, so that SQLite's byte order of keys is Python's order of values:

    >>> order_key(2) < order_key(2.5) < order_key(10 ** 30)
    True
    >>> order_key((1, "b")) < order_key((1, "b", 0)) < order_key((2,))
    True
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import importlib
import json
import math
import numbers
import pickle
import struct
import sys
import types
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, Union

if TYPE_CHECKING:
    from typing import Protocol, TypeAlias, TypeGuard

    from _typeshed import DataclassInstance

    from .engine import Message

    class Serializer(Protocol):
        """What a queue's ``serializer=`` object has (for type checkers
        only): ``dumps(item)`` returns bytes (or str, bytearray or
        memoryview, which the queue turns into bytes) and ``loads(data)``
        takes the bytes back."""

        def dumps(self, item: Any, /) -> Union[bytes, bytearray, memoryview, str]: ...

        def loads(self, data: bytes, /) -> Any: ...

    #: What a ``serializer=`` argument may be: None (pickle), a built-in
    #: one's name, a module with dumps/loads, or a Serializer.
    SerializerArg: TypeAlias = Union[None, str, types.ModuleType, Serializer]
    #: A key: bytes, or a bytearray or memoryview of them.
    BytesLike: TypeAlias = Union[bytes, bytearray, memoryview]

__all__ = [
    "PickleSerializer",
    "JSONSerializer",
    "BytesSerializer",
    "Codec",
    "Signer",
    "SignatureError",
    "UnboundSignature",
    "resolve",
    "order_key",
]


class SignatureError(ValueError):
    """A payload's HMAC signature is missing or wrong: it was not written with
    this queue's ``hmac_key``, or it was altered since, or copied or moved
    from another message or queue."""


class UnboundSignature(SignatureError):
    """A payload signed in the format of persistqueue_liteq 0.1.0, which
    covers the payload only: genuine (it was signed with this key), but a
    copy of it, in any queue, would pass as well, so it is refused until
    re-signed (``upgrade_signatures()`` of the queue)."""


class PickleSerializer:
    """Any picklable object, with the highest pickle protocol.

    Unpickling runs code chosen by whoever wrote the data: only read files
    that you trust, or pass ``hmac_key=`` to the queue.
    """

    def __init__(self, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
        self.protocol = protocol

    def dumps(self, item: object) -> bytes:
        return pickle.dumps(item, protocol=self.protocol)

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)

    def __repr__(self) -> str:
        return "PickleSerializer(protocol=%d)" % self.protocol


class JSONSerializer:
    """JSON values (dict, list, str, int, float, bool, None), as UTF-8.

    A tuple comes back as a list, as JSON has no tuples.
    """

    def dumps(self, item: object) -> bytes:
        return json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def loads(self, data: bytes) -> Any:
        return json.loads(data.decode("utf-8"))

    def __repr__(self) -> str:
        return "JSONSerializer()"


class BytesSerializer:
    """Bytes stored as they are (bytearray and memoryview become bytes)."""

    def dumps(self, item: object) -> bytes:
        if isinstance(item, (bytes, bytearray, memoryview)):
            return bytes(item)
        raise TypeError(
            "the bytes serializer stores bytes, not %s; use serializer='pickle' or "
            "'json' for other objects" % type(item).__name__
        )

    def loads(self, data: bytes) -> bytes:
        return data

    def __repr__(self) -> str:
        return "BytesSerializer()"


class _ModuleSerializer:
    """A module with dumps/loads (json, pickle, marshal...), pickled by name so
    that a queue using it can be passed to another process."""

    def __init__(self, module: types.ModuleType) -> None:
        self.module = module

    def dumps(self, item: object) -> Any:  # whatever the module returns: Codec checks it
        return self.module.dumps(item)

    def loads(self, data: bytes) -> Any:
        return self.module.loads(data)

    def __reduce__(self) -> Tuple[Callable[[str], _ModuleSerializer], Tuple[str]]:
        return (_import_serializer, (self.module.__name__,))

    def __repr__(self) -> str:
        return "<serializer module %s>" % self.module.__name__


def _import_serializer(name: str) -> _ModuleSerializer:
    return _ModuleSerializer(importlib.import_module(name))


_BY_NAME: Dict[str, Callable[[], Serializer]] = {
    "pickle": PickleSerializer, "json": JSONSerializer, "bytes": BytesSerializer}


def resolve(serializer: SerializerArg) -> Serializer:
    """The serializer for a queue's ``serializer=`` argument.

    None means pickle; "pickle", "json" and "bytes" name the built-in ones;
    any other object must have callable ``dumps`` and ``loads``.
    """
    if serializer is None:
        return PickleSerializer()
    if isinstance(serializer, str):
        try:
            return _BY_NAME[serializer]()
        except KeyError:
            raise ValueError(
                "serializer must be one of %s or an object with dumps() and loads(); "
                "got %r" % (", ".join(map(repr, _BY_NAME)), serializer)
            ) from None
    if not (callable(getattr(serializer, "dumps", None)) and callable(getattr(serializer, "loads", None))):
        raise TypeError(
            "serializer must have dumps(item) -> bytes and loads(data) -> item; "
            "%r has not" % (serializer,)
        )
    if isinstance(serializer, types.ModuleType):
        return _ModuleSerializer(serializer)
    return serializer


_KEY_CHECK = b"persistqueue_liteq key check"
_MESSAGE = b"pqlq message v2\x00"
_TASK = b"pqlq task v2\x00"
_RESULT = b"pqlq result v2\x00"
_id_bytes = struct.Struct(">q")


def _check_key(hmac_key: object) -> bytes:
    if isinstance(hmac_key, str):
        raise TypeError("hmac_key must be bytes, not str; encode it first, e.g. key.encode()")
    if not isinstance(hmac_key, (bytes, bytearray, memoryview)):
        raise TypeError("hmac_key must be bytes, not %s" % type(hmac_key).__name__)
    hmac_key = bytes(hmac_key)
    if not hmac_key:
        raise ValueError("hmac_key must not be empty")
    return hmac_key


def _field(text: str) -> bytes:
    """``text`` as a length-prefixed field, so that no two different
    contexts are the same bytes (a queue "a" and id 1 is not "a1")."""
    data = text.encode("utf-8", "surrogatepass")
    return struct.pack(">I", len(data)) + data


class Signer:
    """HMAC-SHA256 signatures bound to a context: the stored bytes are
    HMAC(key, context + payload) followed by the payload.

    The context says where the payload belongs (a queue's message and its
    id; a pool's task and its key; its result), so that the same payload
    signed for one place is refused in any other:

        >>> signer = Signer(b"secret")
        >>> stored = signer.seal(signer.message_context("jobs", 7), b"payload")
        >>> signer.open(signer.message_context("jobs", 7), stored)
        b'payload'
        >>> signer.open(signer.message_context("jobs", 8), stored)
        ... # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
          ...
        SignatureError: payload refused: its HMAC-SHA256 signature does not match
    """

    SIGNATURE_SIZE = hashlib.sha256().digest_size

    def __init__(self, hmac_key: BytesLike) -> None:
        self._key = _check_key(hmac_key)

    @staticmethod
    def message_context(queue: str, msg_id: int) -> bytes:
        return _MESSAGE + _field(queue) + _id_bytes.pack(msg_id)

    @staticmethod
    def task_context(queue: str, task_key: str) -> bytes:
        return _TASK + _field(queue) + _field(task_key)

    @staticmethod
    def result_context(queue: str, task_key: str, ok: bool) -> bytes:
        return _RESULT + _field(queue) + _field(task_key) + (b"\x01" if ok else b"\x00")

    def key_check(self) -> str:
        """A value that tells whether two signers have the same key without
        saying anything about the key: HMAC(key, a fixed text), shortened."""
        return hmac.new(self._key, _KEY_CHECK, hashlib.sha256).hexdigest()[:32]

    def seal(self, context: bytes, data: bytes) -> bytes:
        """``data`` signed for ``context``: the bytes to store."""
        return hmac.digest(self._key, context + data, "sha256") + data

    def open(self, context: bytes, stored: bytes) -> bytes:
        """The payload of ``stored`` if its signature is the one of
        ``context``; else SignatureError (UnboundSignature for a payload in
        the format of 0.1.0, which has no context)."""
        size = self.SIGNATURE_SIZE
        signature, data = stored[:size], stored[size:]
        if hmac.compare_digest(signature, hmac.digest(self._key, context + data, "sha256")):
            return data
        if len(stored) >= size and hmac.compare_digest(
                signature, hmac.digest(self._key, data, "sha256")):
            raise UnboundSignature(
                "payload refused: it is signed in the format of persistqueue_liteq "
                "0.1.0, which does not bind it to its message id and queue (a copy "
                "of it would pass too); it was not deserialized")
        raise SignatureError(
            "payload refused: its HMAC-SHA256 signature does not match this "
            "queue's hmac_key and this message's id and queue (it was written with "
            "another key or none, or altered, or copied or moved from another "
            "message); it was not deserialized, as unpickling data from an "
            "untrusted source can run arbitrary code"
        )


class Codec:
    """A serializer, plus the bytes check and, with a key, the signature.

    A queue stores ``seal(queue, msg_id, dumps(item))`` and reads
    ``loads(unseal(queue, msg_id, stored))``: with ``hmac_key`` the stored
    bytes are HMAC-SHA256(key, the queue, the id and the payload) followed
    by the payload (see :class:`Signer`), and the signature is compared in
    constant time before anything reaches the serializer: a payload that
    someone without the key wrote, altered, copied or moved is refused,
    never unpickled.

        >>> codec = Codec(PickleSerializer(), b"secret")
        >>> stored = codec.seal("jobs", 1, codec.dumps({"a": 1}))
        >>> codec.loads(codec.unseal("jobs", 1, stored))
        {'a': 1}
        >>> codec.unseal("other", 1, stored)  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
          ...
        SignatureError: payload refused: its HMAC-SHA256 signature does not match

    :meth:`encode` and :meth:`decode` sign the payload alone (the format of
    0.1.0), for payloads that live outside a queue.
    """

    SIGNATURE_SIZE = Signer.SIGNATURE_SIZE

    def __init__(self, serializer: Serializer, hmac_key: Optional[BytesLike] = None,
                 queue: Optional[str] = None) -> None:
        self.serializer = serializer
        self.signer = None if hmac_key is None else Signer(hmac_key)
        self._contexts: Dict[str, bytes] = {}  # queue -> the start of its messages' context
        #: With a key and a ``queue``: ``sealer(msg_id, data)``, the seal of
        #: that queue's messages, for the engine's ``put(seal=...)``.
        self.sealer: Optional[Callable[[int, bytes], bytes]] = None
        if self.signer is not None and queue is not None:
            self.sealer = lambda msg_id, data: self.seal(queue, msg_id, data)

    def _context(self, queue: str, msg_id: int) -> bytes:
        start = self._contexts.get(queue)
        if start is None:
            start = self._contexts[queue] = Signer.message_context(queue, 0)[:-8]
        return start + _id_bytes.pack(msg_id)

    @property
    def signed(self) -> bool:
        return self.signer is not None

    def dumps(self, item: object) -> bytes:
        """The serialized bytes of ``item``, unsigned; raises whatever the
        serializer raises for an item it cannot serialize."""
        data = self.serializer.dumps(item)
        if type(data) is bytes:  # what most serializers return
            return data
        if isinstance(data, str):
            data = data.encode("utf-8")
        elif isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        elif not isinstance(data, bytes):
            raise TypeError(
                "%r.dumps() returned %s; a serializer must return bytes"
                % (self.serializer, type(data).__name__)
            )
        return data

    def loads(self, data: bytes) -> Any:
        return self.serializer.loads(data)

    def seal(self, queue: str, msg_id: int, data: bytes) -> bytes:
        """The bytes to store for the payload ``data`` of message ``msg_id``
        of ``queue`` (``data`` itself without a key)."""
        if self.signer is None:
            return data
        return self.signer.seal(self._context(queue, msg_id), data)

    def unseal(self, queue: str, msg_id: int, stored: bytes) -> bytes:
        """The payload of message ``msg_id`` of ``queue``; SignatureError if
        its signature does not match the key, the id and the queue."""
        if self.signer is None:
            return stored
        return self.signer.open(self._context(queue, msg_id), stored)

    def load_message(self, msg: Message) -> Any:
        """The item of a stored message (an engine's Message: ``queue_name``,
        ``id``, ``data``): ``loads(unseal(...))`` in one call, the get path."""
        if self.signer is None:
            return self.serializer.loads(msg.data)
        return self.serializer.loads(
            self.signer.open(self._context(msg.queue_name, msg.id), msg.data))

    def fingerprint(self) -> str:
        """What a queue records of the codec of its writers, to refuse a
        reader or writer with another one: the serializer's name and a check
        value of the key (never the key)."""
        key = "none" if self.signer is None else "hmac-sha256:" + self.signer.key_check()
        return "serializer=%s;key=%s" % (serializer_name(self.serializer), key)

    def encode(self, item: object) -> bytes:
        """``dumps(item)`` signed alone (no id, no queue: the format of
        0.1.0); raises whatever the serializer raises."""
        data = self.dumps(item)
        if self.signer is None:
            return data
        return self.signer.seal(b"", data)

    def decode(self, data: bytes) -> Any:
        """The item encoded as ``data`` by :meth:`encode`; raises
        SignatureError for a payload whose signature does not match, before
        deserializing it."""
        if self.signer is not None:
            size = self.SIGNATURE_SIZE
            signature, data = data[:size], data[size:]
            if not hmac.compare_digest(signature, self.signer.seal(b"", data)[:size]):
                raise SignatureError(
                    "payload refused: its HMAC-SHA256 signature does not match this "
                    "queue's hmac_key (it was written with another key or none, or "
                    "altered); it was not deserialized, as unpickling data from an "
                    "untrusted source can run arbitrary code"
                )
        return self.serializer.loads(data)


def serializer_name(serializer: object) -> str:
    """The name under which a queue records ``serializer``: the built-in
    ones and the modules that read what they write ("pickle", "json",
    "bytes"), else the module or the class by its qualified name."""
    if isinstance(serializer, PickleSerializer):
        return "pickle"
    if isinstance(serializer, JSONSerializer):
        return "json"
    if isinstance(serializer, BytesSerializer):
        return "bytes"
    if isinstance(serializer, _ModuleSerializer):
        name = serializer.module.__name__
        return name if name in ("pickle", "json") else "module:" + name
    cls = type(serializer)
    return "%s.%s" % (cls.__module__, cls.__qualname__)


# -- order keys ----------------------------------------------------------------
#
# order_key(value) is a byte string whose order (memcmp, then length: SQLite's
# BLOB order) is Python's order of the values, in the manner of FoundationDB's
# tuple layer.  Every encoded value is self-delimiting, so that the encoding of
# a tuple is its elements' encodings one after another, and a shorter tuple
# sorts before a longer one with the same prefix:
#
#   number   0x20, 8 bytes: the nearest float64, big-endian, sign-flipped (the
#            sign bit set for positives, every bit inverted for negatives),
#            then the exact remainder value - that float as a signed integer:
#            0x01 for zero (every float, every int up to 2**53), 0x02 + 4-byte
#            length + magnitude if positive, 0x00 + the same inverted if
#            negative.  Ints beyond the float range use the largest float.
#   bytes    0x30, the bytes with 0x00 escaped as 0x00 0xFF, then 0x00.
#   str      0x40, its UTF-8 escaped the same way, then 0x00 (UTF-8's byte
#            order is code point order, which is Python's order of str).
#   tuple    0x50, the elements, then 0x00 (below every type tag).
#   list     0x60, the same.
#   an instance of a dataclass(order=True): as the tuple of its compared fields.
#   opaque   0x01: the rest of the value could not be encoded; the key stops.
#
# Python does not compare values of different kinds (a str with a number);
# their keys are ordered numbers < bytes < str < tuples < lists.

_END, _OPAQUE = 0x00, 0x01
_NUMBER, _BYTES, _STR, _TUPLE, _LIST = 0x20, 0x30, 0x40, 0x50, 0x60
_ZERO_REMAINDER = b"\x01"
_MAX_FLOAT = sys.float_info.max
_SIGN_BIT = 1 << 63
_ALL_BITS = (1 << 64) - 1
_float_bits = struct.Struct(">d")
_uint64 = struct.Struct(">Q")


class _Unorderable(Exception):
    """Raised inside the encoder for a value that has no stored order."""


def order_key(value: object) -> bytes:
    """The order-preserving key of ``value`` (bytes).

    Numbers (int, bool and float, mixed, of any size; ints compare exactly),
    str, bytes, tuples and lists of them, and instances of
    ``@dataclass(order=True)`` classes (as the tuple of their compared
    fields, which is how such a class compares) get a key ordered as Python
    orders the values; equal values (``1``, ``1.0``, ``True``; ``0.0`` and
    ``-0.0``) get equal keys.  NaN sorts after infinity.

    A tuple whose later element cannot be encoded (``(priority, task)``) is
    keyed by the part before it, so that such items are ordered by that part
    and, between equals, by arrival.  A value that cannot be encoded from its
    very start raises TypeError.
    """
    out = bytearray()
    done = [0]
    try:
        _encode(value, out, done)
    except _Unorderable as exc:
        if not done[0]:
            raise TypeError(
                "cannot order %r: %s.  A priority queue stores the order of numbers "
                "(int, float, bool), str, bytes and tuples of them; pass key= to the "
                "constructor, a function that maps an item to such a value (for "
                "example key=lambda item: item.priority)" % (value, exc)
            ) from None
        out.append(_OPAQUE)
    return bytes(out)


def _encode(value: object, out: bytearray, done: List[int]) -> None:
    if isinstance(value, (float, numbers.Integral)):
        out += _number(value)
    elif isinstance(value, str):
        out.append(_STR)
        out += value.encode("utf-8", "surrogatepass").replace(b"\x00", b"\x00\xff")
        out.append(_END)
    elif isinstance(value, (bytes, bytearray)):
        out.append(_BYTES)
        out += bytes(value).replace(b"\x00", b"\x00\xff")
        out.append(_END)
    elif isinstance(value, (tuple, list)):
        out.append(_TUPLE if isinstance(value, tuple) else _LIST)
        for element in value:
            _encode(element, out, done)
        out.append(_END)
    elif _ordered_dataclass(value):
        # What dataclass(order=True) compares: the tuple of its compared
        # fields, in definition order.
        out.append(_TUPLE)
        for field in dataclasses.fields(value):
            if field.compare:
                _encode(getattr(value, field.name), out, done)
        out.append(_END)
    else:
        raise _Unorderable("%s has no stored order" % type(value).__name__)
    done[0] += 1


def _ordered_dataclass(value: object) -> TypeGuard[DataclassInstance]:
    """True for an instance of a ``@dataclass(order=True)`` class."""
    params = getattr(type(value), "__dataclass_params__", None)
    return params is not None and params.order and not isinstance(value, type)


def _number(x: Union[float, numbers.Integral]) -> bytes:
    if isinstance(x, float):
        f, remainder = (math.nan if math.isnan(x) else x + 0.0), 0  # -0.0 + 0.0 is 0.0
    else:
        x = int(x)
        try:
            f = float(x)  # correctly rounded, hence monotonic
        except OverflowError:
            f = _MAX_FLOAT if x > 0 else -_MAX_FLOAT
        remainder = x - int(f)
    bits = _uint64.unpack(_float_bits.pack(f))[0]
    bits = bits ^ _ALL_BITS if bits & _SIGN_BIT else bits | _SIGN_BIT
    return bytes((_NUMBER,)) + _uint64.pack(bits) + _remainder(remainder)


def _remainder(r: int) -> bytes:
    if not r:
        return _ZERO_REMAINDER
    size = (abs(r).bit_length() + 7) // 8
    encoded = size.to_bytes(4, "big") + abs(r).to_bytes(size, "big")
    if r > 0:
        return b"\x02" + encoded
    return b"\x00" + bytes(255 - b for b in encoded)
