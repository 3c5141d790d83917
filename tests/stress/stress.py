#!/usr/bin/env python3
"""perf stress --dut against two devices under test, in network namespaces (root):

- espd run as the DUT with hundreds of tunnels: perf stress in g2 emulates one customer
  gateway per outside address (192.0.2.20 and up on g2o), brings up an IKEv2 tunnel from
  each to espd (192.0.2.1), sends UDP through every tunnel, and its sink in hA (espd's inside
  side) counts what espd decrypted and forwarded, per tunnel;
- strongSwan (kernel-libipsec) as the DUT with a few tunnels: perf stress in g1 (no espd
  there), strongSwan in g2 answering three emulated gateways, the sink on strongSwan's own
  inside address (libipsec hands decrypted packets to g2's stack);
- the NDR search through espd (--ndr), short trials.

Usage: stress.py ESPD PERF
"""
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "ike"))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import strongswan as sw  # noqa: E402  (Espd, Charon, WORK, the namespaces)
from checks import check  # noqa: E402
import checks  # noqa: E402
import netns  # noqa: E402
from netns import nsx, ns  # noqa: E402

PERF = os.path.abspath(sys.argv[2])
PSK = "stress.shared_key"


def espd_dut_config(tag, n, extra=""):
    """espd with n tunnels (n/2 connections), one per emulated gateway 192.0.2.20+i."""
    text = ("[lab]\nallow_short_lifetimes = true\n" if extra else "") + f"""
[gateway]
inside_interface = "g1i"
outside_interface = "g1o"
cores = [0]
control_socket = "{sw.WORK}/{tag}.sock"
idle_sleep_us = 20
metrics_listen = "127.0.0.1:{sw.metrics_port(tag)}"
"""
    for i in range(n):
        text += f"""
[[tunnel]]
name = "st-{i}"
connection = "vpn-st-{i // 2}"
outside_ip = "192.0.2.1"
peer_ip = "192.0.2.{20 + i}"
ike_versions = ["ikev2"]
startup_action = "add"
phase1_encryption = ["AES128"]
phase1_integrity = ["SHA2-256"]
phase1_dh_groups = [19]
phase2_encryption = ["AES128-GCM-16"]
phase2_integrity = ["SHA2-256"]
local_ipv4_network_cidr = "10.2.0.0/16"
remote_ipv4_network_cidr = "10.1.0.0/24"
tunnel_inside_cidr = "169.254.{100 + i // 64}.{(i % 64) * 4}/30"
pre_shared_key = "{PSK}"
routing = "static"
{extra}
"""
    return text


def stress(node, args):
    r = nsx(node, f"{PERF} stress --json " + " ".join(args), check=False, timeout=300)
    try:
        return json.loads(r.stdout), r.stderr
    except json.JSONDecodeError:
        return {}, r.stdout[-1500:] + r.stderr[-1500:]


