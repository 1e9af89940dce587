"""Every SQL statement of the SQLite engine, as named constants.

The table names carry a prefix (``{p}``, by default ``liteq_``) so that a queue
can live inside an application's own database file; :func:`render` fills it in
once per engine.  The Python around these statements (``engine.py``)
reads like the algorithm; nothing else in the package builds SQL.

One table holds every message of every named queue.  A message's state is
read from two columns, so that one index answers every hot query:

=============  ==========================  =======================
state          ``visible_at``              ``lease``
=============  ==========================  =======================
ready          <= now                      any (an expired lease)
delayed        > now                       NULL
in flight      > now                       the lease's token
dead letter    NULL                        NULL
=============  ==========================  =======================

Leasing a message moves its ``visible_at`` to the end of the lease, so a lease
that is never acknowledged makes the message ready again by itself: no sweeper
process is needed, and a crashed consumer costs one attempt.

A live message past its ``expires_at`` (its TTL) and not held by a lease is
*expired*: never delivered, counted nowhere, and deleted by the next lease
that meets it or by ``EXPIRE``.  Counts subtract the expired ones, which a
partial index on ``expires_at`` finds without reading anything else: a count
costs what it cost before plus one look per expired message.

Upgrades.  ``SCHEMA_VERSION`` numbers the layout; ``MIGRATIONS[v]`` takes a
file from version ``v - 1`` to ``v``, in the transaction that opens it.
"""

from __future__ import annotations

import types
from typing import Dict

from .. import _checks
from .. import engine as _engine
from .. import _sql_engine

#: Version of the table layout below; a file written by a newer version is
#: refused rather than misread.
SCHEMA_VERSION = 2

#: What ``{p}meta`` says about a file that is ours.
FORMAT_NAME = "persistqueue_liteq"

DEFAULT_PREFIX = _engine.DEFAULT_PREFIX

# -- tables ---------------------------------------------------------------

CREATE_META = """
CREATE TABLE IF NOT EXISTS {p}meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID"""

CREATE_MESSAGES = """
CREATE TABLE IF NOT EXISTS {p}messages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused
    queue       TEXT    NOT NULL,
    data        BLOB    NOT NULL,
    priority    BLOB,              -- order key of a priority queue, else NULL
    visible_at  REAL,              -- may be leased from then on; NULL: dead
    created_at  REAL    NOT NULL,
    expires_at  REAL,              -- never delivered from then on; NULL: never
    attempts    INTEGER NOT NULL DEFAULT 0,  -- deliveries so far
    lease       INTEGER,           -- token of the current lease
    last_error  TEXT,
    dead_at     REAL,
    dead_reason TEXT,
    key         TEXT,              -- caller's id of the message (a task's key), else NULL
    holder      TEXT               -- consumer_id of whoever leased it last
)"""

CREATE_READY_INDEX = """
CREATE INDEX IF NOT EXISTS {p}messages_ready
    ON {p}messages (queue, visible_at, id)"""

CREATE_PRIORITY_INDEX = """
CREATE INDEX IF NOT EXISTS {p}messages_priority
    ON {p}messages (queue, priority, id) WHERE priority IS NOT NULL"""

CREATE_KEY_INDEX = """
CREATE UNIQUE INDEX IF NOT EXISTS {p}messages_key
    ON {p}messages (queue, key) WHERE key IS NOT NULL"""

# Outcomes of keyed messages (the pools' tasks), kept so that a rerun of a
# killed script finds what already finished, and a caller that went away can
# collect them later.  ``seq`` orders them for readers that follow along.
# Every queue that exists, with or without messages: made by create_queue or
# by the first message put to it, gone only with delete_queue.  ``settings``
# is the caller's, as JSON text.
CREATE_QUEUES = """
CREATE TABLE IF NOT EXISTS {p}queues (
    name       TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    settings   TEXT
) WITHOUT ROWID"""

# The first message of a queue registers it: one lookup in {p}queues per
# INSERT, whatever front end (or older code, or an import) wrote it.
CREATE_QUEUE_TRIGGER = """
CREATE TRIGGER IF NOT EXISTS {p}messages_register_queue AFTER INSERT ON {p}messages
BEGIN
    INSERT OR IGNORE INTO {p}queues (name, created_at) VALUES (new.queue, new.created_at);
END"""

