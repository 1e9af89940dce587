"""Producers and workers on other machines, meeting through a PostgreSQL
server over a real network that fails (issue 13).

Each "machine" is a Linux network namespace joined to this one by a veth
pair, in 10.213.77.0/24 (a /30 per host).  The server listens on 127.0.0.1
only, so a forwarder of ours (this module run as ``forward``, in the root
namespace) listens on each veth's root-side address and relays to it; its
sockets to the hosts have short keepalives, so a session whose host was cut
off ends on the server within seconds, and it can hold a host's bytes (to
cut a link while a batch is in flight) and drop a host's connections.  On
each host runs an agent (this module run as ``agent``, under ``ip netns
exec``): one engine, commands and replies as JSON lines on its stdin and
stdout.  A link is cut with ``ip link set <veth> down`` inside the host's
namespace (netem is not always there).

Every test of a failure keeps a ledger: each message is acknowledged
exactly once or dead-lettered; none lost, none acknowledged twice.  The
server restarted under load is a cluster of the test's own (initdb, pg_ctl
as the postgres user), so that whatever else uses the test server goes on.

Runs as root where ``ip netns`` works and $PERSISTQUEUE_LITEQ_TEST_POSTGRES
names a server (CI); skipped otherwise.
"""

import collections
import glob
import json
import os
import pathlib
import queue as queue_module
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = "tests.test_postgres_multihost"
POSTGRES_ENV = "PERSISTQUEUE_LITEQ_TEST_POSTGRES"
SUBNET = "10.213.77"
NS_PREFIX = "pqlqnet-"
#: Short keepalives for the tests that wait for a dead link (the location's
#: own libpq parameters win over the backend's defaults).
FAST_TCP = "keepalives_idle=1&keepalives_interval=1&keepalives_count=2&tcp_user_timeout=2000"


def _skip_reason():
    """Why this machine cannot run the module, or None."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return "network namespaces need root on Linux"
    if shutil.which("ip") is None:
        return "no ip command (iproute2) for network namespaces"
    try:
        subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return "ip netns is unavailable here (%s)" % exc
    if not os.environ.get(POSTGRES_ENV):
        return ("set %s to a postgresql:// URL to test the PostgreSQL backend across "
                "network namespaces" % POSTGRES_ENV)
    return None


if __name__ != "__main__":
    _REASON = _skip_reason()
    pytestmark = [pytest.mark.skipif(_REASON is not None, reason=str(_REASON)),
                  pytest.mark.timeout(60)]


def _ip(*args, check=True):
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and done.returncode != 0:
        raise AssertionError("ip %s: %s" % (" ".join(args), done.stderr.strip()))
    return done


# -- the network ------------------------------------------------------------------


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale():
    """Namespaces and veths left by a run of this module that was killed
    (their names carry its pid, in hex)."""
    for line in _ip("netns", "list").stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(NS_PREFIX):
            tag = name[len(NS_PREFIX):].split("-")[0]
            if not _alive(int(tag, 16)):
                _ip("netns", "del", name, check=False)
    for line in _ip("-o", "link", "show").stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith("pq") and len(name) >= 10 and name[8] in "rh":
            try:
                pid = int(name[2:8], 16)
            except ValueError:
                continue
            if not _alive(pid):
                _ip("link", "del", name, check=False)


class Host:
    """One namespace, its veth pair and its addresses."""

    def __init__(self, tag, name, index):
        self.name = name
        self.ns = "%s%s-%s" % (NS_PREFIX, tag, name)
        self.root_veth = "pq%sr%d" % (tag, index)
        self.veth = "pq%sh%d" % (tag, index)
        self.root_ip = "%s.%d" % (SUBNET, 4 * index + 1)
        self.ip = "%s.%d" % (SUBNET, 4 * index + 2)

    def create(self):
        _ip("netns", "add", self.ns)
        _ip("link", "add", self.root_veth, "type", "veth", "peer", "name", self.veth)
        _ip("link", "set", self.veth, "netns", self.ns)
        _ip("addr", "add", self.root_ip + "/30", "dev", self.root_veth)
        _ip("link", "set", self.root_veth, "up")
        _ip("-n", self.ns, "addr", "add", self.ip + "/30", "dev", self.veth)
        _ip("-n", self.ns, "link", "set", "lo", "up")
        _ip("-n", self.ns, "link", "set", self.veth, "up")

    def cut(self):
        _ip("-n", self.ns, "link", "set", self.veth, "down")

    def restore(self):
        _ip("-n", self.ns, "link", "set", self.veth, "up")

    def remove(self):
        _ip("netns", "del", self.ns, check=False)
        _ip("link", "del", self.root_veth, check=False)  # else it goes asynchronously


class _Lines:
    """A child's JSON lines, read by a thread so that every read has a
    deadline."""

    def __init__(self, proc, what):
        self.proc, self.what = proc, what
        self._lines = queue_module.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def send(self, obj):
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def next(self, timeout):
        try:
            line = self._lines.get(timeout=timeout)
        except queue_module.Empty:
            raise AssertionError("%s said nothing for %s s" % (self.what, timeout)) from None
        if line is None:
            raise AssertionError("%s ended (exit code %s)" % (self.what, self.proc.wait(10)))
        return json.loads(line)


class Forwarder(_Lines):
    """The relay from the hosts' veths to the server (see _forward_main)."""

    def __init__(self, hosts, port, log):
        proc = subprocess.Popen(
            [sys.executable, "-m", MODULE, "forward", str(port)] + [h.root_ip for h in hosts],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=ROOT))
        super().__init__(proc, "the forwarder")
        self.ports = self.next(30)["ports"]

    def ask(self, *words):
        self.send(list(words))
        return self.next(30)["ok"]

    def close(self):
        self.proc.kill()
        self.proc.wait(10)


