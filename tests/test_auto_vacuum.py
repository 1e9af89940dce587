"""Automatic vacuum: off by default; once a file says so (a setting stored in
it, for every process), the engine that finds more free pages than the
threshold after flushing its counts runs VACUUM, and the file shrinks."""

import os
import sqlite3

import pytest

from persistqueue_liteq import LiteQueue
from persistqueue_liteq.sqlite.engine import SQLiteEngine

from .test_cli import cli


def free_pages(path):
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA freelist_count").fetchone()[0]
    finally:
        conn.close()


def fill_and_empty(q):
    q.put_batch([os.urandom(2000) for _ in range(2000)], "bulk")
    q.engine.flush_metrics()
    q.purge("bulk")
    q.checkpoint("TRUNCATE")


def test_off_by_default(db):
    with LiteQueue(db) as q:
        assert q.engine.maintenance().auto_vacuum_free_pages is None
        fill_and_empty(q)
        q.put(b"x")
        q.engine.flush_metrics()
        q.checkpoint("TRUNCATE")
    assert free_pages(db) > 500


def test_past_the_threshold_the_file_is_vacuumed(db):
    with LiteQueue(db) as q:
        q.engine.maintenance().set_auto_vacuum(100)
        fill_and_empty(q)
        assert free_pages(db) > 500
        size = os.path.getsize(db)
        q.put(b"x")  # the next flush of counts looks
        q.engine.flush_metrics()
        q.checkpoint("TRUNCATE")
        assert free_pages(db) < 100
        assert os.path.getsize(db) < size / 4
        assert q.pop().data == b"x"


def test_the_setting_is_the_files_for_every_process(db):
    with LiteQueue(db) as q:
        q.engine.maintenance().set_auto_vacuum(250)
    other = SQLiteEngine(db)
    try:
        assert other.maintenance().auto_vacuum_free_pages == 250
        other.maintenance().set_auto_vacuum(None)
    finally:
        other.close()
    with LiteQueue(db) as q:
        assert q.engine.maintenance().auto_vacuum_free_pages is None
    with pytest.raises(ValueError):
        SQLiteEngine(db).maintenance().set_auto_vacuum(-1)


def test_the_command_line_sets_it(db, tmp_path):
    LiteQueue(db).close()
    name = os.path.basename(db)
    result = cli(tmp_path, "vacuum", name, "--auto", "1000")
    assert result.rc == 0, result.err
    assert "automatic vacuum: past 1000 free pages" in result.out
    engine = SQLiteEngine(db, readonly=True)
    assert engine.maintenance().auto_vacuum_free_pages == 1000
    engine.close()
    assert "automatic vacuum: off" in cli(tmp_path, "vacuum", name, "--auto", "off").out