# Messages with a TTL, by expiry: what the counts subtract, and what EXPIRE
# deletes, found without a scan.  Covers every column the expiry test reads.
CREATE_EXPIRY_INDEX = """
CREATE INDEX IF NOT EXISTS {p}messages_expiry
    ON {p}messages (queue, expires_at, visible_at, lease) WHERE expires_at IS NOT NULL"""

CREATE_RESULTS = """
CREATE TABLE IF NOT EXISTS {p}results (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    queue       TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    ok          INTEGER NOT NULL,  -- 1: a return value, 0: an exception
    data        BLOB    NOT NULL,
    finished_at REAL    NOT NULL,
    UNIQUE (queue, key)
)"""

CREATE_COUNTERS = """
CREATE TABLE IF NOT EXISTS {p}counters (
    queue TEXT    NOT NULL,
    name  TEXT    NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (queue, name)
) WITHOUT ROWID"""

# Recent counts in 10-second buckets (start time of the bucket), kept for an
# hour: what rates are computed from.
CREATE_ACTIVITY = """
CREATE TABLE IF NOT EXISTS {p}activity (
    queue  TEXT    NOT NULL,
    name   TEXT    NOT NULL,
    bucket INTEGER NOT NULL,
    value  INTEGER NOT NULL,
    PRIMARY KEY (queue, name, bucket)
) WITHOUT ROWID"""

# Seconds of an activity bucket, and how long they are kept (as every
# backend keeps them).
ACTIVITY_BUCKET, ACTIVITY_KEPT = _sql_engine.ACTIVITY_BUCKET, _sql_engine.ACTIVITY_KEPT


# What the metrics flush prunes by: without it, "bucket < ?" scans the whole
# table under the write lock (28 ms at a million rows, an hour of 1,000
# active queues).  Files made before it get it at their next open.
ACTIVITY_INDEX = "{p}activity_bucket"
CREATE_ACTIVITY_INDEX = """
CREATE INDEX IF NOT EXISTS {p}activity_bucket ON {p}activity (bucket)"""

# How many live messages (visible_at not NULL) each queue has, kept by the
# triggers below in the transaction of every change to the messages table,
# whoever makes it (any process, any version since, another program): so
# qsize(), full() and a bounded put read one row instead of counting the
# queue (11 ms at 100,000 messages).  A file made before them gets them,
# counted once, at its next open by a writer (SIZES_TRIGGER tells).
CREATE_SIZES = """
CREATE TABLE IF NOT EXISTS {p}sizes (
    queue TEXT    PRIMARY KEY,
    live  INTEGER NOT NULL
) WITHOUT ROWID"""

SIZES_TRIGGER = "{p}sizes_insert"

CREATE_SIZES_TRIGGERS = (
    """
CREATE TRIGGER IF NOT EXISTS {p}sizes_insert AFTER INSERT ON {p}messages
 WHEN new.visible_at IS NOT NULL
BEGIN
    INSERT INTO {p}sizes (queue, live) VALUES (new.queue, 1)
    ON CONFLICT (queue) DO UPDATE SET live = live + 1;
END""",
    """
CREATE TRIGGER IF NOT EXISTS {p}sizes_delete AFTER DELETE ON {p}messages
 WHEN old.visible_at IS NOT NULL
BEGIN
    UPDATE {p}sizes SET live = live - 1 WHERE queue = old.queue;
END""",
    # Dead-lettered, redriven, or moved to another queue (nothing of ours
    # moves a message; another program may).
    """
CREATE TRIGGER IF NOT EXISTS {p}sizes_update AFTER UPDATE OF visible_at, queue ON {p}messages
 WHEN (old.visible_at IS NULL) IS NOT (new.visible_at IS NULL) OR old.queue IS NOT new.queue
BEGIN
    UPDATE {p}sizes SET live = live - 1
     WHERE queue = old.queue AND old.visible_at IS NOT NULL;
    INSERT INTO {p}sizes (queue, live) SELECT new.queue, 1 WHERE new.visible_at IS NOT NULL
    ON CONFLICT (queue) DO UPDATE SET live = live + 1;
END""",
)