class Agent(_Lines):
    """A process on ``host``, with an engine on ``url``."""

    def __init__(self, host, url, log):
        proc = subprocess.Popen(
            ["ip", "netns", "exec", host.ns, sys.executable, "-m", MODULE, "agent", url],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=ROOT))
        super().__init__(proc, "the agent on host %s" % host.name)
        self.host = host
        self.expect("ready")

    def expect(self, event, timeout=30):
        line = self.next(timeout)
        assert line.get("event") == event, (event, line)
        return line

    def start(self, op, **args):
        self.send(dict(args, op=op))

    def reply(self, timeout=30):
        """The reply of the command started: {"ok": ...} or {"error": ...}."""
        while True:
            line = self.next(timeout)
            if "ok" in line or "error" in line:
                return line

    def call(self, op, timeout=30, **args):
        self.start(op, **args)
        line = self.reply(timeout)
        assert "ok" in line, "%s on host %s: %s" % (op, self.host.name, line)
        return line["ok"]

    def kill(self):
        os.kill(self.proc.pid, signal.SIGKILL)  # ip netns exec execs python
        self.proc.wait(10)

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


class Net:
    """Hosts, the forwarder, the agents: all removed at the end of the test."""

    def __init__(self, location, tmp_path, names=("a", "b"), port=None):
        self.location = location
        self.tmp_path = tmp_path
        tag = "%06x" % os.getpid()
        self.hosts = {}
        self.agents = []
        self.forwarder = None
        self._log = open(tmp_path / "children.log", "w")
        parts = urllib.parse.urlsplit(location)
        self._parts = parts
        _remove_stale()
        for index, name in enumerate(names):
            host = self.hosts[name] = Host(tag, name, index)
            host.create()
        self.forwarder = Forwarder(list(self.hosts.values()), port or parts.port or 5432,
                                   self._log)

    def url(self, host, extra=""):
        """The location as ``host`` reaches it: through its veth and the forwarder."""
        p = self._parts
        user = p.netloc.rsplit("@", 1)[0] + "@" if "@" in p.netloc else ""
        query = p.query + ("&" + extra if extra else "")
        return urllib.parse.urlunsplit((p.scheme, "%s%s:%d" % (
            user, host.root_ip, self.forwarder.ports[host.root_ip]), p.path, query, ""))

    def agent(self, name, extra=""):
        host = self.hosts[name]
        agent = Agent(host, self.url(host, extra), self._log)
        self.agents.append(agent)
        return agent

    def drop(self, name):
        """End every connection of host ``name`` through the forwarder, and
        wait until the server has ended their sessions (so what they left
        in flight is rolled back, not pending)."""
        ports = self.forwarder.ask("drop", self.hosts[name].root_ip)
        wait_until_sessions_end(self.location, ports)

    def close(self):
        for agent in self.agents:
            try:
                agent.close()
            except Exception:
                pass
        if self.forwarder is not None:
            self.forwarder.close()
        for host in self.hosts.values():
            host.remove()
        self._log.close()


