"""What Liteq, sqqueue and LeanMQ users reach for, on LiteQueue (issue 15).

Liteq's whole documented signature, ids that round-trip through ``str()``,
Liteq's meaning of ``empty()``; expired messages counted nowhere; leases,
dead-lettering and acknowledgements by the batch; caller-chosen ids; queue
handles and queues that exist while empty.
"""

import logging
import sqlite3
import threading

import pytest

from persistqueue_liteq import DatabaseBusy, LiteQueue
from persistqueue_liteq.sqlite import wakeup


# -- Liteq's signature ----------------------------------------------------------

def test_liteq_documented_keywords_are_accepted(q):
    ids = [
        q.put(b"a", "default", 0, 5, 0.05),
        q.put(b"b", qname="default", visible_after_seconds=0, retries_on_conflict=5,
              pause_on_conflict=0.05),
    ]
    ids += q.put_batch([b"c", b"d"], "default", 0, 5, 0.05)
    ids += q.put_batch([b"e"], qname="default", retries_on_conflict=1, pause_on_conflict=0)
    got = [q.pop("default", 60, 0, 0.05), q.pop(qname="default", invisible_seconds=60,
                                                 wait_seconds=0, pause_on_empty_fetch=0.01)]
    got += q.pop_batch("default", 10, 60, 0, pause_on_empty_fetch=0.01)
    assert [m.id for m in got] == ids


@pytest.mark.parametrize("kw, match", [
    ({"retries_on_conflict": -1}, "retries_on_conflict must be at least 0"),
    ({"retries_on_conflict": 1.5}, "retries_on_conflict must be an int"),
    ({"pause_on_conflict": -0.1}, "pause_on_conflict must be non-negative"),
    ({"pause_on_conflict": float("nan")}, "pause_on_conflict must be a finite"),
])
def test_bad_conflict_keywords_are_refused_and_nothing_is_stored(q, kw, match):
    with pytest.raises((TypeError, ValueError), match=match):
        q.put(b"x", **kw)
    with pytest.raises((TypeError, ValueError), match=match):
        q.put_batch([b"x"], **kw)
    assert q.qsize() == 0


def test_bad_pause_on_empty_fetch_is_refused(q):
    for bad in (-1, 0, float("inf"), "1"):
        with pytest.raises((TypeError, ValueError), match="pause_on_empty_fetch must be"):
            q.pop(wait_seconds=1, pause_on_empty_fetch=bad)


def _hold_write_lock(db):
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def test_retries_on_conflict_retry_a_put_that_found_the_file_locked(db):
    q = LiteQueue(db, timeout_seconds=0.05)
    try:
        holder = _hold_write_lock(db)
        with pytest.raises(DatabaseBusy):
            q.put(b"x")  # no retries by default: DatabaseBusy after timeout_seconds
        retried = threading.Event()

        class OnRetry(logging.Handler):
            def emit(self, record):
                if "retrying" in record.getMessage():
                    retried.set()

        handler = OnRetry()
        logging.getLogger("persistqueue_liteq").addHandler(handler)
        try:
            def release_after_first_retry():
                retried.wait(30)
                holder.rollback()

            t = threading.Thread(target=release_after_first_retry)
            t.start()
            msg_id = q.put(b"x", retries_on_conflict=10000, pause_on_conflict=0.001)
            t.join()
        finally:
            logging.getLogger("persistqueue_liteq").removeHandler(handler)
        assert retried.is_set()
        assert q.get(msg_id).data == b"x"
        assert q.qsize() == 1  # stored once, whatever the retries
    finally:
        q.close()


