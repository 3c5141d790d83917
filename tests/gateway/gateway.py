#!/usr/bin/env python3
"""`espd run` as a real gateway, in network namespaces (see tests/lib/netns.py for the topology).

1. Two gateways with mirrored static SAs (AES-128-GCM and AES-256-CBC+SHA2-256, each with
   and without NAT-T): ping (56, 1410 bytes with DF, 3000 bytes), ICMP "fragmentation needed"
   for a 1500-byte DF ping, IPv6 ping, a 1 MiB TCP transfer verified by SHA-256, UDP both
   ways; the outer traffic captured on the wire decrypts with tshark (ICV good for every ESP
   packet) and holds the inner pings; `espd show` reports it; SIGTERM detaches XDP.
2. One gateway against scapy's SecurityAssociation as the peer (an implementation we did not
   write): scapy's ESP is decrypted and delivered, the reply comes back as ESP that scapy
   decrypts.
3. Malformed frames, unknown SPIs, replays and bad ICVs at the outside interface are dropped
   and counted, forwarding continues, and IKE (UDP 500/4500) and SSH-like TCP still reach
   the kernel.
4. Bad starts: a second espd on the same control socket, a missing interface: one message,
   non-zero exit, nothing attached.

Usage: gateway.py ESPD_BINARY. Needs root. PASS/FAIL per check; exits 1 on any failure.
"""
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import netns  # noqa: E402
from checks import check  # noqa: E402
import checks  # noqa: E402
from netns import nsx, popen, sh, ns  # noqa: E402

ESPD = os.path.abspath(sys.argv[1])
HERE = os.path.dirname(os.path.abspath(__file__))
WORK = tempfile.mkdtemp(prefix="espd-gw-")


SUITES = {
    "gcm": dict(enc="aes128-gcm16", integ="none", ek=20, ik=0, scapy=("AES-GCM", "NULL"),
                tshark=("AES-GCM with 16 octet ICV [RFC4106]", "NULL")),
    "cbc": dict(enc="aes256-cbc", integ="sha256-128", ek=32, ik=32, scapy=("AES-CBC", "SHA2-256-128"),
                tshark=("AES-CBC [RFC3602]", "HMAC-SHA-256-128 [RFC4868]")),
}


def key(n, salt):
    return bytes((i * 13 + salt) & 0xFF for i in range(n))


def sa(name, direction, spi, s, salt, src, dst, nat):
    return f"""
[[tunnel.sa]]
name = "{name}"
direction = "{direction}"
spi = {spi:#x}
encryption = "{s['enc']}"
integrity = "{s['integ']}"
enc_key = "{key(s['ek'], salt).hex()}"
int_key = "{key(s['ik'], salt + 1).hex()}"
tunnel_src = "{src}"
tunnel_dst = "{dst}"
nat_t = {"true" if nat else "false"}
df_policy = "honor"
"""


def gw_config(side, s, nat, sock, extra_gateway="", log=None, v6=False, cores=None):
    """Gateway 1 (192.0.2.1, protects 10.1.0.0/24) or 2 (mirror). SPIs: 1->2 0x1001, 2->1 0x2001.
    v6: IPv6 outer (2001:db8:f::1/2) and an IPv6 tunnel (fd00:1::/64, fd00:2::/64)."""
    me, peer = ("192.0.2.1", "192.0.2.2") if side == 1 else ("192.0.2.2", "192.0.2.1")
    sa_me, sa_peer = me, peer
    if v6:
        sa_me, sa_peer = ("2001:db8:f::1", "2001:db8:f::2") if side == 1 else ("2001:db8:f::2", "2001:db8:f::1")
    mine4, theirs4 = ("10.1.0.0/24", "10.2.0.0/24") if side == 1 else ("10.2.0.0/24", "10.1.0.0/24")
    mine6, theirs6 = ("fd00:1::/64", "fd00:2::/64") if side == 1 else ("fd00:2::/64", "fd00:1::/64")
    out_spi, in_spi = (0x1001, 0x2001) if side == 1 else (0x2001, 0x1001)
    out_salt, in_salt = (1, 2) if side == 1 else (2, 1)
    cores = cores or [0 if side == 1 else 1]
    tunnels = ""
    for i, name in enumerate(("t1", "t2")):
        tunnels += f"""
[[tunnel]]
name = "gw{side}-{name}"
connection = "vpn-gw{side}"
outside_ip = "{me}"
peer_ip = "{peer}"
pre_shared_key = "lab.tunnel_{i}"
routing = "static"
"""
        if v6:
            tunnels += f'tunnel_inside_ip_version = "ipv6"\nlocal_ipv6_network_cidr = "{theirs6}"\nremote_ipv6_network_cidr = "{mine6}"\n'
        else:
            tunnels += f'local_ipv4_network_cidr = "{theirs4}"\nremote_ipv4_network_cidr = "{mine4}"\n'
        if i == 0 and log:
            tunnels += f'log_enabled = true\nlog_destination = "{log}"\nlog_output_format = "json"\n'
        if i == 0:
            tunnels += sa(f"gw{side}-out", "out", out_spi, s, out_salt, sa_me, sa_peer, nat)
            tunnels += sa(f"gw{side}-in", "in", in_spi, s, in_salt, sa_peer, sa_me, nat)
    return f"""
[gateway]
inside_interface = "g{side}i"
outside_interface = "g{side}o"
cores = {cores}
xdp_mode = "auto"
control_socket = "{sock}"
idle_sleep_us = 20
{extra_gateway}
ike = false
{tunnels}
"""


class Gw:
    def __init__(self, side, s, nat, tag, extra_gateway="", v6=False, text=None, notify=None, cores=None):
        self.side = side
        self.notify = notify
        self.sock = os.path.join(WORK, f"{tag}-g{side}.sock")
        self.cfg = os.path.join(WORK, f"{tag}-g{side}.toml")
        self.keys = os.path.join(WORK, f"{tag}-g{side}.keys")
        self.log = os.path.join(WORK, f"{tag}-g{side}.log")
        self.tunnel_log = os.path.join(WORK, f"{tag}-g{side}.tunnel.json")
        self.state = os.path.join(WORK, f"{tag}-g{side}.state")
        extra_gateway += f'\nstate_directory = "{self.state}"\n'
        with open(self.cfg, "w") as f:
            f.write(text.format(sock=self.sock, state=self.state) if text is not None
                    else gw_config(side, s, nat, self.sock, extra_gateway, self.tunnel_log, v6, cores))
        self.start()

    def start(self):
        env = f"env NOTIFY_SOCKET={self.notify} " if self.notify else ""
        self.p = popen(f"g{self.side}", f"{env}{ESPD} run --config {self.cfg} --export-keys {self.keys}",
                       stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        for _ in range(200):
            if os.path.exists(self.sock) and "gateway up" in open(self.log).read():
                break
            if self.p.poll() is not None:
                break
            time.sleep(0.05)

    def up(self):
        return self.p.poll() is None and "gateway up" in open(self.log).read()

    def show(self, what):
        r = subprocess.run([ESPD, "show", what, "--json", "--socket", self.sock], capture_output=True, text=True)
        if r.returncode != 0:
            return {"error": r.stderr}
        return json.loads(r.stdout)

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            return self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            return -9


def ping(src, dst, extra="", count=3):
    cmd = "ping -6" if ":" in dst else "ping"
    r = nsx(src, f"{cmd} -n -c {count} -i 0.2 -W 2 {extra} {dst}", check=False)
    return r


def received(r):
    for line in r.stdout.splitlines():
        if "received" in line:
            return int(line.split(",")[1].split()[0])
    return 0


TCP_SERVER = r"""
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.2.0.2", 5001)); s.listen(1); s.settimeout(20)
c, _ = s.accept(); c.settimeout(20); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(65536)
    if not b: break
    h.update(b); n += len(b)
print(n, h.hexdigest())
"""

TCP_CLIENT = r"""
import hashlib, os, socket, sys
data = os.urandom(1 << 20)
s = socket.create_connection(("10.2.0.2", 5001), timeout=20)
s.sendall(data); s.shutdown(socket.SHUT_WR); s.recv(1)
print(len(data), hashlib.sha256(data).hexdigest())
"""

UDP_RECV = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 5002)); s.settimeout(3)
n = 0
try:
    while True:
        b, _ = s.recvfrom(2000)
        if len(b) == 1000 and b[:4] == b"espd": n += 1