def wait_until_sessions_end(location, ports, timeout=20):
    """Wait until no server session comes from the forwarder's ``ports``."""
    import psycopg

    base = location.split("?")[0]
    deadline = time.monotonic() + timeout
    with psycopg.connect(base, autocommit=True) as admin:
        while True:
            left = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE client_port = ANY(%s) "
                "AND client_addr = '127.0.0.1'", (list(ports),)).fetchone()[0]
            if not left:
                return
            assert time.monotonic() < deadline, "%d sessions of a dropped host remain" % left
            time.sleep(0.05)  # polling a condition, with a deadline


@pytest.fixture
def net(request, tmp_path):
    from .conftest import postgres_location

    location = postgres_location(request)
    network = Net(location, tmp_path)
    yield network
    network.close()


@pytest.fixture
def admin(net):
    """An engine in the test's own process, on the server directly."""
    from persistqueue_liteq.backends import open_engine

    engine = open_engine(net.location)
    yield engine
    engine.close()


# -- the ledger --------------------------------------------------------------------


class Ledger:
    """What happened to each message, as the callers saw it."""

    def __init__(self):
        self.stored = set()  # put() returned
        self.uncertain_puts = set()  # put() raised: stored or not
        self.acked = collections.Counter()  # ack() returned True
        self.uncertain_acks = set()  # ack() raised: acked or not
        self.after_ack = []  # delivered again after an ack returned True

    def delivered(self, payload):
        if self.acked[payload]:
            self.after_ack.append(payload)

    def check(self, engine, queue="q"):
        """Every message acknowledged exactly once or dead-lettered."""
        assert engine.count(queue) == 0, "messages left in %r" % queue
        dead = {m.data.decode() for m in engine.dead_letters(queue)}
        assert not self.after_ack, "delivered after its ack: %s" % self.after_ack
        twice = [p for p, n in self.acked.items() if n > 1]
        assert not twice, "acknowledged twice: %s" % twice
        for payload in self.stored:
            assert self.acked[payload] == 1 or payload in dead or (
                payload in self.uncertain_acks), "lost: %s" % payload
        for payload in self.uncertain_puts:
            assert self.acked[payload] <= 1


def consume(agent, ledger, queue="q", n=100, seconds=30.0):
    """Lease and acknowledge everything ready in ``queue`` from ``agent``."""
    while True:
        got = agent.call("lease", queue=queue, n=n, seconds=seconds)
        if not got:
            return
        for _, payload, _, _ in got:
            ledger.delivered(payload)
        done = agent.call("ack_each", items=[[m[0], m[2]] for m in got])
        for (_, payload, _, _), acked in zip(got, done):
            if acked:
                ledger.acked[payload] += 1


def produce(agent, ledger, payloads, queue="q"):
    agent.call("put_many", queue=queue, payloads=payloads)
    ledger.stored.update(payloads)


# -- the tests ---------------------------------------------------------------------


def test_a_worker_killed_mid_lease_on_one_host_is_retried_on_another(net, admin):
    a, b = net.agent("a"), net.agent("b")
    ledger = Ledger()
    produce(a, ledger, ["m0"])
    ((msg_id, payload, _, attempts),) = a.call("lease", queue="q", n=1, seconds=2.0)
    assert attempts == 1
    a.kill()
    got = b.call("lease_wait", queue="q", seconds=30.0, within=20.0)
    assert got[:2] == [msg_id, payload]
    assert got[3] == 2  # one more attempt counted
    ledger.delivered(payload)
    assert b.call("ack", msg_id=got[0], lease=got[2]) is True
    ledger.acked[payload] += 1
    produce(b, ledger, ["m%d" % i for i in range(1, 5)])
    consume(b, ledger)
    ledger.check(admin)


