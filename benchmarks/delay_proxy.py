#!/usr/bin/env python3
"""A TCP proxy that holds every chunk back before passing it on: a slower
link to a server on this machine, where netem is not available.

    python benchmarks/delay_proxy.py [--listen 6543] [--to 127.0.0.1:5432]
        [--delay 0.00025]

Each direction of each connection is a thread that receives a chunk, sleeps
``--delay`` seconds and sends it.  ``time.sleep`` overshoots by tens of
microseconds, so measure the round trip it gives (``SELECT 1`` in a loop)
and report that, not the delay asked for.  For benchmarks only: it holds a
connection's chunks one after another, as a link with that latency and
ample bandwidth would.
"""

import argparse
import socket
import threading
import time


def pump(source, target, delay):
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            time.sleep(delay)
            target.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, target):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=int, default=6543, help="port on 127.0.0.1 (6543)")
    parser.add_argument("--to", default="127.0.0.1:5432", help="HOST:PORT to relay to")
    parser.add_argument("--delay", type=float, default=0.00025,
                        help="seconds each chunk is held, each way (0.00025)")
    args = parser.parse_args(argv)
    host, port = args.to.rsplit(":", 1)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.listen))
    listener.listen(64)
    while True:
        client, _ = listener.accept()
        server = socket.create_connection((host, int(port)))
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for source, target in ((client, server), (server, client)):
            threading.Thread(target=pump, args=(source, target, args.delay),
                             daemon=True).start()


if __name__ == "__main__":
    main()