except socket.timeout:
    pass
print(n)
"""

UDP_SEND = r"""
import socket, sys, time
flows = int(sys.argv[2])
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(flows)]
for i in range(200 if flows == 1 else 10 * flows):
    socks[i % flows].sendto(b"espd" + bytes(996), (sys.argv[1], 5002)); time.sleep(0.002)
"""


def py(nsname, script, *args, background=False):
    path = os.path.join(WORK, f"s{abs(hash(script)) % 100000}.py")
    with open(path, "w") as f:
        f.write(script)
    a = " ".join(args)
    if background:
        return popen(nsname, f"python3 {path} {a}", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return nsx(nsname, f"python3 {path} {a}", check=False)


def udp_one_way(src, dst_ns, dst_ip, flows=1):
    rx = py(dst_ns, UDP_RECV, dst_ip, background=True)
    time.sleep(0.3)
    py(src, UDP_SEND, dst_ip, str(flows))
    out, _ = rx.communicate(timeout=20)
    return int(out.strip() or 0)


def tshark_decrypt(pcap, uats, echo_filter="icmp.type == 8 && ip.src == 10.1.0.2 && ip.dst == 10.2.0.2"):
    """(esp packets, icv good, echo requests 10.1.0.2 -> 10.2.0.2 inside)."""
    uat = " ".join(f"-o uat:esp_sa:{u!r}" for u in uats)
    base = f"tshark -n -r {pcap} -o esp.enable_encryption_decode:TRUE -o esp.enable_authentication_check:TRUE {uat}"
    r = sh(f"{base} -T fields -e esp.icv_good -Y esp", check=False)
    lines = [l for l in r.stdout.splitlines() if l.strip()]
    good = sum(1 for l in lines if l.split(",")[0] == "1")
    r2 = sh(f"{base} -Y 'esp && {echo_filter}' -T fields -e frame.number", check=False)
    echoes = len([l for l in r2.stdout.splitlines() if l.strip()])
    return len(lines), good, echoes, r.stderr[-300:]


def xdp_attached(nsname, dev):
    return "xdp" in nsx(nsname, f"ip link show {dev}").stdout


def stop_with_capture(g1, g2, dump):
    """Stops both gateways (returns their exit codes), then the tcpdump of the outer side."""
    codes = (g1.stop(), g2.stop())
    time.sleep(0.3)
    dump.send_signal(signal.SIGINT)
    try:
        dump.wait(timeout=5)
    except subprocess.TimeoutExpired:
        dump.kill()
    return codes


def exported_keys(*gws):
    """The esp_sa lines the gateways exported (--export-keys), each once, for tshark."""
    uats = []
    for g in gws:
        if os.path.exists(g.keys):
            uats += [l for l in open(g.keys).read().splitlines() if l.strip()]
    return list(dict.fromkeys(uats))


def two_gateways(sname, nat):
    s = SUITES[sname]
    tag = f"{sname}-{'natt' if nat else 'esp'}"
    cap = os.path.join(WORK, f"{tag}.pcap")
    dump = popen("w", f"tcpdump -q -n -i w1 -w {cap} 'esp or udp port 4500'",
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port = 19100 + len(tag)
    g1, g2 = Gw(1, s, nat, tag, f'metrics_listen = "127.0.0.1:{port}"'), Gw(2, s, nat, tag)
    try:
        check(f"[{tag}] both gateways up", g1.up() and g2.up(), open(g1.log).read() + open(g2.log).read())
        if not (g1.up() and g2.up()):
            return
        check(f"[{tag}] XDP attached on both interfaces",
              all(xdp_attached(n, d) for n, d in (("g1", "g1i"), ("g1", "g1o"), ("g2", "g2i"), ("g2", "g2o"))))
        # Hosts talk to their own gateway first (the kernel answers: ARP and ICMP pass).
        check(f"[{tag}] host A pings its gateway (kernel path)", received(ping("hA", "10.1.0.1", count=1)) == 1)
        ping("hB", "10.2.0.1", count=1)
        r = ping("hA", "10.2.0.2", count=5)
        check(f"[{tag}] ping A->B through the tunnel", received(r) == 5, r.stdout[-300:])
        r = ping("hB", "10.1.0.2", count=3)
        check(f"[{tag}] ping B->A", received(r) == 3, r.stdout[-300:])
        r = ping("hA", "10.2.0.2", "-M do -s 1382")
        check(f"[{tag}] 1410-byte DF ping", received(r) == 3, r.stdout[-300:])
        r = ping("hA", "10.2.0.2", "-s 2972")
        check(f"[{tag}] 3000-byte ping (fragmented before encryption)", received(r) == 3, r.stdout[-300:])
        nsx("hA", "ip route flush cache")  # forget the path MTU an earlier run taught host A
        r = ping("hA", "10.2.0.2", "-M do -s 1472", count=2)
        check(f"[{tag}] 1500-byte DF ping gets ICMP fragmentation needed with the inner MTU",
              received(r) == 0 and "mtu" in (r.stdout + r.stderr).lower(), r.stdout[-300:] + r.stderr[-300:])
        nsx("hA", "ip route flush cache")  # so the SYN carries MSS 1460 and must be clamped
        srv = py("hB", TCP_SERVER, background=True)
        time.sleep(0.3)
        cli = py("hA", TCP_CLIENT)
        sout, serr = srv.communicate(timeout=30)
        check(f"[{tag}] 1 MiB TCP transfer, SHA-256 verified",
              cli.stdout.strip() != "" and cli.stdout.strip() == sout.strip(), f"{cli.stdout} {cli.stderr} vs {sout} {serr}")
        n = udp_one_way("hA", "hB", "10.2.0.2")
        check(f"[{tag}] UDP A->B 200/200", n == 200, str(n))
        n = udp_one_way("hB", "hA", "10.1.0.2")
        check(f"[{tag}] UDP B->A 200/200", n == 200, str(n))
        n = udp_one_way("hA", "hB", "10.2.0.2", flows=16)
        q = g1.show("counters").get("inside", {}).get("rx_packets_per_queue", [])
        check(f"[{tag}] 16 UDP flows over both inside queues (one socket per queue, one worker)",
              n == 160 and len(q) == 2 and min(q) > 0, f"{n} {q}")
        t = g1.show("tunnels")
        t1 = next((x for x in t.get("tunnels", []) if x["name"] == "gw1-t1"), {})
        t2 = next((x for x in t.get("tunnels", []) if x["name"] == "gw1-t2"), {})
        r = subprocess.run([ESPD, "rekey", "gw1-t1", "--socket", g1.sock], capture_output=True, text=True)
        r2 = subprocess.run([ESPD, "rekey", "nope", "--socket", g1.sock], capture_output=True, text=True)
        check(f"[{tag}] espd rekey: a static tunnel or an unknown one is refused with the reason",
              r.returncode != 0 and "is not negotiated by IKE" in r.stderr
              and r2.returncode != 0 and 'no tunnel "nope"; tunnels: gw1-t1' in r2.stderr, r.stderr + r2.stderr)
        check(f"[{tag}] espd show tunnels: t1 UP with traffic both ways, t2 DOWN",
              t1.get("state") == "UP" and t1.get("tunnel_data_out_bytes", 0) > 1 << 20
              and t1.get("tunnel_data_in_bytes", 0) > 0 and t2.get("state") == "DOWN", json.dumps(t))
        m = nsx("g1", f"python3 -c \"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics').read().decode())\"", check=False).stdout
        want = f'vpn_tunnel_data_out_bytes_total{{vpn_id="vpn-gw1",tunnel_ip="192.0.2.1",tunnel="gw1-t1"}} {t1.get("tunnel_data_out_bytes")}'
        check(f"[{tag}] Prometheus endpoint of espd run: TunnelState and TunnelDataOut match espd show",
              want in m and 'vpn_connection_tunnel_state{vpn_id="vpn-gw1"} 0.5' in m
              and 'espd_sa_sequence_number{tunnel="gw1-t1",sa="gw1-out",spi="0x00001001",direction="out"}' in m
              and 'espd_xdp_verdicts_total{interface="g1i",verdict="xsk_inside"}' in m
              and 'espd_worker_polls_total{worker="0"}' in m, m[:800])
        c = g1.show("counters")
        check(f"[{tag}] MSS of the TCP SYN clamped on the way in", c.get("worker", {}).get("mss_clamped", 0) >= 1,
              json.dumps(c.get("worker")))
        check(f"[{tag}] host offloads on: the partial TCP/UDP checksums of the veth host were completed and counted",
              c.get("worker", {}).get("checksums_completed", 0) >= 200
              and "partial checksums completed" in c.get("modes", ""), json.dumps(c.get("worker")) + c.get("modes", ""))
        sas = g1.show("sas").get("sas", [])
        out = next((x for x in sas if x["direction"] == "out"), {})
        # The one drop: the second 1500-byte DF ping was refused by host A itself after the
        # ICMP error, so only the first reached the gateway (too_big, ICMP sent).
        check(f"[{tag}] espd show sas: outbound seq advanced, drops only the DF too_big",
              out.get("seq", 0) > 100 and out.get("drops") == {"too_big": 1}
              and all(not x["drops"] for x in sas if x is not out), json.dumps(sas))
        c = g1.show("counters")
        check(f"[{tag}] espd show counters: XDP steered ESP and inside traffic, no worker drops",
              c.get("outside", {}).get("xdp", {}).get("xsk_natt" if nat else "xsk_esp", 0) > 0
              and c.get("inside", {}).get("xdp", {}).get("xsk_inside", 0) > 0
              and c.get("worker", {}).get("drops") == {"too_big": 1}
              and c.get("worker", {}).get("icmp_sent", 0) >= 1
              and c["inside"]["tx_no_neighbour"] == 0 and c["outside"]["tx_no_neighbour"] == 0,
              json.dumps(c)[:1500])
        # The gateway routes: the inner TTL goes down by one on the way into the tunnel, and
        # a packet whose TTL runs out gets ICMP Time Exceeded (traceroute sees the gateway).
        r = ping("hA", "10.2.0.2", "-t 1", count=1)
        r2 = ping("hA", "10.2.0.2", count=1)
        sas = g1.show("sas").get("sas", [])
        out = next((x for x in sas if x["direction"] == "out"), {})
        check(f"[{tag}] TTL 1 into the tunnel: ICMP Time Exceeded from the gateway, counted; replies come back with ttl=63",
              received(r) == 0 and "time to live exceeded" in r.stdout.lower() and "ttl=63" in r2.stdout
              and out.get("drops", {}).get("ttl_exceeded") == 1, r.stdout[-300:] + r2.stdout[-300:] + json.dumps(out))
    finally:
        codes = stop_with_capture(g1, g2, dump)
    check(f"[{tag}] SIGTERM: both exit 0", codes == (0, 0), f"{codes} {open(g1.log).read()[-500:]}")
    recs = [json.loads(l) for l in open(g1.tunnel_log) if l.strip()] if os.path.exists(g1.tunnel_log) else []
    check(f"[{tag}] AWS-format tunnel log: UP at start, DOWN at stop, no key material",
          len(recs) == 2 and recs[0]["ike_phase2_state"] == "Established" and "UP" in recs[0]["details"]
          and recs[1]["ike_phase2_state"] == "Down" and recs[0]["vpn_connection_id"] == "vpn-gw1"
          and key(s["ek"], 1).hex() not in open(g1.tunnel_log).read(), json.dumps(recs))
    check(f"[{tag}] XDP detached after exit",
          not any(xdp_attached(n, d) for n, d in (("g1", "g1i"), ("g1", "g1o"), ("g2", "g2i"), ("g2", "g2o"))))
    esp, good, echoes, err = tshark_decrypt(cap, exported_keys(g1, g2))
    check(f"[{tag}] tshark decrypts the captured ESP: ICV good for every packet",
          esp > 100 and good == esp, f"{good}/{esp} {err}")
    check(f"[{tag}] tshark finds the inner echo requests A->B", echoes >= 5, str(echoes))


def two_gateways_v6():
    """IPv6 outer and an IPv6 tunnel: the XDP IPv6 paths, ICMPv6 Packet Too Big."""
    s = SUITES["gcm"]
    tag = "gcm-v6"
    cap = os.path.join(WORK, f"{tag}.pcap")
    dump = popen("w", f"tcpdump -q -n -i w1 -w {cap} ip6 proto 50",
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    g1, g2 = Gw(1, s, False, tag, v6=True), Gw(2, s, False, tag, v6=True)
    try:
        check(f"[{tag}] both gateways up", g1.up() and g2.up(), open(g1.log).read() + open(g2.log).read())
        if not (g1.up() and g2.up()):
            return
        ping("hA", "fd00:1::1", count=1)
        ping("hB", "fd00:2::1", count=1)
        r = ping("hA", "fd00:2::2", count=5)
        check(f"[{tag}] ping6 A->B through an IPv6-outer tunnel", received(r) == 5, r.stdout[-300:])
        r = ping("hB", "fd00:1::2", count=3)
        check(f"[{tag}] ping6 B->A", received(r) == 3, r.stdout[-300:])
        nsx("hA", "ip -6 route flush cache")
        r = ping("hA", "fd00:2::2", "-M do -s 1452", count=2)
        check(f"[{tag}] 1500-byte IPv6 packet gets ICMPv6 Packet Too Big with the inner MTU",
              received(r) == 0 and "mtu" in (r.stdout + r.stderr).lower(), r.stdout[-300:] + r.stderr[-300:])
        ping("hB", "fd00:1::2", "-M do -s 1452", count=1)  # host B learns the path MTU too
        r = ping("hA", "fd00:2::2", "-s 2952")
        check(f"[{tag}] 3000-byte ping6 (host fragments to the path MTU it learned)", received(r) == 3, r.stdout[-300:])
        c = g1.show("counters")
        check(f"[{tag}] XDP steered IPv6 ESP and IPv6 inside traffic",
              c.get("outside", {}).get("xdp", {}).get("xsk_esp", 0) > 0
              and c.get("inside", {}).get("xdp", {}).get("xsk_inside", 0) > 0
              and c.get("worker", {}).get("icmp_sent", 0) >= 1, json.dumps(c)[:1200])
    finally:
        codes = stop_with_capture(g1, g2, dump)
    check(f"[{tag}] SIGTERM: both exit 0", codes == (0, 0))
    esp, good, echoes, err = tshark_decrypt(cap, exported_keys(g1, g2),
                                            "icmpv6.type == 128 && ipv6.src == fd00:1::2")
    check(f"[{tag}] tshark decrypts the IPv6 ESP: ICV good for every packet, inner echo requests found",
          esp > 10 and good == esp and echoes >= 5, f"{good}/{esp} echoes {echoes} {err}")


def scapy_peer(nat):
    s = SUITES["gcm"] if not nat else SUITES["cbc"]
    tag = f"scapy-{'natt' if nat else 'esp'}"
    g1 = Gw(1, s, nat, tag)
    try:
        check(f"[{tag}] gateway up", g1.up(), open(g1.log).read())
        if not g1.up():
            return
        ping("hA", "10.1.0.1", count=1)
        listen = popen("g1", f"python3 {HERE}/kernel_listen.py 192.0.2.1 12", stdout=subprocess.PIPE, text=True)
        listen.stdout.readline()
        gw_mac = netns.mac("g1", "g1o")
        ik_in = key(s["ik"], 3).hex() or "-"
        ik_out = key(s["ik"], 2).hex() or "-"
        r = nsx("g2", f"python3 {HERE}/scapy_peer.py g2o {gw_mac} {key(s['ek'], 2).hex()} {ik_in} "
                      f"{key(s['ek'], 1).hex()} {ik_out} {s['scapy'][0]} {s['scapy'][1]} {int(nat)}", check=False)
        res = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 and r.stdout.strip() else {}
        check(f"[{tag}] scapy's ESP decrypted and delivered; replies come back as ESP scapy decrypts",
              res.get("echo_replies") == [1, 2, 3, 4, 5] and res.get("undecryptable") == 0, r.stdout + r.stderr[-800:])
        check(f"[{tag}] forwarding continues after malformed/unknown/replayed/bad-ICV input",
              res.get("echo_replies_after") == [10, 11, 12], json.dumps(res))
        tcp = nsx("g2", "python3 -c \"import socket; s=socket.create_connection(('192.0.2.1', 22), timeout=3); print(s.recv(100))\"", check=False)
        out, _ = listen.communicate(timeout=30)
        k = json.loads(out.strip().splitlines()[-1])
        check(f"[{tag}] IKE (UDP 500, UDP 4500 with the non-ESP marker) and SSH reach the kernel",
              k == {"udp500": 1, "udp4500": 1, "tcp22": 1} and b"SSH-2.0" in tcp.stdout.encode(), f"{k} {tcp.stdout} {tcp.stderr}")
        c = g1.show("counters")
        d = c.get("worker", {}).get("drops", {})
        check(f"[{tag}] bad input counted: unknown_spi, replay, icv_failure, malformed",
              d.get("unknown_spi", 0) >= 1 and d.get("replay", 0) >= 1 and d.get("icv_failure", 0) >= 1
              and d.get("malformed", 0) >= 1, json.dumps(d))
        x = c.get("outside", {}).get("xdp", {})
        check(f"[{tag}] XDP verdicts: IKE and non-IP passed to the kernel",
              x.get("pass_ike", 0) >= 2 and x.get("pass_non_ip", 0) >= 1, json.dumps(x))
    finally:
        code = g1.stop()
    check(f"[{tag}] gateway exits 0 on SIGTERM", code == 0, open(g1.log).read()[-500:])


def bad_starts():
    s = SUITES["gcm"]
    g1 = Gw(1, s, False, "bad")
    try:
        check("[bad] first gateway up", g1.up(), open(g1.log).read())
        r = nsx("g1", f"{ESPD} run --config {g1.cfg}", check=False)
        check("[bad] a second espd on the same control socket: one clear message, exit 1",
              r.returncode == 1 and "another espd is running" in r.stderr and "panick" not in r.stderr, r.stderr)
        check("[bad] ... and the first keeps running with its XDP programs attached",
              g1.p.poll() is None and xdp_attached("g1", "g1i") and xdp_attached("g1", "g1o"))
        check("[bad] ... and its control socket still answers", "tunnels" in g1.show("tunnels"))
    finally:
        g1.stop()
    cfg = open(g1.cfg).read()
    variants = [
        ("missing inside interface", cfg.replace('inside_interface = "g1i"', 'inside_interface = "nosuch0"'),
         'inside_interface: interface "nosuch0" does not exist'),
        ("missing outside interface", cfg.replace('outside_interface = "g1o"', 'outside_interface = "nosuch1"'),
         'outside_interface: interface "nosuch1" does not exist'),
        ("no [gateway] table", cfg.split("[gateway]")[0] + cfg.split("ike = false")[1],
         "espd run needs a [gateway] table"),
        ("bad xdp_mode", cfg.replace('xdp_mode = "auto"', 'xdp_mode = "turbo"'),
         'xdp_mode: "turbo" is not allowed; allowed: "native", "generic", "auto"'),
        ("bad key length", cfg.replace(key(20, 1).hex(), key(20, 1).hex()[:-2]), "enc_key"),
    ]
    for name, text, want in variants:
        path = os.path.join(WORK, "bad.toml")
        with open(path, "w") as f:
            f.write(text)
        r = nsx("g1", f"{ESPD} run --config {path}", check=False)
        check(f"[bad] {name}: clear message, exit 1, nothing attached",
              r.returncode == 1 and want in r.stderr and "panick" not in r.stderr
              and not xdp_attached("g1", "g1i") and not xdp_attached("g1", "g1o"), r.stderr)
    os.chmod(path, 0o666)
    r = nsx("g1", f"{ESPD} run --config {path}", check=False)
    check("[bad] a world-writable config file is refused with the fix",
          r.returncode == 1 and "chmod go-w" in r.stderr and not xdp_attached("g1", "g1i"), r.stderr)
    r = nsx("g1", f"{ESPD} run --config {WORK}/does-not-exist.toml", check=False)
    check("[bad] unreadable config: clear message, exit 1", r.returncode == 1 and "does-not-exist.toml" in r.stderr, r.stderr)


class NotifySocket:
    """A stand-in for systemd's notification socket (sd_notify(3): datagrams of KEY=VALUE
    lines on the AF_UNIX socket named by NOTIFY_SOCKET)."""

    def __init__(self, path):
        import socket as so
        self.path = path
        self.s = so.socket(so.AF_UNIX, so.SOCK_DGRAM)
        self.s.bind(path)
        self.s.settimeout(0.2)
        self.got = []

    def drain(self, secs=0.5):
        end = time.time() + secs
        while time.time() < end:
            try:
                self.got.append(self.s.recv(4096).decode())
            except OSError:
                pass
        return self.got

    def close(self):
        self.s.close()
        os.unlink(self.path)


def reload_sighup():
    s = SUITES["gcm"]
    sd = NotifySocket(os.path.join(WORK, "notify.sock"))
    g1, g2 = Gw(1, s, False, "hup", notify=sd.path), Gw(2, s, False, "hup")
    try:
        check("[hup] gateways up", g1.up() and g2.up())
        msgs = sd.drain()
        check("[hup] systemd readiness: READY=1 with the gateway-up status once it forwards",
              any("READY=1" in m and "STATUS=gateway up" in m for m in msgs), repr(msgs))
        ping("hA", "10.1.0.1", count=1)
        ping("hB", "10.2.0.1", count=1)
        ping("hA", "10.2.0.2", count=2)
        # SIGHUP with the same file during a fast ping: nothing lost, SAs unchanged.
        pinger = popen("hA", "ping -n -c 300 -i 0.005 -W 2 10.2.0.2", stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        g1.p.send_signal(signal.SIGHUP)
        g2.p.send_signal(signal.SIGHUP)
        out, _ = pinger.communicate(timeout=30)
        got = received(type("R", (), {"stdout": out})())
        time.sleep(0.3)
        check("[hup] SIGHUP with unchanged SAs: no ping lost (300/300)", got == 300, out[-200:])
        check("[hup] SIGHUP reports the SAs unchanged", "0 added or replaced, 0 removed, 2 unchanged" in open(g1.log).read(),
              open(g1.log).read()[-400:])
        msgs = sd.drain()
        r = [i for i, m in enumerate(msgs) if "RELOADING=1" in m and "MONOTONIC_USEC=" in m]
        check("[hup] systemd: RELOADING=1 (with MONOTONIC_USEC) then READY=1 around the reload",
              r and any("READY=1" in m for m in msgs[r[0] + 1:]), repr(msgs))
        # New keys and SPIs on both sides.
        for g in (g1, g2):
            t = open(g.cfg).read().replace("0x1001", "0x1101").replace("0x2001", "0x2101")
            t = t.replace(key(20, 1).hex(), key(20, 7).hex())
            open(g.cfg, "w").write(t)
            g.p.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        r = ping("hA", "10.2.0.2", count=3)
        spis = sorted(x["spi"] for x in g1.show("sas").get("sas", []))
        check("[hup] SIGHUP with new SPIs and keys: the new SAs carry the traffic",
              received(r) == 3 and spis == ["0x00001101", "0x00002101"], f"{spis} {r.stdout[-200:]}")
        open(g1.cfg, "a").write("\n[[tunnel]]\nname = 1\n")
        g1.p.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        r = ping("hA", "10.2.0.2", count=2)
        check("[hup] SIGHUP with a broken file: error logged, the running SAs stay",
              g1.p.poll() is None and "reload failed" in open(g1.log).read() and received(r) == 2,
              open(g1.log).read()[-400:])
        sd.got.clear()
        g1.stop()
        check("[hup] systemd: STOPPING=1 on SIGTERM", any("STOPPING=1" in m for m in sd.drain(0.3)), repr(sd.got))
    finally:
        g1.stop()
        g2.stop()
        sd.close()


HOSTILE = r"""
import socket, sys, time
port, sock_path, secs = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
conns = []
def tcp():
    c = socket.create_connection(("127.0.0.1", port), timeout=2); conns.append(c); return c