def test_a_cut_link_fails_in_seconds_and_the_late_ack_is_refused(net, admin):
    """With the backend's default keepalives and tcp_user_timeout (no TCP
    parameters in the location): an ack sent into a dead link raises an
    exception of ours within seconds instead of waiting ~15 minutes."""
    a, b = net.agent("a"), net.agent("b")
    ledger = Ledger()
    produce(a, ledger, ["m0"])
    ((msg_id, payload, lease, _),) = a.call("lease", queue="q", n=1, seconds=2.0)
    assert a.call("open_connections", n=4) >= 4  # idle in its pool, all to die with the link
    net.hosts["a"].cut()
    a.start("ack", msg_id=msg_id, lease=lease)
    got = b.call("lease_wait", queue="q", seconds=30.0, within=20.0)
    assert got[:2] == [msg_id, payload] and got[3] == 2
    ledger.delivered(payload)
    failed = a.reply(timeout=45)
    assert failed.get("ours") is True, failed
    assert failed["error"] in ("StorageError", "DatabaseBusy"), failed
    # The defaults: 10 s of unacknowledged data, once: not again on another
    # of the pool's (as dead) connections, which would be 20 s or more.
    assert failed["seconds"] < 17, failed
    net.hosts["a"].restore()
    assert a.call("ack", msg_id=msg_id, lease=lease) is False  # the stale token
    assert b.call("ack", msg_id=got[0], lease=got[2]) is True
    ledger.acked[payload] += 1
    produce(b, ledger, ["m%d" % i for i in range(1, 5)])
    consume(b, ledger)
    ledger.check(admin)


def test_a_blocked_get_on_one_host_is_woken_by_a_put_on_another(net, admin):
    a, b = net.agent("a"), net.agent("b")
    b.start("wait_put", queue="q", within=30.0)
    b.expect("waiting")  # registered, LISTENing, and its last look found nothing
    a.call("put", queue="q", payload="hello")
    woken = b.reply(timeout=40)
    # True only if the listener's notification woke it: a wait that ended
    # at the 1 s safety look says False.
    assert woken["ok"]["woken"] is True, woken
    assert woken["ok"]["got"] == ["hello"]
    assert woken["seconds"] < 30


def _key_round(a, b, keys):
    for agent in (a, b):
        agent.start("put_keyed", queue="tasks", keys=keys)
        agent.expect("armed")
    for agent in (a, b):
        agent.send("go")
    return a.reply()["ok"], b.reply()["ok"]


def test_the_same_keyed_calls_from_two_hosts_at_once_are_stored_once(net, admin):
    a, b = net.agent("a"), net.agent("b")
    for round_ in range(5):
        keys = ["r%d-k%d" % (round_, i) for i in range(50)]
        first, second = _key_round(a, b, keys)
        for key, (s1, id1), (s2, id2) in zip(keys, first, second):
            assert sorted([s1, s2]) == ["new", "queued"], (key, s1, s2)
            assert id1 == id2, key
        assert admin.count("tasks") == 50 * (round_ + 1)
    ledger = Ledger()
    ledger.stored.update("call " + m.key for m in admin.messages("tasks", limit=1000))
    consume(b, ledger, queue="tasks")
    ledger.check(admin, "tasks")


def test_a_link_cut_during_an_acks_commit_that_never_arrived_gives_the_message_back(
        net, admin):
    a, b = net.agent("a", FAST_TCP), net.agent("b")
    ledger = Ledger()
    produce(a, ledger, ["m0"])
    ((msg_id, payload, lease, _),) = a.call("lease", queue="q", n=1, seconds=2.0)
    a.call("pause_next_commit")
    a.start("ack", msg_id=msg_id, lease=lease)
    a.expect("committing")  # the DELETE is done; its COMMIT is next
    net.hosts["a"].cut()
    a.send("go")
    failed = a.reply(timeout=30)
    assert (failed.get("error"), failed.get("ours")) == ("StorageError", True), failed
    ledger.uncertain_acks.add(payload)
    net.hosts["a"].restore()
    net.drop("a")  # the server rolls the orphaned DELETE back
    got = b.call("lease_wait", queue="q", seconds=30.0, within=20.0)
    assert got[:2] == [msg_id, payload] and got[3] == 2  # not acked: it came back
    ledger.delivered(payload)
    assert b.call("ack", msg_id=got[0], lease=got[2]) is True
    ledger.acked[payload] += 1
    ledger.check(admin)


