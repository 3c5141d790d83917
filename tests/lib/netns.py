"""Network namespaces for the gateway tests: creation, commands inside them, and cleanup
that runs even when a test fails (atexit plus explicit teardown).

Topology (every name carries a per-run prefix, so parallel runs never collide):

    hA [ha0 10.1.0.2] -- [g1i 10.1.0.1] g1 [g1o 192.0.2.1] -- w1 |br0| w2 -- [g2o 192.0.2.2] g2 [g2i 10.2.0.1] -- [hb0 10.2.0.2] hB

`w` is a wire namespace with a bridge, so the outer (ESP) traffic can be captured by tcpdump
on w1 (AF_XDP's transmit path bypasses packet taps on the gateways themselves). IPv6:
fd00:1::/64 inside A, fd00:2::/64 inside B, 2001:db8:f::/64 outside. Forwarding stays off in
the gateway namespaces: only espd can carry traffic between the sides.
"""
import atexit
import os
import subprocess
import time

PREFIX = f"e{os.getpid() % 100000}"
_live = []


def sh(cmd, check=True, **kw):
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{cmd}: exit {r.returncode}: {r.stderr.strip()}")
    return r


def ns(name):
    return f"{PREFIX}-{name}"


def nsx(name, cmd, check=True, **kw):
    return sh(f"ip netns exec {ns(name)} {cmd}", check=check, **kw)


def popen(name, cmd, **kw):
    return subprocess.Popen(f"exec ip netns exec {ns(name)} {cmd}", shell=True, **kw)


def mac(name, dev):
    return nsx(name, f"cat /sys/class/net/{dev}/address").stdout.strip()


QUEUES = 2


def veth(a, da, b, db):
    # Two queues per end: the gateway polls one AF_XDP socket per queue.
    q = f"numtxqueues {QUEUES} numrxqueues {QUEUES}"
    sh(f"ip link add {da} netns {ns(a)} {q} type veth peer name {db} netns {ns(b)} {q}")


def up():
    names = ["hA", "g1", "w", "g2", "hB"]
    for n in names:
        sh(f"ip netns add {ns(n)}")
        _live.append(ns(n))
        nsx(n, "ip link set lo up")
        nsx(n, "sysctl -qw net.ipv6.conf.all.disable_ipv6=0")
    veth("hA", "ha0", "g1", "g1i")
    veth("g1", "g1o", "w", "w1")
    veth("g2", "g2o", "w", "w2")
    veth("g2", "g2i", "hB", "hb0")
    nsx("w", "ip link add br0 type bridge")
    for d in ("w1", "w2", "br0"):
        if d != "br0":
            nsx("w", f"ip link set {d} master br0")
        nsx("w", f"ip link set {d} up")
    addrs = [
        ("hA", "ha0", "10.1.0.2/24", "fd00:1::2/64"),
        ("g1", "g1i", "10.1.0.1/24", "fd00:1::1/64"),
        ("g1", "g1o", "192.0.2.1/24", "2001:db8:f::1/64"),
        ("g2", "g2o", "192.0.2.2/24", "2001:db8:f::2/64"),
        ("g2", "g2i", "10.2.0.1/24", "fd00:2::1/64"),
        ("hB", "hb0", "10.2.0.2/24", "fd00:2::2/64"),
    ]
    for n, d, a4, a6 in addrs:
        nsx(n, f"ip addr add {a4} dev {d}")
        nsx(n, f"ip addr add {a6} dev {d} nodad")
        nsx(n, f"ip link set {d} up")
    nsx("hA", "ip route add default via 10.1.0.1")
    nsx("hB", "ip route add default via 10.2.0.1")
    nsx("hA", "ip -6 route add default via fd00:1::1")
    nsx("hB", "ip -6 route add default via fd00:2::1")
    for g in ("g1", "g2"):
        nsx(g, "sysctl -qw net.ipv4.ip_forward=0")
    # Host offloads stay on: veth hands locally generated TCP/UDP to its peer with the
    # checksum still to be finished (CHECKSUM_PARTIAL), and espd run finishes it
    # (complete_checksums = "auto" on a veth inside interface).
    # Let the links come up.
    time.sleep(0.5)


def down():
    while _live:
        n = _live.pop()
        sh(f"ip netns pids {n} | xargs -r kill -9", check=False)
        sh(f"ip netns del {n}", check=False)


atexit.register(down)