# Run with the triggers' creation, in one transaction: exact from then on.
COUNT_SIZES = """
INSERT OR REPLACE INTO {p}sizes (queue, live)
SELECT queue, count(*) FROM {p}messages WHERE visible_at IS NOT NULL GROUP BY queue"""

CLEAR_SIZES = "DELETE FROM {p}sizes"

CREATE_TABLES = (
    CREATE_META,
    CREATE_MESSAGES,
    CREATE_READY_INDEX,
    CREATE_PRIORITY_INDEX,
    CREATE_KEY_INDEX,
    CREATE_EXPIRY_INDEX,
    CREATE_QUEUES,
    CREATE_QUEUE_TRIGGER,
    CREATE_RESULTS,
    CREATE_COUNTERS,
    CREATE_ACTIVITY,
    CREATE_ACTIVITY_INDEX,
    CREATE_SIZES,
) + CREATE_SIZES_TRIGGERS

# What takes a file of version v - 1 to version v (run in order, each
# migration in the transaction that opens the file).
MIGRATIONS = {
    2: (
        CREATE_EXPIRY_INDEX,
        "ALTER TABLE {p}messages ADD COLUMN holder TEXT",
        CREATE_QUEUES,
        CREATE_QUEUE_TRIGGER,
        """INSERT OR IGNORE INTO {p}queues (name, created_at)
           SELECT queue, min(created_at) FROM {p}messages GROUP BY queue""",
    ),
}

# -- schema bookkeeping -----------------------------------------------------

TABLE_EXISTS = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
TRIGGER_EXISTS = "SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = ?"
INDEX_EXISTS = "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?"

# Tables of the file that are not ours (an application's database): their
# names, for the message that refuses to change its journal mode.
OTHER_TABLES = """
SELECT name FROM sqlite_master
 WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
   AND substr(name, 1, length(?)) != ? ORDER BY name LIMIT 5"""

# Which file a connection has open as "main" (to check an application's
# connection before putting through it).
MAIN_FILE = "SELECT file FROM pragma_database_list WHERE name = 'main'"

READ_META = "SELECT key, value FROM {p}meta"
WRITE_META = "INSERT OR REPLACE INTO {p}meta (key, value) VALUES (?, ?)"

# -- automatic vacuum -----------------------------------------------------------
# The threshold of free pages past which an engine runs VACUUM, in {p}meta
# (absent: never); free pages are counted by SQLite in the file's header.
AUTO_VACUUM_KEY = "auto_vacuum_free_pages"
DELETE_META = "DELETE FROM {p}meta WHERE key = ?"
FREE_PAGES = "PRAGMA freelist_count"
VACUUM = "VACUUM"

# -- the file's clock ---------------------------------------------------------
# The anchor of the engine's clock, in {p}meta: the boot it was made in, and
# the wall clock and CLOCK_BOOTTIME read together then (see engine.py).
CLOCK_BOOT_ID = "clock_boot_id"
CLOCK_WALL = "clock_wall"
CLOCK_BOOTTIME = "clock_boottime"

# The newest time the file's clock gave, about: it must not go back past it.
# Both are lookups of the last row by primary key.
NEWEST_TIME = """
SELECT max(coalesce((SELECT created_at FROM {p}messages ORDER BY id DESC LIMIT 1), 0),
           coalesce((SELECT finished_at FROM {p}results ORDER BY seq DESC LIMIT 1), 0))"""

# Every lease of another boot: its holder is gone, the message is ready now
# (a lease that already ran out keeps its place).  A whole-table scan, run
# once per boot.
RELEASE_ALL_LEASES = """
UPDATE {p}messages SET lease = NULL, visible_at = min(visible_at, ?)
 WHERE lease IS NOT NULL AND visible_at IS NOT NULL"""

# -- producing --------------------------------------------------------------

INSERT = """
INSERT INTO {p}messages (queue, data, priority, visible_at, created_at, expires_at)
VALUES (?, ?, ?, ?, ?, ?)"""

LAST_ID = "SELECT last_insert_rowid()"

