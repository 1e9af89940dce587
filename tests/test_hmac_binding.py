"""HMAC signatures bound to a message's id and queue, a queue's recorded
codec (serializer and key check), and signed pool rows.

The attacker here can write the queue file (raw sqlite3) but has no key:
whatever rows they copy, move or swap must be refused, never unpickled; a
consumer that merely has the wrong key or serializer must get a clear error
instead of dead-lettering the queue.
"""

import pickle
import queue
import sqlite3
import threading

import pytest

from persistqueue_liteq import (
    CodecMismatch,
    PersistentPriorityQueue,
    PersistentQueue,
    PersistentSimpleQueue,
    SerializationError,
    UnboundSignatures,
)
from persistqueue_liteq.serializers import Codec, JSONSerializer, PickleSerializer, Signer
from persistqueue_liteq.sqlite.engine import SQLiteEngine

KEY = b"the queue's key"
REFUSED = "cannot be deserialized: SignatureError: payload refused"

_side_effects = []


def _run_on_unpickle():
    _side_effects.append("code ran")


class Malicious:
    def __reduce__(self):
        return (_run_on_unpickle, ())


def raw(path, statement, params=()):
    """What an attacker with write access to the file does."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        return conn.execute(statement, params).fetchall()
    finally:
        conn.close()


def copy_row(path, msg_id, queue_name=None):
    raw(path, """INSERT INTO liteq_messages (queue, data, priority, visible_at, created_at)
                 SELECT coalesce(?, queue), data, priority, visible_at, created_at
                   FROM liteq_messages WHERE id = ?""", (queue_name, msg_id))


def drain(q):
    items = []
    while True:
        try:
            items.append(q.get_nowait())
        except queue.Empty:
            return items
        q.task_done()


# -- a signature binds its message's id and queue ------------------------------------

@pytest.mark.parametrize("cls", [PersistentQueue, PersistentSimpleQueue, PersistentPriorityQueue])
def test_a_signed_row_copied_into_its_queue_is_refused(path, opened, cls):
    q = opened(cls(path, hmac_key=KEY))
    q.put((1, "pay 100 EUR"))
    for _ in range(5):
        copy_row(path, 1)
    assert drain(q) == [(1, "pay 100 EUR")]  # once, not six times
    dead = q.dead_letters()
    assert [d.id for d in dead] == [2, 3, 4, 5, 6]
    assert all(d.dead_reason.startswith(REFUSED) for d in dead)
    assert "copied or moved" in dead[0].dead_reason


def test_a_signed_row_copied_or_moved_to_another_queue_is_refused(path, opened):
    jobs = opened(PersistentQueue(path, name="jobs", hmac_key=KEY))
    admin = opened(PersistentQueue(path, name="admin", hmac_key=KEY))
    admin.put("admin: harmless")  # the other queue is in use, with the same key
    jobs.put("rm -rf /tmp/scratch")
    jobs.put("second")
    copy_row(path, 2, "admin")
    raw(path, "UPDATE liteq_messages SET queue = 'admin' WHERE id = 3")  # moved
    assert drain(admin) == ["admin: harmless"]
    assert [d.id for d in admin.dead_letters()] == [4, 3]
    assert all(d.dead_reason.startswith(REFUSED) for d in admin.dead_letters())
    assert drain(jobs) == ["rm -rf /tmp/scratch"]


def test_swapped_payloads_are_refused_and_never_unpickled(path, opened):
    q = opened(PersistentQueue(path, hmac_key=KEY))
    q.put("first")
    q.put("second")
    rows = dict(raw(path, "SELECT id, data FROM liteq_messages"))
    for msg_id, other in ((1, 2), (2, 1)):
        raw(path, "UPDATE liteq_messages SET data = ? WHERE id = ?", (rows[other], msg_id))
    signed_malice = Codec(PickleSerializer(), KEY).encode(Malicious())  # 0.1.0's format
    [(data,)] = raw(path, "SELECT data FROM liteq_messages WHERE id = 1")
    raw(path, "UPDATE liteq_messages SET data = ? WHERE id = 1",
        (signed_malice[:32] + data[32:],))  # a genuine signature of another payload
    q.put("third")
    assert drain(q) == ["third"]
    assert _side_effects == []
    assert [d.dead_reason.startswith(REFUSED) for d in q.dead_letters()] == [True, True]


def test_batches_and_transactions_bind_each_message_to_its_id(path):
    engine = SQLiteEngine(path)
    signer = Signer(KEY)
    seal = lambda msg_id, data: signer.seal(signer.message_context("q", msg_id), data)
    try:
        first = engine.put("q", b"a")  # unsigned, then deleted: its id is never reused
        engine.delete(first)
        ids = engine.put_many("q", [b"b", b"c", b"d"], seal=seal)
        with engine.transaction() as tx:
            ids.append(tx.put("q", b"e", seal=seal))
            ids.extend(tx.put_many("q", [b"f", b"g"], seal=seal))
            ids.append(tx.put("q", b"h"))  # unsigned, in the same transaction
        ids.append(engine.put("q", b"i", seal=seal))
        assert ids == list(range(first + 1, first + 9))
        stored = {m.id: m.data for m in engine.messages("q")}
        for msg_id, payload in zip(ids, b"bcdefghi"):
            if payload == ord("h"):
                assert stored[msg_id] == b"h"
            else:
                context = signer.message_context("q", msg_id)
                assert signer.open(context, stored[msg_id]) == bytes([payload])
        assert engine.put("q", b"j") == ids[-1] + 1  # AUTOINCREMENT goes on from there
        with pytest.raises(ZeroDivisionError):  # a seal that raises stores nothing
            engine.put_many("q", [b"k", b"l"], seal=lambda msg_id, data: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            engine.put("q", b"m", seal=lambda msg_id, data: 1 / 0)
        assert engine.count("q") == 9
        assert engine.put("q", b"n", seal=seal) == ids[-1] + 2  # and the engine goes on
    finally:
        engine.close()


def _produce(path, n):
    q = PersistentQueue(path, hmac_key=KEY)
    try:
        for i in range(100):
            q.put((n, i))
    finally:
        q.close()


def test_concurrent_signed_writers_each_get_their_own_ids(path, opened, fork):
    # Processes contend for the file's lock (a signed put's BEGIN IMMEDIATE is
    # retried while busy), threads for this process's write lock.
    procs = [fork.Process(target=_produce, args=(path, n)) for n in range(3)]
    threads = [threading.Thread(target=_produce, args=(path, n)) for n in range(3, 5)]
    for worker in procs + threads:
        worker.start()
    for worker in procs + threads:
        worker.join(30)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    q = opened(PersistentQueue(path, hmac_key=KEY))
    assert sorted(drain(q)) == sorted((n, i) for n in range(5) for i in range(100))
    assert q.dead_letters() == []


# -- the queue's codec is recorded and compared -------------------------------------

@pytest.mark.parametrize("writer, reader, words", [
    (dict(hmac_key=KEY), dict(hmac_key=b"wrong key"), "written with another hmac_key"),
    (dict(hmac_key=KEY), dict(), "written with an hmac_key, this PersistentQueue has none"),
    (dict(), dict(hmac_key=KEY), "written without hmac_key, this PersistentQueue has one"),
    (dict(), dict(serializer="json"), "written with serializer pickle, this PersistentQueue "
                                      "has json"),
    (dict(serializer="json", hmac_key=KEY), dict(serializer="pickle", hmac_key=b"x"),
     "serializer json, this PersistentQueue has pickle and it was written with another"),
])
def test_a_consumer_with_the_wrong_codec_gets_a_clear_error_and_dead_letters_nothing(
        path, opened, writer, reader, words):
    producer = opened(PersistentQueue(path, name="jobs", **writer))
    for i in range(20):
        producer.put({"n": i})
    wrong = opened(PersistentQueue(path, name="jobs", **reader))
    for _ in range(2):  # and again: the item was handed back untouched
        with pytest.raises(CodecMismatch, match=words) as raised:
            wrong.get(timeout=5)
        assert "queue 'jobs' in %s" % wrong.path in str(raised.value)
        assert "nothing was read, nothing was dead-lettered" in str(raised.value)
    assert wrong.dead_letters() == []
    assert producer.engine.get(1).attempts == 0  # the refused deliveries did not count
    right = opened(PersistentQueue(path, name="jobs", **writer))
    assert drain(right) == [{"n": i} for i in range(20)]
    # A writer with the wrong codec stores nothing.
    producer.put({"n": 20})
    with pytest.raises(CodecMismatch, match=words.replace("message", "x") + ".*nothing was stored"):
        opened(PersistentQueue(path, name="jobs", **reader)).put({"n": 21})
    assert right.qsize() == 1


def test_serializers_that_read_each_other_match(path, opened):
    opened(PersistentQueue(path, serializer=pickle)).put([1])
    opened(PersistentQueue(path, serializer="pickle")).put([2])
    assert drain(opened(PersistentQueue(path, serializer=PickleSerializer(2)))) == [[1], [2]]
    import json
    opened(PersistentQueue(path, name="j", serializer=json)).put([3])
    assert drain(opened(PersistentQueue(path, name="j", serializer=JSONSerializer()))) == [[3]]


def test_an_empty_queue_takes_the_codec_of_its_next_writer(path, opened):
    old = opened(PersistentQueue(path, hmac_key=b"old key"))
    old.put("before the rotation")
    with pytest.raises(CodecMismatch):
        opened(PersistentQueue(path, hmac_key=b"new key")).put("too early")
    assert drain(old) == ["before the rotation"]
    new = opened(PersistentQueue(path, hmac_key=b"new key"))
    with pytest.raises(queue.Empty):  # a reader may start first: nothing to misread
        new.get_nowait()
    new.put("after")  # the queue is empty: the key can change
    assert drain(new) == ["after"]
    new.put("more")
    with pytest.raises(CodecMismatch):
        opened(PersistentQueue(path, hmac_key=b"old key")).get_nowait()


def test_a_queue_written_before_codecs_were_recorded_still_works(path, opened):
    q = opened(PersistentQueue(path, hmac_key=KEY))
    q.put("new style")
    raw(path, "DELETE FROM liteq_meta WHERE key LIKE 'codec:%'")  # as 0.1.0 wrote it
    reader = opened(PersistentQueue(path, hmac_key=KEY))
    assert reader.get_nowait() == "new style"
    reader.task_done()


def test_delete_queue_forgets_its_codec(path, opened):
    from persistqueue_liteq import LiteQueue

    opened(PersistentQueue(path, name="jobs", hmac_key=KEY)).put(1)
    lq = opened(LiteQueue(path))
    assert lq.engine.codec_of("jobs") is not None
    assert b"the queue's key" not in str(lq.engine.codec_of("jobs")).encode()
    lq.delete_queue("jobs")
    assert lq.engine.codec_of("jobs") is None


# -- rows signed by 0.1.0 -------------------------------------------------------------

def test_rows_signed_by_0_1_0_are_refused_until_upgraded(path, opened):
    q = opened(PersistentQueue(path, hmac_key=KEY))
    old = Codec(PickleSerializer(), KEY)
    for item in ("a", "b"):
        q.engine.put(q.name, old.encode(item))  # 0.1.0's format: the payload alone
    q.engine.put(q.name, Codec(PickleSerializer(), b"other").encode("forged"))
    with pytest.raises(UnboundSignatures, match="message 1 of queue 'default'.*upgrade_signatures"):
        q.get_nowait()
    assert q.dead_letters() == [] and q.engine.get(1).attempts == 0
    assert q.upgrade_signatures() == 2
    assert q.upgrade_signatures() == 0
    assert sorted(drain(q)) == ["a", "b"]  # the refused one was handed back behind
    [dead] = q.dead_letters()
    assert dead.id == 3 and dead.dead_reason.startswith(REFUSED)


# -- signed pools ------------------------------------------------------------------------

def _touch(target):
    open(target, "w").close()
    return "ran"


def _double(x):
    return 2 * x


class _Planted:
    """A pickle that creates a file when it is loaded."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (_touch, (self.target,))


