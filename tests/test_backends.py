"""Opening an engine by location (persistqueue_liteq.backends): paths, URLs,
$PERSISTQUEUE_LITEQ_DB, engines and specs handed to every front end, specs
reopened in other processes, and passwords kept out of every message."""

import os
import pickle
import subprocess
import sys
import urllib.parse

import pytest

from persistqueue_liteq import (LiteQueue, PersistentQueue, PersistentSimpleQueue,
                                PersistentThreadPoolExecutor)
from persistqueue_liteq.aio import AsyncPersistentQueue
from persistqueue_liteq.backends import describe, open_engine, redact
from persistqueue_liteq.engine import Engine, EngineSpec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- locations --------------------------------------------------------------------


def test_a_path_a_pathlike_bytes_and_urls_name_the_same_file(tmp_path, monkeypatch):
    path = tmp_path / "jobs.db"
    LiteQueue(path).put(b"one")
    monkeypatch.chdir(tmp_path)
    for location in (str(path), path, os.fsencode(path), "jobs.db", "sqlite:///jobs.db",
                     "sqlite:///" + str(path), "SQLite:///" + str(path)):
        spec = describe(location)
        assert spec == EngineSpec("sqlite", str(path)), location
        engine = open_engine(location)
        try:
            assert engine.count("default") == 1, location
        finally:
            engine.close()


def test_the_environment_variable_is_the_location_when_none_is_given(tmp_path, monkeypatch):
    path = str(tmp_path / "env.db")
    monkeypatch.setenv("PERSISTQUEUE_LITEQ_DB", "sqlite:///" + path)
    assert describe().location == path
    q = LiteQueue()
    q.put(b"x")
    assert LiteQueue(path).qsize() == 1


def test_url_query_parameters_are_backend_options(tmp_path):
    path = str(tmp_path / "q.db")
    spec = describe("sqlite:///%s?synchronous=FULL&timeout=2.5&table_prefix=app_" % path)
    assert spec.options == {"synchronous": "FULL", "timeout": 2.5, "table_prefix": "app_"}
    engine = spec.open()
    try:
        engine.put("default", b"x")
    finally:
        engine.close()
    # The tables carry the prefix: a queue with the default prefix sees none.
    assert LiteQueue(path, table_prefix="app_").qsize() == 1
    assert LiteQueue(path).qsize() == 0


@pytest.mark.parametrize("location, message", [
    ("redis://localhost/0", "no backend for 'redis' URLs"),
    ("sqlite://host/jobs.db", "names a file, not a host"),
    ("sqlite:///", "names no file"),
    ("sqlite:///jobs.db?timeout=soon", "timeout must be a number"),
    ("sqlite:///jobs.db?readonly=perhaps", "readonly must be true or false"),
    ("sqlite:///:memory:", "several connections can open"),
    (":memory:", "several connections can open"),
    ("postgresql://localhost/jobs?pool_size=many", "pool_size must be a whole number"),
    ("postgresql://", "names no server or database"),
])
def test_a_location_of_no_backend_is_a_clear_error(location, message):
    with pytest.raises(ValueError, match=message):
        describe(location)
    with pytest.raises(ValueError, match=message):
        LiteQueue(location)


def test_an_option_the_backend_does_not_take_is_named(tmp_path):
    with pytest.raises(TypeError, match=r"no option wal_size \(it takes timeout"):
        open_engine(str(tmp_path / "q.db"), wal_size=3)
    with pytest.raises(TypeError, match="no option colour"):
        describe("sqlite:///%s?colour=blue" % (tmp_path / "q.db"))
    assert not os.path.exists(tmp_path / "q.db")


def test_an_option_given_twice_differently_is_refused(tmp_path):
    url = "sqlite:///%s?synchronous=FULL" % (tmp_path / "q.db")
    assert describe(url, synchronous="FULL").options == {"synchronous": "FULL"}
    with pytest.raises(ValueError, match="synchronous given both in the URL"):
        describe(url, synchronous="NORMAL")


def test_a_location_of_the_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match="database path must be a str or path-like, not int"):
        describe(3)


# -- passwords ----------------------------------------------------------------------


def test_passwords_never_show(tmp_path):
    url = "postgresql://alice:s3cr%40t@db.example:5432/jobs?sslmode=require"
    assert redact(url) == "postgresql://alice:***@db.example:5432/jobs?sslmode=require"
    assert redact("postgresql://alice@db/jobs") == "postgresql://alice@db/jobs"
    assert redact("postgresql://db/jobs?user=alice&password=s3cr%40t&sslmode=require") == (
        "postgresql://db/jobs?user=alice&password=***&sslmode=require")
    assert redact(str(tmp_path)) == str(tmp_path)
    with pytest.raises(ValueError) as info:
        describe(url + "&timeout=soon")
    assert "s3cr" not in str(info.value)
    spec = EngineSpec("postgresql", url, {"timeout": 1.0})
    assert "s3cr" not in repr(spec) and "alice:***@" in repr(spec)