def test_a_link_cut_after_an_acks_commit_reached_the_server_keeps_it_acked(net, admin):
    import psycopg

    a, b = net.agent("a", FAST_TCP), net.agent("b")
    ledger = Ledger()
    produce(a, ledger, ["m0"])
    ((msg_id, payload, lease, _),) = a.call("lease", queue="q", n=1, seconds=2.0)
    key = uuid.uuid4().int >> 65  # an advisory lock of this test's own
    table = '"%s"."%smessages"' % (admin.sql.SCHEMA, admin.sql.PREFIX)
    with psycopg.connect(net.location.split("?")[0], autocommit=True) as conn:
        # The COMMIT runs this deferred trigger, which waits for our lock:
        # the COMMIT is on the server, its answer not yet sent.
        conn.execute('CREATE FUNCTION "%s".hold_commit() RETURNS trigger LANGUAGE plpgsql '
                     "AS $$ BEGIN PERFORM pg_advisory_xact_lock(%d); RETURN NULL; END $$"
                     % (admin.sql.SCHEMA, key))
        conn.execute('CREATE CONSTRAINT TRIGGER hold_commit AFTER DELETE ON %s DEFERRABLE '
                     'INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION "%s".hold_commit()'
                     % (table, admin.sql.SCHEMA))
        conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        a.start("ack", msg_id=msg_id, lease=lease)
        deadline = time.monotonic() + 20
        while not conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND objid = %s", (key & 0xFFFFFFFF,)).fetchone()[0]:
            assert time.monotonic() < deadline, "the ack's COMMIT never waited"
            time.sleep(0.02)  # polling a condition, with a deadline
        net.hosts["a"].cut()
        conn.execute("SELECT pg_advisory_unlock(%s)", (key,))  # it commits; the answer is lost
    failed = a.reply(timeout=30)
    assert (failed.get("error"), failed.get("ours")) == ("StorageError", True), failed
    ledger.uncertain_acks.add(payload)
    net.hosts["a"].restore()
    net.drop("a")
    assert b.call("lease", queue="q", n=1, seconds=30.0) == []  # acked: never both
    ledger.check(admin)


def test_a_producer_cut_while_a_batch_is_in_flight_stores_all_or_nothing(net, admin):
    a, b = net.agent("a", FAST_TCP), net.agent("b")
    payloads = ["p%05d-" % i + "x" * 4000 for i in range(2000)]  # 8 MB
    assert a.call("count", queue="q") == 0  # its pool has a connection
    net.forwarder.ask("hold", net.hosts["a"].root_ip, 1 << 20)
    a.start("put_many", queue="q", payloads=payloads)
    deadline = time.monotonic() + 20
    while True:  # 1 MB through; the rest waits in the sockets: in flight
        held, waiting = net.forwarder.ask("pending", net.hosts["a"].root_ip)
        if held and waiting:
            break
        assert time.monotonic() < deadline, "the batch never got in flight"
        time.sleep(0.02)  # polling a condition, with a deadline
    net.hosts["a"].cut()
    net.forwarder.ask("release", net.hosts["a"].root_ip)
    failed = a.reply(timeout=30)
    assert failed.get("ours") is True, failed
    net.hosts["a"].restore()
    net.drop("a")
    assert admin.count("q") == 0  # nothing
    ledger = Ledger()
    produce(a, ledger, payloads)  # again, whole
    assert admin.count("q") == len(payloads)  # all, once
    consume(b, ledger, n=500)
    ledger.check(admin)


def test_a_producer_cut_during_a_transactions_commit_stores_none_of_it(net, admin):
    a = net.agent("a", FAST_TCP)
    a.call("pause_next_commit")
    a.start("transaction_put", queues=["q", "r"], payload="both or neither")
    a.expect("committing")
    net.hosts["a"].cut()
    a.send("go")
    failed = a.reply(timeout=30)
    assert (failed.get("error"), failed.get("ours")) == ("StorageError", True), failed
    net.hosts["a"].restore()
    net.drop("a")
    assert (admin.count("q"), admin.count("r")) == (0, 0)
    a.call("transaction_put", queues=["q", "r"], payload="both or neither")
    assert (admin.count("q"), admin.count("r")) == (1, 1)