@pytest.fixture(params=["thread", "process"])
def executor_class(request):
    from persistqueue_liteq import PersistentProcessPoolExecutor, PersistentThreadPoolExecutor

    return PersistentThreadPoolExecutor if request.param == "thread" else \
        PersistentProcessPoolExecutor


def test_a_tampered_task_row_never_runs_in_a_signed_pool(path, tmp_path, executor_class):
    target = tmp_path / "pwned"
    planted = pickle.dumps((_touch, (str(target),), {}))
    # Tasks stored by a pool that runs no workers, then replaced in the file.
    submitter = executor_class(path, hmac_key=KEY, run_workers=False)
    futures = [submitter.submit(_double, i) for i in range(3)]
    submitter._flush()
    raw(path, "UPDATE liteq_messages SET data = ? WHERE id = 2", (planted,))
    [(data,)] = raw(path, "SELECT data FROM liteq_messages WHERE id = 3")
    raw(path, "UPDATE liteq_messages SET data = ? WHERE id = 3",
        (data[:32] + pickle.dumps(_Planted(str(target))),))  # its signature kept
    with executor_class(path, max_workers=1, hmac_key=KEY) as pool:
        assert futures[0].result(timeout=30) == 0
        for future in futures[1:]:
            with pytest.raises(SerializationError, match="signature does not match") as raised:
                future.result(timeout=30)
            assert "was not unpickled" in str(raised.value)
        dead = pool.dead_letters()
    submitter.shutdown()
    assert not target.exists()
    assert sorted(d.id for d in dead) == [2, 3]
    assert all("signature does not match" in d.dead_reason for d in dead)


