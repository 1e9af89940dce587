"""The optional maintenance interface, seen from the front ends: LiteQueue,
persist-queue's SQLiteQueue and the command line go through
``Engine.maintenance()`` only, and a backend without one gives Unsupported
(naming the backend and the operation), one line on the command line."""

import ast
import os

import pytest

from persistqueue_liteq import LiteQueue, cli
from persistqueue_liteq.exceptions import Unsupported
from persistqueue_liteq.persistqueue_compat import SQLiteQueue
from persistqueue_liteq.sqlite.engine import SQLiteEngine, SQLiteMaintenance

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "persistqueue_liteq")
FRONT_ENDS = ["liteq.py", "queues.py", "_queue_base.py", "_leases.py", "_codec_checks.py",
              "aio.py", "persistqueue_compat.py", "_policy.py"] + sorted(
    name for name in os.listdir(PACKAGE) if name.startswith("_aio_")) + [
    os.path.join(package, name) for package in ("cli", "pool")
    for name in sorted(os.listdir(os.path.join(PACKAGE, package))) if name.endswith(".py")]
#: The backends' own packages, which front ends never import.
BACKENDS = ("persistqueue_liteq.sqlite", "persistqueue_liteq.postgres")


def _without_maintenance(monkeypatch, engine):
    monkeypatch.setattr(engine, "maintenance", lambda: None)


def test_liteq_goes_through_the_maintenance_interface(q, monkeypatch):
    q.put_batch([b"x" * 1000] * 20)
    calls = []
    for name in ("checkpoint", "vacuum", "integrity_check"):
        real = getattr(SQLiteMaintenance, name)
        monkeypatch.setattr(SQLiteMaintenance, name,
                            lambda self, *a, _real=real, _name=name: calls.append(_name)
                            or _real(self, *a))
    assert len(q.checkpoint()) == 3
    q.vacuum()
    assert q.integrity_check() == ["ok"]
    assert calls == ["checkpoint", "vacuum", "integrity_check"]


@pytest.mark.parametrize("call", ["checkpoint", "vacuum", "integrity_check"])
def test_liteq_on_a_backend_without_maintenance_raises_unsupported(q, db, monkeypatch, call):
    q.put(b"kept")
    _without_maintenance(monkeypatch, q.engine)
    with pytest.raises(Unsupported) as caught:
        getattr(q, call)()
    text = str(caught.value)
    assert db in text and "SQLiteEngine" in text and call in text
    assert [m.data for m in q.pop_batch()] == [b"kept"]


def test_persistqueues_shrink_disk_usage_without_maintenance(path, monkeypatch):
    q = SQLiteQueue(str(path.parent), multithreading=True)
    try:
        q.put("kept")
        _without_maintenance(monkeypatch, q.engine)
        with pytest.raises(Unsupported, match="shrink_disk_usage"):
            q.shrink_disk_usage()
        assert q.get() == "kept"
    finally:
        q.close()


@pytest.mark.parametrize("command", [["checkpoint"], ["vacuum"], ["vacuum", "--auto", "100"],
                                     ["check"]])
def test_the_cli_on_a_backend_without_maintenance(db, monkeypatch, capsys, command):
    LiteQueue(db).close()
    monkeypatch.setattr(SQLiteEngine, "maintenance", lambda self: None)
    assert cli.main([command[0], db] + command[1:]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    what = " ".join(command[:2]) if "--auto" in command else command[0]
    assert err == ("persistqueue-liteq: error: %s (the SQLiteEngine backend) has no "
                   "maintenance interface: %s is not supported there\n" % (db, what))


def _imports(path):
    """(module, name) of every import of the file (name None for a module),
    relative modules made absolute."""
    package = ".".join(["persistqueue_liteq"] + os.path.dirname(
        os.path.relpath(path, PACKAGE)).split(os.sep)).rstrip(".")
    tree = ast.parse(open(path).read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = base + ("." + module if module else "")
            yield from ((module, alias.name) for alias in node.names)


def _in_a_backend(module, name):
    """Whether ``from module import name`` reaches into a backend's package."""
    full = module if name is None else module + "." + name
    return any(m == b or m.startswith(b + ".") for b in BACKENDS for m in (module, full))


@pytest.mark.parametrize("name", FRONT_ENDS)
def test_front_ends_know_neither_the_driver_nor_its_sql(name):
    imported = set(_imports(os.path.join(PACKAGE, name)))
    assert not [i for i in imported if i[0] == "sqlite3"]
    # Nothing from a backend's package (statements, connections, engine): the
    # default table prefix and the prefix check are the engine interface's.
    assert {i for i in imported if _in_a_backend(*i)} == set()