def test_pause_on_empty_fetch_bounds_the_time_between_looks(q, db, monkeypatch):
    # A message written where no wake-up reaches us (another machine's
    # writer, a raw INSERT) is found within pause_on_empty_fetch.
    monkeypatch.setattr(wakeup, "SAFETY_INTERVAL", 60.0)
    engine = q.engine
    looks = threading.Semaphore(0)
    lease = engine.lease

    def counting_lease(*args, **kwargs):
        found = lease(*args, **kwargs)
        looks.release()  # after the look: what is inserted next, it missed
        return found

    monkeypatch.setattr(engine, "lease", counting_lease)

    def insert_unannounced():
        looks.acquire(timeout=30)
        looks.acquire(timeout=30)  # the look made inside the waiter: it sleeps next
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("INSERT INTO liteq_messages (queue, data, visible_at, created_at) "
                     "VALUES ('default', x'6869', 0, 0)")
        conn.close()

    t = threading.Thread(target=insert_unannounced)
    t.start()
    msg = q.pop(wait_seconds=30, pause_on_empty_fetch=0.01)
    t.join()
    assert msg is not None and msg.data == b"hi"


# -- ids that round-trip through str() --------------------------------------------

def test_ids_round_trip_through_str(q):
    msg_id = q.put(b"x")
    assert q.get(str(msg_id)).data == b"x"
    assert q.delete(str(msg_id)) is True
    assert q.get(str(msg_id)) is None
    assert q.delete(str(msg_id)) is False


@pytest.mark.parametrize("bad", ["", "abc", "-1", "1.0", " 1", "1e3", "٣", "0x1"])
def test_a_str_that_is_not_an_id_is_a_clear_error(q, bad):
    q.put(b"keep")
    with pytest.raises(ValueError, match="message id"):
        q.delete(bad)
    with pytest.raises(ValueError, match="message id"):
        q.get(bad)
    assert q.qsize() == 1


def test_redrive_takes_str_ids(db, opened):
    q = opened(LiteQueue(db, max_retries=0))
    q.put(b"x")
    msg = q.pop()
    q.process_failed(msg, "boom")
    assert q.redrive(ids=[str(msg.id)]) == 1
    assert q.pop().id == msg.id


# -- empty() as Liteq means it -------------------------------------------------------

def test_empty_is_true_when_nothing_is_visible(q):
    q.put(b"later", visible_after_seconds=60)
    assert q.empty()  # Liteq: "True if the queue has no visible messages"
    assert q.qsize() == 1  # but it is there
    q.put(b"now")
    assert not q.empty()
    q.pop()
    assert q.empty()  # the one visible message is in flight
    assert q.qsize() == 2


# -- expired messages are counted nowhere ------------------------------------------

def _expired(q, qname="default"):
    """Wait for a 0.05-second TTL to pass, by the engine's own clock."""
    deadline = q.engine.now() + 0.06
    while q.engine.now() < deadline:
        threading.Event().wait(0.01)


def test_join_returns_once_the_last_message_expired(q):
    q.put(b"x", ttl_seconds=0.1)
    assert q.join(timeout=2) is True
    assert q.join(timeout=0) is True
    # A leased message past its TTL counts while its lease holds: its
    # holder may still acknowledge it.
    q.put(b"x", ttl_seconds=0.05)
    msg = q.pop(invisible_seconds=60)
    _expired(q)
    assert q.qsize() == 1
    assert q.join(timeout=0) is False
    assert q.ack(msg) is True
    assert q.join(timeout=0) is True


def test_counts_queues_and_stats_see_only_unexpired_messages(q):
    q.put(b"short", ttl_seconds=0.05)
    q.put(b"delayed short", visible_after_seconds=3600, ttl_seconds=0.05)
    q.put(b"long", ttl_seconds=3600)
    _expired(q)
    assert q.qsize() == 1
    (stats,) = [s for s in q.queues() if s.name == "default"]
    assert (stats.ready, stats.delayed, stats.in_flight, stats.dead) == (1, 0, 0, 0)
    assert [m.data for m in q.engine.messages("default")] == [b"long"]
    assert q.engine.count("default", "waiting") == 1
    assert q.engine.count("default", "ready") == 1


