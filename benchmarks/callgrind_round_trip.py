"""Instructions per round trip (put, lease, ack) of each contender, counted
with callgrind: deterministic where rates on a shared machine are not.

    python benchmarks/callgrind_round_trip.py             # the table, ~2 min
    python benchmarks/callgrind_round_trip.py --run KIND N  # one loop (what
                                                          # valgrind runs)

For every KIND (below) it runs ``valgrind --tool=callgrind`` on the loop at
N = 500 and N = 1500 and divides the difference of the totals by 1000: the
instructions of one round trip, start-up (imports, schema, the first put and
get) cancelled out.  ``PYTHONHASHSEED=0`` and no clock-driven work (the
metrics flush, the heartbeat, the files looked at once a millisecond: here
before every write) make two runs count the same.

KIND:
    raw          the minimal at-least-once loop of bench_queues (INSERT; UPDATE
                 ... WHERE id = (SELECT ... LIMIT 1) RETURNING; DELETE WHERE id
                 AND lease), pickling a dict of 3 ints
    raw-engine   the same loop with the engine's statements and tables
    liteq        LiteQueue: put(pickle.dumps(item)); m = pop(); loads; ack(m)
    persistent   PersistentQueue: put(item); get(); task_done()

Not a test: it asserts nothing.  Standard library and valgrind only.
"""

import os
import pickle
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
# PQLQ_ROOT: count another copy of the package (a commit to compare with,
# say ``git archive OLD persistqueue_liteq | tar -x -C DIR``).
ROOT = os.environ.get("PQLQ_ROOT") or os.path.dirname(HERE)
for p in (HERE, ROOT):
    if p not in sys.path:
        sys.path.insert(0, p)
import persistqueue_liteq  # noqa: E402  (from ROOT, before bench_queues adds its own)

KINDS = ("raw", "raw-engine", "liteq", "persistent")
COUNTS = (500, 1500)


def _loop(kind, directory):
    import bench_queues as b

    if kind == "raw":
        return b.minimal_round_trips(b.open_minimal(os.path.join(directory, "m.sqlite")))
    if kind == "raw-engine":
        return b.st_raw(directory, 0)[0]
    if kind == "liteq":
        from persistqueue_liteq import LiteQueue

        q = LiteQueue(os.path.join(directory, "l.sqlite"))
        _quiet(q.engine)

        def run(count):
            put, pop, ack = q.put, q.pop, q.ack
            dumps, loads, proto = pickle.dumps, pickle.loads, pickle.HIGHEST_PROTOCOL
            for i in range(count):
                put(dumps(b.make_item(0, i), proto))
                m = pop()
                loads(m.data)
                ack(m)
        return run
    if kind == "persistent":
        from persistqueue_liteq import PersistentQueue

        q = PersistentQueue(os.path.join(directory, "p.sqlite"), visibility_timeout=86400)
        _quiet(q.engine)
        return b._round_trips(q)
    raise SystemExit("unknown kind %r; one of %s" % (kind, ", ".join(KINDS)))


def _quiet(engine):
    """No metrics flush (once a second: their number would grow with how
    slowly valgrind runs)."""
    engine._metrics.flush_interval = float("inf")
    engine._metrics.take()


def run_one(kind, n):
    # The files are looked at before a write at most once a millisecond: how
    # many writes share a look depends on how fast valgrind runs.  Every
    # write looks here (what a process writing less than once a ms pays).
    from persistqueue_liteq.sqlite import connections

    connections._LOOK_INTERVAL = 0.0
    with tempfile.TemporaryDirectory() as directory:
        run = _loop(kind, directory)
        run(2)  # start-up: the first put and get prepare every statement
        run(n)


def count(kind, n):
    out = os.path.join(tempfile.gettempdir(), "cg-%s-%d-%d.out" % (kind, n, os.getpid()))
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out, sys.executable,
         os.path.abspath(__file__), "--run", kind, str(n)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    try:
        os.unlink(out)
    except OSError:
        pass
    found = re.search(r"Collected : (\d+)", proc.stdout)
    if proc.returncode or not found:
        raise SystemExit("valgrind failed for %s %d:\n%s" % (kind, n, proc.stdout[-2000:]))
    return int(found.group(1))


def table(kinds=KINDS):
    per = {}
    for kind in kinds:
        low, high = (count(kind, n) for n in COUNTS)
        per[kind] = (high - low) / (COUNTS[1] - COUNTS[0])
        print("%s: %.1fk instructions per round trip" % (kind, per[kind] / 1000),
              file=sys.stderr, flush=True)
    base = per.get("raw")
    lines = ["| contender | instructions per round trip | × raw |", "|---|---:|---:|"]
    for kind in kinds:
        lines.append("| %s | %.1fk | %s |" % (
            kind, per[kind] / 1000, "%.2f" % (per[kind] / base) if base else "—"))
    return lines


def main(argv):
    if argv[:1] == ["--run"]:
        run_one(argv[1], int(argv[2]))
        return
    print("package: %s" % os.path.dirname(persistqueue_liteq.__file__))
    print("\n".join(table(argv or KINDS)))


if __name__ == "__main__":
    main(sys.argv[1:])