def test_a_tampered_result_row_fails_its_future_in_a_signed_pool(path, tmp_path, executor_class):
    target = tmp_path / "pwned"
    with executor_class(path, max_workers=1, hmac_key=KEY) as pool:
        assert pool.submit_keyed("a", _double, 1).result(timeout=30) == 2
        assert pool.submit_keyed("b", _double, 2).result(timeout=30) == 4
    raw(path, "UPDATE liteq_results SET data = ? WHERE key = 'a'",
        (pickle.dumps(_Planted(str(target))),))
    raw(path, "UPDATE liteq_results SET data = (SELECT data FROM liteq_results WHERE key = 'b'),"
              " ok = 0 WHERE key = 'b'")  # a value made into an exception
    with executor_class(path, max_workers=1, hmac_key=KEY) as pool:
        for key in ("a", "b"):
            with pytest.raises(SerializationError, match="signature does not match"):
                pool.submit_keyed(key, _double, 0).result(timeout=30)
    assert not target.exists()


def test_a_signed_pool_refuses_tasks_of_an_unsigned_one(path, tmp_path, executor_class):
    target = tmp_path / "pwned"
    unsigned = executor_class(path, run_workers=False)
    future = unsigned.submit(_touch, str(target))
    unsigned._flush()
    with executor_class(path, max_workers=1, hmac_key=KEY) as pool:
        with pytest.raises(SerializationError):  # its outcome is signed: the unsigned
            future.result(timeout=30)            # pool cannot read it either
        [dead] = pool.dead_letters()
        assert "signature does not match" in dead.dead_reason
        assert pool.submit(_double, 21).result(timeout=30) == 42
        assert list(pool.map(_double, range(3))) == [0, 2, 4]
    unsigned.shutdown()
    assert not target.exists()


def test_the_pools_check_their_key_up_front(path, executor_class):
    for key, error, words in [("text", TypeError, "encode"), (b"", ValueError, "empty"),
                              (3, TypeError, "bytes")]:
        with pytest.raises(error, match=words):
            executor_class(path, hmac_key=key)
