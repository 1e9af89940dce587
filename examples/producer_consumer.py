"""Producer and consumer processes sharing one queue file.

    python examples/producer_consumer.py [jobs.db]

Two producer processes put 200 items each; three consumer processes get them
and call task_done().  The PersistentQueue is handed to every child as an
argument: it pickles as its path and options, so it works under spawn (used
here, as on macOS and Windows), forkserver and fork.  The parent waits with
q.join(), which reads the file and so sees the work of every process, then
checks that each item was consumed exactly once.
"""

import collections
import multiprocessing
import os
import sys
import tempfile

from persistqueue_liteq import PersistentQueue

PRODUCERS = 2
CONSUMERS = 3
ITEMS = 200  # per producer


def produce(q, name):
    for n in range(ITEMS):
        q.put((name, n))


def consume(q, reports):
    taken = []
    while True:
        item = q.get()
        if item is None:  # the parent's sentinel: no more work
            q.task_done()
            break
        taken.append(item)  # the work
        q.task_done()  # acknowledged: gone from the file
    reports.put((os.getpid(), taken))
    q.close()
    reports.close()


def main(path):
    ctx = multiprocessing.get_context("spawn")
    q = PersistentQueue(path, name="work")
    reports = PersistentQueue(path, name="reports")  # a second queue in the same file

    consumers = [ctx.Process(target=consume, args=(q, reports)) for _ in range(CONSUMERS)]
    producers = [ctx.Process(target=produce, args=(q, "producer-%d" % i))
                 for i in range(PRODUCERS)]
    for p in consumers + producers:
        p.start()
    for p in producers:
        p.join()
    q.join()  # every item put by any process has been got and done
    print("producers put %d items; all done" % (PRODUCERS * ITEMS))

    for _ in consumers:
        q.put(None)
    counts = collections.Counter()
    for _ in consumers:
        pid, taken = reports.get()
        reports.task_done()
        print("consumer %d took %d items" % (pid, len(taken)))
        counts.update(taken)
    for p in consumers:
        p.join()
    q.close()
    reports.close()

    expected = {("producer-%d" % i, n) for i in range(PRODUCERS) for n in range(ITEMS)}
    duplicates = sum(c - 1 for c in counts.values())
    print("consumed %d distinct items of %d, duplicates %d, missing %d"
          % (len(counts), len(expected), duplicates, len(expected - set(counts))))


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(os.path.join(tmp, "jobs.db"))
