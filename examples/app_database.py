"""A queue living inside an application's existing SQLite database.

    python examples/app_database.py [shop.db]

A shop keeps its customers and orders in shop.db.  Its background jobs go in
the same file, in tables named with a prefix (``table_prefix="jobs_"``), so
that there is one file to back up and the shop's own tables are never
touched.  The queue runs the file in WAL mode, which lets readers run while
one connection writes; as that changes how every connection to the file
works, it is said explicitly (``journal_mode="wal"``): without it, a queue
refuses to switch an application's file from another mode
(``journal_mode="keep"`` would keep that mode).

An order and its job are committed together: ``jobs.put_in(db, ...)`` puts
the job through the shop's own connection, inside the shop's transaction
(the transactional outbox), so a crash leaves both or neither.  Orders that
older code placed without a job (order 3 below) are found by a sweep at
startup, which may queue a job twice, so the job is idempotent: an order
already e-mailed is not e-mailed again.

Keep the shop's transactions short: SQLite has one writer at a time, so
while one is open every other writer (a consumer leasing a job included)
waits, and raises DatabaseBusy after ``timeout_seconds``.
"""

import json
import os
import sqlite3
import sys
import tempfile

from persistqueue_liteq import LiteQueue


def tables(db):
    rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
    return [name for (name,) in rows if not name.startswith("sqlite_")]


def create_shop(db):
    if "orders" in tables(db):
        return  # made by an earlier run
    with db:
        db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, email TEXT NOT NULL)")
        db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL,"
                   " item TEXT NOT NULL, emailed INTEGER NOT NULL DEFAULT 0)")
        db.execute("INSERT INTO customers (email) VALUES ('ada@example.com'), ('bob@example.com')")
        db.execute("INSERT INTO orders (customer_id, item, emailed) VALUES (2, 'chair', 1)")


def place_order(db, jobs, customer_id, item):
    with db:  # the shop's transaction, committed at the end of the block
        order_id = db.execute("INSERT INTO orders (customer_id, item) VALUES (?, ?)",
                              (customer_id, item)).lastrowid
        # Its job, in the same transaction: committed with the order or not at all.
        jobs.put_in(db, json.dumps({"order": order_id}).encode(), "emails")
    return order_id


def sweep(db, jobs):
    """At startup: queue a job for every order not e-mailed yet.  Some may be
    queued already; the job is idempotent, so that costs nothing but a look."""
    missing = [order_id for (order_id,) in db.execute("SELECT id FROM orders WHERE emailed = 0")]
    jobs.put_batch([json.dumps({"order": order_id}).encode() for order_id in missing], "emails")
    return missing


def send_emails(db, jobs):
    while True:
        with jobs.consume("emails", wait_seconds=0) as msg:  # acked when the block ends
            if msg is None:
                return
            order_id = json.loads(msg.data)["order"]
            email, item, emailed = db.execute(
                "SELECT email, item, emailed FROM orders JOIN customers"
                " ON customers.id = customer_id WHERE orders.id = ?", (order_id,)).fetchone()
            if emailed:
                print("  order %d was e-mailed already: skipped" % order_id)
                continue
            print("  e-mailed %s about order %d (%s)" % (email, order_id, item))
            # Sent, then marked: a crash in between sends it again when the
            # job comes back (at least once), never loses it.
            with db:
                db.execute("UPDATE orders SET emailed = 1 WHERE id = ?", (order_id,))


def main(path):
    db = sqlite3.connect(path)
    create_shop(db)
    shop_rows = "SELECT * FROM customers, orders"
    before = db.execute(shop_rows).fetchall()
    print("shop tables: %s" % ", ".join(tables(db)))

    jobs = LiteQueue(path, table_prefix="jobs_", journal_mode="wal")
    print("after opening the queue: %s" % ", ".join(tables(db)))
    print("shop rows unchanged: %s" % (db.execute(shop_rows).fetchall() == before))
    print("journal mode: %s" % db.execute("PRAGMA journal_mode").fetchone()[0])

    print("order %d placed, its job queued" % place_order(db, jobs, 1, "lamp"))
    with db:  # an order whose process died before it could queue the job
        db.execute("INSERT INTO orders (customer_id, item) VALUES (2, 'desk')")
    print("restart; sweep queued jobs for orders %s" % sweep(db, jobs))
    send_emails(db, jobs)
    orders = db.execute("SELECT id, item, emailed FROM orders").fetchall()
    print("orders (id, item, e-mailed): %s" % orders)
    jobs.close()
    db.close()


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(os.path.join(tmp, "shop.db"))