# A signed message's payload depends on its id, so the id is chosen before the
# INSERT, under the write lock: what AUTOINCREMENT would choose.
NEXT_ID = """
SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = '{p}messages'), 0),
           coalesce((SELECT max(id) FROM {p}messages), 0)) + 1"""

INSERT_WITH_ID = """
INSERT INTO {p}messages (id, queue, data, priority, visible_at, created_at, expires_at)
VALUES (?, ?, ?, ?, ?, ?, ?)"""

REPLACE_DATA = "UPDATE {p}messages SET data = ? WHERE id = ? AND data = ?"

# The codec fingerprint of each queue (serializer and key check), in meta
# under "codec:" + the queue's name.
READ_CODEC = "SELECT value FROM {p}meta WHERE key = 'codec:' || ?"

WRITE_CODEC = "INSERT OR REPLACE INTO {p}meta (key, value) VALUES ('codec:' || ?, ?)"

ANY_MESSAGE = "SELECT EXISTS (SELECT 1 FROM {p}messages WHERE queue = ?)"

DELETE_QUEUE_CODEC = "DELETE FROM {p}meta WHERE key = 'codec:' || ?"

INSERT_KEYED = """
INSERT INTO {p}messages (queue, data, key, visible_at, created_at) VALUES (?, ?, ?, ?, ?)"""

FIND_KEY = "SELECT id, visible_at IS NULL FROM {p}messages WHERE queue = ? AND key = ?"

# A message with the caller's id (``key``); ``id`` NULL lets AUTOINCREMENT choose.
INSERT_WITH_KEY = """
INSERT INTO {p}messages (id, queue, data, priority, visible_at, created_at, expires_at, key)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)"""

# A dead keyed message whose stored failure was forgotten, submitted again.
REVIVE_KEYED = """
UPDATE {p}messages
   SET data = ?, visible_at = ?, lease = NULL, attempts = 0, dead_at = NULL,
       dead_reason = NULL, last_error = NULL
 WHERE id = ? AND visible_at IS NULL"""

# -- results ----------------------------------------------------------------

STORE_RESULT = """
INSERT OR REPLACE INTO {p}results (queue, key, ok, data, finished_at) VALUES (?, ?, ?, ?, ?)"""

# The outcomes of several messages in two statements (a worker's batch: one
# statement per outcome would be three): {rows} is "(0, ?, ?, ?, ?), (1, ..."
# with (id, key, ok, data) each, then finished_at.  Each result is stored
# under its message's queue, if the message is there, leased or not (as
# STORE_RESULT after GET); ORDER BY v.n gives them seqs in the order given.
STORE_RESULTS = """
WITH v(n, id, key, ok, data) AS (VALUES {rows})
INSERT OR REPLACE INTO {p}results (queue, key, ok, data, finished_at)
SELECT m.queue, v.key, v.ok, v.data, ? FROM v JOIN {p}messages m ON m.id = v.id ORDER BY v.n"""

# ACK for several messages: {pairs} is "(?, ?), (?, ?)..." of (id, lease).
ACK_MANY = """
DELETE FROM {p}messages WHERE id IN (
    SELECT m.id FROM (VALUES {pairs}) v JOIN {p}messages m
        ON m.id = v.column1 AND m.lease = v.column2)"""

RESULT = "SELECT ok, data FROM {p}results WHERE queue = ? AND key = ?"

# "+queue" keeps SQLite off the (queue, key) index, which would make it sort
# every stored result of the queue: the primary key range on seq is the plan.
RESULTS_SINCE = """
SELECT seq, key, ok, data FROM {p}results WHERE +queue = ? AND seq > ? ORDER BY seq LIMIT ?"""

LAST_RESULT_SEQ = "SELECT coalesce(max(seq), 0) FROM {p}results"

FORGET_RESULT = "DELETE FROM {p}results WHERE queue = ? AND key = ?"

PURGE_RESULTS = "DELETE FROM {p}results WHERE queue = ?"

# The outcomes whose keys match a GLOB pattern (a pool's digest-keyed calls),
# stored up to a seq; failures only, or all.
FORGET_RESULTS_MATCHING = """
DELETE FROM {p}results WHERE queue = ? AND key GLOB ? AND seq <= ? AND (ok = 0 OR ?)"""

