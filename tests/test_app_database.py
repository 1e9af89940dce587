"""Queues inside an application's own database (``table_prefix``): its
journal mode is not changed without saying so, and a message can be put in
the application's own transaction, on its own connection (the transactional
outbox), committed or rolled back with the application's writes.
"""

import sqlite3

import pytest

from persistqueue_liteq import IncompatibleDatabase, LiteQueue, PersistentQueue


def journal_mode(path):
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        conn.close()


@pytest.fixture
def app_db(tmp_path):
    """An application's database, in the default rollback-journal mode."""
    path = str(tmp_path / "app.db")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, what TEXT)")
    conn.execute("INSERT INTO orders (what) VALUES ('existing')")
    conn.commit()
    conn.close()
    assert journal_mode(path) == "delete"
    return path


def tables(path):
    conn = sqlite3.connect(path)
    try:
        return sorted(r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'"))
    finally:
        conn.close()


# -- the journal mode --------------------------------------------------------------------

@pytest.mark.parametrize("make", [LiteQueue, PersistentQueue])
def test_an_applications_database_is_not_switched_to_wal_silently(app_db, make):
    with pytest.raises(IncompatibleDatabase) as info:
        make(app_db, table_prefix="q_")
    message = str(info.value)
    assert app_db in message and "delete" in message and "orders" in message
    assert "journal_mode='wal'" in message and "journal_mode='keep'" in message
    assert journal_mode(app_db) == "delete"
    assert tables(app_db) == ["orders"]  # nothing created


def test_journal_mode_wal_switches_it_when_asked(app_db):
    with LiteQueue(app_db, table_prefix="q_", journal_mode="wal") as q:
        q.put(b"x")
    assert journal_mode(app_db) == "wal"


def test_journal_mode_keep_runs_in_the_files_own_mode(app_db):
    with LiteQueue(app_db, table_prefix="q_", journal_mode="keep") as q:
        q.put(b"x", "jobs")
        msg = q.pop("jobs")
        assert msg.data == b"x" and q.ack(msg)
    q = PersistentQueue(app_db, table_prefix="q_", journal_mode="keep")
    try:
        q.put({"n": 1})
        assert q.get(timeout=5) == {"n": 1}
        q.task_done()
    finally:
        q.close()
    assert journal_mode(app_db) == "delete"
    assert "orders" in tables(app_db)


def test_a_new_file_or_one_of_ours_is_put_in_wal_as_before(tmp_path):
    path = str(tmp_path / "new.db")
    LiteQueue(path).close()
    assert journal_mode(path) == "wal"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=delete")
    conn.close()
    LiteQueue(path).close()  # only our tables: ours to set
    assert journal_mode(path) == "wal"


def test_a_bad_journal_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="journal_mode"):
        LiteQueue(str(tmp_path / "x.db"), journal_mode="truncate")


# -- the transactional outbox ------------------------------------------------------------

@pytest.fixture
def outbox(app_db):
    q = LiteQueue(app_db, table_prefix="q_", journal_mode="wal")
    yield q
    q.close()


def test_a_put_commits_with_the_applications_transaction(app_db, outbox):
    conn = sqlite3.connect(app_db)
    try:
        with conn:  # sqlite3: commit on success
            conn.execute("INSERT INTO orders (what) VALUES ('book')")
            msg_id = outbox.put_in(conn, b"order placed: book", "emails")
            # Not committed yet: not visible (a read; a lease would wait for
            # the write lock that the application's transaction holds).
            assert outbox.peek("emails") is None and outbox.qsize("emails") == 0
        msg = outbox.pop("emails")
        assert (msg.id, msg.data) == (msg_id, b"order placed: book")
    finally:
        conn.close()


def test_a_put_rolls_back_with_the_applications_transaction(app_db, outbox):
    conn = sqlite3.connect(app_db)
    try:
        with pytest.raises(RuntimeError):
            with conn:
                conn.execute("INSERT INTO orders (what) VALUES ('lamp')")
                outbox.put_in(conn, b"order placed: lamp", "emails")
                raise RuntimeError("payment refused")
        assert outbox.pop("emails") is None
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 1
        outbox.put(b"after", "emails")  # the queue still works
        assert outbox.pop("emails").data == b"after"
    finally:
        conn.close()


def test_put_in_with_explicit_begin_and_a_delay(app_db, outbox):
    conn = sqlite3.connect(app_db, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        outbox.put_in(conn, b"later", "emails", visible_after_seconds=3600)
        outbox.put_in(conn, b"now", "emails", ttl_seconds=600)
        conn.execute("COMMIT")
        assert outbox.pop("emails").data == b"now"
        assert outbox.pop("emails") is None
    finally:
        conn.close()


def test_put_in_refuses_a_connection_to_another_file(tmp_path, outbox):
    conn = sqlite3.connect(str(tmp_path / "other.db"))
    try:
        with pytest.raises(ValueError, match="other.db"):
            outbox.put_in(conn, b"x", "emails")
        with pytest.raises(TypeError):
            outbox.put_in("not a connection", b"x", "emails")
    finally:
        conn.close()


def test_a_persistent_queue_puts_an_item_in_the_applications_transaction(app_db):
    q = PersistentQueue(app_db, name="emails", table_prefix="q_", journal_mode="wal")
    conn = sqlite3.connect(app_db)
    try:
        with conn:
            conn.execute("INSERT INTO orders (what) VALUES ('pen')")
            q.put_in(conn, {"to": "ada", "order": "pen"})
        assert q.get(timeout=5) == {"to": "ada", "order": "pen"}
        q.task_done()
    finally:
        conn.close()
        q.close()


def test_the_command_line_says_so_too_and_takes_the_option(app_db, tmp_path):
    from .test_cli import cli

    refused = cli(tmp_path, "put", app_db, "x", "--table-prefix", "q_")
    assert refused.rc == 1 and "journal_mode='wal'" in refused.err
    assert journal_mode(app_db) == "delete"
    kept = cli(tmp_path, "--journal-mode", "keep", "put", app_db, "x", "--table-prefix", "q_")
    assert kept.rc == 0, kept.err
    assert journal_mode(app_db) == "delete"
    with LiteQueue(app_db, table_prefix="q_", journal_mode="keep") as q:
        assert q.pop().data == b"x"


def test_a_pool_in_an_applications_database_takes_the_option(app_db):
    from persistqueue_liteq import PersistentThreadPoolExecutor

    with pytest.raises(IncompatibleDatabase, match="journal_mode='wal'"):
        PersistentThreadPoolExecutor(app_db, table_prefix="q_")
    assert journal_mode(app_db) == "delete"
    with pytest.raises(ValueError, match="WAL"):  # its readers would block every commit
        PersistentThreadPoolExecutor(app_db, table_prefix="q_", journal_mode="keep")
    assert journal_mode(app_db) == "delete"
    with PersistentThreadPoolExecutor(app_db, max_workers=1, table_prefix="q_",
                                      journal_mode="wal") as pool:
        assert pool.submit(pow, 2, 5).result(timeout=30) == 32
    assert journal_mode(app_db) == "wal"
