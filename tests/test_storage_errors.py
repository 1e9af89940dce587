"""Storage faults: each is an exception of ours that names the file and says
what happened, and nothing committed is lost by it."""

import os
import resource
import threading

import pytest

from persistqueue_liteq import LiteQueue, OutOfFileDescriptors

from .conftest import run_child


def _use_every_descriptor():
    held = []
    try:
        while True:
            held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    return held


def _run_out_of_descriptors(db):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    q = LiteQueue(db)
    q.put(b"before")
    held = _use_every_descriptor()
    outcome = {}

    def in_a_new_thread():  # a new thread needs a connection of its own
        try:
            q.put(b"lost?")
        except Exception as exc:  # noqa: BLE001 - checked below
            outcome["put"] = exc

    thread = threading.Thread(target=in_a_new_thread)
    thread.start()
    thread.join()
    try:
        LiteQueue(db)
    except Exception as exc:  # noqa: BLE001 - checked below
        outcome["open"] = exc
    for fd in held:
        os.close(fd)
    for what in ("put", "open"):
        exc = outcome.get(what)
        if not isinstance(exc, OutOfFileDescriptors):
            print(what, repr(exc))
            os._exit(3)
        text = str(exc)
        if db not in text or "file descriptors" not in text or "64" not in text:
            print(what, text)
            os._exit(4)
    # With descriptors back, everything works and nothing was half-stored.
    q.put(b"after")
    got = [m.data for m in q.pop_batch(max_messages=10)]
    os._exit(0 if got == [b"before", b"after"] else 5)


def test_running_out_of_file_descriptors_says_so(db, fork):
    # It used to say "cannot be opened for writing (is the file or its
    # directory read-only?)": SQLite reports both as "unable to open".
    assert run_child(fork, _run_out_of_descriptors, db) == 0
