"""Dead letters: a poison message is retried, set aside with its reason, and
redriven once its handler is fixed.

    python examples/dead_letters.py [orders.db]

1. Three orders arrive; one of them has a quantity the handler cannot read.
2. The consumer pops each message and, when handling fails, calls
   process_failed(msg, reason): the message comes back for another attempt,
   and after 1 + max_retries failed deliveries it goes to the dead-letter
   queue with the reason.  The good orders are not held up.
3. An operator lists the dead letters (the command line does the same), the
   handler is fixed, and redrive() puts the message back with its original
   id: this time it is handled.

From a shell, the same steps on the same file:

    persistqueue-liteq dlq list orders.db --queue orders
    persistqueue-liteq dlq show orders.db 2        # reason and traceback
    persistqueue-liteq dlq redrive orders.db --queue orders
"""

import json
import os
import subprocess
import sys
import tempfile
import traceback

from persistqueue_liteq import LiteQueue

WORDS = {"one": 1, "two": 2, "three": 3}


def handle(order, fixed):
    """Version 1 reads digits only; the fixed version also reads words."""
    qty = order["qty"]
    if fixed and qty in WORDS:
        qty = WORDS[qty]
    print("  shipped order %d: %d x %s" % (order["id"], int(qty), order["item"]))


def drain(q, fixed=False):
    """Handle every ready order; on a failure, record it and go on."""
    while True:
        msg = q.pop("orders", invisible_seconds=30)
        if msg is None:
            return
        try:
            handle(json.loads(msg.data), fixed)
        except Exception:
            error = traceback.format_exc()
            print("  order message %d failed (attempt %d): %s"
                  % (msg.id, msg.attempts, error.strip().splitlines()[-1]))
            q.process_failed(msg, error)  # retried now; dead after 1 + max_retries
        else:
            q.ack(msg)
        # (q.consume() does the same in a with block: ack on success,
        # process_failed with the traceback on an exception.)


def main(path):
    q = LiteQueue(path, max_retries=2)
    for order in ({"id": 1, "item": "lamp", "qty": "2"},
                  {"id": 2, "item": "chair", "qty": "three"},
                  {"id": 3, "item": "desk", "qty": "1"}):
        q.put(json.dumps(order).encode(), "orders")

    print("handling orders:")
    drain(q)
    print("left in the queue: %d; dead letters:" % q.qsize("orders"))
    dead = q.dead_letters("orders")
    for msg in dead:
        print("  message %d, %d attempts: %s" % (msg.id, msg.attempts, msg.dead_reason))

    print("the command line sees the same:")
    cli = subprocess.run([sys.executable, "-m", "persistqueue_liteq", "dlq", "list", path],
                         capture_output=True, text=True, check=True)
    print("  " + cli.stdout.strip().replace("\n", "\n  "))

    print("handler fixed; redriving %d message(s):" % q.redrive("orders", [m.id for m in dead]))
    drain(q, fixed=True)
    print("left in the queue: %d; dead letters: %d"
          % (q.qsize("orders"), len(q.dead_letters("orders"))))
    q.close()


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(os.path.join(tmp, "orders.db"))
