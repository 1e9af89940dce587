"""What a notification costs when nobody waits: one access() of the
channel's directory, no lstat and no exception (two of each per round trip
before); and a waiter that arrives is still woken."""

import os

from persistqueue_liteq.sqlite import wakeup
from persistqueue_liteq.sqlite.engine import SQLiteEngine


def test_a_notification_with_no_waiter_looks_at_nothing_but_the_channel(tmp_path, monkeypatch):
    engine = SQLiteEngine(str(tmp_path / "q.db"))
    try:
        with engine.waiter("put", "other"):  # the base directory exists, and is ours
            pass
        looked = []
        real_lstat, real_access = os.lstat, os.access
        monkeypatch.setattr(wakeup.os, "lstat", lambda *a, **k: looked.append(a) or real_lstat(*a, **k))
        monkeypatch.setattr(wakeup.os, "access",
                            lambda *a, **k: looked.append(("access",) + a) or real_access(*a, **k))
        engine.put("q", b"x")
        assert [call[0] for call in looked] == ["access"], looked
        looked.clear()
        with engine.waiter("put", "q") as waiter:  # now there is one: found, checked, woken
            engine.put("q", b"y")
            assert waiter.wait(10.0) is True
        assert any(call[0] != "access" for call in looked)
    finally:
        engine.close()
