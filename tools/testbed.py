"""A three-namespace testbed: client, router with NAT and conntrack, server.

::

    client 198.18.0.2/24 --veth-- 198.18.0.1/24 router 198.19.0.1/24 --veth-- 198.19.0.2/24 server
           (c0)                   (r0)                 (r1)                   (s0)

The router forwards from the client side to the server side and masquerades
there, so in conntrack the reply tuple does not mirror the original one. It
runs with ``nf_conntrack_acct=1`` and ``nf_conntrack_timestamp=1``. The only
routes are the connected ones plus the client's route to the server subnet:
nothing in the testbed has a default route, so no packet can leave it.
Addresses come from 198.18.0.0/15, the block set aside for benchmarking
(RFC 2544).

Every namespace, and every process started with ``Testbed.spawn``, is
removed by ``down()``, which the context manager calls on every exit path,
Ctrl-C and errors included.
"""

import atexit
import logging
import os
import secrets
import shutil
import signal
import subprocess
import time

log = logging.getLogger(__name__)

CLIENT_IP = "198.18.0.2"
ROUTER_CLIENT_IP = "198.18.0.1"
ROUTER_SERVER_IP = "198.19.0.1"
SERVER_IP = "198.19.0.2"
CLIENT_SUBNET = "198.18.0.0/24"
SERVER_SUBNET = "198.19.0.0/24"

# Interface names, the same in every testbed because each lives in its own
# namespace: c0 (client), r0 and r1 (router, client and server side), s0.
CAPTURE_INTERFACE = "r0"

NAMESPACE_PREFIX = "aiflowd-"

_REQUIRED_COMMANDS = {
    "ip": "iproute2",
    "nft": "nftables",
    "ethtool": "ethtool",
}

ROUTER_RULESET = """
table inet aiflowd_testbed {
    chain forward_filter {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "r0" oifname "r1" accept
    }
    chain postrouting_nat {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "r1" masquerade
    }
}
"""


class TestbedError(RuntimeError):
    pass


def require_root(what="the testbed"):
    """Raise TestbedError with one clear line unless running as root."""
    if os.geteuid() != 0:
        raise TestbedError("%s needs root (network namespaces, nftables, captures); "
                           "run it as root, e.g. with sudo" % what)


def _run(cmd, input_text=None):
    log.debug("run: %s", " ".join(cmd))
    done = subprocess.run(cmd, input=input_text, capture_output=True, text=True)
    if done.returncode != 0:
        raise TestbedError("command failed (exit %d): %s: %s"
                           % (done.returncode, " ".join(cmd), done.stderr.strip()))
    return done.stdout