# -- a pool's count of identical calls, beyond what it keeps in memory ----------
# (in a private temporary database of its own, not in the queue file)

CREATE_OCCURRENCES = """
CREATE TABLE occurrences (digest TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID"""

NEXT_OCCURRENCE = """
INSERT INTO occurrences (digest, n) VALUES (?, 1)
    ON CONFLICT (digest) DO UPDATE SET n = n + 1
RETURNING n - 1"""

# Expired: past its TTL, live, and not held by a lease (a holder may still
# acknowledge it).  Every such row is in the expiry index.
_EXPIRED = """expires_at <= :now AND visible_at IS NOT NULL
   AND (lease IS NULL OR visible_at <= :now)"""

_COUNT_EXPIRED = """
(SELECT count(*) FROM {{p}}messages WHERE queue = :queue AND {expired})""".format(
    expired=_EXPIRED)

# A live message that is not expired.
_UNEXPIRED = """(expires_at IS NULL OR expires_at > :now
        OR (lease IS NOT NULL AND visible_at > :now))"""

# -- leasing ----------------------------------------------------------------
# One statement leases up to :n messages atomically: the subquery walks the
# index in delivery order and the UPDATE moves each chosen row out of the
# ready range.  RETURNING hands back what was leased (in no particular order).

#
# The _ONE statements lease a single message: "id = (SELECT ... LIMIT 1)" is
# one index probe, where "id IN (SELECT ...)" first builds an ephemeral table
# of the chosen ids (a third of the instructions SQLite spends on a lease).

_LEASE = """
UPDATE {{p}}messages
   SET visible_at = :until, lease = :lease, attempts = attempts + 1, holder = :holder
 WHERE id {pick} (SELECT id FROM {{p}}messages
               WHERE queue = :queue AND {where}visible_at <= :now
               ORDER BY {order} LIMIT {limit})
RETURNING id, data, queue, attempts, created_at, expires_at, last_error, priority, key"""

_FIFO = dict(where="", order="visible_at, id")
_LIFO = dict(where="", order="visible_at DESC, id DESC")
# "+visible_at" keeps the planner off the ready index, which would make it sort
# every ready row: it walks the priority index in order and stops at the first
# ready row instead (0.3 ms against 6 ms a lease at 20,000 items).
_PRIORITY = dict(where="priority IS NOT NULL AND +", order="priority, id")
_MANY = dict(pick="IN", limit=":n")
_ONE = dict(pick="=", limit="1")

LEASE_FIFO = _LEASE.format(**_FIFO, **_MANY)
LEASE_LIFO = _LEASE.format(**_LIFO, **_MANY)
LEASE_PRIORITY = _LEASE.format(**_PRIORITY, **_MANY)
LEASE_FIFO_ONE = _LEASE.format(**_FIFO, **_ONE)
LEASE_LIFO_ONE = _LEASE.format(**_LIFO, **_ONE)
LEASE_PRIORITY_ONE = _LEASE.format(**_PRIORITY, **_ONE)

# One ready message chosen by its id (persist-queue's get(id=...)); one
# past its TTL is not leased.
LEASE_ID = """
UPDATE {p}messages
   SET visible_at = :until, lease = :lease, attempts = attempts + 1
 WHERE id = :id AND queue = :queue AND visible_at <= :now
   AND (expires_at IS NULL OR expires_at > :now)
RETURNING id, data, queue, attempts, created_at, expires_at, last_error, priority, key"""

NEXT_VISIBLE_AT = """
SELECT min(visible_at) FROM {p}messages WHERE queue = ? AND visible_at > ?"""

# -- settling a lease -------------------------------------------------------
# Each takes the lease token: a consumer whose lease ran out and whose message
# went to somebody else changes nothing.

# Each returns the message's queue, so that the right waiters are woken.

ACK = "DELETE FROM {p}messages WHERE id = ? AND lease = ? RETURNING queue"

# When the caller knows the queue (RETURNING costs a sixth of an ack):
# "AND queue" makes a wrong one delete nothing rather than wake the wrong
# waiters.
ACK_IN_QUEUE = "DELETE FROM {p}messages WHERE id = ? AND lease = ? AND queue = ?"

