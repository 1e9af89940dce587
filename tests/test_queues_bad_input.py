"""Bad input to the persistent queues: items that do not serialize, stored
payloads that no longer deserialize or fail their signature, files of the
wrong kind; and the serializers themselves."""

import json
import pickle
import sqlite3
import sys
import threading
import types

import pytest

from persistqueue_liteq import (
    CodecMismatch,
    IncompatibleDatabase,
    PersistentPriorityQueue,
    PersistentQueue,
    PersistentSimpleQueue,
)
from persistqueue_liteq.serializers import (
    BytesSerializer,
    Codec,
    JSONSerializer,
    PickleSerializer,
    SignatureError,
    resolve,
)


def local_object():
    class Local:
        pass

    return Local()


@pytest.mark.parametrize("cls", [PersistentQueue, PersistentPriorityQueue, PersistentSimpleQueue])
@pytest.mark.parametrize("item", [lambda: 1, threading.Lock(), local_object()],
                         ids=["lambda", "lock", "local class"])
def test_an_unpicklable_item_raises_at_put_and_stores_nothing(path, opened, cls, item):
    q = opened(cls(path))
    if cls is PersistentPriorityQueue:
        item = (1, item)  # orderable: the failure is pickle's
    with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
        q.put(item)
    assert q.qsize() == 0 and q.engine.count(q.name, "live") == 0
    q.put((1, "fine"))  # the queue goes on
    assert q.get_nowait() == (1, "fine")


def test_an_unpicklable_item_takes_no_slot_of_a_bounded_queue(path, opened):
    q = opened(PersistentQueue(path, 1))
    with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
        q.put(lambda: 1, timeout=1)
    q.put_nowait("fits")


def test_an_item_whose_class_is_gone_is_dead_lettered_and_get_moves_on(path, opened, monkeypatch):
    module = types.ModuleType("pqlq_vanishing")
    exec("class Thing:\n    pass\n", module.__dict__)
    monkeypatch.setitem(sys.modules, "pqlq_vanishing", module)
    q = opened(PersistentQueue(path))
    q.put(module.Thing())
    q.put("next")
    monkeypatch.delitem(sys.modules, "pqlq_vanishing")  # as after a code change
    assert q.get_nowait() == "next"
    [dead] = q.dead_letters()
    assert dead.dead_reason == (
        "cannot be deserialized: ModuleNotFoundError: No module named 'pqlq_vanishing'")
    assert "Traceback" in dead.last_error
    assert q.unfinished_tasks == 1  # "next"; the dead letter is not waited for
    q.task_done()
    q.join()


_side_effects = []


def _run_on_unpickle():
    _side_effects.append("code ran")
    return "payload of an attacker"


class Malicious:
    def __reduce__(self):
        return (_run_on_unpickle, ())


def test_hmac_refuses_payloads_that_fail_the_check_without_unpickling_them(path, opened):
    signed = opened(PersistentQueue(path, hmac_key=b"our key"))
    signed.put("good")  # records the queue's serializer and key check
    # Written around the queue objects, straight into the file's engine:
    other = Codec(PickleSerializer(), b"another key")
    signed.engine.put(signed.name, other.dumps("forged"),
                      seal=lambda i, data: other.seal(signed.name, i, data))
    signed.engine.put(signed.name, pickle.dumps("unsigned"))
    signed.engine.put(signed.name, pickle.dumps(Malicious()))
    genuine = Codec(PickleSerializer(), b"our key").encode("genuine")
    signed.engine.put(signed.name, genuine[:32] + pickle.dumps(Malicious()))  # altered
    signed.put("last")
    assert signed.get_nowait() == "good"
    assert signed.get_nowait() == "last"
    assert _side_effects == []  # nothing of the others was unpickled
    dead = signed.dead_letters()
    assert len(dead) == 4
    assert all(d.dead_reason.startswith("cannot be deserialized: SignatureError") for d in dead)
    assert "unpickling data from an untrusted source can run arbitrary code" in dead[0].dead_reason
    # A queue object with another key, or none, is refused at its first put
    # (nothing stored) and at its first get (nothing dead-lettered).
    for key, words in [(b"another key", "another hmac_key than this PersistentQueue's"),
                       (None, "with an hmac_key, this PersistentQueue has none")]:
        with pytest.raises(CodecMismatch, match=words + "; nothing was stored"):
            opened(PersistentQueue(path, hmac_key=key)).put("forged")
    opened(PersistentQueue(path, name="other", hmac_key=b"k")).put("x")
    plain = opened(PersistentQueue(path, name="other"))
    with pytest.raises(CodecMismatch, match="nothing was read, nothing was dead-lettered"):
        plain.get_nowait()
    assert plain.dead_letters() == [] and plain.qsize() == 1