class Testbed:
    """Client, router and server namespaces joined by veth pairs."""

    def __init__(self, tag=None):
        tag = tag or "%d-%s" % (os.getpid(), secrets.token_hex(2))
        self.tag = tag
        self.client = NAMESPACE_PREFIX + tag + "-client"
        self.router = NAMESPACE_PREFIX + tag + "-router"
        self.server = NAMESPACE_PREFIX + tag + "-server"
        self.namespaces = (self.client, self.router, self.server)
        self._created = []
        self._processes = []

    def __enter__(self):
        self.up()
        return self

    def __exit__(self, *exc_info):
        self.down()
        return False

    def up(self):
        """Create the namespaces, links, addresses, routes, sysctls and NAT."""
        require_root()
        for command, package in _REQUIRED_COMMANDS.items():
            if shutil.which(command) is None:
                raise TestbedError("%s not found on PATH; install the Debian package %s"
                                   % (command, package))
        atexit.register(self.down)
        try:
            self._build()
        except BaseException:
            self.down()
            raise
        log.info("testbed %s up: client %s, router %s/%s, server %s",
                 self.tag, CLIENT_IP, ROUTER_CLIENT_IP, ROUTER_SERVER_IP, SERVER_IP)

    def _build(self):
        for ns in self.namespaces:
            _run(["ip", "netns", "add", ns])
            self._created.append(ns)
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            # IPv6 would add router solicitations and neighbour discovery to
            # the capture; the testbed is IPv4 only.
            self.sysctl(ns, "net.ipv6.conf.all.disable_ipv6", 1)
            self.sysctl(ns, "net.ipv6.conf.default.disable_ipv6", 1)

        _run(["ip", "-n", self.client, "link", "add", "c0", "type", "veth",
              "peer", "name", "r0", "netns", self.router])
        _run(["ip", "-n", self.server, "link", "add", "s0", "type", "veth",
              "peer", "name", "r1", "netns", self.router])
        for ns, ifname, address in ((self.client, "c0", CLIENT_IP),
                                    (self.router, "r0", ROUTER_CLIENT_IP),
                                    (self.router, "r1", ROUTER_SERVER_IP),
                                    (self.server, "s0", SERVER_IP)):
            _run(["ip", "-n", ns, "addr", "add", address + "/24", "dev", ifname])
            # Segmentation and receive offloads would hand conntrack and
            # tcpdump 64 KB super-packets; a real link carries MTU-sized ones.
            _run(["ip", "netns", "exec", ns, "ethtool", "-K", ifname,
                  "tso", "off", "gso", "off", "gro", "off"])
            _run(["ip", "-n", ns, "link", "set", ifname, "up"])
        _run(["ip", "-n", self.client, "route", "add", SERVER_SUBNET, "via", ROUTER_CLIENT_IP])

        self.sysctl(self.router, "net.ipv4.ip_forward", 1)
        self.sysctl(self.router, "net.netfilter.nf_conntrack_acct", 1)
        self.sysctl(self.router, "net.netfilter.nf_conntrack_timestamp", 1)
        _run(["ip", "netns", "exec", self.router, "nft", "-f", "-"], input_text=ROUTER_RULESET)

    def sysctl(self, ns, name, value):
        _run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", "%s=%s" % (name, value)])

    def exec_args(self, ns, argv):
        """Return the argv that runs ``argv`` inside namespace ``ns``."""
        return ["ip", "netns", "exec", ns] + list(argv)

    def run(self, ns, argv, **kwargs):
        """Run a command to completion inside ``ns`` (subprocess.run arguments)."""
        return subprocess.run(self.exec_args(ns, argv), **kwargs)

    def spawn(self, ns, argv, **popen_kwargs):
        """Start a process inside ``ns``; down() stops it if it still runs."""
        process = subprocess.Popen(self.exec_args(ns, argv), **popen_kwargs)
        self._processes.append(process)
        log.debug("started pid %d in %s: %s", process.pid, ns, " ".join(argv))
        return process

    def down(self):
        """Stop the processes this testbed started and delete its namespaces."""
        for process in reversed(self._processes):
            stop_process(process)
        self._processes = []
        for ns in reversed(self._created):
            done = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True)
            if done.returncode != 0:
                log.error("Unable to delete namespace %s: %s", ns, done.stderr.strip())
        if self._created:
            log.info("testbed %s down", self.tag)
        self._created = []
        atexit.unregister(self.down)


def stop_process(process, sig=signal.SIGTERM, timeout=10.0):
    """Stop one process we started: ``sig``, then SIGKILL after ``timeout`` s."""
    if process.poll() is not None:
        return process.returncode
    process.send_signal(sig)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        log.warning("pid %d did not stop within %.0f s of signal %d; killing it",
                    process.pid, timeout, sig)
        process.kill()
        return process.wait()


def leftover_namespaces():
    """Return the names of aiflowd testbed namespaces that still exist."""
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    names = [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
    return [name for name in names if name.startswith(NAMESPACE_PREFIX)]


def remove_leftovers():
    """Delete testbed namespaces left by a run that was killed; return their names.

    Processes still inside them were started by that run: they get SIGTERM,
    then SIGKILL.
    """
    require_root("removing testbed namespaces")
    names = leftover_namespaces()
    for name in names:
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True,
                              text=True).stdout.split()
        for pid in pids:
            _signal_pid(int(pid), signal.SIGTERM)
        if pids:
            time.sleep(1.0)
            for pid in pids:
                _signal_pid(int(pid), signal.SIGKILL)
        _run(["ip", "netns", "del", name])
        log.info("removed leftover namespace %s (%d processes)", name, len(pids))
    return names


def _signal_pid(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