def espd_case(tag, n):
    e = sw.Espd(tag, espd_dut_config(tag, n))
    try:
        check(f"[{tag}] espd up with {n} tunnels", "gateway up" in e.text(), e.text()[-800:])
        nsx("g2", "ip -batch -", input="".join(f"address add 192.0.2.{20 + i}/24 dev g2o\n" for i in range(n)))
        # hA's address known to espd's inside port before the traffic (else its first
        # packets wait for ARP and are dropped, counted as tx_no_neighbour).
        nsx("hA", "ping -c 1 -W 1 10.1.0.1", check=False)
        v, err = stress("g2", ["--dut", "192.0.2.1", "--local", f"192.0.2.20+{n}", "--tunnels", str(n),
                               "--psk", PSK, "--sink", "10.1.0.2:9000", "--sink-netns", ns("hA"),
                               "--rate", "20000", "--duration", "4", "--packet-size", "256"])
        per = v.get("per_tunnel", [])
        check(f"[{tag}] {v.get('tunnels_up')}/{n} tunnels up in {v.get('setup_s', 0):.2f} s ({v.get('setup_rate_per_s', 0):.0f}/s), no setup failure",
              v.get("tunnels_up") == n and v.get("setup_failures") == {}, err[-2000:] + json.dumps(v)[:1500] + e.text()[-1500:])
        got = [p for p in per if p.get("received", 0) > 0]
        check(f"[{tag}] traffic through every tunnel: sent {v.get('tx_packets')}, received {v.get('rx_packets')} by the sink behind espd, {len(got)}/{n} tunnels delivered",
              v.get("tx_packets", 0) >= 20000 * 3 and len(got) == n and v.get("loss_ratio", 1) < 0.002,
              json.dumps({k: v.get(k) for k in ("tx_packets", "rx_packets", "loss_ratio", "tunnels_with_loss", "send_errors", "sink_socket_drops")})
              + json.dumps(e.show("counters"))[:1500])
        lat = v.get("latency_us", {})
        check(f"[{tag}] latency measured through espd (p50 {lat.get('p50')} us, p99 {lat.get('p99')} us)",
              0 < lat.get("p50", 0) <= lat.get("p99", 0) <= lat.get("max", 0), json.dumps(lat))
        tun = e.show("tunnels").get("tunnels", [])
        check(f"[{tag}] espd shows all {n} tunnels UP, each with its packets",
              len(tun) == n and all(t.get("state") == "UP" and t.get("packets_in", 0) > 0 for t in tun),
              json.dumps([t for t in tun if t.get("state") != "UP" or not t.get("packets_in")][:3]))
        # The NDR through espd, short trials, a few tunnels at once.
        v, err = stress("g2", ["--dut", "192.0.2.1", "--local", "192.0.2.20+8", "--tunnels", "8",
                               "--psk", PSK, "--sink", "10.1.0.2:9001", "--sink-netns", ns("hA"),
                               "--ndr", "--trial-duration", "0.5", "--max-trials", "8", "--precision", "0.1",
                               "--packet-size", "256"])
        trials = v.get("trials", [])
        # (Verification through a DUT on a 2-vCPU guest can lose to noise three times: the
        # search's own rules are tested on the loopback, in perf/tests/ndr.rs.)
        check(f"[{tag}] --ndr through espd: NDR {v.get('ndr_mpps', 0) * 1e3:.1f} kpps (verified: {v.get('ndr_verified')}), PDR {v.get('pdr_mpps', 0) * 1e3:.1f} kpps, {len(trials)} trials",
              v.get("ndr_mpps", 0) > 0 and v.get("pdr_mpps", 0) >= v.get("ndr_mpps", 0)
              and any(t["kind"] == "verify" for t in trials)
              and any(t["kind"] == "ndr" and t["loss_ratio"] > 0 for t in trials),
              err[-1500:] + json.dumps(v)[:1500])
    finally:
        e.stop()
        nsx("g2", "ip -batch -", input="".join(f"address del 192.0.2.{20 + i}/24 dev g2o\n" for i in range(n)), check=False)


def espd_rekey_case(tag, n, secs):
    """Short lab lifetimes on espd's side: espd rekeys every CHILD_SA every 4 to 10 s and the
    IKE SAs too while perf stress sends; perf's gateways follow the rekeys (the new outbound
    SA once the old one's DELETE arrives, the IKE SA's new SPIs) and lose nothing."""
    lifetimes = "phase1_lifetime_s = 30\nphase2_lifetime_s = 16\nrekey_margin_s = 6\nrekey_fuzz_pct = 100"
    e = sw.Espd(tag, espd_dut_config(tag, n, lifetimes))
    try:
        nsx("g2", "ip -batch -", input="".join(f"address add 192.0.2.{20 + i}/24 dev g2o\n" for i in range(n)))
        nsx("hA", "ping -c 1 -W 1 10.1.0.1", check=False)
        v, err = stress("g2", ["--dut", "192.0.2.1", "--local", f"192.0.2.20+{n}", "--tunnels", str(n),
                               "--psk", PSK, "--sink", "10.1.0.2:9004", "--sink-netns", ns("hA"),
                               "--rate", "2000", "--duration", str(secs), "--packet-size", "256"])
        per = v.get("per_tunnel", [])
        text = e.text()
        check(f"[{tag}] {secs} s under espd's rekeys: {v.get('rekeys_survived')} CHILD_SA rekeys survived over {n} tunnels, "
              f"IKE SAs rekeyed {text.count('IKE SA rekeyed')}x, sent {v.get('tx_packets')} received {v.get('rx_packets')}",
              v.get("tunnels_up") == n and v.get("rekeys_survived", 0) >= 2 * n and v.get("closed_after_up") == 0
              and text.count("IKE SA rekeyed") >= n // 2
              and all(p.get("rekeys", 0) >= 1 and p.get("received", 0) > 0 for p in per)
              and v.get("loss_ratio", 1) < 0.01,
              err[-1500:] + json.dumps({k: v.get(k) for k in ("tunnels_up", "rekeys_survived", "closed_after_up", "loss_ratio", "tunnels_with_loss")})
              + text[-1500:])
    finally:
        e.stop()
        nsx("g2", "ip -batch -", input="".join(f"address del 192.0.2.{20 + i}/24 dev g2o\n" for i in range(n)), check=False)


