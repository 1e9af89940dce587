"""A metrics hook: every count the engine makes (puts, gets, acks, retries,
dead_lettered, expired) handed to a function as it happens, for statsd,
OpenTelemetry or anything else; and the statsd emitter built on it."""

import socket

import pytest

from persistqueue_liteq import LiteQueue, PersistentQueue
from persistqueue_liteq.metrics_hooks import StatsdHook, add_metrics_hook, remove_metrics_hook


@pytest.fixture
def seen():
    events = []

    def hook(location, queue, name, n):
        events.append((queue, name, n))

    add_metrics_hook(hook)
    yield events
    remove_metrics_hook(hook)


def test_a_hook_sees_every_count_as_it_happens(db, seen):
    with LiteQueue(db, max_retries=0) as q:
        q.put_batch([b"a", b"b"], "jobs")
        msg = q.pop("jobs")
        q.ack(msg)
        msg = q.pop("jobs", invisible_seconds=0)
        q.process_failed(msg, "boom")
    assert ("jobs", "puts", 2) in seen
    assert [e for e in seen if e[1] == "gets"] == [("jobs", "gets", 1), ("jobs", "gets", 1)]
    assert ("jobs", "acks", 1) in seen
    assert ("jobs", "dead_lettered", 1) in seen


def test_the_queue_family_counts_through_the_same_hook(path, seen):
    q = PersistentQueue(str(path), name="work")
    try:
        q.put(1)
        q.get()
        q.task_done()
    finally:
        q.close()
    assert [name for queue, name, n in seen if queue == "work"] == ["puts", "gets", "acks"]


def test_a_failing_hook_never_fails_the_operation(db, caplog):
    def broken(location, queue, name, n):
        raise RuntimeError("statsd is down")

    add_metrics_hook(broken)
    try:
        with LiteQueue(db) as q:
            assert q.put(b"x") == 1  # committed, and said so
            assert q.pop().data == b"x"
    finally:
        remove_metrics_hook(broken)
    assert "statsd is down" in caplog.text


def test_statsd_hook_sends_counters(db):
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(10)
    hook = StatsdHook("127.0.0.1", server.getsockname()[1], prefix="shop")
    add_metrics_hook(hook)
    try:
        with LiteQueue(db) as q:
            q.put(b"x", "emails")
        assert server.recv(512) == b"shop.emails.puts:1|c"
    finally:
        remove_metrics_hook(hook)
        hook.close()
        server.close()


def test_statsd_names_are_sanitised():
    assert StatsdHook.metric_name("p", "a b:c|d", "puts") == "p.a_b_c_d.puts"
