"""Argument checks shared by the front ends.

Every check runs before anything is stored, and its message names the argument
and the value that was wrong.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import sys
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from typing import Literal, overload

    from _typeshed import StrOrBytesPath

DB_ENV = "PERSISTQUEUE_LITEQ_DB"


def db_path(path: object) -> StrOrBytesPath:
    """The path given, or else the one in $PERSISTQUEUE_LITEQ_DB."""
    if path is None:
        path = os.environ.get(DB_ENV)
        if not path:
            raise TypeError(
                "no database path given and $%s is not set; pass a path such as "
                "'queue.db'" % DB_ENV
            )
    elif not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError("database path must be a str or path-like, not %s" % type(path).__name__)
    return path


def queue_name(name: object, argument: str = "qname") -> str:
    if not isinstance(name, str):
        raise TypeError("%s must be a str, not %s" % (argument, type(name).__name__))
    if not name:
        raise ValueError("%s must not be empty" % argument)
    if "\0" in name:  # PostgreSQL's text cannot hold one: refused on every backend
        raise ValueError("%s must not contain a NUL character: %r" % (argument, name))
    return name


def payload(data: object) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    hint = "; encode it first, e.g. data.encode()" if isinstance(data, str) else ""
    raise TypeError(
        "message data must be bytes, not %s%s (PersistentQueue stores any picklable "
        "object)" % (type(data).__name__, hint)
    )


_LONGEST = sys.float_info.max

if TYPE_CHECKING:
    # None only where allowed.
    @overload
    def seconds(value: object, argument: str, allow_none: Literal[False] = ...,
                positive: bool = ...) -> float: ...

    @overload
    def seconds(value: object, argument: str, allow_none: bool,
                positive: bool = ...) -> Optional[float]: ...


def seconds(value: object, argument: str, allow_none: bool = False,
            positive: bool = False) -> Optional[float]:
    """A finite, non-negative number of seconds (or None where allowed)."""
    if value is None and allow_none:
        return None
    if type(value) is int and value >= 0 and not (positive and value == 0):
        return float(value)  # the common cases, without the slower checks below
    if type(value) is float and 0.0 <= value <= _LONGEST and not (positive and value == 0.0):
        return value  # (NaN fails both comparisons; inf the second)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError("%s must be a number of seconds, not %r" % (argument, value))
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        raise ValueError("%s must be a finite number of seconds, not %r" % (argument, value))
    if value < 0 or (positive and value == 0):
        raise ValueError(
            "%s must be %s, not %r" % (argument, "positive" if positive else "non-negative", value)
        )
    return value


def count(value: object, argument: str, minimum: int = 0) -> int:
    if type(value) is int and value >= minimum:
        return value  # the common case, without the slower checks below
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError("%s must be an int, not %r" % (argument, value))
    if value < minimum:
        raise ValueError("%s must be at least %d, not %r" % (argument, minimum, value))
    return int(value)


_PREFIX_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def table_prefix(prefix: object) -> str:
    """Return ``prefix`` if it may be pasted into statements as the start of a
    table name; else ValueError saying why.  The SQLite backend's rule (its
    statements check every prefix with this), which the command line also
    applies to a user's input before opening anything."""
    if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix):
        raise ValueError(
            "table_prefix must be letters, digits and underscores, not "
            "starting with a digit; got %r" % (prefix,)
        )
    if prefix.lower().startswith("sqlite_"):
        raise ValueError(
            "table_prefix must not start with 'sqlite_': SQLite keeps such names "
            "reserved for its own tables; got %r" % (prefix,)
        )
    return prefix


_DECIMAL = re.compile(r"[0-9]+\Z")


def message_id(value: object) -> int:
    """A message id: an int, its ``str()`` (Liteq's ids are strings, and
    code that keeps ``str(msg.id)`` passes it back), or a Message."""
    value = getattr(value, "id", value)
    if isinstance(value, str):
        if not _DECIMAL.match(value):
            raise ValueError("a message id is an int or its str(), such as '5'; got %r"
                             % (value,))
        return int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError("a message id is an int, its str() or a Message, not %r" % (value,))
    return int(value)