def test_expire_now_removes_expired_messages_and_counts_them(q):
    for qname in ("default", "other"):
        q.put(b"e1", qname=qname, ttl_seconds=0.05)
    q.put(b"e2", visible_after_seconds=3600, ttl_seconds=0.05)
    q.put(b"kept", ttl_seconds=3600)
    _expired(q)
    assert q.expire_now("default") == 2
    assert q.process_expired_messages() == 1  # LeanMQ's name; every queue
    assert q.expire_now() == 0
    assert [m.data for m in q.engine.messages("default")] == [b"kept"]
    assert q.metrics()["default"]["expired"] == 2
    assert q.metrics()["other"]["expired"] == 1
    q.engine.flush_metrics()
    assert q.counters()["default"]["expired"] == 2


def test_expire_now_leaves_a_held_lease_and_dead_letters_alone(db, opened):
    q = opened(LiteQueue(db, max_retries=0))
    q.put(b"held", ttl_seconds=0.05)
    q.put(b"dead", ttl_seconds=0.05)
    held = q.pop(invisible_seconds=60)
    dead = q.pop(invisible_seconds=60)
    q.process_failed(dead, "boom")
    _expired(q)
    assert q.expire_now() == 0
    assert q.ack(held) is True
    assert [m.data for m in q.dead_letters()] == [b"dead"]


# -- sqqueue: recover leases, dead-letter now ----------------------------------------

def test_recover_leases_ends_every_lease_that_ran_out_and_says_how_many(q):
    q.put_batch([b"a", b"b", b"c"])
    q.put(b"other", qname="other")
    stale = q.pop_batch(max_messages=2, invisible_seconds=0)  # run out at once
    held = q.pop(invisible_seconds=60)
    q.pop("other", invisible_seconds=0)
    assert q.recover_leases("default") == 2
    assert q.recover_processing_messages() == 1  # sqqueue's name; every queue
    assert q.recover_leases() == 0
    assert all(q.ack(m) is False for m in stale)  # their holders were too late
    assert q.ack(held) is True
    assert sorted(m.data for m in q.pop_batch(max_messages=10)) == [b"a", b"b"]


def test_process_failed_can_dead_letter_at_once(q):
    q.put(b"bad")
    msg = q.pop()
    assert msg.attempts == 1 and q.max_retries == 5
    assert q.process_failed(msg, "Traceback...\nValueError: unfixable", send_to_dlq=True)
    (dead,) = q.dead_letters()
    assert dead.id == msg.id and dead.dead_reason == "ValueError: unfixable"
    assert "Traceback" in dead.last_error
    assert q.qsize() == 0
    assert q.metrics()["default"]["dead_lettered"] == 1


def test_move_to_dlq_takes_one_id_or_many_leased_or_not(q):
    ids = q.put_batch([b"1", b"2", b"3", b"4"])
    leased = q.pop()
    assert q.move_to_dlq(str(ids[1]), "bad input") == 1
    assert q.move_to_dlq([leased, ids[2], ids[1], 10**6], "bad input") == 2  # gone/dead skipped
    assert [m.id for m in q.dead_letters()] == [ids[1], ids[0], ids[2]]  # by dead_at
    assert {m.dead_reason for m in q.dead_letters()} == {"bad input"}
    assert q.ack(leased) is False  # its lease ended with the move
    other = q.put(b"x", qname="other")
    assert q.move_to_dlq([other], "r", qname="default") == 0  # not this queue's
    assert q.qsize("other") == 1
    with pytest.raises(ValueError, match="message id"):
        q.move_to_dlq(["4", "four"], "r")
    assert q.qsize() == 1  # checked before anything moved
    with pytest.raises(TypeError, match="reason"):
        q.move_to_dlq(ids[3], None)


# -- acknowledging many at once -----------------------------------------------------

