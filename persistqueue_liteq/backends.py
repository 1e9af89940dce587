"""Opening an engine by location: the one module that knows the backends.

A *location* is what users pass to every front end: a path (``"jobs.db"``,
a :class:`os.PathLike`), a URL (``"sqlite:///jobs.db"``,
``"postgresql://user@host/db"``), None (then ``$PERSISTQUEUE_LITEQ_DB``), an
:class:`~.engine.Engine` already open, or an :class:`EngineSpec`.

:func:`describe` turns a location and backend options into an
:class:`EngineSpec`: a picklable description that any process opens again
with :meth:`EngineSpec.open` (how queues and pools reach their children).
:func:`open_engine` opens one.  Backend options are the backend's own
(SQLite's: ``timeout``, ``synchronous``, ``table_prefix``, ``readonly``,
``journal_mode``; PostgreSQL's: ``timeout``, ``table_prefix``, ``schema``,
``pool_size``); an option a backend does not take is a TypeError that
names it.

SQLite URLs follow the usual convention: ``sqlite:///jobs.db`` is relative
to the current directory, ``sqlite:////var/jobs.db`` absolute; query
parameters are options (``sqlite:///jobs.db?synchronous=FULL``).  A
password in a URL is never shown: :func:`redact` replaces it wherever a
location is printed (reprs, log lines, errors).

PostgreSQL URLs (``postgresql://`` or ``postgres://``) name a server and
database; the backend's options come out of the query, libpq's parameters
(``sslmode``, ...) stay in it.  The whole URL, password included, is the
target that the engine connects to and that its spec carries (so that a child
process reopens it); the engine shows it only redacted.  That backend needs
``pip install "persistqueue_liteq[postgres]"``; without psycopg, opening such
a URL is an ImportError saying so.
"""

from __future__ import annotations

import importlib
import os
import re
import urllib.parse
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Tuple, Union

from . import _checks
from .engine import Engine, EngineSpec

if TYPE_CHECKING:
    from typing import Protocol

    #: A database named by a path or a URL (None: $PERSISTQUEUE_LITEQ_DB).
    PathOrURL = Union[str, bytes, os.PathLike[str], os.PathLike[bytes], None]
    #: What every front end takes as its database: a path or a URL, an
    #: engine already open or an EngineSpec.
    Location = Union[PathOrURL, Engine, EngineSpec]

    class Backend(Protocol):
        """What :func:`backend_of` returns: a backend's engine class."""

        #: The options it takes, with their defaults.
        DEFAULT_OPTIONS: Dict[str, object]

        def __call__(self, location: str, *args: Any, **options: Any) -> Engine: ...

        def check_location(self, location: str) -> str: ...

__all__ = ["describe", "open_engine", "redact", "EngineSpec"]

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")

#: scheme -> the module and class of its engine, whose DEFAULT_OPTIONS are
#: the options it takes.
_BACKENDS = {
    "sqlite": (".sqlite", "SQLiteEngine"),
    "postgresql": (".postgres", "PostgresEngine"),
    "postgres": (".postgres", "PostgresEngine"),
}
#: Schemes whose target is the whole URL (a server), not a file.
_SERVER_SCHEMES = ("postgresql", "postgres")


def redact(location: object) -> str:
    """``location`` as text with any password in it replaced by ``***``."""
    text = os.fsdecode(location) if isinstance(location, (bytes, os.PathLike)) else str(location)
    if not _URL.match(text):
        return text
    parts = urllib.parse.urlsplit(text)
    if parts.password is not None:
        netloc = parts.netloc.rpartition("@")
        user = netloc[0].partition(":")[0]
        parts = parts._replace(netloc="%s:***@%s" % (user, netloc[2]))
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    if any(name in _SECRET_PARAMETERS for name, _ in query):
        # libpq takes a password in the query too (?password=...).
        parts = parts._replace(query="&".join(
            "%s=***" % name if name in _SECRET_PARAMETERS
            else urllib.parse.urlencode([(name, value)]) for name, value in query))
    return urllib.parse.urlunsplit(parts)


#: Query parameters of a URL that are secrets (libpq's).
_SECRET_PARAMETERS = ("password", "sslpassword", "listen_url")


def describe(location: Location = None, **options: object) -> EngineSpec:
    """The :class:`EngineSpec` of ``location`` opened with ``options``.

    Raises TypeError (no location and no $PERSISTQUEUE_LITEQ_DB, a location
    of the wrong type, an option the backend does not take) or ValueError
    (a URL of no backend, or one the same option is given twice in,
    differently).
    """
    if isinstance(location, EngineSpec):
        return location.with_options(options) if options else location
    if isinstance(location, Engine):
        return describe(location.spec, **options)
    scheme, target, options = _parse(location, options)
    if scheme == "sqlite":
        # Absolute, so that a child process (or a thread after os.chdir)
        # opens the same file.
        target = os.path.abspath(target)
    return EngineSpec(scheme, target, options)


def open_engine(location: Location = None, **options: object) -> Engine:
    """An engine open on ``location`` (see :func:`describe`); an Engine given
    as ``location`` is returned as it is (then no options may be given)."""
    if isinstance(location, Engine):
        if options:
            raise TypeError(
                "options %s given with an engine already open: pass them when opening "
                "it" % ", ".join(sorted(options)))
        return location
    if isinstance(location, EngineSpec):
        return describe(location, **options).open()
    # The file as the caller named it: the engine shows it so in messages.
    scheme, target, options = _parse(location, options)
    return backend_of(scheme)(target, **options)