def test_a_listen_url_is_an_option_whose_password_never_shows():
    listen = "postgresql://alice:l1sten@db.example:5432/jobs"
    url = ("postgresql://alice:s3cr%40t@bouncer:6432/jobs?prepared=false&listen_url="
           + urllib.parse.quote(listen, safe=""))
    spec = describe(url)
    assert spec.options == {"prepared": False, "listen_url": listen}
    assert "prepared" not in spec.location and "listen_url" not in spec.location
    assert "l1sten" not in repr(spec) and "s3cr" not in repr(spec)
    assert "l1sten" not in redact(url) and "listen_url=***" in redact(url)
    with pytest.raises(ValueError, match="option prepared must be true or false"):
        describe(url.replace("prepared=false", "prepared=sometimes"))


# -- specs ------------------------------------------------------------------------


def test_every_engine_has_a_spec_that_reopens_it(tmp_path):
    engine = open_engine(str(tmp_path / "q.db"), synchronous="FULL", timeout=1.5)
    try:
        assert engine.spec.scheme == "sqlite"
        assert engine.spec.location == str(tmp_path / "q.db")
        assert engine.spec.options["synchronous"] == "FULL"
        assert engine.spec.options["timeout"] == 1.5
        engine.put("default", b"x")
        again = pickle.loads(pickle.dumps(engine.spec)).open()
        try:
            assert isinstance(again, Engine) and again is not engine
            assert again.spec == engine.spec
            assert again.count("default") == 1
        finally:
            again.close()
    finally:
        engine.close()


def test_a_spec_reopens_the_database_in_another_process(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = describe("sqlite:///relative.db")
    engine = spec.open()
    engine.put("default", b"x")
    engine.close()
    pickled = tmp_path / "spec.pickle"
    pickled.write_bytes(pickle.dumps(spec))
    child = ("import pickle, sys; engine = pickle.load(open(sys.argv[1], 'rb')).open(); "
             "print(engine.count('default'))")
    done = subprocess.run([sys.executable, "-c", child, str(pickled)], capture_output=True,
                          text=True, timeout=60, cwd=os.path.dirname(tmp_path),
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"


# -- front ends -------------------------------------------------------------------


def test_every_front_end_takes_an_engine_and_leaves_it_open(tmp_path):
    engine = open_engine(str(tmp_path / "q.db"))
    try:
        lite = LiteQueue(engine)
        assert lite.engine is engine
        lite.put(b"lite")
        lite.close()
        q = PersistentQueue(engine, name="family")
        assert q.engine is engine
        q.put("item")
        q.close()
        simple = PersistentSimpleQueue(engine, name="simple")
        simple.put(1)
        simple.close()
        with PersistentThreadPoolExecutor(engine, max_workers=1) as pool:
            assert pool.submit(pow, 2, 10).result(timeout=60) == 1024
        # Closing the front ends closed nothing of the caller's.
        assert engine.count("default") == 1
        assert engine.count("family") == 1
        assert engine.count("simple") == 1
    finally:
        engine.close()


def test_an_engine_with_storage_options_is_refused(tmp_path):
    engine = open_engine(str(tmp_path / "q.db"))
    try:
        with pytest.raises(TypeError, match="synchronous given with an engine"):
            LiteQueue(engine, synchronous="FULL")
        with pytest.raises(TypeError, match="table_prefix given with an engine"):
            PersistentQueue(engine, table_prefix="other_")
        with pytest.raises(TypeError, match="timeout given with an engine"):
            PersistentThreadPoolExecutor(engine, timeout_seconds=30)
        with pytest.raises(ValueError, match="journal_mode='keep'"):
            PersistentThreadPoolExecutor(open_engine(str(tmp_path / "k.db"), journal_mode="keep"))
    finally:
        engine.close()


def test_front_ends_take_urls_and_specs(tmp_path):
    url = "sqlite:///" + str(tmp_path / "q.db")
    PersistentQueue(url).put("by url")
    q = PersistentQueue(describe(url))
    assert q.path == str(tmp_path / "q.db")
    assert q.get(timeout=5) == "by url"
    q.task_done()
    q.close()


def test_a_pickled_queue_carries_its_engines_spec(tmp_path):
    url = "sqlite:///%s?synchronous=FULL&table_prefix=app_" % (tmp_path / "q.db")
    q = PersistentQueue(url, name="jobs")
    q.put("x")
    copy = pickle.loads(pickle.dumps(q))
    try:
        assert copy.engine is not q.engine
        assert copy.engine.spec == q.engine.spec
        assert copy.engine.spec.options["table_prefix"] == "app_"
        assert copy.get(timeout=5) == "x"
        copy.task_done()
    finally:
        copy.close()
        q.close()


def test_the_async_queue_takes_a_url(tmp_path):
    import asyncio

    url = "sqlite:///" + str(tmp_path / "q.db")

    async def main():
        q = AsyncPersistentQueue(url)
        await q.put("async")
        got = await q.get()
        q.task_done()
        await q.aclose()
        return got

    assert asyncio.run(main()) == "async"


def test_the_command_line_takes_a_url(tmp_path):
    url = "sqlite:///" + str(tmp_path / "q.db")
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-m", "persistqueue_liteq", "put", url, "hello"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert LiteQueue(str(tmp_path / "q.db")).qsize() == 1
    done = subprocess.run([sys.executable, "-m", "persistqueue_liteq", "stats", url],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert "default" in done.stdout