def unix():
    c = socket.socket(socket.AF_UNIX); c.settimeout(2); c.connect(sock_path); conns.append(c); return c
slow = []
for mk in (tcp, unix):
    for _ in range(40):          # slow loris: a byte now and then, never a whole line
        try: slow.append(mk())
        except OSError: pass
    for _ in range(5):           # huge: 1 MiB with no end of request
        try:
            c = mk(); c.setblocking(False)
            try: c.send(b"x" * (1 << 20))
            except OSError: pass
        except OSError: pass
    for _ in range(5):           # asks, never reads the answer
        try:
            c = mk(); c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            c.send(b"GET /metrics HTTP/1.0\r\n\r\n" if mk is tcp else b"show tunnels json\n")
        except OSError: pass
print("ready", flush=True)
end = time.time() + secs
while time.time() < end:
    for c in slow:
        try: c.send(b"G")
        except OSError: pass
    time.sleep(0.5)
"""


def hostile_clients():
    """Slow, huge and never-reading clients on the metrics endpoint and the control socket:
    a normal scrape and `espd show` are still answered promptly, and espd stays up."""
    port = 19250
    g1 = Gw(1, SUITES["gcm"], False, "hostile", f'metrics_listen = "127.0.0.1:{port}"')
    try:
        check("[hostile] gateway up", g1.up(), open(g1.log).read()[-400:])
        h = py("g1", HOSTILE, str(port), g1.sock, "8", background=True)
        h.stdout.readline()
        times = []
        for _ in range(3):
            t0 = time.time()
            m = nsx("g1", f"python3 -c \"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics', timeout=5).read().decode())\"", check=False).stdout
            t1 = time.time()
            sh_ = g1.show("tunnels")
            t2 = time.time()
            times.append((round(t1 - t0, 2), round(t2 - t1, 2), "espd_worker_polls_total" in m, "tunnels" in sh_))
            time.sleep(1)
        h.kill()
        h.wait(timeout=5)
        check("[hostile] under 90 hostile clients, scrapes and espd show answer in under 2 s",
              all(a < 2 and b < 2 and okm and oks for a, b, okm, oks in times), str(times))
        check("[hostile] espd still up", g1.up())
        caps = {}
        for task in os.listdir(f"/proc/{g1.p.pid}/task"):
            st = open(f"/proc/{g1.p.pid}/task/{task}/status").read()
            caps[task] = [l.split()[1] for l in st.splitlines() if l.split(":")[0] in ("CapEff", "CapPrm", "CapBnd")]
        check("[hostile] every espd thread runs with no capability (effective, permitted, bounding)",
              len(caps) >= 3 and all(v == ["0000000000000000"] * 3 for v in caps.values()), str(caps))
    finally:
        g1.stop()


FLOOD = r"""
import os, random, socket, struct, sys, time
iface, dst_mac, secs = sys.argv[1], bytes.fromhex(sys.argv[2].replace(":", "")), float(sys.argv[3])
def csum(b):
    s = sum(struct.unpack("!10H", b))
    s = (s >> 16) + (s & 0xFFFF); s += s >> 16
    return (~s) & 0xFFFF
