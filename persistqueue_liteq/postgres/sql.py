"""Every SQL statement of the PostgreSQL engine, as named constants.

The layout follows the SQLite engine's (:mod:`persistqueue_liteq.sqlite.sql`): one
table of messages whose state is read from ``visible_at`` and ``lease``
(ready: ``visible_at <= now``; delayed or in flight: ``> now``; dead:
NULL), one table of the pools' results, counters, activity buckets, the
queues that exist, and ``meta`` (format, schema version, codecs).

Names.  Every table lives in one schema (the ``schema`` option, else the
connection's ``current_schema()`` when the engine opens) and carries the
``table_prefix``; :func:`render` fills in ``{t:name}`` with the quoted,
qualified identifier, ``{r:name}`` with the same as a string literal (for
``nextval`` and ``to_regclass``) and ``{n:name}`` with the unqualified one
(indexes and triggers, which live with their table).

Times are seconds since the epoch (``double precision``) on the engine's
clock, which the Python side passes in as parameters (see
:mod:`.engine`: the server's clock, read through a cached offset).

Leasing is ``SELECT ... FOR UPDATE SKIP LOCKED`` in a CTE feeding an
``UPDATE``: concurrent consumers skip each other's rows instead of waiting.
"""

from __future__ import annotations

import re
import types
from typing import Dict, Tuple

from .. import _sql_engine

#: Version of the table layout below.  A database written by a newer
#: version is refused rather than misread.
SCHEMA_VERSION = 2

#: What ``meta`` says about tables that are ours.
FORMAT_NAME = "persistqueue_liteq/postgresql"

DEFAULT_PREFIX = "liteq_"

#: The first key of the advisory locks we take (the second is the
#: namespace's): schema creation, and result writers (see STORE_RESULT).
LOCK_CLASS = 0x5051  # "PQ"