def test_the_codec_signs_and_checks():
    codec = Codec(JSONSerializer(), b"k")
    data = codec.encode({"a": [1, 2]})
    assert data[32:] == b'{"a":[1,2]}'
    assert codec.decode(data) == {"a": [1, 2]}
    for bad in (data[:-1], b"", data[:31], b"x" + data[1:]):
        with pytest.raises(SignatureError):
            codec.decode(bad)
    with pytest.raises(TypeError, match="bytes"):
        Codec(types.SimpleNamespace(dumps=lambda item: 3, loads=None)).encode(1)


@pytest.mark.parametrize("serializer, item, stored", [
    (None, {"a": (1, 2)}, None),
    ("pickle", {"a": (1, 2)}, None),
    ("json", {"a": [1, "é"]}, '{"a":[1,"é"]}'.encode("utf-8")),
    ("bytes", b"\x00raw", b"\x00raw"),
    (json, {"a": [1]}, b'{"a": [1]}'),  # a module: its str is stored as UTF-8
    (pickle, [1, 2], None),
])
def test_serializers(path, opened, serializer, item, stored):
    q = opened(PersistentQueue(path, serializer=serializer))
    q.put(item)
    if stored is not None:
        assert q.engine.peek(q.name).data == stored
    assert q.get_nowait() == item
    # The serializer pickles, so that the queue passes to a spawned process.
    copy = pickle.loads(pickle.dumps(q.serializer))
    assert Codec(copy).decode(Codec(q.serializer).encode(item)) == item


def test_the_json_and_bytes_serializers_refuse_what_they_cannot_store(path, opened):
    q = opened(PersistentQueue(path, serializer="json"))
    with pytest.raises(TypeError):
        q.put(object())
    q = opened(PersistentQueue(path, name="raw", serializer="bytes"))
    with pytest.raises(TypeError, match="bytes serializer"):
        q.put("text")
    assert q.engine.count("raw", "live") == 0


def test_resolve():
    assert isinstance(resolve(None), PickleSerializer)
    assert resolve(None).protocol == pickle.HIGHEST_PROTOCOL
    assert isinstance(resolve("bytes"), BytesSerializer)
    custom = types.SimpleNamespace(dumps=lambda item: b"", loads=lambda data: None)
    assert resolve(custom) is custom


def test_a_file_that_is_not_a_database(path):
    path.write_bytes(b"this is not an SQLite database" * 100)
    with pytest.raises(IncompatibleDatabase, match=str(path.name)):
        PersistentQueue(path)


def test_a_database_that_is_not_ours(path):
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE liteq_messages (x)")
    with pytest.raises(IncompatibleDatabase, match="table_prefix"):
        PersistentQueue(path)
    PersistentQueue(path, table_prefix="mine_").close()  # beside it, with another prefix


def test_a_database_of_a_newer_version(path):
    PersistentQueue(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE liteq_meta SET value = '999' WHERE key = 'schema_version'")
    with pytest.raises(IncompatibleDatabase, match="newer"):
        PersistentSimpleQueue(path)


def test_a_directory_path_says_it_is_a_directory(tmp_path):
    """persist-queue takes a directory; here that is an error that says so
    (it used to be a misleading ReadOnlyDatabase)."""
    from persistqueue_liteq import LiteQueue, PersistentQueue

    for make in (LiteQueue, PersistentQueue):
        with pytest.raises(IsADirectoryError, match="is a directory.*persistqueue_compat"):
            make(str(tmp_path))