def frag(src, ident, off, more, payload):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, (0x2000 if more else 0) | (off // 8),
                    64, 50, 0, socket.inet_aton(src), socket.inet_aton("192.0.2.1"))
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return dst_mac + bytes.fromhex("020000000001") + b"\x08\x00" + h + payload
rnd = random.Random(7)
frames = []
for i in range(20000):
    src = f"100.{64 + i % 64}.{(i // 64) % 256}.{1 + i % 250}"
    ident = rnd.randrange(65536)
    head = struct.pack("!II", rnd.getrandbits(32), 1) + os.urandom(1472)
    if i % 2 == 0:   # completes: 2 fragments, a 2,500-byte ESP datagram with an unknown SPI
        frames.append(frag(src, ident, 0, True, head))
        frames.append(frag(src, ident, 1480, False, os.urandom(1000)))
    else:            # never completes
        frames.append(frag(src, ident, 0, True, head))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
n, end = 0, time.time() + secs
while time.time() < end:
    for f in frames[n % len(frames):][:512]:
        try:
            s.send(f); n += 1
        except OSError:
            time.sleep(0.001)
print(n)
"""


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fragment_flood():
    """Junk ESP fragments (no key needed) from 10,000 spoofed sources at espd run's outside
    interface for 10 s, half completing 2,500-byte datagrams, half never completing: its
    memory stays under a bound, legitimate pings still flow, the drops are counted."""
    g1, g2 = Gw(1, SUITES["gcm"], False, "flood"), Gw(2, SUITES["gcm"], False, "flood")
    try:
        check("[flood] gateways up", g1.up() and g2.up())
        ping("hA", "10.1.0.1", count=1)
        ping("hB", "10.2.0.1", count=1)
        ping("hA", "10.2.0.2", count=3)
        base = rss_kib(g1.p.pid)
        fl = py("w", FLOOD, "w1", netns.mac("g1", "g1o"), "10", background=True)
        pinger = popen("hA", "ping -n -c 40 -i 0.2 -W 2 10.2.0.2", stdout=subprocess.PIPE, text=True)
        peak = base
        while fl.poll() is None:
            peak = max(peak, rss_kib(g1.p.pid))
            time.sleep(0.25)
        sent = int((fl.communicate(timeout=30)[0] or "0").strip() or 0)
        out, _ = pinger.communicate(timeout=30)
        got = received(type("R", (), {"stdout": out})())
        c = g1.show("counters").get("worker", {})
        d = c.get("drops", {})
        growth = (peak - base) / 1024
        print(f"INFO [flood] {sent} junk fragments in 10 s; espd RSS {base / 1024:.1f} MiB -> peak "
              f"{peak / 1024:.1f} MiB (+{growth:.1f}); drops {d}; pool_freed {c.get('pool_freed')}", flush=True)
        check("[flood] pings through the tunnel during the flood: 40/40", got == 40, out[-300:])
        check("[flood] espd's memory grew by less than 64 MiB under the flood", sent > 50000 and growth < 64,
              f"{sent} sent, +{growth:.1f} MiB")
        check("[flood] the junk is counted: reassembly limits / overflow and unknown SPIs",
              d.get("unknown_spi", 0) > 1000 and d.get("reassembly_overflow", 0) + d.get("reassembly_limit", 0)
              + d.get("reassembly_invalid", 0) > 1000 and g1.up(), json.dumps(c)[:800])
    finally:
        g1.stop()
        g2.stop()


HOSTILE_IKE = r"""
import os, socket, struct, sys, time
# A hostile IKEv2 responder on 192.0.2.3:500: it answers each IKE_SA_INIT request with one
# of the choices below, none of which the initiator offered (RFC 7296 section 3.3.6).
def tr(t, i, kl=None, last=False):
    attr = struct.pack("!HH", 0x800E, kl) if kl else b""
    return struct.pack("!BBHBBH", 0 if last else 3, 0, 8 + len(attr), t, 0, i) + attr
