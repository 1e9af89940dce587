"""Quickstart: jobs survive the crash of every process that touched them.

    python examples/quickstart.py [queue.db]

1. A producer stores five jobs, then is killed with SIGKILL.
2. A worker takes the first job and is killed in the middle of it.
3. A restarted worker finds all five: the half-done one comes back as soon
   as its lease runs out, marked as a second attempt.
"""

import os
import signal
import subprocess
import sys
import tempfile

from persistqueue_liteq import LiteQueue

KILL = getattr(signal, "SIGKILL", signal.SIGTERM)


def produce(path):
    q = LiteQueue(path)
    q.put_batch([b"resize photo %d" % i for i in range(1, 6)])
    print("producer: stored 5 jobs, now killed before it could exit", flush=True)
    os.kill(os.getpid(), KILL)


def work_and_crash(path):
    q = LiteQueue(path)
    msg = q.pop(invisible_seconds=1)  # a short lease, to keep the demo short
    print("worker:   took %r, now killed in the middle of it" % msg.data.decode(), flush=True)
    os.kill(os.getpid(), KILL)


def drain(path):
    q = LiteQueue(path)
    print("restart:  %d jobs still there" % q.qsize())
    while q.qsize():  # empty() is False only while a job is visible (Liteq)
        with q.consume(invisible_on_receive=30, wait_seconds=5) as msg:
            again = " (attempt %d: its first worker died)" % msg.attempts if msg.attempts > 1 else ""
            print("          done %s%s" % (msg.data.decode(), again))
    print("all jobs done, none lost")


def main(path):
    for role in ("produce", "work_and_crash"):
        subprocess.run([sys.executable, __file__, role, path])
    drain(path)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in ("produce", "work_and_crash"):
        globals()[sys.argv[1]](sys.argv[2])
    elif len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(os.path.join(tmp, "jobs.db"))