def test_ack_batch_and_delete_batch(q):
    q.put_batch([b"%d" % i for i in range(6)])
    msgs = q.pop_batch(max_messages=4, invisible_seconds=60)
    assert q.ack_batch(msgs[:3]) == 3
    assert q.ack_batch(msgs[:3]) == 0  # already gone
    assert q.metrics()["default"]["acks"] == 3
    rest = [m.id for m in q.engine.messages("default")]
    assert len(rest) == 3
    assert q.delete_batch([str(rest[0]), rest[1], 10**6]) == 2
    assert q.qsize() == 1
    with pytest.raises(ValueError, match="delivered by pop"):
        q.ack_batch([q.peek()])
    assert q.qsize() == 1


# -- consumer_id ---------------------------------------------------------------------

def test_consumer_id_is_recorded_with_the_lease_and_shown(db, opened):
    q = opened(LiteQueue(db, max_retries=0, consumer_id="worker-1"))
    q.put_batch([b"a", b"b"])
    a = q.pop()
    b = q.pop(consumer_id="worker-2")
    assert (a.consumer_id, b.consumer_id) == ("worker-1", "worker-2")
    assert q.get(a.id).consumer_id == "worker-1"
    assert q.stats().consumers == ("worker-1", "worker-2")
    q.process_failed(b, "boom")
    (dead,) = q.dead_letters()
    assert dead.consumer_id == "worker-2"
    assert q.stats().consumers == ("worker-1",)
    q.release(a)
    assert q.peek().consumer_id == "worker-1"  # who had it last
    with pytest.raises(TypeError, match="consumer_id"):
        q.pop(consumer_id="")
    with pytest.raises(TypeError, match="consumer_id"):
        LiteQueue(db, consumer_id=7)


# -- caller-chosen ids -----------------------------------------------------------------

def test_a_put_with_a_stored_message_id_is_ignored(q):
    first = q.put(b"order 42", message_id="order-42")
    assert q.put(b"order 42 again", message_id="order-42") == first
    assert q.qsize() == 1 and q.get(first).data == b"order 42"
    assert q.get(first).key == "order-42"
    assert q.put(b"elsewhere", qname="other", message_id="order-42") != first  # per queue
    assert q.metrics()["default"]["puts"] == 1
    msg = q.pop()
    assert msg.key == "order-42"
    q.process_failed(msg, "x", send_to_dlq=True)
    assert q.put(b"while dead", message_id="order-42") == first  # a dead letter holds it
    q.clear(dlq=True)
    again = q.put(b"after", message_id="order-42")  # free once it is gone
    assert again != first and q.get(again).data == b"after"
    for bad in ("", 42, b"x"):
        with pytest.raises(TypeError, match="message_id"):
            q.put(b"x", message_id=bad)