DELETE = "DELETE FROM {p}messages WHERE id = ? RETURNING queue"

DELETE_UNLEASED = "DELETE FROM {p}messages WHERE id = ? AND lease IS NULL RETURNING queue"

SET_VISIBILITY = """
UPDATE {p}messages SET visible_at = ?
 WHERE id = ? AND lease = ? AND visible_at IS NOT NULL
RETURNING queue"""

RELEASE = """
UPDATE {p}messages
   SET visible_at = ?, lease = NULL, last_error = coalesce(?, last_error)
 WHERE id = ? AND lease = ? AND visible_at IS NOT NULL
RETURNING queue"""

RELEASE_UNATTEMPTED = """
UPDATE {p}messages
   SET visible_at = ?, lease = NULL, last_error = coalesce(?, last_error),
       attempts = max(attempts - 1, 0)
 WHERE id = ? AND lease = ? AND visible_at IS NOT NULL
RETURNING queue"""

DEAD_LETTER = """
UPDATE {p}messages
   SET visible_at = NULL, lease = NULL, dead_at = ?, dead_reason = ?,
       last_error = coalesce(?, last_error)
 WHERE id = ? AND lease = ? AND visible_at IS NOT NULL
RETURNING queue"""

# Rows whose visible_at another program set to text or a blob (SQLite sorts
# those after every number, so "> now" finds them, on the ready index).
DEAD_LETTER_BAD_VISIBLE = """
UPDATE {p}messages
   SET dead_reason = 'malformed row: visible_at is ' || substr(quote(visible_at), 1, 60)
                     || ' (' || typeof(visible_at) || '), not a time (seconds since the epoch)',
       visible_at = NULL, lease = NULL, dead_at = ?
 WHERE queue = ? AND visible_at > ? AND typeof(visible_at) NOT IN ('integer', 'real')
RETURNING id, dead_reason"""

# Dead-letter a live message by id, leased or not (the caller decided).
DEAD_LETTER_ID = """
UPDATE {p}messages
   SET visible_at = NULL, lease = NULL, dead_at = :now, dead_reason = :reason
 WHERE id = :id AND visible_at IS NOT NULL AND (:queue IS NULL OR queue = :queue)
RETURNING queue"""

# Leases that ran out, ended now: their late holders can no longer settle them.
RECOVER_LEASES = """
UPDATE {p}messages SET lease = NULL
 WHERE queue = :queue AND visible_at <= :now AND lease IS NOT NULL
RETURNING queue"""

RECOVER_ALL_LEASES = """
UPDATE {p}messages SET lease = NULL
 WHERE visible_at <= :now AND lease IS NOT NULL
RETURNING queue"""

DELETE_LEASED = "DELETE FROM {p}messages WHERE id = ? AND lease = ?"

ADD_COUNTER = """
INSERT INTO {p}counters (queue, name, value) VALUES (?, ?, ?)
ON CONFLICT (queue, name) DO UPDATE SET value = value + excluded.value"""

READ_COUNTERS = "SELECT queue, name, value FROM {p}counters"

ADD_ACTIVITY = """
INSERT INTO {p}activity (queue, name, bucket, value) VALUES (?, ?, ?, ?)
ON CONFLICT (queue, name, bucket) DO UPDATE SET value = value + excluded.value"""

FORGET_ACTIVITY = "DELETE FROM {p}activity WHERE bucket < ?"

READ_ACTIVITY = """
SELECT queue, name, sum(value) FROM {p}activity WHERE bucket >= ? GROUP BY queue, name"""

# -- reading ----------------------------------------------------------------

_COLUMNS = """id, data, queue, attempts, created_at, expires_at, last_error,
       priority, visible_at, dead_at, dead_reason, key, holder"""

PEEK = """
SELECT {c} FROM {{p}}messages
 WHERE queue = ? AND visible_at <= ? AND (expires_at IS NULL OR expires_at > ?)
 ORDER BY visible_at, id LIMIT 1""".format(c=_COLUMNS)