def prop(num, trs, proto=1, spi=b"", last=True):
    body = b"".join(tr(*t[:3], last=(k == len(trs) - 1)) for k, t in enumerate(trs))
    return struct.pack("!BBHBBBB", 0 if last else 2, 0, 8 + len(spi) + len(body), num, proto, len(spi), len(trs)) + spi + body
def payload(nxt, body):
    return struct.pack("!BBH", nxt, 0, 4 + len(body)) + body
CBC, GCM, PRF, INTEG, DH = (1, 12, 128), (1, 20, 128), (2, 2), (3, 2), (4, 14)
VARIANTS = [
    ("CBC without integrity", [prop(1, [CBC, PRF, DH])]),
    ("GCM with integrity", [prop(1, [GCM, PRF, INTEG, DH])]),
    ("3DES", [prop(1, [(1, 3), PRF, INTEG, DH])]),
    ("DH group 19 for a KE of 14", [prop(1, [CBC, PRF, INTEG, (4, 19)])]),
    ("two proposals", [prop(1, [CBC, PRF, INTEG, DH], last=False), prop(2, [CBC, PRF, INTEG, DH])]),
    ("an ESP proposal", [prop(1, [CBC, INTEG, (5, 0)], proto=3, spi=b"abcd")]),
    ("a short KE", None),
]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("192.0.2.3", 500))
s.settimeout(1)
k, end = 0, time.time() + float(sys.argv[1])
while time.time() < end and k < len(VARIANTS):
    try:
        m, peer = s.recvfrom(4096)
    except socket.timeout:
        continue
    if len(m) < 28 or m[18] != 34 or m[19] & 0x20:
        continue
    name, props = VARIANTS[k]
    ke_len = 256
    if props is None:
        props, ke_len = [prop(1, [CBC, PRF, INTEG, DH])], 100
    sa = payload(34, b"".join(props))
    ke = payload(40, struct.pack("!HH", 14, 0) + (b"\x00" * (ke_len - 1) + b"\x02"))
    nonce = payload(0, os.urandom(32))
    body = sa + ke + nonce
    hdr = m[:8] + os.urandom(8) + struct.pack("!BBBBII", 33, 0x20, 34, 0x20, 0, 28 + len(body))
    s.sendto(hdr + body, peer)
    print("sent", name, flush=True)
    k += 1
