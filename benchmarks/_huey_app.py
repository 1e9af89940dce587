"""huey's side of run_all.py's pool section: a SqliteHuey on a given file,
its two trivial tasks, and a consumer to run in a subprocess.

A module of its own because huey finds a task by ``module.function``: the
benchmark (which enqueues) and the consumer process (which runs the tasks)
must both import the tasks from a module of the same name, ``_huey_app``.

The storage is huey's ``SqliteStorage`` (WAL) with ``synchronous=NORMAL``,
the setting every other SQLite contender of run_all.py uses; huey itself
leaves SQLite's default, which is FULL on most builds (every commit waits for
an fsync).
"""

import os
import sys
import time

from huey import SqliteHuey
from huey.storage import SqliteStorage


class NormalSqliteStorage(SqliteStorage):
    """huey's SqliteStorage, its connections set to synchronous=NORMAL."""

    def _create_connection(self):
        conn = super()._create_connection()
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn


def noop(x):
    return x


def warm_task(_):
    time.sleep(0.01)
    return os.getpid()


def make(path):
    """(huey, {plain function: its huey task}) on the file ``path``."""
    huey = SqliteHuey("bench", filename=path, storage_class=NormalSqliteStorage)
    return huey, {noop: huey.task()(noop), warm_task: huey.task()(warm_task)}


def consume(path, workers):
    """What ``huey_consumer _huey_app.huey -w N -k process`` does, on ``path``:
    N worker processes (forked), no periodic tasks, polling the queue from
    1 ms (huey's default starts at 100 ms and backs off to 10 s when the
    queue is empty).  Runs until SIGTERM."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    huey, _ = make(path)
    consumer = huey.create_consumer(workers=workers, worker_type="process", periodic=False,
                                    initial_delay=0.001, backoff=1.15, max_delay=0.05,
                                    check_worker_health=True)
    consumer.run()


if __name__ == "__main__":
    sys.exit("use run_all.py")