PEEK_MANY = """
SELECT {c} FROM {{p}}messages
 WHERE queue = ? AND visible_at <= ? AND (expires_at IS NULL OR expires_at > ?)
 ORDER BY visible_at, id LIMIT ?""".format(c=_COLUMNS)

LIVE_MESSAGES = """
SELECT {c} FROM {{p}}messages
 WHERE queue = :queue AND visible_at IS NOT NULL AND id > :after AND {unexpired}
 ORDER BY id LIMIT :limit""".format(c=_COLUMNS, unexpired=_UNEXPIRED)

GET = "SELECT {c} FROM {{p}}messages WHERE id = ?".format(c=_COLUMNS)

COUNT_LIVE = """
SELECT (SELECT count(*) FROM {{p}}messages WHERE queue = :queue AND visible_at IS NOT NULL)
       - {expired}""".format(expired=_COUNT_EXPIRED)

COUNT_WAITING = """
SELECT (SELECT count(*) FROM {{p}}messages
         WHERE queue = :queue AND visible_at IS NOT NULL
           AND (lease IS NULL OR visible_at <= :now))
       - {expired}""".format(expired=_COUNT_EXPIRED)

# The same from {p}sizes: one row, less the expired (on the expiry index)
# and, for "waiting", the messages in flight (leased until after now, on the
# ready index's range after now: delayed and in flight, not the queue's
# depth; an expired message is never in flight, so none is subtracted
# twice).  One statement, one snapshot.
KEPT_LIVE = """
SELECT coalesce((SELECT live FROM {{p}}sizes WHERE queue = :queue), 0)
     - {expired}""".format(expired=_COUNT_EXPIRED)

KEPT_WAITING = """
SELECT coalesce((SELECT live FROM {{p}}sizes WHERE queue = :queue), 0)
     - (SELECT count(*) FROM {{p}}messages
         WHERE queue = :queue AND visible_at > :now AND lease IS NOT NULL)
     - {expired}""".format(expired=_COUNT_EXPIRED)

COUNT_DEAD = """
SELECT count(*) FROM {p}messages WHERE queue = :queue AND visible_at IS NULL"""

COUNT_READY = """
SELECT (SELECT count(*) FROM {p}messages WHERE queue = :queue AND visible_at <= :now)
       - (SELECT count(*) FROM {p}messages
           WHERE queue = :queue AND expires_at <= :now AND visible_at <= :now)"""

ANY_LIVE = """
SELECT EXISTS (SELECT 1 FROM {{p}}messages
                WHERE queue = :queue AND visible_at IS NOT NULL AND {unexpired})""".format(
    unexpired=_UNEXPIRED)

# When the first live message of a queue that is not expired yet expires.
NEXT_EXPIRY = """
SELECT expires_at FROM {p}messages
 WHERE queue = :queue AND expires_at > :now AND visible_at IS NOT NULL
 ORDER BY expires_at LIMIT 1"""

ANY_READY = """
SELECT EXISTS (SELECT 1 FROM {p}messages
                WHERE queue = :queue AND visible_at <= :now
                  AND (expires_at IS NULL OR expires_at > :now))"""

# Expired messages are in no column: "unexpired" is coalesce(expires_at >
# :now, 1) for the ready and delayed (an in-flight message is never expired).
# Every queue that exists, messages or not, with its settings and codec.
QUEUE_STATS = """
SELECT q.name,
       total(m.visible_at <= :now AND coalesce(m.expires_at > :now, 1)),
       total(m.visible_at > :now AND m.lease IS NULL AND coalesce(m.expires_at > :now, 1)),
       total(m.visible_at > :now AND m.lease IS NOT NULL),
       total(m.id IS NOT NULL AND m.visible_at IS NULL),  -- a queue without rows has one
       min(CASE WHEN m.visible_at IS NOT NULL AND {unexpired} THEN m.created_at END),
       q.created_at, q.settings,
       (SELECT value FROM {{p}}meta WHERE key = 'codec:' || q.name)
  FROM {{p}}queues AS q LEFT JOIN {{p}}messages AS m ON m.queue = q.name
 GROUP BY q.name ORDER BY q.name""".format(unexpired="""(m.expires_at IS NULL
        OR m.expires_at > :now OR (m.lease IS NOT NULL AND m.visible_at > :now))""")