print("done", k, flush=True)
"""

IKE_GW = """
[gateway]
inside_interface = "g{side}i"
outside_interface = "g{side}o"
cores = [{core}]
xdp_mode = "auto"
control_socket = "{{sock}}"
idle_sleep_us = 20
state_directory = "{{state}}"

[[tunnel]]
name = "h{side}-t1"
connection = "vpn-h{side}"
outside_ip = "{me}"
peer_ip = "{peer}"
ike_versions = ["ikev2"]
startup_action = "{startup}"
local_ipv4_network_cidr = "{theirs}"
remote_ipv4_network_cidr = "{mine}"
pre_shared_key = "lab.tunnel_one"
routing = "static"
"""

# The connection's second tunnel: on gateway 1 its peer is the hostile responder.
SECOND_TUNNEL = """
[[tunnel]]
name = "h{side}-t2"
connection = "vpn-h{side}"
outside_ip = "{me}"
ike_versions = ["ikev2"]
local_ipv4_network_cidr = "{theirs}"
remote_ipv4_network_cidr = "{mine}"
pre_shared_key = "lab.tunnel_two"
routing = "static"
"""

HOSTILE_TUNNEL = """
[[tunnel]]
name = "h1-hostile"
connection = "vpn-h1"
outside_ip = "192.0.2.1"
peer_ip = "192.0.2.3"
ike_versions = ["ikev2"]
startup_action = "start"
phase1_dh_groups = [14]
local_ipv4_network_cidr = "10.2.0.0/24"
remote_ipv4_network_cidr = "10.1.0.0/24"
pre_shared_key = "lab.tunnel_two"
routing = "static"
"""


def hostile_ike_peer():
    """espd run with two IKE tunnels: one to a second espd, one to a hostile responder that
    answers every IKE_SA_INIT with a choice we did not offer (CBC without integrity used to
    abort the daemon). espd stays up, refuses each one with a log line, and the other tunnel
    stays established and carries pings."""
    nsx("g2", "ip addr add 192.0.2.3/24 dev g2o")
    t1 = IKE_GW.format(side=1, core=0, me="192.0.2.1", peer="192.0.2.2", startup="start",
                       theirs="10.2.0.0/24", mine="10.1.0.0/24") + HOSTILE_TUNNEL
    t2 = IKE_GW.format(side=2, core=1, me="192.0.2.2", peer="192.0.2.1", startup="add",
                       theirs="10.1.0.0/24", mine="10.2.0.0/24") + SECOND_TUNNEL.format(
        side=2, me="192.0.2.2", theirs="10.1.0.0/24", mine="10.2.0.0/24")
    h = py("g2", HOSTILE_IKE, "45", background=True)
    g2 = Gw(2, None, False, "hike", text=t2)
    g1 = Gw(1, None, False, "hike", text=t1)
    try:
        check("[hostile-ike] gateways up", g1.up() and g2.up(), open(g1.log).read()[-400:])
        up = False
        for _ in range(60):
            t = g1.show("tunnels").get("tunnels", [])
            if any(x["name"] == "h1-t1" and x["state"] == "UP" for x in t):
                up = True
                break
            time.sleep(0.25)
        check("[hostile-ike] the tunnel to the other espd is established", up, json.dumps(g1.show("tunnels"))[:600])
        ping("hA", "10.1.0.1", count=1)
        ping("hB", "10.2.0.1", count=1)
        pings = []
        while h.poll() is None:
            pings.append(received(ping("hA", "10.2.0.2", count=2)))
            if g1.p.poll() is not None:
                break
        out, _ = h.communicate(timeout=60)
        log = open(g1.log).read()
        sent = [l[5:] for l in out.splitlines() if l.startswith("sent ")]
        check("[hostile-ike] the hostile responder answered with every unoffered choice", len(sent) == 7, out)
        check("[hostile-ike] espd is still up after all of them", g1.up(), log[-1500:])
        refused = log.count('tunnel "h1-hostile": IKE_SA_INIT:')
        check("[hostile-ike] each refused with a log line naming the tunnel", refused >= 7,
              "\n".join(l for l in log.splitlines() if "hostile" in l)[-2000:])
        t = g1.show("tunnels").get("tunnels", [])
        check("[hostile-ike] the other tunnel stayed UP and carried pings all along",
              any(x["name"] == "h1-t1" and x["state"] == "UP" for x in t) and pings and min(pings) == 2
              and received(ping("hA", "10.2.0.2", count=3)) == 3, f"{pings} {json.dumps(t)[:400]}")
    finally:
        h.kill()
        g1.stop()
        g2.stop()
        nsx("g2", "ip addr del 192.0.2.3/24 dev g2o", check=False)


def esp_seqs(pcap, src):
    """(SPI, sequence number) of every ESP packet from `src` in a capture."""
    r = sh(f"tshark -n -r {pcap} -Y 'esp && ip.src == {src}' -T fields -e esp.spi -e esp.sequence", check=False)
    return [tuple(l.split()) for l in r.stdout.splitlines() if l.strip()]


def no_seq_reuse():
    """A static AES-GCM SA never puts the same (SPI, sequence number) on the wire twice (RFC
    4106 section 8): not across a SIGHUP that rebuilds the SA with the same key, a clean
    restart, or a crash (kill -9); the peer's replay window accepts what follows each one."""
    s = SUITES["gcm"]
    cap = os.path.join(WORK, "seq.pcap")
    dump = popen("w", f"tcpdump -q -n -i w1 -w {cap} esp", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    g1, g2 = Gw(1, s, False, "seq"), Gw(2, s, False, "seq")
    try:
        check("[seq] gateways up", g1.up() and g2.up(), open(g1.log).read()[-400:])
        ping("hA", "10.1.0.1", count=1)
        ping("hB", "10.2.0.1", count=1)
        got = [received(ping("hA", "10.2.0.2", count=10))]
        # SIGHUP that changes another field of the SA (its DF policy), not its key.
        t = open(g1.cfg).read().replace('df_policy = "honor"', 'df_policy = "clear"', 1)
        open(g1.cfg, "w").write(t)
        g1.p.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        check("[seq] SIGHUP rebuilt the SA (its DF policy changed)",
              "1 added or replaced" in open(g1.log).read(), open(g1.log).read()[-300:])
        got.append(received(ping("hA", "10.2.0.2", count=10)))
        for how in ("restart", "crash"):
            if how == "crash":
                g1.p.kill()
                g1.p.wait(timeout=10)
            else:
                g1.stop()
            g1.start()
            check(f"[seq] gateway 1 up again after a {how}", g1.up(), open(g1.log).read()[-400:])
            ping("hA", "10.1.0.1", count=1)
            got.append(received(ping("hA", "10.2.0.2", count=10)))
        check("[seq] the peer accepts the traffic after the SIGHUP, the restart and the crash", got == [10] * 4,
              f"{got} {json.dumps(g1.show('sas'))} {json.dumps(g2.show('sas'))} {open(g1.log).read()[-600:]}")
    finally:
        g1.stop()
        g2.stop()
        time.sleep(0.5)
        dump.send_signal(signal.SIGINT)
        dump.wait(timeout=10)
    seqs = esp_seqs(cap, "192.0.2.1")
    dups = len(seqs) - len(set(seqs))
    check("[seq] no (SPI, sequence number) sent twice by gateway 1", len(seqs) >= 40 and dups == 0,
          f"{len(seqs)} packets, {dups} repeated")
    marks = [f for f in os.listdir(g1.state) if f.endswith(".state")]
    check("[seq] marks in the state directory, no key byte in them",
          len(marks) == 2 and not any(key(20, 1).hex() in open(os.path.join(g1.state, f)).read() for f in marks), str(marks))


STREAM_RECV = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 5003)); s.settimeout(3)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
seen = set()
try:
    while True:
        b, _ = s.recvfrom(2000)
        if b[:4] == b"espd": seen.add(int(b[4:12]))
