"""A threaded crawler whose frontier survives a crash: queue.Queue, one line changed.

    python examples/threaded_crawler.py [frontier.db]

The crawler is the classic one: worker threads get a page from the queue,
fetch it, put the links not seen yet, and call task_done(); the main thread
waits with join(), then stops the workers with one None each.  The queue is
the one line that changes:

    q = queue.Queue()                                    # before
    q = PersistentQueue(path, visibility_timeout=2)      # after

A crawler that restarts must also remember which pages it fetched; this one
keeps them in a file of its own, beside the queue's.

It crawls a small site served by http.server on 127.0.0.1 (no internet):

1. A first crawler process is killed with SIGKILL after 8 pages.
2. The pages it found but never fetched are still in the file, and so are
   the ones it was fetching when it died (they come back when their
   2-second lease runs out, instead of the default 60 s).
3. A restarted crawler goes on from there and finds every page; none of
   the first run's 8 pages is fetched again.
"""

import functools
import http.server
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.request

from persistqueue_liteq import PersistentQueue

PAGES = 40
THREADS = 4
KILL_AFTER = 8
KILL = getattr(signal, "SIGKILL", signal.SIGTERM)
LINK = re.compile(r'href="([^"]+)"')


def make_site(root):
    """Page i links to pages 2i+1 and 2i+2, back to its parent and home."""
    for i in range(PAGES):
        links = [2 * i + 1, 2 * i + 2, (i - 1) // 2, 0]
        body = "".join('<a href="/page%d.html">page %d</a>\n' % (n, n)
                       for n in links if 0 <= n < PAGES)
        with open(os.path.join(root, "page%d.html" % i), "w") as f:
            f.write("<html><title>page %d</title><body>\n%s</body></html>\n" % (i, body))


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def crawl(path, base_url, found_file, kill_after=None):
    """Crawl until every page is fetched; return how many this run fetched.

    The queue holds paths, not URLs, so that a restart against a server on
    another port still works.  What a crawler remembers besides the queue
    must survive a crash too: here, the pages already fetched are lines of
    ``found_file``, written after their links were put, so a page whose
    worker died before its line was written is simply fetched again.
    """
    q = PersistentQueue(path, visibility_timeout=2)  # was: q = queue.Queue()
    lock = threading.Lock()  # guards fetched, seen and the found file
    with open(found_file, "a+") as f:
        f.seek(0)
        fetched = set(f.read().split())
    seen = set(fetched)
    fetched_now = []
    if not fetched:
        seen.add("/page0.html")
        q.put("/page0.html")

    def worker():
        while True:
            page = q.get()
            if page is None:
                q.task_done()  # a sentinel is an item too: done, or it stays in the file
                break
            try:
                with lock:
                    if page in fetched:
                        continue  # put twice (once before a crash): done already
                    fetched.add(page)  # claimed: no other thread fetches it now
                try:
                    with urllib.request.urlopen(base_url + page, timeout=10) as response:
                        html = response.read().decode()
                except OSError as exc:
                    print("failed %s: %s" % (page, exc), flush=True)
                    continue
                for link in LINK.findall(html):
                    with lock:
                        if link in seen:
                            continue
                        seen.add(link)
                    q.put(link)
                with lock:
                    with open(found_file, "a") as f:
                        f.write(page + "\n")
                    fetched_now.append(page)
                    print("fetched %s" % page, flush=True)
                    if len(fetched_now) == kill_after:
                        print("killed after %d pages" % kill_after, flush=True)
                        os.kill(os.getpid(), KILL)
            finally:
                q.task_done()

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for t in threads:
        t.start()
    q.join()  # every page put by this run or the last one is done
    for t in threads:
        q.put(None)
    for t in threads:
        t.join()
    q.close()
    return len(fetched_now)


def main(path):
    site = tempfile.mkdtemp()
    found_file = path + ".found"
    if os.path.exists(found_file):  # each run of the demo starts a fresh crawl
        os.remove(found_file)
    with PersistentQueue(path) as stale:
        stale.clear()
    make_site(site)
    handler = functools.partial(QuietHandler, directory=site)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base_url = "http://127.0.0.1:%d" % server.server_address[1]
    try:
        print("run 1: crawling %s with %d threads" % (base_url, THREADS), flush=True)
        subprocess.run([sys.executable, __file__, "crawl_and_die", path, base_url, found_file])
        with PersistentQueue(path) as left:
            print("restart: %d pages still in the file" % left.unfinished_tasks, flush=True)
        print("run 2: crawling again", flush=True)
        fetched = crawl(path, base_url, found_file)
        with open(found_file) as f:
            found = f.read().split()
        print("run 2 fetched %d pages" % fetched)
        print("found %d distinct pages of %d, %d recorded twice"
              % (len(set(found)), PAGES, len(found) - len(set(found))))
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(site)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "crawl_and_die":
        crawl(*sys.argv[2:], kill_after=KILL_AFTER)
    elif len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(os.path.join(tmp, "frontier.db"))