STRONGSWAN_DUT = """connections {{
{conns}
}}
secrets {{
{secrets}
}}
"""


def strongswan_case(tag, n):
    """strongSwan answers n emulated gateways (192.0.2.1, .30, .31, ...): libipsec decrypts and
    hands the packets to g2's stack, where the sink listens on 10.2.0.1."""
    locals_ = ["192.0.2.1"] + [f"192.0.2.{30 + i}" for i in range(n - 1)]
    conns = "".join(f"""
  dut-{i} {{
    local_addrs = 192.0.2.2
    remote_addrs = {a}
    proposals = aes128-sha256-ecp256
    encap = yes
    mobike = no
    local {{ auth = psk
      id = 192.0.2.2 }}
    remote {{ auth = psk
      id = {a} }}
    children {{
      dut-{i}-net {{
        local_ts = 10.2.0.0/24
        remote_ts = 10.9.0.0/16
        esp_proposals = aes128gcm16
      }}
    }}
  }}""" for i, a in enumerate(locals_))
    secrets = "".join(f"""
  ike-{i} {{ id-1 = 192.0.2.2
    id-2 = {a}
    secret = "{PSK}" }}""" for i, a in enumerate(locals_))
    for a in locals_[1:]:
        nsx("g1", f"ip addr add {a}/24 dev g1o", check=False)
    c = sw.Charon(tag, STRONGSWAN_DUT.format(conns=conns, secrets=secrets))
    try:
        check(f"[{tag}] strongSwan (the DUT) loaded {n} connections", c.load.returncode == 0, c.load.stdout + c.load.stderr)
        v, err = stress("g1", ["--dut", "192.0.2.2", "--local", ",".join(locals_), "--tunnels", str(n),
                               "--psk", PSK, "--cgw-net", "10.9.0.0/16", "--dut-net", "10.2.0.0/24",
                               "--sink", "10.2.0.1:9002", "--sink-netns", ns("g2"),
                               "--rate", "2000", "--duration", "3", "--packet-size", "256"])
        per = v.get("per_tunnel", [])
        check(f"[{tag}] {v.get('tunnels_up')}/{n} tunnels up with strongSwan in {v.get('setup_s', 0):.2f} s",
              v.get("tunnels_up") == n and v.get("setup_failures") == {}, err[-2000:] + json.dumps(v)[:1500] + c.log()[-2000:])
        check(f"[{tag}] traffic through every tunnel into strongSwan: sent {v.get('tx_packets')}, received {v.get('rx_packets')}",
              v.get("tx_packets", 0) >= 2000 * 2 and all(p.get("received", 0) > 0 for p in per) and v.get("loss_ratio", 1) < 0.02,
              json.dumps({k: v.get(k) for k in ("tx_packets", "rx_packets", "loss_ratio", "per_tunnel")})[:2000] + c.log()[-1500:])
        # A wrong PSK: every tunnel fails, and the reason is reported.
        v, err = stress("g1", ["--dut", "192.0.2.2", "--local", locals_[0], "--tunnels", "1",
                               "--psk", "not.the_key", "--cgw-net", "10.9.0.0/16", "--dut-net", "10.2.0.0/24",
                               "--sink", "10.2.0.1:9003", "--sink-netns", ns("g2"), "--setup-timeout", "15",
                               "--rate", "100", "--duration", "0.5"])
        check(f"[{tag}] a wrong PSK: no tunnel, the failure counted by reason ({v.get('setup_failures')})",
              v.get("tunnels_up") == 0 and sum((v.get("setup_failures") or {}).values()) == 1, err[-1500:] + json.dumps(v)[:800])
    finally:
        c.stop()
        for a in locals_[1:]:
            nsx("g1", f"ip addr del {a}/24 dev g1o", check=False)


def main():
    if os.geteuid() != 0:
        print("SKIP: needs root")
        return 0
    netns.up()
    try:
        espd_case("stress-espd", int(os.environ.get("ESPD_STRESS_TUNNELS", "200")))
        espd_rekey_case("stress-rekeys", 8, 25)
        strongswan_case("stress-strongswan", 3)
    finally:
        netns.down()
    return checks.summary()


if __name__ == "__main__":
    sys.exit(main())