def _postgres_bin():
    """The directory of initdb and pg_ctl, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return os.path.dirname(found[-1]) if found else None


class PrivateServer:
    """A PostgreSQL cluster of this test's own, on 127.0.0.1, to restart:
    restarting the server of $PERSISTQUEUE_LITEQ_TEST_POSTGRES would break
    whatever else uses it meanwhile."""

    def __init__(self, tmp_path):
        self.bin = _postgres_bin()
        # Not under tmp_path: the server's user must reach it.
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="pqlqnet-pg-"))
        with socket.create_server(("127.0.0.1", 0)) as probe:
            self.port = probe.getsockname()[1]
        shutil.chown(self.dir, "postgres", "postgres")
        self._as_postgres("initdb", "-N", "-A", "trust", "-U", "root",
                          "-D", str(self.dir / "data"))
        self.start()

    def _as_postgres(self, tool, *args):
        done = subprocess.run(["runuser", "-u", "postgres", "--", os.path.join(self.bin, tool),
                               *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, "%s: %s" % (tool, done.stdout + done.stderr)

    def _ctl(self, *args):
        options = "-c listen_addresses=127.0.0.1 -p %d -c unix_socket_directories=%s " \
                  "-c fsync=off" % (self.port, self.dir)
        self._as_postgres("pg_ctl", "-D", str(self.dir / "data"), "-o", options,
                          "-l", str(self.dir / "log"), "-w", "-t", "30", *args)

    def start(self):
        self._ctl("start")
        self.wait_ready()

    def restart(self):
        """Crash and recover (``-m immediate``: no shutdown checkpoint)."""
        self._ctl("restart", "-m", "immediate")
        self.wait_ready()

    def wait_ready(self, timeout=30):
        deadline = time.monotonic() + timeout
        while subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                             timeout=30).returncode != 0:
            assert time.monotonic() < deadline, "the server did not come back"
            time.sleep(0.1)  # polling a condition, with a deadline

    def stop(self):
        try:
            self._ctl("stop", "-m", "immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def location(self):
        return "postgresql://root@127.0.0.1:%d/postgres?schema=restarted" % self.port


@pytest.fixture
def private_server(tmp_path):
    if _postgres_bin() is None or shutil.which("runuser") is None:
        pytest.skip("no PostgreSQL server programs (initdb, pg_ctl) to run a server to restart")
    server = PrivateServer(tmp_path)
    yield server
    server.stop()


def test_a_server_restarted_under_load_loses_and_doubles_nothing(private_server, tmp_path):
    from persistqueue_liteq.backends import open_engine

    net = Net(private_server.location, tmp_path, port=private_server.port)
    try:
        a, b = net.agent("a", FAST_TCP), net.agent("b", FAST_TCP)
        restarted, done = str(tmp_path / "restarted"), str(tmp_path / "produced")
        a.start("produce", queue="q", n=200, until=restarted)
        b.start("consume_until", queue="q", seconds=2.0, until=done, signal_after=50)
        b.expect("going", timeout=30)  # both hosts at work
        private_server.restart()
        open(restarted, "w").close()
        produced = a.reply(timeout=40)["ok"]
        open(done, "w").close()
        consumed = b.reply(timeout=40)["ok"]
        errors = produced["errors"] + consumed["errors"]
        assert all(ours for _, ours in errors), errors  # every failure one of ours
        ledger = Ledger()
        ledger.stored.update(produced["stored"])
        ledger.uncertain_puts.update(produced["uncertain"])
        ledger.uncertain_acks.update(consumed["uncertain"])
        for payload, acked_before in consumed["deliveries"]:
            if acked_before:
                ledger.after_ack.append(payload)
        ledger.acked.update(consumed["acked"])
        engine = open_engine(private_server.location)
        try:
            ledger.check(engine)
        finally:
            engine.close()
    finally:
        net.close()


# -- the processes ------------------------------------------------------------------


def _emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class _AgentOps:
    """What an agent does, one command at a time."""

    def __init__(self, url):
        from persistqueue_liteq.backends import open_engine

        self.engine = open_engine(url)
        self.pause_commit = False
        self._patch_commit()

    def _patch_commit(self):
        """The next COMMIT, once asked, says so and waits for "go" first (the
        test cuts the link meanwhile)."""
        from persistqueue_liteq.postgres import connections

        real = connections.Tx.commit
        ops = self

        def commit(tx):
            if ops.pause_commit:
                ops.pause_commit = False
                _emit({"event": "committing"})
                sys.stdin.readline()
            real(tx)

        connections.Tx.commit = commit

    @staticmethod
    def _msg(m):
        return [m.id, m.data.decode(), m.lease, m.attempts]

    def put(self, queue, payload):
        return self.engine.put(queue, payload.encode())

    def put_many(self, queue, payloads):
        return self.engine.put_many(queue, [p.encode() for p in payloads])

    def count(self, queue):
        return self.engine.count(queue)

    def lease(self, queue, n, seconds):
        return [self._msg(m) for m in self.engine.lease(queue, n, seconds)]

    def lease_wait(self, queue, seconds, within):
        """Lease one, waiting for it (woken by a put, else the safety look
        every second notices a lease that ran out)."""
        deadline = time.monotonic() + within
        with self.engine.waiter("put", queue) as waiter:
            while True:
                got = self.engine.lease(queue, 1, seconds)
                if got:
                    return self._msg(got[0])
                if time.monotonic() > deadline:
                    return None
                waiter.wait(deadline - time.monotonic())

    def ack(self, msg_id, lease):
        return self.engine.ack(msg_id, lease)

    def open_connections(self, n):
        """Make the pool hold ``n`` connections (idle again after)."""
        pool = self.engine._conns.pool()
        held = [pool.getconn(timeout=10) for _ in range(n)]
        for conn in held:
            conn.execute("SELECT 1")
            conn.rollback()
            pool.putconn(conn)
        return pool.get_stats()["pool_size"]

    def ack_each(self, items):
        return [self.engine.ack(msg_id, lease) for msg_id, lease in items]

    def produce(self, queue, n, until):
        """Put one message at a time: at least ``n``, and until the file
        ``until`` exists; say which puts returned and which raised."""
        from persistqueue_liteq.exceptions import LiteQueueError

        stored, uncertain, errors = [], [], []
        i = 0
        while i < n or not os.path.exists(until):
            payload = "p%d" % i
            try:
                self.engine.put(queue, payload.encode())
                stored.append(payload)
            except Exception as exc:
                uncertain.append(payload)
                errors.append([repr(exc), isinstance(exc, LiteQueueError)])
            i += 1
        return {"stored": stored, "uncertain": uncertain, "errors": errors}

    def consume_until(self, queue, seconds, until, signal_after):
        """Lease and ack until the file ``until`` exists and nothing is left."""
        from persistqueue_liteq.exceptions import LiteQueueError

        acked, uncertain, errors, deliveries = [], [], [], []
        acked_set = set()
        with self.engine.waiter("put", queue) as waiter:
            while True:
                try:
                    got = self.engine.lease(queue, 10, seconds)
                    if not got and os.path.exists(until) and not self.engine.count(queue):
                        break
                except Exception as exc:
                    errors.append([repr(exc), isinstance(exc, LiteQueueError)])
                    continue
                if not got:
                    waiter.wait(1.0)
                for m in got:
                    payload = m.data.decode()
                    deliveries.append([payload, payload in acked_set])
                    try:
                        if self.engine.ack(m.id, m.lease):
                            acked.append(payload)
                            acked_set.add(payload)
                            if len(acked) == signal_after:
                                _emit({"event": "going"})
                    except Exception as exc:
                        uncertain.append(payload)
                        errors.append([repr(exc), isinstance(exc, LiteQueueError)])
        return {"acked": acked, "uncertain": uncertain, "errors": errors,
                "deliveries": deliveries}

    def pause_next_commit(self):
        self.pause_commit = True

    def wait_put(self, queue, within):
        with self.engine.waiter("put", queue) as waiter:
            if self.engine.lease(queue, 1, 30.0):
                raise AssertionError("something was there before the put")
            _emit({"event": "waiting"})
            woken = waiter.wait(within)  # False when it ends at the safety look
            got = self.engine.lease(queue, 1, 30.0)
        return {"woken": woken, "got": [m.data.decode() for m in got]}

    def transaction_put(self, queues, payload):
        with self.engine.transaction() as tx:
            for queue in queues:
                tx.put(queue, payload.encode())

    def put_keyed(self, queue, keys):
        _emit({"event": "armed"})
        sys.stdin.readline()  # "go": both hosts at once
        return self.engine.put_keyed(queue, [(k, ("call " + k).encode()) for k in keys])


def _agent_main(url):
    from persistqueue_liteq.exceptions import LiteQueueError

    ops = _AgentOps(url)
    _emit({"event": "ready"})
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        command = json.loads(line)
        op = command.pop("op")
        start = time.monotonic()
        try:
            reply = {"ok": getattr(ops, op)(**command)}
        except Exception as exc:
            reply = {"error": type(exc).__name__, "ours": isinstance(exc, LiteQueueError),
                     "message": str(exc)}
        reply["seconds"] = time.monotonic() - start
        _emit(reply)
    ops.engine.close()


class _HostSide:
    """The forwarder's connections of one host, and its hold on their bytes."""

    def __init__(self):
        self.cond = threading.Condition()
        self.budget = None  # bytes from the host still forwarded; None: no hold
        self.pairs = []