_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: Longest prefix: "messages_register_queue" (23: version 1's trigger, which
#: an upgrade drops) must fit in PostgreSQL's 63.
MAX_PREFIX = 40

# -- tables ---------------------------------------------------------------

CREATE_SCHEMA = "CREATE SCHEMA IF NOT EXISTS {schema}"

CREATE_META = """
CREATE TABLE {t:meta} (
    key   text PRIMARY KEY,
    value text NOT NULL
)"""

CREATE_MESSAGES_SEQ = "CREATE SEQUENCE {t:messages_id_seq}"

CREATE_MESSAGES = """
CREATE TABLE {t:messages} (
    id          bigint PRIMARY KEY DEFAULT nextval({r:messages_id_seq}),
    queue       text   NOT NULL,
    data        bytea  NOT NULL,
    priority    bytea,
    visible_at  double precision,   -- may be leased from then on; NULL: dead
    created_at  double precision NOT NULL,
    expires_at  double precision,
    attempts    integer NOT NULL DEFAULT 0,
    lease       bigint,
    last_error  text,
    dead_at     double precision,
    dead_reason text,
    key         text,
    holder      text
)"""

OWN_MESSAGES_SEQ = "ALTER SEQUENCE {t:messages_id_seq} OWNED BY {t:messages}.id"

CREATE_READY_INDEX = """
CREATE INDEX {n:messages_ready} ON {t:messages} (queue, visible_at, id)"""

CREATE_PRIORITY_INDEX = """
CREATE INDEX {n:messages_priority} ON {t:messages} (queue, priority, id)
 WHERE priority IS NOT NULL"""

CREATE_KEY_INDEX = """
CREATE UNIQUE INDEX {n:messages_key} ON {t:messages} (queue, key) WHERE key IS NOT NULL"""

CREATE_EXPIRY_INDEX = """
CREATE INDEX {n:messages_expiry} ON {t:messages} (queue, expires_at)
 WHERE expires_at IS NOT NULL"""

CREATE_QUEUES = """
CREATE TABLE {t:queues} (
    name       text PRIMARY KEY,
    created_at double precision NOT NULL,
    settings   text
)"""

CREATE_RESULTS_SEQ = "CREATE SEQUENCE {t:results_seq_seq}"

CREATE_RESULTS = """
CREATE TABLE {t:results} (
    seq         bigint PRIMARY KEY DEFAULT nextval({r:results_seq_seq}),
    queue       text    NOT NULL,
    key         text    NOT NULL,
    ok          boolean NOT NULL,
    data        bytea   NOT NULL,
    finished_at double precision NOT NULL,
    UNIQUE (queue, key)
)"""

OWN_RESULTS_SEQ = "ALTER SEQUENCE {t:results_seq_seq} OWNED BY {t:results}.seq"

CREATE_COUNTERS = """
CREATE TABLE {t:counters} (
    queue text   NOT NULL,
    name  text   NOT NULL,
    value bigint NOT NULL,
    PRIMARY KEY (queue, name)
)"""

CREATE_ACTIVITY = """
CREATE TABLE {t:activity} (
    queue  text   NOT NULL,
    name   text   NOT NULL,
    bucket bigint NOT NULL,
    value  bigint NOT NULL,
    PRIMARY KEY (queue, name, bucket)
)"""

# Seconds of an activity bucket, and how long they are kept (as every
# backend keeps them).
ACTIVITY_BUCKET, ACTIVITY_KEPT = _sql_engine.ACTIVITY_BUCKET, _sql_engine.ACTIVITY_KEPT

CREATE_ACTIVITY_INDEX = "CREATE INDEX {n:activity_bucket} ON {t:activity} (bucket)"


CREATE_TABLES: Tuple[str, ...] = (
    CREATE_META,
    CREATE_MESSAGES_SEQ,
    CREATE_MESSAGES,
    OWN_MESSAGES_SEQ,
    CREATE_READY_INDEX,
    CREATE_PRIORITY_INDEX,
    CREATE_KEY_INDEX,
    CREATE_EXPIRY_INDEX,
    CREATE_QUEUES,
    CREATE_RESULTS_SEQ,
    CREATE_RESULTS,
    OWN_RESULTS_SEQ,
    CREATE_COUNTERS,
    CREATE_ACTIVITY,
    CREATE_ACTIVITY_INDEX,
)

# How the tables are stored.  Every message is inserted, then
# updated at each lease and deleted: the messages table makes dead rows as
# fast as it moves messages, and the scans of leases and counts step over
# them until a vacuum removes them.  PostgreSQL's default waits for 20% of
# a table's rows to be dead; autovacuum is asked to come at 2% (or 1,000
# rows, for a table of few).  The counters and activity rows are updated
# in place: room left on each page keeps the new version of a row on its
# page (a HOT update: no new index entry), and the pages stay few.  New
# tables get them; tables made by an earlier version get them from
# maintenance's apply_table_settings(), which needs the tables' owner (so
# opening tables never does: an application's role may own none of them).
TABLE_SETTINGS: Tuple[str, ...] = (
    """ALTER TABLE {t:messages} SET (
        autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 1000,
        autovacuum_analyze_scale_factor = 0.02, autovacuum_analyze_threshold = 1000)""",
    """ALTER TABLE {t:results} SET (
        autovacuum_vacuum_scale_factor = 0.05, autovacuum_analyze_scale_factor = 0.05)""",
    """ALTER TABLE {t:counters} SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0.05,
        autovacuum_vacuum_threshold = 200)""",
    """ALTER TABLE {t:activity} SET (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.05,
        autovacuum_vacuum_threshold = 200)""",
)

CREATE_TABLES += TABLE_SETTINGS

#: MIGRATIONS[v] takes tables of version v - 1 to v, in the transaction that
#: opens them.
MIGRATIONS: Dict[int, Tuple[str, ...]] = {
    # Version 1 registered a message's queue with a row trigger: a PL/pgSQL
    # call per row inserted (a third of a batch's time).  Each insert does
    # it now (see _registering).
    2: (
        "DROP TRIGGER IF EXISTS {n:messages_register_queue} ON {t:messages}",
        "DROP FUNCTION IF EXISTS {t:messages_register_queue}()",
    ),
}

# -- schema bookkeeping -----------------------------------------------------

CURRENT_SCHEMA = "SELECT current_schema()"
TABLE_EXISTS = "SELECT to_regclass(%s) IS NOT NULL"
META_EXISTS = "SELECT to_regclass({r:meta}) IS NOT NULL"
MESSAGES_EXISTS = "SELECT to_regclass({r:messages}) IS NOT NULL"
READ_META = "SELECT key, value FROM {t:meta}"
WRITE_META = """
INSERT INTO {t:meta} (key, value) VALUES (%s, %s)
ON CONFLICT (key) DO UPDATE SET value = excluded.value"""
READ_INSTANCE = "SELECT value FROM {t:meta} WHERE key = 'instance'"

# Advisory locks of this namespace, held to the end of the transaction.
LOCK_NAMESPACE = "SELECT pg_advisory_xact_lock(%s, %s)"

# The server's clock (for the engine's cached offset).
SERVER_TIME = "SELECT extract(epoch FROM clock_timestamp())::float8"

NOTIFY = "SELECT pg_notify(%s, %s)"

# -- producing --------------------------------------------------------------


def _registering(insert: str) -> str:
    """``insert`` (of messages), making the queue of what it inserts exist
    in the same statement (the first message of a queue registers it,
    whoever inserts it); the statement returns the new ids."""
    return ("WITH m AS (" + insert + "\n RETURNING id, queue, created_at),\n"
            "registered AS (\n"
            "    INSERT INTO {t:queues} (name, created_at)\n"
            "    SELECT queue, min(created_at) FROM m GROUP BY queue\n"
            "    ON CONFLICT (name) DO NOTHING)\n"
            "SELECT id FROM m")


INSERT = _registering("""
INSERT INTO {t:messages} (queue, data, priority, visible_at, created_at, expires_at)
VALUES (%s, %s, %s, %s, %s, %s)""")

NEXT_ID = "SELECT nextval({r:messages_id_seq})"

# n ids for a batch, increasing.
NEXT_IDS = "SELECT nextval({r:messages_id_seq}) FROM generate_series(1, %s) ORDER BY 1"

INSERT_WITH_ID = _registering("""
INSERT INTO {t:messages} (id, queue, data, priority, visible_at, created_at, expires_at)
VALUES (%s, %s, %s, %s, %s, %s, %s)""")

INSERT_MANY = _registering("""
INSERT INTO {t:messages} (id, queue, data, visible_at, created_at, expires_at)
SELECT i, %s, d, %s, %s, %s FROM unnest(%s::bigint[], %s::bytea[]) AS u(i, d)""")

# A message with the caller's id (``key``), unless the queue holds one.
INSERT_WITH_KEY = _registering("""
INSERT INTO {t:messages} (id, queue, data, priority, visible_at, created_at, expires_at, key)
VALUES (coalesce(%s, nextval({r:messages_id_seq})), %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (queue, key) WHERE key IS NOT NULL DO NOTHING""")

FIND_KEY = """
SELECT id, visible_at IS NULL FROM {t:messages} WHERE queue = %s AND key = %s FOR UPDATE"""

INSERT_KEYED = _registering("""
INSERT INTO {t:messages} (queue, data, key, visible_at, created_at) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (queue, key) WHERE key IS NOT NULL DO NOTHING""")

REVIVE_KEYED = """
UPDATE {t:messages}
   SET data = %s, visible_at = %s, lease = NULL, attempts = 0, dead_at = NULL,
       dead_reason = NULL, last_error = NULL
 WHERE id = %s AND visible_at IS NULL"""

REPLACE_DATA = "UPDATE {t:messages} SET data = %s WHERE id = %s AND data = %s"

READ_CODEC = "SELECT value FROM {t:meta} WHERE key = 'codec:' || %s"
READ_CODEC_FOR_UPDATE = "SELECT value FROM {t:meta} WHERE key = 'codec:' || %s FOR UPDATE"
WRITE_CODEC = """
INSERT INTO {t:meta} (key, value) VALUES ('codec:' || %s, %s)
ON CONFLICT (key) DO UPDATE SET value = excluded.value"""
ANY_MESSAGE = "SELECT EXISTS (SELECT 1 FROM {t:messages} WHERE queue = %s)"
DELETE_QUEUE_CODEC = "DELETE FROM {t:meta} WHERE key = 'codec:' || %s"

# -- results ----------------------------------------------------------------

# Result writers hold the namespace's result lock (LOCK_NAMESPACE) from here
# to their commit, so seqs are committed in their order: a reader following
# results_since never skips a seq that commits after a higher one.
STORE_RESULT = """
INSERT INTO {t:results} (queue, key, ok, data, finished_at) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (queue, key) DO UPDATE
   SET seq = nextval({r:results_seq_seq}), ok = excluded.ok, data = excluded.data,
       finished_at = excluded.finished_at"""

RESULT = "SELECT ok, data FROM {t:results} WHERE queue = %s AND key = %s"

RESULTS_SINCE = """
SELECT seq, key, ok, data FROM {t:results} WHERE queue = %s AND seq > %s ORDER BY seq LIMIT %s"""

LAST_RESULT_SEQ = "SELECT coalesce(max(seq), 0) FROM {t:results}"

FORGET_RESULT = "DELETE FROM {t:results} WHERE queue = %s AND key = %s"

PURGE_RESULTS = "DELETE FROM {t:results} WHERE queue = %s"

# Keys matching a GLOB pattern, translated to an anchored regular expression.
FORGET_RESULTS_MATCHING = """
DELETE FROM {t:results} WHERE queue = %s AND key ~ %s AND seq <= %s AND (NOT ok OR %s)"""

# -- expiry -------------------------------------------------------------------

_EXPIRED = """expires_at <= %(now)s AND visible_at IS NOT NULL
   AND (lease IS NULL OR visible_at <= %(now)s)"""

_UNEXPIRED = """(expires_at IS NULL OR expires_at > %(now)s
        OR (lease IS NOT NULL AND visible_at > %(now)s))"""

# -- leasing ----------------------------------------------------------------

# The last column is the message's visible_at before the lease (see
# LEASE_FIFO_FROM).
_LEASE = """
WITH picked AS (
    SELECT id, visible_at FROM {{t:messages}}
     WHERE queue = %(queue)s AND {where}visible_at <= %(now)s
     ORDER BY {order} LIMIT %(n)s
     FOR UPDATE SKIP LOCKED)
UPDATE {{t:messages}} AS m
   SET visible_at = %(until)s, lease = %(lease)s, attempts = m.attempts + 1,
       holder = %(holder)s
  FROM picked WHERE m.id = picked.id
RETURNING m.id, m.data, m.queue, m.attempts, m.created_at, m.expires_at, m.last_error,
          m.priority, m.key, picked.visible_at"""

LEASE_FIFO = _LEASE.format(where="", order="visible_at, id")
# From a floor of visible_at on (engine.py, _fifo_statement): the index
# entries of the messages already taken, which stay until a vacuum removes
# them, are not stepped over again.
LEASE_FIFO_FROM = _LEASE.format(where="visible_at >= %(floor)s AND ", order="visible_at, id")
LEASE_LIFO = _LEASE.format(where="", order="visible_at DESC, id DESC")
LEASE_PRIORITY = _LEASE.format(where="priority IS NOT NULL AND ", order="priority, id")

LEASE_ID = """
UPDATE {t:messages}
   SET visible_at = %(until)s, lease = %(lease)s, attempts = attempts + 1
 WHERE id = %(id)s AND queue = %(queue)s AND visible_at <= %(now)s
   AND (expires_at IS NULL OR expires_at > %(now)s)
RETURNING id, data, queue, attempts, created_at, expires_at, last_error, priority, key"""

NEXT_VISIBLE_AT = """
SELECT min(visible_at) FROM {t:messages} WHERE queue = %s AND visible_at > %s"""

# -- settling a lease -------------------------------------------------------

ACK = "DELETE FROM {t:messages} WHERE id = %s AND lease = %s RETURNING queue"
ACK_IN_QUEUE = "DELETE FROM {t:messages} WHERE id = %s AND lease = %s AND queue = %s"
DELETE = "DELETE FROM {t:messages} WHERE id = %s RETURNING queue"
# Many at once, one statement each: (id, lease) pairs, and ids of any lease.
ACK_MANY = """DELETE FROM {t:messages} m USING unnest(%s::bigint[], %s::bigint[]) AS a(id, lease)
 WHERE m.id = a.id AND m.lease = a.lease RETURNING m.queue"""
DELETE_MANY = "DELETE FROM {t:messages} WHERE id = ANY(%s::bigint[]) RETURNING queue"
DELETE_UNLEASED = "DELETE FROM {t:messages} WHERE id = %s AND lease IS NULL RETURNING queue"

SET_VISIBILITY = """
UPDATE {t:messages} SET visible_at = %s
 WHERE id = %s AND lease = %s AND visible_at IS NOT NULL
RETURNING queue"""

RELEASE = """
UPDATE {t:messages}
   SET visible_at = %s, lease = NULL, last_error = coalesce(%s, last_error)
 WHERE id = %s AND lease = %s AND visible_at IS NOT NULL
RETURNING queue"""

RELEASE_UNATTEMPTED = """
UPDATE {t:messages}
   SET visible_at = %s, lease = NULL, last_error = coalesce(%s, last_error),
       attempts = greatest(attempts - 1, 0)
 WHERE id = %s AND lease = %s AND visible_at IS NOT NULL
RETURNING queue"""

DEAD_LETTER = """
UPDATE {t:messages}
   SET visible_at = NULL, lease = NULL, dead_at = %s, dead_reason = %s,
       last_error = coalesce(%s, last_error)
 WHERE id = %s AND lease = %s AND visible_at IS NOT NULL
RETURNING queue"""

DEAD_LETTER_ID = """
UPDATE {t:messages}
   SET visible_at = NULL, lease = NULL, dead_at = %(now)s, dead_reason = %(reason)s
 WHERE id = %(id)s AND visible_at IS NOT NULL
   AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
RETURNING queue"""

RECOVER_LEASES = """
UPDATE {t:messages} SET lease = NULL
 WHERE queue = %(queue)s AND visible_at <= %(now)s AND lease IS NOT NULL
RETURNING queue"""

RECOVER_ALL_LEASES = """
UPDATE {t:messages} SET lease = NULL
 WHERE visible_at <= %(now)s AND lease IS NOT NULL
RETURNING queue"""

DELETE_LEASED = "DELETE FROM {t:messages} WHERE id = %s AND lease = %s"

ADD_COUNTER = """
INSERT INTO {t:counters} AS c (queue, name, value) VALUES (%s, %s, %s)
ON CONFLICT (queue, name) DO UPDATE SET value = c.value + excluded.value"""

READ_COUNTERS = "SELECT queue, name, value FROM {t:counters}"

ADD_ACTIVITY = """
INSERT INTO {t:activity} AS a (queue, name, bucket, value) VALUES (%s, %s, %s, %s)
ON CONFLICT (queue, name, bucket) DO UPDATE SET value = a.value + excluded.value"""

FORGET_ACTIVITY = "DELETE FROM {t:activity} WHERE bucket < %s"

READ_ACTIVITY = """
SELECT queue, name, sum(value)::bigint FROM {t:activity} WHERE bucket >= %s
 GROUP BY queue, name"""

# -- reading ----------------------------------------------------------------

_COLUMNS = """id, data, queue, attempts, created_at, expires_at, last_error,
       priority, visible_at, dead_at, dead_reason, key, holder"""

PEEK_MANY = """
SELECT {c} FROM {{t:messages}}
 WHERE queue = %s AND visible_at <= %s AND (expires_at IS NULL OR expires_at > %s)
 ORDER BY visible_at, id LIMIT %s""".format(c=_COLUMNS)

LIVE_MESSAGES = """
SELECT {c} FROM {{t:messages}}
 WHERE queue = %(queue)s AND visible_at IS NOT NULL AND id > %(after)s AND {unexpired}
 ORDER BY id LIMIT %(limit)s""".format(c=_COLUMNS, unexpired=_UNEXPIRED)

GET = "SELECT {c} FROM {{t:messages}} WHERE id = %s".format(c=_COLUMNS)

COUNT_LIVE = """
SELECT count(*) FROM {{t:messages}}
 WHERE queue = %(queue)s AND visible_at IS NOT NULL AND {unexpired}""".format(
    unexpired=_UNEXPIRED)

COUNT_WAITING = """
SELECT count(*) FROM {{t:messages}}
 WHERE queue = %(queue)s AND visible_at IS NOT NULL
   AND (lease IS NULL OR visible_at <= %(now)s)
   AND (expires_at IS NULL OR expires_at > %(now)s)""".format()

COUNT_READY = """
SELECT count(*) FROM {t:messages}
 WHERE queue = %(queue)s AND visible_at <= %(now)s
   AND (expires_at IS NULL OR expires_at > %(now)s)"""

COUNT_DEAD = """
SELECT count(*) FROM {t:messages} WHERE queue = %(queue)s AND visible_at IS NULL"""

ANY_LIVE = """
SELECT EXISTS (SELECT 1 FROM {{t:messages}}
                WHERE queue = %(queue)s AND visible_at IS NOT NULL AND {unexpired})""".format(
    unexpired=_UNEXPIRED)

NEXT_EXPIRY = """
SELECT expires_at FROM {t:messages}
 WHERE queue = %(queue)s AND expires_at > %(now)s AND visible_at IS NOT NULL
 ORDER BY expires_at LIMIT 1"""

ANY_READY = """
SELECT EXISTS (SELECT 1 FROM {t:messages}
                WHERE queue = %(queue)s AND visible_at <= %(now)s
                  AND (expires_at IS NULL OR expires_at > %(now)s))"""

QUEUE_STATS = """
SELECT q.name,
       count(m.id) FILTER (WHERE m.visible_at <= %(now)s
                             AND (m.expires_at IS NULL OR m.expires_at > %(now)s)),
       count(m.id) FILTER (WHERE m.visible_at > %(now)s AND m.lease IS NULL
                             AND (m.expires_at IS NULL OR m.expires_at > %(now)s)),
       count(m.id) FILTER (WHERE m.visible_at > %(now)s AND m.lease IS NOT NULL),
       count(m.id) FILTER (WHERE m.visible_at IS NULL),
       min(m.created_at) FILTER (WHERE m.visible_at IS NOT NULL AND (m.expires_at IS NULL
           OR m.expires_at > %(now)s OR (m.lease IS NOT NULL AND m.visible_at > %(now)s))),
       q.created_at, q.settings,
       (SELECT value FROM {t:meta} WHERE key = 'codec:' || q.name)
  FROM {t:queues} AS q LEFT JOIN {t:messages} AS m ON m.queue = q.name
 GROUP BY q.name, q.created_at, q.settings ORDER BY q.name"""

HOLDERS = """
SELECT DISTINCT queue, holder FROM {t:messages}
 WHERE lease IS NOT NULL AND visible_at > %(now)s AND holder IS NOT NULL
 ORDER BY queue, holder"""

QUEUE_EXISTS = "SELECT settings FROM {t:queues} WHERE name = %s FOR UPDATE"

CREATE_QUEUE = """
INSERT INTO {t:queues} (name, created_at, settings) VALUES (%s, %s, %s)
ON CONFLICT (name) DO NOTHING RETURNING name"""

SET_QUEUE_SETTINGS = "UPDATE {t:queues} SET settings = %s WHERE name = %s"

DELETE_QUEUE_ENTRY = "DELETE FROM {t:queues} WHERE name = %s"

DEAD_LETTERS = """
SELECT {c} FROM {{t:messages}}
 WHERE queue = %s AND visible_at IS NULL
 ORDER BY dead_at, id LIMIT %s""".format(c=_COLUMNS)

# -- export and import --------------------------------------------------------

SNAPSHOT = """
SELECT {c}, lease FROM {{t:messages}}
 WHERE queue = %s AND id > %s
 ORDER BY id LIMIT %s""".format(c=_COLUMNS)

INSERT_RESTORED = _registering("""
INSERT INTO {t:messages} (queue, data, priority, visible_at, created_at, expires_at, attempts,
                          last_error, dead_at, dead_reason, key)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""")

# -- operating --------------------------------------------------------------

REDRIVE_ALL = """
UPDATE {t:messages}
   SET visible_at = %s, attempts = 0, dead_at = NULL, dead_reason = NULL, last_error = NULL
 WHERE queue = %s AND visible_at IS NULL"""

REDRIVE_ONE = """
UPDATE {t:messages}
   SET visible_at = %s, attempts = 0, dead_at = NULL, dead_reason = NULL, last_error = NULL
 WHERE queue = %s AND visible_at IS NULL AND id = %s"""

EXPIRE = """
DELETE FROM {{t:messages}} WHERE queue = %(queue)s AND {expired} RETURNING queue""".format(
    expired=_EXPIRED)

EXPIRE_ALL = """
DELETE FROM {{t:messages}} WHERE {expired} RETURNING queue""".format(expired=_EXPIRED)

PURGE_LIVE = "DELETE FROM {t:messages} WHERE queue = %s AND visible_at IS NOT NULL"
PURGE_DEAD = "DELETE FROM {t:messages} WHERE queue = %s AND visible_at IS NULL"
DELETE_QUEUE = "DELETE FROM {t:messages} WHERE queue = %s"
DELETE_QUEUE_COUNTERS = "DELETE FROM {t:counters} WHERE queue = %s"
DELETE_QUEUE_RESULTS = "DELETE FROM {t:results} WHERE queue = %s"
DELETE_QUEUE_ACTIVITY = "DELETE FROM {t:activity} WHERE queue = %s"


def quote_ident(name: str) -> str:
    return '"%s"' % name.replace('"', '""')


def check_identifier(value: object, what: str, longest: int) -> str:
    """``value`` if it can be pasted into statements as a name; else ValueError."""
    if not isinstance(value, str) or not _IDENT_RE.match(value) or len(value) > longest:
        raise ValueError(
            "%s must be letters, digits and underscores, not starting with a digit, "
            "at most %d characters; got %r" % (what, longest, value))
    return value


def render(schema: str, prefix: str) -> types.SimpleNamespace:
    """Every statement of this module with the schema and prefix filled in."""
    check_identifier(prefix, "table_prefix", MAX_PREFIX)
    check_identifier(schema, "schema", 63)
    if schema.lower().startswith("pg_"):
        raise ValueError("schema must not start with 'pg_' (PostgreSQL reserves those "
                         "names); got %r" % (schema,))

    def ident(match: re.Match[str]) -> str:
        return "%s.%s" % (quote_ident(schema), quote_ident(prefix + match.group(1)))

    def bare(match: re.Match[str]) -> str:
        return quote_ident(prefix + match.group(1))

    def literal(match: re.Match[str]) -> str:
        return "'%s'" % ident(match).replace("'", "''")

    def fill(statement: str) -> str:
        statement = re.sub(r"\{t:(\w+)\}", ident, statement)
        statement = re.sub(r"\{r:(\w+)\}", literal, statement)
        statement = re.sub(r"\{n:(\w+)\}", bare, statement)
        return statement.replace("{schema}", quote_ident(schema)).strip()

    rendered: Dict[str, object] = {}
    for name, value in globals().items():
        if name.isupper() and not name.startswith("_") and isinstance(value, str):
            rendered[name] = fill(value)
    rendered["CREATE_TABLES"] = tuple(fill(s) for s in CREATE_TABLES)
    rendered["TABLE_SETTINGS"] = tuple(fill(s) for s in TABLE_SETTINGS)
    rendered["MIGRATIONS"] = {v: tuple(fill(s) for s in ss) for v, ss in MIGRATIONS.items()}
    rendered["PREFIX"] = prefix
    rendered["SCHEMA"] = schema
    return types.SimpleNamespace(**rendered)


def glob_to_regex(pattern: str) -> str:
    """SQLite's GLOB ``pattern`` (``*``, ``?``, ``[...]``, case-sensitive) as
    an anchored PostgreSQL regular expression."""
    out, i, n = ["^"], 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = i
            if j < n and pattern[j] == "^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:  # no closing bracket: a literal "["
                out.append("\\[")
                continue
            body = pattern[i:j].replace("\\", "\\\\")
            out.append("[" + body + "]")
            i = j + 1
        else:
            out.append(re.sub(r"([\\.^$|()\[\]{}*+?])", r"\\\1", c))
    out.append("$")
    return "".join(out)