# Who holds the leases of each queue now.
HOLDERS = """
SELECT DISTINCT queue, holder FROM {p}messages
 WHERE lease IS NOT NULL AND visible_at > :now AND holder IS NOT NULL
 ORDER BY queue, holder"""

QUEUE_EXISTS = "SELECT settings FROM {p}queues WHERE name = ?"

CREATE_QUEUE = "INSERT INTO {p}queues (name, created_at, settings) VALUES (?, ?, ?)"

SET_QUEUE_SETTINGS = "UPDATE {p}queues SET settings = ? WHERE name = ?"

DELETE_QUEUE_ENTRY = "DELETE FROM {p}queues WHERE name = ?"

DEAD_LETTERS = """
SELECT {c} FROM {{p}}messages
 WHERE queue = ? AND visible_at IS NULL
 ORDER BY dead_at, id LIMIT ?""".format(c=_COLUMNS)

# -- moving messages between files (export and import) ------------------------

# Every message of a queue, live and dead, with its lease token: what an
# export writes, state and all.
SNAPSHOT = """
SELECT {c}, lease FROM {{p}}messages
 WHERE queue = ? AND id > ?
 ORDER BY id LIMIT ?""".format(c=_COLUMNS)

# A message stored with the state it had elsewhere (a new id, no lease).
INSERT_RESTORED = """
INSERT INTO {p}messages (queue, data, priority, visible_at, created_at, expires_at, attempts,
                         last_error, dead_at, dead_reason, key)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""

# -- operating --------------------------------------------------------------

REDRIVE_ALL = """
UPDATE {p}messages
   SET visible_at = ?, attempts = 0, dead_at = NULL, dead_reason = NULL,
       last_error = NULL
 WHERE queue = ? AND visible_at IS NULL"""

REDRIVE_ONE = """
UPDATE {p}messages
   SET visible_at = ?, attempts = 0, dead_at = NULL, dead_reason = NULL,
       last_error = NULL
 WHERE queue = ? AND visible_at IS NULL AND id = ?"""

# Delete the expired messages of one queue, or of all.
EXPIRE = """
DELETE FROM {{p}}messages WHERE queue = :queue AND {expired} RETURNING queue""".format(
    expired=_EXPIRED)

EXPIRE_ALL = """
DELETE FROM {{p}}messages WHERE {expired} RETURNING queue""".format(expired=_EXPIRED)

PURGE_LIVE = "DELETE FROM {p}messages WHERE queue = ? AND visible_at IS NOT NULL"
PURGE_DEAD = "DELETE FROM {p}messages WHERE queue = ? AND visible_at IS NULL"
DELETE_QUEUE = "DELETE FROM {p}messages WHERE queue = ?"
DELETE_QUEUE_COUNTERS = "DELETE FROM {p}counters WHERE queue = ?"
DELETE_QUEUE_RESULTS = "DELETE FROM {p}results WHERE queue = ?"
DELETE_QUEUE_ACTIVITY = "DELETE FROM {p}activity WHERE queue = ?"


def render(prefix: str) -> types.SimpleNamespace:
    """Return every statement of this module with the table prefix filled in.

    Raises ValueError for a prefix that is not a plain SQL identifier (it is
    pasted into the statements, so nothing else may pass), or that SQLite
    reserves for itself ("sqlite_", in any case).
    """
    _checks.table_prefix(prefix)
    rendered: Dict[str, object] = {}
    for name, value in globals().items():
        if name.isupper() and not name.startswith("_") and isinstance(value, str):
            rendered[name] = value.replace("{p}", prefix).strip()
    rendered["CREATE_TABLES"] = tuple(s.replace("{p}", prefix).strip() for s in CREATE_TABLES)
    rendered["CREATE_SIZES_TRIGGERS"] = tuple(
        s.replace("{p}", prefix).strip() for s in CREATE_SIZES_TRIGGERS)
    rendered["MIGRATIONS"] = {
        version: tuple(s.replace("{p}", prefix).strip() for s in statements)
        for version, statements in MIGRATIONS.items()
    }
    rendered["PREFIX"] = prefix
    return types.SimpleNamespace(**rendered)