class _Pair:
    def __init__(self, side, down, up):
        self.down, self.up = down, up
        self.port = up.getsockname()[1]
        self._closed = False
        self._lock = threading.Lock()
        self.side = side

    def close(self):
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for sock in (self.down, self.up):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def _tune(sock):
    """No delay added to small packets; a host that vanished is noticed
    within ~3 s."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 2)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 3000)


def _pump(pair, src, dst, side=None):
    try:
        while True:
            size = 65536
            if side is not None:
                with side.cond:
                    while side.budget is not None and side.budget <= 0:
                        side.cond.wait()
                    if side.budget is not None:
                        size = min(size, side.budget)
            data = src.recv(size)
            if not data:
                break
            if side is not None:
                with side.cond:
                    if side.budget is not None:
                        side.budget -= len(data)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        pair.close()


def _accept(listener, side, port):
    while True:
        down, _ = listener.accept()
        _tune(down)
        try:
            up = socket.create_connection(("127.0.0.1", port))
            up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            down.close()
            continue
        pair = _Pair(side, down, up)
        with side.cond:
            side.pairs.append(pair)
        threading.Thread(target=_pump, args=(pair, down, up, side), daemon=True).start()
        threading.Thread(target=_pump, args=(pair, up, down), daemon=True).start()


def _forward_main(port, addresses):
    """Relay each of ``addresses`` (a port of its own) to 127.0.0.1:``port``.
    Commands on stdin, as JSON lists: ["hold", ip, n] forwards n more bytes
    from that host, then none; ["pending", ip]: whether held, and how many
    bytes wait unread; ["release", ip]; ["drop", ip] ends its connections
    and answers their ports on the server's side."""
    import fcntl
    import termios

    sides, ports = {}, {}
    for ip in addresses:
        listener = socket.create_server((ip, 0))
        sides[ip] = _HostSide()
        ports[ip] = listener.getsockname()[1]
        threading.Thread(target=_accept, args=(listener, sides[ip], port), daemon=True).start()
    _emit({"ports": ports})
    while True:
        line = sys.stdin.readline()
        if not line:
            return
        word, ip, *args = json.loads(line)
        side = sides[ip]
        with side.cond:
            if word == "hold":
                side.budget = int(args[0])
                answer = True
            elif word == "release":
                side.budget = None
                side.cond.notify_all()
                answer = True
            elif word == "pending":
                waiting = 0
                for pair in side.pairs:
                    try:
                        waiting += int.from_bytes(fcntl.ioctl(
                            pair.down, termios.FIONREAD, b"\0\0\0\0"), sys.byteorder)
                    except (OSError, ValueError):  # closed
                        pass
                answer = [side.budget is not None and side.budget <= 0, waiting]
            elif word == "drop":
                pairs = list(side.pairs)
                answer = [pair.port for pair in pairs]
            else:
                raise ValueError(word)
        if word == "drop":
            for pair in pairs:
                pair.close()
        _emit({"ok": answer})


if __name__ == "__main__":
    if sys.argv[1] == "agent":
        _agent_main(sys.argv[2])
    elif sys.argv[1] == "forward":
        _forward_main(int(sys.argv[2]), sys.argv[3:])
    else:
        raise SystemExit("usage: agent URL | forward PORT ADDRESS...")
