"""A put/get/task_done loop of PersistentQueue, to count instructions
with callgrind (deterministic where wall-clock rates are not):

    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/tmp/a \\
        python benchmarks/callgrind_queue_loop.py 1000 [signed]

Run it with two counts (1000 and 3000) and divide the difference of the
totals by 2000: the instructions of one put + get + task_done, without the
start-up (imports, compiling, the first put and get).  ``signed`` passes
``hmac_key``.  Not a test: it asserts nothing.

What depends on the wall clock is turned off, so that two runs count the
same: the metrics flush (once a second) and the heartbeat (every
visibility_timeout/3), whose number would grow with how slowly valgrind ran.
"""

import os
import sys
import tempfile

from persistqueue_liteq import PersistentQueue


def main():
    n = int(sys.argv[1])
    key = b"k" * 32 if sys.argv[2:] == ["signed"] else None
    with tempfile.TemporaryDirectory() as directory:
        q = PersistentQueue(os.path.join(directory, "q.db"), hmac_key=key,
                            visibility_timeout=86400)
        q.engine._metrics.flush_interval = float("inf")
        q.engine._metrics.take()  # the next flush is due never
        q.put(0)  # start-up: schema, connection, the codec record
        q.get()
        q.task_done()
        for i in range(n):
            q.put(i)
            q.get()
            q.task_done()
        q.close()


if __name__ == "__main__":
    main()
