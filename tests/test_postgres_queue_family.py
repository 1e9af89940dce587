"""CPython's own tests of the queue module (tests/cpython_test_queue.py),
run again with every queue on PostgreSQL: the queue family's contracts
(blocking, timeouts, task_done/join, shutdown, maxsize, threads) over the
PostgreSQL engine's leases and LISTEN/NOTIFY wake-ups.

Each test gets a schema of its own on $PERSISTQUEUE_LITEQ_TEST_POSTGRES
(dropped after it), each queue a table prefix of its own in it, as each gets
a file of its own on SQLite.  Skipped without that variable.  Commits do not
wait for their fsync here (``synchronous_commit=off``, through libpq's
``options``), to keep these tests' tens of thousands of commits fast.
"""

import importlib.util
import os
import uuid

from . import cpython_test_queue as cq
from .conftest import POSTGRES_ENV, drop_postgres_schema


#: Throughput tests (10,000 to 65,536 items through 10 to 100 threads): at
#: a commit (and an fsync) per operation on PostgreSQL they take minutes,
#: past the suite's timeout; their contracts are covered by the others.
#: Benchmarks, not this suite, are where PostgreSQL's throughput belongs.
_THROUGHPUT = {
    "test_many_threads", "test_many_threads_nonblock", "test_many_threads_timeout",
    "test_shutdown_all_methods_in_many_threads",
    "test_shutdown_immediate_all_methods_in_many_threads",
    # 30,000 commits: 42 s here with synchronous_commit=off, too near the
    # timeout on a loaded machine (it passes when run alone).
    "test_reentrancy",
}


class _OnPostgres:
    def setUp(self):
        if self._testMethodName in _THROUGHPUT:
            self.skipTest("a throughput test: minutes on PostgreSQL (see _THROUGHPUT)")
        url = os.environ.get(POSTGRES_ENV)
        if not url:
            self.skipTest("set %s to a postgresql:// URL to test the PostgreSQL backend"
                          % POSTGRES_ENV)
        if importlib.util.find_spec("psycopg") is None:
            self.skipTest("the postgres extra is not installed")
        schema = "test_" + uuid.uuid4().hex[:16]
        # Commits not waiting for their fsync (what SQLite's default
        # synchronous=NORMAL does too): these tests are about the queues'
        # semantics, and test_reentrancy alone makes 30,000 commits.
        base = (url + ("&" if "?" in url else "?") + "schema=" + schema
                + "&options=-csynchronous_commit%3Doff")
        original = cq._fresh_path
        cq._fresh_path = lambda: "%s&table_prefix=q%d_" % (base, len(cq._opened))
        # Cleanups run last-in first-out: the schema goes after the queues
        # (closed by _FreshFiles's cleanup) are.
        self.addCleanup(drop_postgres_schema, url, schema)
        self.addCleanup(setattr, cq, "_fresh_path", original)
        super().setUp()


class PostgresQueueTest(_OnPostgres, cq.PersistentQueueTest):
    pass


class PostgresLifoQueueTest(_OnPostgres, cq.PersistentLifoQueueTest):
    pass


class PostgresPriorityQueueTest(_OnPostgres, cq.PersistentPriorityQueueTest):
    pass


class PostgresFailingQueueTest(_OnPostgres, cq.PersistentFailingQueueTest):
    pass


class PostgresSimpleQueueTest(_OnPostgres, cq.PersistentSimpleQueueTest):
    pass