def front_end_engine(location: Location, **options: object) -> Tuple[Engine, bool]:
    """``(engine, opened)``: the engine a front end works on, and whether it
    opened it (and so closes it).  Front ends pass all their options,
    defaults included: only those that differ from the backend's defaults
    count (a URL's own options stand), and with an Engine given as
    ``location``, which is used as it is, those are refused."""
    scheme = _scheme_of(location)
    # (A scheme of no backend: open_engine says so.)  A backend's
    # IGNORED_DEFAULTS are front-end options it has no use for, dropped at
    # their default values (PostgreSQL has no journal mode).
    defaults: Dict[str, object] = {}
    if scheme in _BACKENDS:
        backend = backend_of(scheme)
        defaults = dict(getattr(backend, "IGNORED_DEFAULTS", {}), **backend.DEFAULT_OPTIONS)
    options = {name: value for name, value in options.items()
               if name not in defaults or value != defaults[name]}
    return open_engine(location, **options), not isinstance(location, Engine)


def _scheme_of(location: Location) -> str:
    if isinstance(location, Engine):
        return location.spec.scheme
    if isinstance(location, EngineSpec):
        return location.scheme
    match = _URL.match(os.fsdecode(os.fspath(_checks.db_path(location))))
    return "sqlite" if match is None else match.group(1).lower()


def backend_of(scheme: str) -> Backend:
    """The engine class of ``scheme`` (imported on first use).  ImportError
    naming the extra to install if the backend's driver is missing."""
    module, name = _BACKENDS[scheme]
    engine_class: Backend = getattr(importlib.import_module(module, __package__), name)
    return engine_class


def _parse(location: PathOrURL, options: Dict[str, object]
           ) -> Tuple[str, str, Dict[str, object]]:
    """``(scheme, target, options)`` of a path or URL: the target as the
    backend takes it (a file's path as given), the options checked."""
    location = _checks.db_path(location)
    location = os.fsdecode(os.fspath(location))
    match = _URL.match(location)
    if match is None:
        scheme, target = "sqlite", location
    else:
        scheme, target, options = _parse_url(match.group(1).lower(), location, options)
    _check_options(scheme, options)
    return scheme, backend_of(scheme).check_location(target), options


def _parse_url(scheme: str, url: str, options: Mapping[str, object]
               ) -> Tuple[str, str, Dict[str, object]]:
    shown = redact(url)
    if scheme not in _BACKENDS:
        raise ValueError("%s: no backend for %r URLs (known: %s)"
                         % (shown, scheme, ", ".join(sorted(_BACKENDS))))
    parts = urllib.parse.urlsplit(url)
    if scheme in _SERVER_SCHEMES:
        return _parse_server_url(scheme, url, parts, shown, options)
    if parts.netloc:
        raise ValueError("%s: a sqlite URL names a file, not a host: sqlite:///relative.db "
                         "or sqlite:////absolute.db" % shown)
    target = urllib.parse.unquote(parts.path[1:])  # sqlite:///x -> "x"
    if not target:
        raise ValueError("%s: the URL names no file" % shown)
    merged = dict(options)
    value: object  # the option's text, then its value
    for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        value = _option_value(name, value, shown)
        if name in merged and merged[name] != value:
            raise ValueError("%s: option %s given both in the URL (%r) and as an argument "
                             "(%r)" % (shown, name, value, merged[name]))
        merged[name] = value
    return scheme, target, merged


def _parse_server_url(scheme: str, url: str, parts: urllib.parse.SplitResult, shown: str,
                      options: Mapping[str, object]) -> Tuple[str, str, Dict[str, object]]:
    """A server's URL: the target is the URL itself, less the query
    parameters that are the backend's options (the others are the driver's,
    such as libpq's sslmode, and stay)."""
    known = backend_of(scheme).DEFAULT_OPTIONS
    merged = dict(options)
    kept: List[Tuple[str, str]] = []
    value: object  # the option's text, then its value
    for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if name not in known:
            kept.append((name, value))
            continue
        value = _option_value(name, value, shown)
        if name in merged and merged[name] != value:
            raise ValueError("%s: option %s given both in the URL (%r) and as an argument "
                             "(%r)" % (shown, name, value, merged[name]))
        merged[name] = value
    if not parts.hostname and not parts.path.strip("/") and not kept:
        raise ValueError("%s: the URL names no server or database" % shown)
    target = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(kept)))
    return "postgresql", target, merged


def _option_value(name: str, text: str, shown: str) -> Union[str, float, bool]:
    """A URL's option text as the option's type."""
    if name == "timeout":
        try:
            return float(text)
        except ValueError:
            raise ValueError("%s: option timeout must be a number of seconds, not %r"
                             % (shown, text)) from None
    if name == "pool_size":
        try:
            return int(text)
        except ValueError:
            raise ValueError("%s: option pool_size must be a whole number, not %r"
                             % (shown, text)) from None
    if name in ("readonly", "prepared"):
        if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError("%s: option %s must be true or false, not %r" % (shown, name, text))
        return text.lower() in ("1", "true", "yes")
    return text


def _check_options(scheme: str, options: Mapping[str, object]) -> None:
    known = tuple(backend_of(scheme).DEFAULT_OPTIONS)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError("the %s backend takes no option %s (it takes %s)"
                        % (scheme, ", ".join(unknown), ", ".join(known)))