except socket.timeout:
    pass
print(len(seen))
"""

STREAM_SEND = r"""
import socket, sys, time
n, flows = int(sys.argv[2]), int(sys.argv[3])
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(flows)]
print("go", flush=True)
for i in range(n):
    socks[i % flows].sendto(b"espd" + b"%08d" % i + bytes(500), (sys.argv[1], 5003)); time.sleep(0.001)
print(n, flush=True)
"""


def two_workers():
    """Both gateways with two pinned workers on two queues per interface: flows in both
    directions reach both workers, each SA is written by its owner and the other worker
    hands its packets over; a make-before-break SA change under traffic arriving on both
    workers loses nothing; tshark still decrypts every ESP packet."""
    s = SUITES["gcm"]
    tag = "workers"
    cap = os.path.join(WORK, f"{tag}.pcap")
    dump = popen("w", f"tcpdump -q -n -i w1 -w {cap} esp",
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port = 19177
    g1 = Gw(1, s, False, tag, f'metrics_listen = "127.0.0.1:{port}"', cores=[0, 1])
    # Gateway 2 maps its queues explicitly, crosswise (worker 0 polls queue 1).
    g2 = Gw(2, s, False, tag, "worker_queues = [[1], [0]]", cores=[1, 0])
    try:
        up = g1.up() and g2.up()
        check("[workers] both gateways up with 2 workers each (gateway 2 with an explicit queue map)",
              up and "2 worker(s) on cores [0, 1]" in open(g1.log).read()
              and "2 worker(s) on cores [1, 0], worker_queues [[1], [0]]" in open(g2.log).read(),
              open(g1.log).read()[-600:] + open(g2.log).read()[-600:])
        if not up:
            return
        ping("hA", "10.1.0.1", count=1)
        ping("hB", "10.2.0.1", count=1)
        r = ping("hA", "10.2.0.2", count=5)
        check("[workers] ping A->B", received(r) == 5, r.stdout[-300:])
        r = ping("hB", "10.1.0.2", count=3)
        check("[workers] ping B->A", received(r) == 3, r.stdout[-300:])
        r = ping("hA", "10.2.0.2", "-s 2972")
        check("[workers] 3000-byte ping (fragmented before encryption)", received(r) == 3, r.stdout[-300:])
        srv = py("hB", TCP_SERVER, background=True)
        time.sleep(0.3)
        cli = py("hA", TCP_CLIENT)
        sout, serr = srv.communicate(timeout=30)
        check("[workers] 1 MiB TCP transfer, SHA-256 verified",
              cli.stdout.strip() != "" and cli.stdout.strip() == sout.strip(), f"{cli.stdout} {cli.stderr} vs {sout} {serr}")
        n1 = udp_one_way("hA", "hB", "10.2.0.2", flows=16)
        n2 = udp_one_way("hB", "hA", "10.1.0.2", flows=16)
        check("[workers] 16 UDP flows each way, all delivered", (n1, n2) == (160, 160), f"{n1} {n2}")
        c1, c2 = g1.show("counters"), g2.show("counters")
        w1, w2 = c1.get("workers", []), c2.get("workers", [])
        keys = {"worker", "core", "rx_packets", "tx_packets", "handoff_out", "handoff_in", "handoff_drops", "drops"}
        check("[workers] show counters: one object per worker with core, rx/tx, handoff counters and drops",
              len(w1) == 2 and len(w2) == 2 and all(keys <= set(w) for w in w1 + w2)
              and [w["core"] for w in w1] == [0, 1] and [w["core"] for w in w2] == [1, 0], json.dumps(w1))
        check("[workers] both workers of each gateway receive (flows spread over the queues)",
              all(w["rx_packets"] > 0 for w in w1 + w2), json.dumps(w1) + json.dumps(w2))
        check("[workers] handoff moves on gateway 1: what one worker hands over the other takes, none dropped",
              sum(w["handoff_out"] for w in w1) > 0
              and sum(w["handoff_out"] for w in w1) == sum(w["handoff_in"] for w in w1)
              and all(w["handoff_drops"] == 0 for w in w1 + w2), json.dumps(w1) + json.dumps(w2))
        m = nsx("g1", f"python3 -c \"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics').read().decode())\"", check=False).stdout
        check("[workers] Prometheus: per-worker packets and handoff series",
              'espd_worker_handoff_total{worker="1",kind="in"}' in m
              and 'espd_worker_packets_total{worker="0",side="inside",direction="rx"}' in m
              and 'espd_worker_polls_total{worker="1"}' in m, m[:600])
        sas = g1.show("sas").get("sas", [])
        out = next((x for x in sas if x["direction"] == "out"), {})
        check("[workers] one writer per SA: the outbound SA's sequence number counts every packet sent",
              out.get("seq", 0) - 1 == out.get("packets", -1), json.dumps(out))
        # Make-before-break under a stream of 16 flows A->B (both workers of gateway 1
        # receive it): B adds the new inbound SA, A switches to it, B removes the old one.
        rx = py("hB", STREAM_RECV, "10.2.0.2", background=True)
        time.sleep(0.3)
        tx = py("hA", STREAM_SEND, "10.2.0.2", "4000", "16", background=True)
        tx.stdout.readline()
        new = sa("gw2-in2", "in", 0x1002, s, 5, "192.0.2.1", "192.0.2.2", False)
        t2 = open(g2.cfg).read()
        head, rest = t2.split("[[tunnel]]", 1)
        rest = "[[tunnel]]" + rest
        cut = rest.index("[[tunnel]]", 1)
        open(g2.cfg, "w").write(head + rest[:cut] + new + rest[cut:])
        time.sleep(0.7)
        g2.p.send_signal(signal.SIGHUP)
        time.sleep(0.8)
        t1 = open(g1.cfg).read().replace("0x1001", "0x1002").replace(key(20, 1).hex(), key(20, 5).hex())
        open(g1.cfg, "w").write(t1)
        g1.p.send_signal(signal.SIGHUP)
        time.sleep(0.8)
        t2 = open(g2.cfg).read()
        i = t2.index('name = "gw2-in"')
        a, b = t2.rindex("[[tunnel.sa]]", 0, i), t2.index("[[tunnel", i)
        open(g2.cfg, "w").write(t2[:a] + t2[b:])
        g2.p.send_signal(signal.SIGHUP)
        sent = tx.communicate(timeout=30)[0].strip()
        got = rx.communicate(timeout=30)[0].strip()
        spis = sorted(x["spi"] for x in g2.show("sas").get("sas", []))
        check("[workers] make-before-break of the tunnel under 16 flows on both workers: 4000/4000 delivered",
              sent == "4000" and got == "4000" and spis == ["0x00001002", "0x00002001"],
              f"sent {sent} got {got} spis {spis} " + open(g1.log).read()[-300:] + open(g2.log).read()[-300:])
    finally:
        codes = stop_with_capture(g1, g2, dump)
    check("[workers] SIGTERM: both exit 0", codes == (0, 0), f"{codes} {open(g1.log).read()[-500:]}")
    esp, good, echoes, err = tshark_decrypt(cap, exported_keys(g1, g2))
    check("[workers] tshark decrypts the captured ESP of both workers: ICV good for every packet",
          esp > 1000 and good == esp, f"{good}/{esp} {err}")


def main():
    if os.geteuid() != 0:
        print("SKIP: needs root")
        return 0
    netns.up()
    try:
        for sname in ("gcm", "cbc"):
            for nat in (False, True):
                two_gateways(sname, nat)
        two_gateways_v6()
        two_workers()
        for nat in (False, True):
            scapy_peer(nat)
        bad_starts()
        reload_sighup()
        no_seq_reuse()
        hostile_clients()
        fragment_flood()
        hostile_ike_peer()
    finally:
        netns.down()
    return checks.summary()


if __name__ == "__main__":
    sys.exit(main())