def test_message_ids_of_concurrent_producers_store_one_message(db, opened):
    barrier = threading.Barrier(4)
    ids = []

    def produce():
        q = opened(LiteQueue(db))
        barrier.wait(10)
        ids.append(q.put(b"once", message_id="the-one"))

    threads = [threading.Thread(target=produce) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1 and LiteQueue(db).qsize() == 1


# -- queues that exist while empty; handles ------------------------------------------------

def test_a_drained_queue_stays_listed_until_deleted(q):
    q.put(b"x", qname="jobs")
    msg = q.pop("jobs")
    q.ack(msg)
    assert [(s.name, s.live, s.dead) for s in q.queues()] == [("jobs", 0, 0)]
    assert q.create_queue("emails", settings={"owner": "mail team"}) is True
    assert q.create_queue("emails") is False
    stats = {s.name: s for s in q.queues()}
    assert stats["emails"].settings == {"owner": "mail team"}
    assert stats["emails"].created_at is not None and stats["jobs"].settings == {}
    assert q.create_queue("emails", settings={"owner": "ops"}) is False
    assert q.stats("emails").settings == {"owner": "ops"}
    assert q.delete_queue("jobs") == 0
    assert [s.name for s in q.queues()] == ["emails"]
    assert q.stats("jobs") is None
    with pytest.raises(TypeError, match="JSON"):
        q.create_queue("bad", settings={"x": object()})
    with pytest.raises(TypeError, match="settings must be a dict"):
        q.create_queue("bad", settings=[1])
    assert q.stats("bad") is None


def test_queue_handles_are_bound_to_one_queue_and_its_dead_letters(q):
    emails = q.queue("emails")
    assert q.stats("emails").live == 0  # exists at once
    ids = [emails.put(b"hi"), emails.send_message(b"ho", message_id="m2")]
    q.put(b"elsewhere")
    got = emails.get_messages(count=10, consumer_id="mailer")
    assert [m.id for m in got] == ids and got[0].consumer_id == "mailer"
    dlq = emails.dead_letter_queue
    assert emails.move_to_dlq([got[0].id], "bounced", dlq) == 1
    assert emails.acknowledge_messages([got[1].id, q.peek().id]) == 1  # not another queue's
    assert q.qsize() == 1
    assert [m.dead_reason for m in dlq.get_messages(10)] == ["bounced"]
    assert dlq.qsize() == 1
    assert dlq.requeue_messages([ids[0]], emails) == 1
    assert emails.pop().id == ids[0]
    assert emails.get_info().in_flight == 1
    with pytest.raises(ValueError, match="stay with it"):
        emails.move_to_dlq([ids[0]], "r", q.queue("other").dead_letter_queue)


def test_leanmq_queue_pair_and_lookup(q):
    main, dlq = q.create_queue_pair("notifications")
    assert main.name == "notifications" and dlq.queue == main
    assert q.get_queue("notifications") == main
    # Equal handles are one key: a set or dict of handles holds each queue once.
    assert len({main, q.get_queue("notifications"), q.queue("notifications")}) == 1
    assert {main: 1}[q.get_queue("notifications")] == 1
    assert q.get_queue("missing") is None and q.get_dead_letter_queue("missing") is None
    assert q.get_dead_letter_queue("notifications").queue == main
    assert [s.name for s in q.list_queues()] == ["notifications"]
    assert len({main, q.queue("other")}) == 2
    main.delete()
    assert q.get_queue("notifications") is None


# -- the seed systems' README examples, translated -------------------------------------

def test_liteq_readme_examples(q):
    # Quick Start, Usage Guide and Low-Level API of Liteq's README; only the
    # import changes.
    q.put(b"Hello Liteq!")
    with q.consume() as msg:
        assert msg.data.decode() == "Hello Liteq!"
    q.put(b"Task 1")
    q.put(b"Task 2", qname="emails", visible_after_seconds=60)
    q.put_batch([b"Task 3", b"Task 4"], qname="emails")
    with q.consume(qname="emails") as msg:
        assert msg.data == b"Task 3"
    msg = q.pop(invisible_seconds=30)
    assert msg.data == b"Task 1"
    q.delete(msg.id)
    assert q.qsize("emails") == 2 and not q.empty("emails")
    q.pop("emails")
    assert q.empty("emails")  # Task 2 is not visible for a minute


def test_leanmq_reference_example(q):
    import json
    main_queue, dlq = q.create_queue_pair("notifications")
    for i in range(5):
        main_queue.send_message(json.dumps({"id": i, "message": "Notification %d" % i}).encode())
    messages = main_queue.get_messages(count=10)
    for message in messages:
        try:
            if json.loads(message.data)["id"] == 3:
                raise ValueError("cannot notify")
            main_queue.acknowledge_messages([message.id])
        except Exception as e:
            main_queue.move_to_dlq([message.id], f"Processing error: {e}", dlq)
    queue_info = main_queue.get_info()
    assert (queue_info.name, queue_info.live, queue_info.dead) == ("notifications", 0, 1)
    failed_messages = dlq.get_messages(count=10)
    assert [m.dead_reason for m in failed_messages] == ["Processing error: cannot notify"]
    assert dlq.requeue_messages([m.id for m in failed_messages], main_queue) == 1
    assert json.loads(main_queue.get_messages()[0].data)["id"] == 3
