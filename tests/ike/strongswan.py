#!/usr/bin/env python3
"""`espd run` negotiating its tunnel with IKEv2 against strongSwan, the implementation most
customer gateways on Linux run, in network namespaces (topology of tests/gateway/netns.py:
host A -- espd (g1) -- wire -- charon (g2)).

strongSwan runs Debian's charon with kernel-libipsec (ESP in user space over a TUN device:
UDP-encapsulated ESP only, so it fakes a NAT and both sides float to port 4500); its
swanctl.conf comes from `espd export-config`. For each proposal set:
  1. strongSwan initiates to espd (startup action `add`), then
  2. espd initiates to strongSwan (startup action `start`);
and each time host A pings an address behind strongSwan through the tunnel, and espd's
`show sas` lists the negotiated SAs. Wrong PSK and mismatched proposals give the AWS log
messages and no tunnel.

Also: the tunnel interface (the CGW pings espd's inside address through the tunnel), BGP over
it with BIRD on both sides; short lab lifetimes with a continuous ping across CHILD_SA (PFS) and IKE SA rekeys by
both sides (40 s, ESPD_REKEY_SECS; 300 with ESPD_SOAK=1), and DPD (strongSwan killed, `restart`, back again).
SKIP_LONG=1 skips those two (about 100 s) for quick local runs.

Usage: strongswan.py ESPD_BINARY. Needs root. PASS/FAIL per check; exits 1 on any failure.
"""
import json
import re
import os
import signal
import subprocess
import sys
import tempfile
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import netns  # noqa: E402
from checks import check  # noqa: E402
import checks  # noqa: E402
from netns import nsx, popen, ns  # noqa: E402

ESPD = os.path.abspath(sys.argv[1])
WORK = tempfile.mkdtemp(prefix="espd-ike-")


def metrics_port(tag):
    return 9400 + zlib.crc32(tag.encode()) % 500


def espd_config(tag, startup, p1, p2, psk="lab.tunnel_one", extra="", lab=False, cores=(0,), routing="static"):
    enc1, int1, dh1 = p1
    enc2, int2 = p2
    q = lambda xs: "[" + ", ".join(f'"{x}"' if isinstance(x, str) else str(x) for x in xs) + "]"
    return ("[lab]\nallow_short_lifetimes = true\n" if lab else "") + f"""
[gateway]
inside_interface = "g1i"
outside_interface = "g1o"
cores = {list(cores)}
control_socket = "{WORK}/{tag}.sock"
idle_sleep_us = 20
metrics_listen = "127.0.0.1:{metrics_port(tag)}"

[[tunnel]]
name = "aws-t1"
connection = "vpn-sw"
outside_ip = "192.0.2.1"
peer_ip = "192.0.2.2"
ike_versions = ["ikev2"]
startup_action = "{startup}"
phase1_encryption = {q(enc1)}
phase1_integrity = {q(int1)}
phase1_dh_groups = {q(dh1)}
phase2_encryption = {q(enc2)}
phase2_integrity = {q(int2)}
local_ipv4_network_cidr = "10.2.0.0/24"
remote_ipv4_network_cidr = "10.1.0.0/24"
pre_shared_key = "{psk}"
routing = "{routing}"
log_enabled = true
log_destination = "{WORK}/{tag}.tunnel.log"
log_output_format = "text"
{extra}

[[tunnel]]
name = "aws-t2"
connection = "vpn-sw"
outside_ip = "192.0.2.1"
ike_versions = ["ikev2"]
pre_shared_key = "lab.tunnel_two"
routing = "{routing}"
"""


STRONGSWAN_CONF = """charon {{
  load_modular = no
  load = random nonce openssl aes sha1 sha2 hmac gcm pem pkcs1 x509 curve25519 gmp kdf kernel-libipsec kernel-netlink socket-default vici updown
  port = 500
  port_nat_t = 4500
  retransmit_tries = 3
  plugins {{
    vici {{ socket = unix://{d}/charon.vici }}
  }}
  filelog {{
    log {{ path = {d}/charon.log
          time_format = %T
          append = no
          flush_line = yes
          default = 1
          ike = 2 }}
  }}
}}
swanctl {{
  plugins {{ vici {{ socket = unix://{d}/charon.vici }} }}
}}
"""


class Charon:
    def __init__(self, tag, swanctl_text):
        self.d = os.path.join(WORK, f"sw-{tag}")
        os.makedirs(os.path.join(self.d, "run"), exist_ok=True)
        with open(os.path.join(self.d, "strongswan.conf"), "w") as f:
            f.write(STRONGSWAN_CONF.format(d=self.d))
        with open(os.path.join(self.d, "swanctl.conf"), "w") as f:
            f.write(swanctl_text)
        env = dict(os.environ, STRONGSWAN_CONF=os.path.join(self.d, "strongswan.conf"))
        self.p = subprocess.Popen(
            ["ip", "netns", "exec", ns("g2"), "unshare", "--mount", "--propagation", "private", "sh", "-c",
             f"mount --bind '{self.d}/run' /run && exec /usr/lib/ipsec/charon"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        vici = os.path.join(self.d, "charon.vici")
        for _ in range(100):
            if os.path.exists(vici):
                break
            time.sleep(0.05)
        self.uri = f"unix://{vici}"
        self.load = subprocess.run(["swanctl", "--load-all", "--uri", self.uri, "--file",
                                    os.path.join(self.d, "swanctl.conf")], capture_output=True, text=True, env=env)

    def log(self):
        try:
            return open(os.path.join(self.d, "charon.log")).read()
        except OSError:
            return ""

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.p.kill()


class Espd:
    def __init__(self, tag, text):
        self.tag = tag
        self.cfg = os.path.join(WORK, f"{tag}.toml")
        self.sock = os.path.join(WORK, f"{tag}.sock")
        self.log = os.path.join(WORK, f"{tag}.log")
        self.tunnel_log = os.path.join(WORK, f"{tag}.tunnel.log")
        with open(self.cfg, "w") as f:
            f.write(text)
        self.keys = os.path.join(WORK, f"{tag}.keys")
        self.p = popen("g1", f"{ESPD} run --config {self.cfg} --export-keys {self.keys}",
                       stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        for _ in range(200):
            if "gateway up" in open(self.log).read() or self.p.poll() is not None:
                break
            time.sleep(0.05)

    def text(self):
        return open(self.log).read()

    def metrics(self):
        url = f"http://127.0.0.1:{metrics_port(self.tag)}/metrics"
        r = nsx("g1", f"python3 -c \"import urllib.request; print(urllib.request.urlopen('{url}').read().decode())\"", check=False)
        return r.stdout

    def show(self, what):
        r = subprocess.run([ESPD, "show", what, "--json", "--socket", self.sock], capture_output=True, text=True)
        return json.loads(r.stdout) if r.returncode == 0 else {"error": r.stderr}

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            return self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            return -9


def export(cfg_path, start_action):
    r = subprocess.run([ESPD, "export-config", cfg_path, "aws-t1", "--peer", "strongswan"], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    return r.stdout.replace("start_action = start", f"start_action = {start_action}")


def export_many(cfg_path, tunnels):
    """One swanctl.conf for strongSwan as the CGW of several tunnels: each tunnel's
    `export-config --peer strongswan`, connections and secrets merged."""
    conns, secrets = "", ""
    for t in tunnels:
        r = subprocess.run([ESPD, "export-config", cfg_path, t, "--peer", "strongswan"], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(r.stderr)
        sw = r.stdout
        conns += sw[sw.index("connections {") + len("connections {"):sw.index("secrets {")].rstrip().rstrip("}")
        secrets += sw[sw.index("secrets {") + len("secrets {"):].rstrip().rstrip("}")
    return "connections {" + conns + "}\nsecrets {" + secrets + "}\n"


def wait_for(pred, secs):
    end = time.time() + secs
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.2)
    return False


def ping_through(count=5):
    r = nsx("hA", f"ping -n -c {count} -i 0.2 -W 2 10.2.0.1", check=False)
    for line in r.stdout.splitlines():
        if "received" in line:
            return int(line.split(",")[1].split()[0]), r.stdout
    return 0, r.stdout


UDP_ECHO = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("10.2.0.1", 5005)); s.settimeout(8)
try:
    while True:
        b, a = s.recvfrom(4000); s.sendto(b, a)
except socket.timeout:
    pass
"""

UDP_CLIENT = r"""
import os, socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
ok = 0
for i in range(100):
    m = i.to_bytes(4, "big") + os.urandom(996)
    s.sendto(m, ("10.2.0.1", 5005))
    try:
        if s.recvfrom(4000)[0] == m:
            ok += 1
    except socket.timeout:
        pass
print(ok)
"""


def udp_echo_through():
    """100 random 1000-byte datagrams to a host behind strongSwan and back, content checked."""
    for name, text in (("echo.py", UDP_ECHO), ("client.py", UDP_CLIENT)):
        with open(os.path.join(WORK, name), "w") as f:
            f.write(text)
    srv = popen("g2", f"python3 {WORK}/echo.py")
    time.sleep(0.3)
    r = nsx("hA", f"python3 {WORK}/client.py", check=False)
    srv.kill()
    try:
        return int(r.stdout.strip() or 0)
    except ValueError:
        return 0


def tshark_ike_esp(pcap, keys, version=2):
    """(messages with an ID payload tshark decrypted: IKE_AUTH, or IKEv1 main mode 5/6 with
    `version` 1; ESP packets; ESP ICV good), with the key tables espd exported."""
    esp_uat = [l for l in open(keys).read().splitlines() if l.strip()] if os.path.exists(keys) else []
    table = f"ikev{version}_decryption_table"
    ike_tab = keys + "." + table
    prof = os.path.join(WORK, "ws-" + os.path.basename(pcap))
    os.makedirs(prof, exist_ok=True)
    with open(os.path.join(prof, table), "w") as f:
        f.write(open(ike_tab).read() if os.path.exists(ike_tab) else "")
    with open(os.path.join(prof, "esp_sa"), "w") as f:
        f.write("\n".join(esp_uat) + "\n")
    env = dict(os.environ, WIRESHARK_CONFIG_DIR=prof, XDG_CONFIG_HOME=prof)
    base = ["tshark", "-n", "-r", pcap, "-o", "esp.enable_encryption_decode:TRUE",
            "-o", "esp.enable_authentication_check:TRUE"]
    exchange = 35 if version == 2 else 2  # IKE_AUTH / Identity Protection (main mode)
    ids = subprocess.run(base + ["-Y", f"isakmp.exchangetype == {exchange} && isakmp.id.type", "-T", "fields", "-e", "frame.number"],
                         capture_output=True, text=True, env=env)
    esp = subprocess.run(base + ["-Y", "esp", "-T", "fields", "-e", "esp.icv_good"], capture_output=True, text=True, env=env)
    lines = [l for l in esp.stdout.splitlines() if l.strip()]
    return (len([l for l in ids.stdout.splitlines() if l.strip()]), len(lines),
            sum(1 for l in lines if l.split(",")[0] == "1"), ids.stderr[-300:] + esp.stderr[-300:])


def run_case(tag, p1, p2, who_starts, extra="", rekey_wait=0):
    startup = "add" if who_starts == "strongswan" else "start"
    cap = os.path.join(WORK, f"{tag}.pcap")
    dump = popen("w", f"tcpdump -q -n -U -i w1 -w {cap} udp port 500 or udp port 4500",
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    e = Espd(tag, espd_config(tag, startup, p1, p2, extra=extra, lab=bool(rekey_wait)))
    c = None
    try:
        check(f"[{tag}] espd up", "gateway up" in e.text(), e.text()[-800:])
        c = Charon(tag, export(e.cfg, "start" if who_starts == "strongswan" else "none"))
        check(f"[{tag}] strongSwan loaded the exported config", c.load.returncode == 0, c.load.stdout + c.load.stderr)
        ok = wait_for(lambda: "CHILD_SA established" in e.text(), 15)
        check(f"[{tag}] IKE SA and CHILD_SA established ({who_starts} initiates)", ok,
              e.text()[-1500:] + "\n--- charon ---\n" + c.log()[-2500:])
        if not ok:
            return
        nsx("hA", "ping -c 1 -W 1 10.1.0.1", check=False)
        got, out = ping_through()
        check(f"[{tag}] ping through the negotiated tunnel", got == 5, out[-300:] + c.log()[-1500:])
        n = udp_echo_through()
        check(f"[{tag}] 100 UDP datagrams there and back, content verified", n == 100, str(n))
        sas = e.show("sas").get("sas", [])
        check(f"[{tag}] espd show sas: the negotiated ESP SAs carry the traffic",
              len(sas) == 2 and all(s["packets"] >= 5 for s in sas), json.dumps(sas))
        time.sleep(0.5)
        dump.send_signal(signal.SIGINT)
        dump.wait(timeout=5)
        ids, n_esp, good, err = tshark_ike_esp(cap, e.keys)
        check(f"[{tag}] tshark decrypts IKE_AUTH with espd's exported IKEv2 keys and checks every ESP ICV",
              ids >= 2 and n_esp >= 10 and good == n_esp, f"ids {ids} esp {good}/{n_esp} {err}")
        if rekey_wait:
            rk = wait_for(lambda: "for CREATE_CHILD_SA" in e.text() and e.text().count("CHILD_SA established") >= 2, rekey_wait)
            got, out = ping_through(3)
            check(f"[{tag}] CHILD_SA rekeyed with PFS and the tunnel still carries traffic", rk and got == 3,
                  e.text()[-1500:] + c.log()[-1500:])
        tl = open(e.tunnel_log).read() if os.path.exists(e.tunnel_log) else ""
        check(f"[{tag}] tunnel log records the IKE events", "IKE SA established" in tl and "CHILD_SA established" in tl, tl[-600:])
    finally:
        if c:
            c.stop()
        e.stop()
        if dump.poll() is None:
            dump.kill()


def established(tag, e):
    """strongSwan (started with start_action = start) has brought the tunnel up to espd."""
    ok = wait_for(lambda: "CHILD_SA established" in e.text(), 15)
    check(f"[{tag}] established", ok, e.text()[-1000:])
    return ok


def rekey_race_ping(e, c, secs, ike=False):
    """A continuous ping of `secs` seconds through the tunnel while both sides' timers race to
    rekey the CHILD_SA. The race is random (espd's AWS fuzz against strongSwan's fixed time),
    so each side also starts one CHILD_SA rekey on command, at a third and at two thirds of
    the ping: whatever the draws, each side has started at least one (espd's timer windows
    are checked exactly, with a fake clock, in espd/tests/ike_ctl.rs). With `ike`, espd also
    rekeys the IKE SA on command at half time. Returns (received, sent, ping's summary line)."""
    n = int(secs / 0.2)
    p = netns.popen("hA", f"ping -n -q -c {n} -i 0.2 -W 2 10.2.0.1", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(secs / 3)
    subprocess.run([ESPD, "rekey", "aws-t1", "--what", "child", "--socket", e.sock], capture_output=True, text=True)
    if ike:
        time.sleep(secs / 6)
        subprocess.run([ESPD, "rekey", "aws-t1", "--what", "ike", "--socket", e.sock], capture_output=True, text=True)
        time.sleep(secs / 6)
    else:
        time.sleep(secs / 3)
    subprocess.run(["swanctl", "--rekey", "--child", "aws-t1-net", "--uri", c.uri], capture_output=True, text=True, timeout=30)
    out, _ = p.communicate(timeout=secs + 60)
    line = next((l for l in out.splitlines() if "received" in l), "")
    got = int(line.split(",")[1].split()[0]) if line else 0
    return got, n, line


def rekey_case(tag, secs):
    """Short lab lifetimes: both sides rekey CHILD_SAs and the IKE SA several times during a
    continuous ping; no ping may be lost. espd runs two workers here (two queues per
    interface): the negotiated SAs are installed on their owner and known to the other."""
    p1 = (["AES128"], ["SHA2-256"], [14])
    p2 = (["AES128-GCM-16"], ["SHA2-256"])
    extra = "phase1_lifetime_s = 40\nphase2_lifetime_s = 16\nrekey_margin_s = 6\nrekey_fuzz_pct = 100\nphase2_dh_groups = [14]"
    e = Espd(tag, espd_config(tag, "add", p1, p2, extra=extra, lab=True, cores=(0, 1)))
    c = None
    try:
        check(f"[{tag}] espd runs two workers", "2 worker(s) on cores [0, 1]" in e.text(), e.text()[-800:])
        # strongSwan's own jitter (rand_time, whole seconds) lands its CHILD_SA rekeys near the
        # start of the window, so it won ~80% of the races and sometimes all of them. A fixed
        # 7 s (no jitter) against espd's uniform 4..10 s gives each side half of the races.
        sw = export(e.cfg, "start")
        old = "rekey_time = 10s\n        life_time = 16s"
        assert old in sw, sw
        c = Charon(tag, sw.replace(old, "rekey_time = 7s\n        rand_time = 0s\n        life_time = 16s"))
        if not established(tag, e):
            return
        nsx("hA", "ping -c 1 -W 1 10.1.0.1", check=False)
        got, n, line = rekey_race_ping(e, c, secs)
        text = e.text()
        child_rekeys = text.count("for CREATE_CHILD_SA\n") // 2 + text.count("processed request") // 2
        ours = text.count("is sending request (id=")
        theirs = text.count("processed request (id=")
        ike_rekeys = text.count("IKE SA rekeyed")
        # Where lost pings went, should any be: the workers' drop counters by reason.
        drops = json.dumps(e.show("counters").get("worker", {}).get("drops"))
        check(f"[{tag}] {secs:.0f} s of ping across rekeys: {got}/{n} received", got == n, line + "\nespd drops: " + drops + "\n" + text[-2500:] + "\n--- charon ---\n" + c.log()[-2000:])
        check(f"[{tag}] both sides rekeyed (espd started {ours}, strongSwan started {theirs} CREATE_CHILD_SA), IKE SA rekeyed {ike_rekeys}x",
              ours >= 1 and theirs >= 1 and ike_rekeys >= 1 and child_rekeys >= 0, text[-3000:])
        # A CHILD_SA rekey every few seconds: the old pair stays installed for a moment after
        # each (make-before-break), so look for a few seconds.
        got_sas = {"sas": []}

        def one_pair():
            got_sas["sas"] = e.show("sas").get("sas", [])
            return len(got_sas["sas"]) == 2
        check(f"[{tag}] after the rekeys one SA pair remains", wait_for(one_pair, 8), json.dumps(got_sas["sas"]))
        ike = (e.show("tunnels").get("tunnels", [{}])[0]).get("ike") or {}
        rk = ike.get("rekeys", {})
        p1n = sum(rk.get("phase1", {}).values())
        check(f"[{tag}] show tunnels counts the rekeys by phase and initiator ({json.dumps(rk)}), phases Established",
              rk.get("phase2", {}).get("local", 0) >= 1 and rk.get("phase2", {}).get("peer", 0) >= 1
              and 1 <= p1n <= ike_rekeys and ike.get("phase1_state") == "Established"
              and ike.get("phase2_state") in ("Established", "Rekeying"), json.dumps(ike))
        lab = 'vpn_id="vpn-sw",tunnel_ip="192.0.2.1",tunnel="aws-t1"'
        scraped = {"m": ""}

        def metrics_ok():
            # Read again for a few seconds: a scrape may fall inside the next IKE SA rekey
            # (phase 1 Rekeying for a moment).
            m = scraped["m"] = e.metrics()
            series = {l.rsplit(" ", 1)[0]: float(l.rsplit(" ", 1)[1]) for l in m.splitlines() if l and not l.startswith("#")}

            def v(name, extra=""):
                return series.get(f"{name}{{{lab}{extra}}}", -1)
            return (v("vpn_tunnel_ike_phase_state", ',phase="1",state="Established"') == 1
                    and v("vpn_tunnel_ike_phase_state", ',phase="1",state="Down"') == 0
                    and v("vpn_tunnel_rekeys_total", ',phase="2",initiator="peer"') >= 1
                    and v("vpn_tunnel_rekeys_total", ',phase="2",initiator="local"') >= 1
                    and v("vpn_tunnel_rekey_collisions_total") >= 0
                    and v("vpn_tunnel_ike_messages_dropped_total") == 0
                    and series.get("espd_ike_datagrams_total", 0) >= 20
                    and series.get('espd_ike_dropped_total{reason="malformed"}', -1) == 0)
        check(f"[{tag}] Prometheus: IKE phase states, rekeys by phase/initiator, collisions, IKE datagram counters",
              wait_for(metrics_ok, 8), scraped["m"][-3000:])
        # Tunnel log (text format): phase states follow the exchanges (log spec section 2.4),
        # AWS messages are byte for byte (no prefix, no lab marker), engine events are prefixed.
        tl = open(e.tunnel_log).read().splitlines() if os.path.exists(e.tunnel_log) else []
        child_req = [l for l in tl if l.endswith(" for CREATE_CHILD_SA") and "AWS tunnel is sending request (id=" in l]
        ike_req = [l for l in tl if "AWS tunnel is sending request (id=" in l and l.endswith("(IKE SA rekey)")]
        rekeyed = [l for l in tl if "engine: IKE SA rekeyed" in l]
        check(f"[{tag}] tunnel log: espd's CHILD_SA rekey requests read p2=Rekeying, its IKE SA rekeys p1=Rekeying, AWS text exact, engine events prefixed",
              child_req and all(" p1=Established p2=Rekeying AWS tunnel" in l for l in child_req)
              and all(" p1=Rekeying " in l for l in ike_req)
              and rekeyed and all(l.endswith("[lab: short lifetimes allowed]") for l in rekeyed)
              and not any("AWS tunnel" in l and "[lab" in l for l in tl),
              "\n".join(tl[-30:]))
    finally:
        if c:
            c.stop()
        e.stop()


def dpd_case(tag):
    """DPD: strongSwan is killed (no DELETE); espd declares it dead within the timeout and
    applies `restart`; strongSwan comes back and the tunnel with it."""
    p1 = (["AES128"], ["SHA2-256"], [14])
    p2 = (["AES128-GCM-16"], ["SHA2-256"])
    extra = 'dpd_timeout_s = 30\ndpd_timeout_action = "restart"'
    e = Espd(tag, espd_config(tag, "add", p1, p2, extra=extra))
    c = None
    try:
        c = Charon(tag, export(e.cfg, "start"))
        if not established(tag, e):
            return
        c.p.kill()
        c.p.wait()
        t0 = time.time()
        dead = wait_for(lambda: "AWS tunnel DPD timed out after" in e.text(), 50)
        took = time.time() - t0
        time.sleep(0.6)  # the IKE figures in `show` are refreshed twice a second
        t = e.show("tunnels").get("tunnels", [{}])[0]
        ike = t.get("ike") or {}
        check(f"[{tag}] peer killed: 'AWS tunnel DPD timed out after N retransmits' after {took:.0f} s (timeout 30 s), tunnel DOWN, counted",
              dead and took <= 42 and t.get("state") == "DOWN"
              and ike.get("dpd_timeouts") == 1 and ike.get("dpd_action") == "restart"
              and ike.get("phase1_state") in ("Negotiating", "Down"),
              e.text()[-1500:] + json.dumps(t))
        check(f"[{tag}] DPD action restart: espd initiates again", wait_for(lambda: "Initiating IKE_SA_INIT" in e.text(), 10),
              e.text()[-800:])
        c = Charon(tag + "-2", export(e.cfg, "none"))
        back = wait_for(lambda: e.text().count("CHILD_SA established") >= 2, 30)
        got, out = ping_through(3) if back else (0, "")
        check(f"[{tag}] strongSwan back: the tunnel comes back and carries traffic", back and got == 3,
              e.text()[-1500:] + out)
    finally:
        if c:
            c.stop()
        e.stop()


def ike_spis_sw(c):
    """The IKE SAs strongSwan lists: [(spi_i, spi_r), ...]."""
    r = subprocess.run(["swanctl", "--list-sas", "--ike", "aws-t1", "--uri", c.uri], capture_output=True, text=True)
    return re.findall(r"([0-9a-f]{16})_i\*? ([0-9a-f]{16})_r", r.stdout)


def espd_ike(e):
    time.sleep(0.6)  # the IKE figures in `show` are refreshed twice a second
    return (e.show("tunnels").get("tunnels", [{}])[0]).get("ike") or {}


def collision_case(tag):
    """RFC 7296 section 2.8.2 against strongSwan: both sides rekey the IKE SA at once. espd's
    IKE datagrams are held back (nftables in espd's namespace) while both requests go out, so
    each side gets the other's request while its own is outstanding; both answer, and the two
    implementations must agree on the one IKE SA that survives (the lowest nonce loses) and
    keep the CHILD_SAs on it."""
    p1 = (["AES128"], ["SHA2-256"], [19])
    p2 = (["AES128-GCM-16"], ["SHA2-256"])
    e = Espd(tag, espd_config(tag, "add", p1, p2))
    c = None
    block = "nft add table inet ikehold; nft 'add chain inet ikehold out { type filter hook output priority 0; }'; " \
            "nft add rule inet ikehold out udp sport '{ 500, 4500 }' drop"
    try:
        c = Charon(tag, export(e.cfg, "start"))
        if not established(tag, e):
            return
        before = espd_ike(e)
        children = e.show("sas").get("sas", [])
        nsx("g1", f"sh -c \"{block}\"")
        r = subprocess.run([ESPD, "rekey", "aws-t1", "--what", "ike", "--socket", e.sock], capture_output=True, text=True)
        sent = wait_for(lambda: "(IKE SA rekey)" in e.text(), 5)
        r2 = subprocess.run(["swanctl", "--rekey", "--ike", "aws-t1", "--uri", c.uri], capture_output=True, text=True)
        seen = wait_for(lambda: "(IKE_REKEY) collision" in e.text(), 5)
        nsx("g1", "nft delete table inet ikehold")
        check(f"[{tag}] both sides rekey the IKE SA at once; espd answers strongSwan's request while its own is out",
              r.returncode == 0 and sent and r2.returncode == 0 and seen,
              r.stdout + r.stderr + r2.stdout + r2.stderr + e.text()[-1500:])
        # Settled: one IKE SA on each side, the same one, new, and still so 8 s later (the
        # redundant SA's DELETE may need a retransmission: the peer may only take it once
        # its own exchange has ended).
        def same():
            k = espd_ike(e)
            return ike_spis_sw(c) == [(k.get("spi_i"), k.get("spi_r"))] and k.get("spi_i") != before.get("spi_i")
        settled = wait_for(lambda: "redundant SA is being deleted" in e.text() and same(), 40)
        time.sleep(8)
        settled = settled and same()
        after = espd_ike(e)
        check(f"[{tag}] one IKE SA left on both sides, the same one, new: espd {after.get('spi_i')}/{after.get('spi_r')}, strongSwan {ike_spis_sw(c)}",
              settled and after.get("rekey_collisions", 0) >= 1 and sum(after.get("rekeys", {}).get("phase1", {}).values()) == 1
              and "IKE_REKEY collision" in c.log(),
              e.text()[-2500:] + "\n--- charon ---\n" + c.log()[-3000:])
        got, out = ping_through(3)
        sas = e.show("sas").get("sas", [])
        check(f"[{tag}] the CHILD_SAs moved to it and carry traffic",
              got == 3 and sorted(s.get("spi") for s in sas) == sorted(s.get("spi") for s in children),
              out + json.dumps(sas) + json.dumps(children))
        # The survivor works for the next exchange: a CHILD_SA rekey over it.
        subprocess.run([ESPD, "rekey", "aws-t1", "--what", "child", "--socket", e.sock], capture_output=True, text=True)
        rk = wait_for(lambda: e.text().count("CHILD_SA established") >= 2, 10)
        got, out = ping_through(3)
        check(f"[{tag}] a CHILD_SA rekey over the surviving IKE SA works", rk and got == 3,
              e.text()[-1500:] + "\n--- charon ---\n" + c.log()[-1500:])
    finally:
        nsx("g1", "nft delete table inet ikehold", check=False)
        if c:
            c.stop()
        e.stop()


def tunnel_interface_case(tag):
    """The tunnel interface: espd's TUN device `espd1` holds the AWS-side inside address
    (169.254.10.1/30, MTU 1399); with the AWS default selectors (0.0.0.0/0) the customer
    gateway pings it from its inside address (169.254.10.2) through the IPsec tunnel: espd
    hands the decrypted echo request to the kernel through the device, and the kernel's
    reply goes back into the tunnel."""
    p1 = (["AES128"], ["SHA2-256"], [14])
    p2 = (["AES128-GCM-16"], ["SHA2-256"])
    text = espd_config(tag, "add", p1, p2, extra='tunnel_inside_cidr = "169.254.10.0/30"')
    text = text.replace('local_ipv4_network_cidr = "10.2.0.0/24"', 'local_ipv4_network_cidr = "0.0.0.0/0"')
    text = text.replace('remote_ipv4_network_cidr = "10.1.0.0/24"', 'remote_ipv4_network_cidr = "0.0.0.0/0"')
    e = Espd(tag, text)
    c = None
    try:
        link = nsx("g1", "ip -o addr show dev espd1", check=False).stdout
        mtu = nsx("g1", "cat /sys/class/net/espd1/mtu", check=False).stdout.strip()
        check(f"[{tag}] espd1 holds the AWS inside address 169.254.10.1/30 with MTU 1399",
              "169.254.10.1/30" in link and mtu == "1399", link + mtu + e.text()[-600:])
        c = Charon(tag, export(e.cfg, "start"))
        if not established(tag, e):
            return
        nsx("g2", "ip addr add 169.254.10.2/32 dev lo", check=False)
        r = nsx("g2", "ping -n -c 5 -i 0.2 -W 2 -I 169.254.10.2 169.254.10.1", check=False)
        got = next((int(l.split(",")[1].split()[0]) for l in r.stdout.splitlines() if "received" in l), 0)
        w = e.show("counters").get("worker", {})
        check(f"[{tag}] the CGW pings espd's inside address through the tunnel ({got}/5), through the device both ways",
              got == 5 and w.get("local_in", 0) >= 5 and w.get("local_out", 0) >= 5,
              r.stdout[-400:] + json.dumps(w)[:600] + "\n" + e.text()[-800:] + c.log()[-1500:])
        # The kernel's own traffic (here: a ping from espd's side) takes the device too.
        r = nsx("g1", "ping -n -c 3 -i 0.2 -W 2 169.254.10.2", check=False)
        got = next((int(l.split(",")[1].split()[0]) for l in r.stdout.splitlines() if "received" in l), 0)
        check(f"[{tag}] espd's side pings the CGW's inside address through espd1 ({got}/3)", got == 3, r.stdout[-400:])
    finally:
        nsx("g2", "ip addr del 169.254.10.2/32 dev lo", check=False)
        if c:
            c.stop()
        e.stop()


class Bird:
    """BIRD 2 in a namespace with its own control socket (`birdc -s`)."""

    def __init__(self, node, tag, conf_text):
        self.ctl = os.path.join(WORK, f"bird-{tag}.ctl")
        self.conf = os.path.join(WORK, f"bird-{tag}.conf")
        with open(self.conf, "w") as f:
            f.write(conf_text)
        self.node = node
        self.p = popen(node, f"bird -f -c {self.conf} -s {self.ctl} -P {WORK}/bird-{tag}.pid",
                       stdout=open(os.path.join(WORK, f"bird-{tag}.log"), "w"), stderr=subprocess.STDOUT)
        wait_for(lambda: os.path.exists(self.ctl), 5)

    @classmethod
    def attach(cls, node, ctl):
        """A BIRD someone else runs (espd's supervised one), by its control socket."""
        b = cls.__new__(cls)
        b.node, b.ctl, b.p, b.conf = node, ctl, None, None
        return b

    def cli(self, cmd):
        return nsx(self.node, f"birdc -s {self.ctl} {cmd}", check=False).stdout

    def established(self, proto):
        return "Established" in self.cli(f"show protocols {proto}")

    def stop(self):
        if self.p is None:
            return
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.p.kill()


def dynamic_config(tag, p1, p2):
    """espd's aws-t1 and aws-t2 as one dynamic connection: BGP over aws-t1's inside
    169.254.10.0/30, 0.0.0.0/0 selectors (the routes come from BGP), the VPC prefix
    10.1.0.0/24 advertised, espd's state (BIRD's files) under WORK."""
    text = espd_config(tag, "add", p1, p2, extra='tunnel_inside_cidr = "169.254.10.0/30"\nbgp_advertise = ["10.1.0.0/24"]', routing="dynamic")
    text = text.replace('local_ipv4_network_cidr = "10.2.0.0/24"', 'local_ipv4_network_cidr = "0.0.0.0/0"')
    text = text.replace('remote_ipv4_network_cidr = "10.1.0.0/24"', 'remote_ipv4_network_cidr = "0.0.0.0/0"')
    text = text.replace('pre_shared_key = "lab.tunnel_two"', 'pre_shared_key = "lab.tunnel_two"\nbgp_advertise = ["10.1.0.0/24"]')
    return text.replace('idle_sleep_us = 20\n', f'idle_sleep_us = 20\nstate_directory = "{WORK}/{tag}-state"\n')


def bgp_case(tag, mode="external"):
    """BGP over the tunnel (routing = "dynamic"): espd's BIRD and the customer gateway's
    (strongSwan + BIRD from `export-config --peer bird`) peer between the inside addresses
    over the tunnel interface: the session is Established with the AWS timers, the CGW's
    prefix 10.99.0.0/24 (in no static config) lands in kernel table 220000 on espd's side and
    becomes a data-plane route, and the CGW learns the VPC prefix with MED 100.
    mode "external": BIRD runs beside espd from `espd export-config --bird`;
    mode "supervised" (the default of espd run): espd starts BIRD, restarts it when it is
    killed, stops it on exit, and reports the session in `show tunnels` and the tunnel log."""
    p1 = (["AES128"], ["SHA2-256"], [14])
    p2 = (["AES128-GCM-16"], ["SHA2-256"])
    text = dynamic_config(tag, p1, p2)
    if mode == "external":
        text = text.replace("idle_sleep_us = 20\n", f'idle_sleep_us = 20\nbird = "external"\nbird_control_socket = "{WORK}/bird-{tag}-aws.ctl"\n')
    e = Espd(tag, text)
    c = b1 = b2 = None
    try:
        r = subprocess.run([ESPD, "export-config", e.cfg, "--bird"], capture_output=True, text=True)
        check(f"[{tag}] espd export-config --bird writes espd's BIRD configuration", r.returncode == 0 and "protocol bgp aws_aws_t1" in r.stdout, r.stdout[-800:] + r.stderr)
        if mode == "external":
            b1 = Bird("g1", f"{tag}-aws", r.stdout)
        else:
            b1 = Bird.attach("g1", f"{WORK}/{tag}-state/bird/bird.ctl")
            check(f"[{tag}] espd started BIRD (supervised)", wait_for(lambda: os.path.exists(b1.ctl), 5), e.text()[-800:])
        c = Charon(tag, export(e.cfg, "start"))
        if not established(tag, e):
            return
        nsx("g2", "ip addr add 169.254.10.2/30 dev ipsec0", check=False)
        r = subprocess.run([ESPD, "export-config", e.cfg, "aws-t1", "--peer", "bird"], capture_output=True, text=True)
        cgw = r.stdout.replace("route 0.0.0.0/0 unreachable;", "route 10.99.0.0/24 unreachable;")
        b2 = Bird("g2", f"{tag}-cgw", cgw)
        up = wait_for(lambda: b1.established("aws_aws_t1"), 45)
        check(f"[{tag}] BGP Established over the tunnel interface (espd1 169.254.10.1 <-> CGW 169.254.10.2)", up,
              b1.cli("show protocols all aws_aws_t1")[-1500:] + b2.cli("show protocols all aws")[-800:] + e.text()[-800:])
        if not up:
            return
        info = b1.cli("show protocols all aws_aws_t1")
        check(f"[{tag}] the AWS timers: hold time 30, keepalive 10, neighbor AS 65000, local AS 64512",
              re.search(r"Hold timer:\s+[\d.]+/30", info) and re.search(r"Keepalive timer:\s+[\d.]+/10", info) and re.search(r"Neighbor AS:\s+65000", info) and re.search(r"Local AS:\s+64512", info), info[-1200:])
        learned = wait_for(lambda: "10.99.0.0/24" in nsx("g1", "ip route show table 220000", check=False).stdout, 15)
        check(f"[{tag}] the CGW's prefix 10.99.0.0/24 is learned and in kernel table 220000 (via espd1)", learned,
              b1.cli("show route") + nsx("g1", "ip route show table 220000", check=False).stdout)
        # The data plane follows: hA reaches 10.99.0.1 (on the CGW) through the tunnel.
        nsx("g2", "ip addr add 10.99.0.1/32 dev lo", check=False)
        routed = wait_for(lambda: "10.99.0.0/24 via tunnel(s) [1]" in e.text(), 5)
        r = nsx("hA", "ping -n -c 5 -i 0.2 -W 2 10.99.0.1", check=False)
        got = next((int(l.split(",")[1].split()[0]) for l in r.stdout.splitlines() if "received" in l), 0)
        check(f"[{tag}] the learned prefix becomes a data-plane route: hA pings 10.99.0.1 behind the CGW ({got}/5)",
              routed and got == 5, r.stdout[-300:] + e.text()[-1000:])
        def listed():
            rs = e.show("routes").get("routes", [])
            return any(r.get("prefix") == "10.99.0.0/24" and r.get("tunnels") == ["aws-t1"] and r.get("source") == "bgp"
                       and [m.get("as_path") for m in r.get("members", [])] == ["65000"]
                       and re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", r["members"][0].get("learned_at") or "") for r in rs)
        ok = wait_for(listed, 5)
        text_out = subprocess.run([ESPD, "show", "routes", "--socket", e.sock], capture_output=True, text=True).stdout
        check(f"[{tag}] espd show routes lists 10.99.0.0/24 on aws-t1 from BGP with its AS path (65000) and learned-at time",
              ok and "10.99.0.0/24" in text_out and "AS path 65000" in text_out,
              json.dumps(e.show("routes")) + text_out)
        if mode == "supervised":
            t = e.show("tunnels").get("tunnels", [{}])[0]
            check(f"[{tag}] show tunnels: bgp Established with 169.254.10.2, the tunnel UP",
                  wait_for(lambda: (e.show("tunnels").get("tunnels", [{}])[0].get("bgp") or {}).get("state") == "Established", 5),
                  json.dumps(e.show("tunnels"))[:800])
            tl = open(e.tunnel_log).read() if os.path.exists(e.tunnel_log) else ""
            check(f"[{tag}] the tunnel log says BGP is up", "engine: BGP session with 169.254.10.2 Established" in tl, tl[-600:])
            # BIRD killed: the supervisor restarts it, the session comes back.
            nsx("g1", f"pkill -KILL -f '[b]ird -f -c {WORK}/{tag}-state/bird/bird.conf'", check=False)
            back = wait_for(lambda: "BIRD exited" in e.text(), 5) and wait_for(lambda: b1.established("aws_aws_t1"), 45)
            check(f"[{tag}] BIRD killed: the supervisor restarts it and BGP is Established again", back,
                  e.text()[-1200:] + b1.cli("show protocols"))
        # (after a restart of espd's BIRD the session's UPDATEs follow its Established)
        wait_for(lambda: "BGP.med: 100" in b2.cli("show route all 10.1.0.0/24"), 20)
        r2 = b2.cli("show route all 10.1.0.0/24")
        check(f"[{tag}] the CGW learns the VPC prefix 10.1.0.0/24 from AWS with MED 100", "BGP.med: 100" in r2, r2[-800:])
        w = e.show("counters").get("worker", {})
        check(f"[{tag}] BGP's packets went through the tunnel interface both ways", w.get("local_in", 0) > 2 and w.get("local_out", 0) > 2, json.dumps(w)[:400])
        if mode == "supervised":
            lab = 'vpn_id="vpn-sw",tunnel_ip="192.0.2.1",tunnel="aws-t1"'
            want = [f"vpn_tunnel_bgp_established{{{lab}}} 1", f"vpn_tunnel_bgp_routes{{{lab}}} 1", f"vpn_tunnel_state{{{lab}}} 1"]
            # (the states are polled every 2 s, the routes every second, after BIRD's restart)
            wait_for(lambda: all(w in e.metrics() for w in want), 10)
            m = e.metrics()
            check(f"[{tag}] Prometheus: vpn_tunnel_bgp_established 1, vpn_tunnel_bgp_routes 1, vpn_tunnel_state 1",
                  all(w in m for w in want), "\n".join(l for l in m.splitlines() if "bgp" in l or "vpn_tunnel_state" in l))
            # A CGW with the wrong ASN never reaches Established, and espd says why.
            b2.stop()
            b2 = Bird("g2", f"{tag}-cgw-asn", cgw.replace("local 169.254.10.2 as 65000;", "local 169.254.10.2 as 65001;"))
            bad = wait_for(lambda: "not established" in e.text() and "Bad peer AS" in e.text(), 40)
            check(f"[{tag}] a wrong customer ASN: never Established, logged ('Bad peer AS')", bad and not b1.established("aws_aws_t1"),
                  e.text()[-1000:] + b1.cli("show protocols all aws_aws_t1")[-600:])
            t = e.show("tunnels").get("tunnels", [{}])[0]
            check(f"[{tag}] the tunnel reads DOWN while BGP is not Established (TunnelState)", t.get("state") == "DOWN", json.dumps(t)[:600])
            # Over the prefix limit: 101 prefixes end the session with Cease 6/1. The capture
            # on espd1 shows the NOTIFICATION espd's BIRD sends (the CGW may not get to read
            # it: its socket can be reset while it still sends UPDATEs).
            b2.stop()
            cap = os.path.join(WORK, f"{tag}-bgp.pcap")
            dump = popen("g1", f"tcpdump -q -n -U -i espd1 -w {cap} tcp port 179",
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            dump.stderr.readline()  # "listening on espd1 ...": capturing from here
            time.sleep(0.2)
            many = cgw.replace("route 10.99.0.0/24 unreachable;", "\n".join(f"route 10.200.{i}.0/24 unreachable;" for i in range(101)))
            b2 = Bird("g2", f"{tag}-cgw-many", many)
            b1.cli("restart aws_aws_t1")  # past BIRD's error wait after the bad ASN
            ceased = wait_for(lambda: "Route limit exceeded" in b1.cli("show protocols aws_aws_t1"), 45)
            time.sleep(0.5)
            dump.send_signal(2)
            dump.wait(timeout=5)
            r = subprocess.run(["tshark", "-r", cap, "-Y", "bgp.notify.major_error == 6 && bgp.notify.minor_error_cease == 1",
                                "-T", "fields", "-e", "ip.src"], capture_output=True, text=True)
            # The Cease 6/1 is seen on the wire, or the CGW says it received it (when the
            # capture missed it; the CGW in turn may not read it when its socket resets).
            got_cease = "Received: Maximum number of prefixes reached" in b2.cli("show protocols all aws")
            check(f"[{tag}] 101 prefixes from the CGW: espd's BIRD ends the session (route limit) with a Cease 6/1 NOTIFICATION (captured on espd1: {r.stdout.split()}; the CGW received it: {got_cease})",
                  ceased and ("169.254.10.1" in r.stdout.split() or got_cease) and not b2.established("aws"),
                  r.stderr + b2.cli("show protocols all aws")[-800:] + b1.cli("show protocols all aws_aws_t1")[-600:])
    finally:
        for b in (b1, b2):
            if b:
                b.stop()
        if mode == "supervised":
            e.stop()
            left = nsx("g1", f"pgrep -f '[b]ird -f -c {WORK}/{tag}-state/bird/bird.conf'", check=False).stdout.strip()
            check(f"[{tag}] espd stopped: its BIRD is gone too", left == "", left)
        nsx("g2", "ip addr del 169.254.10.2/30 dev ipsec0", check=False)
        nsx("g2", "ip addr del 10.99.0.1/32 dev lo", check=False)
        if c:
            c.stop()
        e.stop()


CGW_TWO_SESSIONS = """router id 169.254.10.2;
protocol device { scan time 10; }
protocol static cgw_networks { ipv4; route 10.99.0.0/24 unreachable; }
protocol kernel { ipv4 { import none; export where source = RTS_BGP; }; }
template bgp aws { hold time 30; keepalive time 10; direct; connect retry time 5; error wait time 5, 30;
  ipv4 { import all; export where proto = "cgw_networks"; next hop self; }; }
protocol bgp aws1 from aws { local 169.254.10.2 as 65000; neighbor 169.254.10.1 as 64512; }
protocol bgp aws2 from aws { local 169.254.11.2 as 65000; neighbor 169.254.11.1 as 64512; }
"""


def bgp_two_tunnels_case(tag):
    """Both tunnels of a dynamic connection (outside 192.0.2.1 and 192.0.2.5) to one
    strongSwan CGW, each with its BGP session; the CGW announces 10.99.0.0/24 on both
    equally: espd routes it ECMP over both tunnels (flows spread, `show routes` lists both).
    The CGW ends tunnel 1 (swanctl --terminate): tunnel 1 goes DOWN, its BGP session and
    its share of the route go, traffic continues on tunnel 2, the connection's TunnelState
    is 0.5. Tunnel 1 back (swanctl --initiate): its session is Established again and the
    route is ECMP again. Tunnel 1's ESP blocked (its IKE SA up): the hold timer ends its
    session and the route follows; unblocked: ECMP again. The CGW prepends its AS on tunnel
    2: the route is on tunnel 1 only; prepend removed: ECMP again."""
    p1 = (["AES128"], ["SHA2-256"], [14])
    p2 = (["AES128-GCM-16"], ["SHA2-256"])
    text = dynamic_config(tag, p1, p2)
    t2 = text[text.index('[[tunnel]]\nname = "aws-t2"'):]
    t1 = text[text.index('[[tunnel]]\nname = "aws-t1"'):text.index('[[tunnel]]\nname = "aws-t2"')]
    t2new = (t1.replace('name = "aws-t1"', 'name = "aws-t2"').replace('outside_ip = "192.0.2.1"', 'outside_ip = "192.0.2.5"')
             .replace('169.254.10.0/30', '169.254.11.0/30').replace('"lab.tunnel_one"', '"lab.tunnel_two"')
             .replace(f'{tag}.tunnel.log', f'{tag}-t2.tunnel.log'))
    text = text.replace(t2, t2new)
    nsx("g1", "ip addr add 192.0.2.5/24 dev g1o", check=False)
    e = Espd(tag, text)
    c = b1 = b2 = None
    try:
        check(f"[{tag}] espd up with two dynamic tunnels", "gateway up" in e.text(), e.text()[-800:])
        both = export_many(e.cfg, ["aws-t1", "aws-t2"])
        # Two 0.0.0.0/0 CHILD_SAs: kernel-libipsec routes everything into ipsec0 (table
        # 220) and excludes only the first peer it meets; the other AWS address needs the
        # same exclusion, or that tunnel's IKE and ESP go into the first tunnel.
        nsx("g2", "ip route add throw 192.0.2.5 table 220", check=False)
        nsx("g2", "ip route add throw 192.0.2.1 table 220", check=False)
        c = Charon(tag, both)
        check(f"[{tag}] strongSwan loaded both tunnels", c.load.returncode == 0, c.load.stdout + c.load.stderr + both)
        up = wait_for(lambda: e.text().count("CHILD_SA established") >= 2, 20)
        check(f"[{tag}] both tunnels established", up, e.text()[-1500:] + c.log()[-1500:])
        if not up:
            return
        nsx("g2", "ip addr add 169.254.10.2/30 dev ipsec0", check=False)
        nsx("g2", "ip addr add 169.254.11.2/30 dev ipsec0", check=False)
        nsx("g2", "ip addr add 10.99.0.1/32 dev lo", check=False)
        b1 = Bird.attach("g1", f"{WORK}/{tag}-state/bird/bird.ctl")
        b2 = Bird("g2", f"{tag}-cgw", CGW_TWO_SESSIONS)
        est = wait_for(lambda: b1.established("aws_aws_t1") and b1.established("aws_aws_t2"), 45)
        check(f"[{tag}] two BGP sessions Established (one per tunnel)", est,
              b1.cli("show protocols all aws_aws_t2") + b2.cli("show protocols all aws2")
              + nsx("g1", "ip addr show espd2", check=False).stdout + nsx("g2", "ip route get 169.254.11.1", check=False).stdout
              + json.dumps(e.show("counters").get("worker", {}))[:600] + json.dumps(e.show("sas"))[:1500])

        def route():
            return {r["prefix"]: r for r in e.show("routes").get("routes", [])}.get("10.99.0.0/24") or {}
        ecmp = wait_for(lambda: route().get("tunnels") == ["aws-t1", "aws-t2"]
                        and [m.get("as_path") for m in route().get("members", [])] == ["65000", "65000"], 10)
        check(f"[{tag}] 10.99.0.0/24 is ECMP over both tunnels, each member with its AS path ({route()})", ecmp and route().get("ecmp") is True, json.dumps(route()))
        def outs():
            return {t["name"]: t.get("packets_out", 0) for t in e.show("tunnels").get("tunnels", [])}
        before = outs()
        nsx("hA", "python3 -c \"import socket\nfor p in range(2000, 2064):\n s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('', p)); s.sendto(b'x'*64, ('10.99.0.1', 9))\"", check=False)
        time.sleep(1)
        after = outs()
        d1, d2 = after["aws-t1"] - before["aws-t1"], after["aws-t2"] - before["aws-t2"]
        check(f"[{tag}] 64 flows spread over both tunnels ({d1} / {d2})", d1 >= 10 and d2 >= 10 and d1 + d2 >= 64, json.dumps(after))
        got, out = 0, ""
        r = nsx("hA", "ping -n -c 3 -i 0.2 -W 2 10.99.0.1", check=False)
        got = next((int(l.split(",")[1].split()[0]) for l in r.stdout.splitlines() if "received" in l), 0)
        check(f"[{tag}] hA reaches 10.99.0.1 over the ECMP route ({got}/3)", got == 3, r.stdout[-300:])
        # Tunnel 1 ends.
        subprocess.run(["swanctl", "--terminate", "--ike", "aws-t1", "--uri", c.uri], capture_output=True, text=True)
        gone = wait_for(lambda: route().get("tunnels") == ["aws-t2"], 40)
        r = nsx("hA", "ping -n -c 3 -i 0.2 -W 2 10.99.0.1", check=False)
        got = next((int(l.split(",")[1].split()[0]) for l in r.stdout.splitlines() if "received" in l), 0)
        m = e.metrics()
        check(f"[{tag}] tunnel 1 ended by the CGW: the route is on tunnel 2 only, traffic continues ({got}/3), the connection's TunnelState 0.5",
              gone and got == 3 and 'vpn_connection_tunnel_state{vpn_id="vpn-sw"} 0.5' in m,
              json.dumps(route()) + r.stdout[-300:] + "\n".join(l for l in m.splitlines() if "tunnel_state" in l or "bgp" in l))
        # Tunnel 1 back.
        subprocess.run(["swanctl", "--initiate", "--child", "aws-t1-net", "--uri", c.uri], capture_output=True, text=True, timeout=30)
        # (BIRD retries 5 to 30 s after the hold timer's error: error wait time 5, 30)
        back = wait_for(lambda: route().get("tunnels") == ["aws-t1", "aws-t2"], 90)
        check(f"[{tag}] tunnel 1 back: its session is Established again and the route is ECMP again", back,
              json.dumps(route()) + b1.cli("show protocols") + e.text()[-800:])
        if not back:
            return
        # Tunnel 1's ESP toward the CGW dropped at the CGW (UDP 4500 with a non-zero first
        # word: ESP, not IKE's non-ESP marker), its IKE SA untouched: BGP's hold timer ends
        # the session (DPD is answered over IKE, so the IKE SA stays), the route leaves tunnel
        # 1 within the hold time, traffic continues on tunnel 2. One direction only: the
        # CGW's kernel-libipsec sends whatever its two 0.0.0.0/0 CHILD_SAs share on the first
        # one, tunnel 2's BGP and replies too, so blocking its sending side would cut both.
        t0 = time.time()
        nsx("g2", "nft -f -", input="""table inet espblock {
  chain in { type filter hook input priority 0; ip saddr 192.0.2.1 udp sport 4500 @th,64,32 != 0 drop; }
}
""")
        # espd's BIRD ends the session when its hold timer expires: 30 s after the last BGP
        # message it got, which TCP's retransmissions (their ACKs are what is dropped) may
        # still deliver for a while after the block. The route must follow within a few
        # seconds of that.
        t_down = t_route = None
        while time.time() - t0 < 70 and t_route is None:
            if t_down is None and not b1.established("aws_aws_t1"):
                t_down = time.time()
            if route().get("tunnels") == ["aws-t2"]:
                t_route = time.time()
            time.sleep(0.2)
        gone = t_route is not None and t_down is not None
        took = (t_route or time.time()) - t0
        lag = (t_route or 0) - (t_down or 0)
        r = nsx("hA", "ping -n -c 3 -i 0.2 -W 2 10.99.0.1", check=False)
        got = next((int(l.split(",")[1].split()[0]) for l in r.stdout.splitlines() if "received" in l), 0)
        # espd reads the sessions' states from BIRD every 2 s (the routes every second).
        wait_for(lambda: 'vpn_connection_tunnel_state{vpn_id="vpn-sw"} 0.5' in e.metrics(), 6)
        tun = {t["name"]: t for t in e.show("tunnels").get("tunnels", [])}
        t1 = tun.get("aws-t1", {})
        m = e.metrics()
        check(f"[{tag}] tunnel 1's ESP blocked: BGP's hold timer ends its session ({took:.0f} s), the route leaves tunnel 1 {lag:.1f} s later, the IKE SA stays, traffic continues on tunnel 2 ({got}/3), TunnelState 0.5",
              gone and 25 <= took <= 65 and lag <= 3 and "Hold timer expired" in b1.cli("show protocols aws_aws_t1") + b2.cli("show protocols aws1") and got == 3 and (t1.get("ike") or {}).get("phase1_state") == "Established"
              and (t1.get("bgp") or {}).get("state") != "Established" and t1.get("state") == "DOWN"
              and 'vpn_connection_tunnel_state{vpn_id="vpn-sw"} 0.5' in m,
              json.dumps(route()) + json.dumps(t1) + r.stdout[-300:] + "\n".join(l for l in m.splitlines() if "tunnel_state" in l)
              + b1.cli("show protocols all aws_aws_t1"))
        nsx("g2", "nft delete table inet espblock", check=False)
        back = wait_for(lambda: route().get("tunnels") == ["aws-t1", "aws-t2"], 90)
        check(f"[{tag}] ESP unblocked: tunnel 1's session is Established again ({time.time() - t0 - took:.0f} s) and the route is ECMP again", back,
              json.dumps(route()) + b1.cli("show protocols") + e.text()[-800:])
        if not back:
            return
        # BGP attributes pick the tunnel: the CGW prepends its AS twice on tunnel 2 (as AWS
        # tells CGWs without asymmetric routing to do), so tunnel 1's shorter path wins and
        # the route leaves ECMP; without the prepend, ECMP again.
        with open(b2.conf, "w") as f:
            f.write(CGW_TWO_SESSIONS.replace(
                "protocol bgp aws2 from aws { local 169.254.11.2 as 65000; neighbor 169.254.11.1 as 64512; }",
                "protocol bgp aws2 from aws { local 169.254.11.2 as 65000; neighbor 169.254.11.1 as 64512;\n"
                "  ipv4 { import all; next hop self; export filter { if proto = \"cgw_networks\" then "
                "{ bgp_path.prepend(65000); bgp_path.prepend(65000); accept; } reject; }; }; }"))
        b2.cli("configure")
        single = wait_for(lambda: route().get("tunnels") == ["aws-t1"], 20)
        check(f"[{tag}] the CGW prepends its AS on tunnel 2: the route is on tunnel 1 only (shorter AS path)",
              single and route().get("ecmp") is False, json.dumps(route()) + b2.cli("show protocols all aws2")[-600:])
        with open(b2.conf, "w") as f:
            f.write(CGW_TWO_SESSIONS)
        b2.cli("configure")
        again = wait_for(lambda: route().get("tunnels") == ["aws-t1", "aws-t2"], 20)
        check(f"[{tag}] the prepend removed: ECMP over both tunnels again", again, json.dumps(route()))
    finally:
        nsx("g2", "nft delete table inet espblock", check=False)
        for b in (b1, b2):
            if b:
                b.stop()
        for a in ("169.254.10.2/30 dev ipsec0", "169.254.11.2/30 dev ipsec0", "10.99.0.1/32 dev lo"):
            nsx("g2", f"ip addr del {a}", check=False)
        if c:
            c.stop()
        e.stop()
        nsx("g1", "ip addr del 192.0.2.5/24 dev g1o", check=False)
        nsx("g2", "ip route flush table 220", check=False)


def static_and_dynamic_case(tag):
    """A static connection and a dynamic one side by side on one gateway, to one strongSwan
    CGW: vpn-sw (dynamic, aws-t1 on 192.0.2.1, BGP, the CGW announces 10.99.0.0/24) and
    vpn-st (static, st-t1 on 192.0.2.5, the CIDR selectors 10.1.0.0/24 <-> 10.2.0.0/24, one
    static route 10.2.0.0/25).
    `show routes` has both routes with their sources, traffic to 10.99.0.1 leaves on aws-t1
    and to hB on st-t1, each connection's TunnelState follows its own rule (the static tunnel
    UP with its SAs and no BGP, the dynamic one UP with its session)."""
    p1 = (["AES128"], ["SHA2-256"], [14])
    p2 = (["AES128-GCM-16"], ["SHA2-256"])
    text = dynamic_config(tag, p1, p2)
    static = f"""
[[tunnel]]
name = "st-t1"
connection = "vpn-st"
outside_ip = "192.0.2.5"
peer_ip = "192.0.2.2"
ike_versions = ["ikev2"]
phase1_encryption = ["AES128"]
phase1_integrity = ["SHA2-256"]
phase1_dh_groups = [14]
phase2_encryption = ["AES128-GCM-16"]
phase2_integrity = ["SHA2-256"]
local_ipv4_network_cidr = "10.2.0.0/24"
remote_ipv4_network_cidr = "10.1.0.0/24"
tunnel_inside_cidr = "169.254.11.0/30"
pre_shared_key = "lab.static_one"
routing = "static"
static_routes = ["10.2.0.0/25"]

[[tunnel]]
name = "st-t2"
connection = "vpn-st"
outside_ip = "192.0.2.5"
local_ipv4_network_cidr = "10.2.0.0/24"
remote_ipv4_network_cidr = "10.1.0.0/24"
tunnel_inside_cidr = "169.254.11.4/30"
pre_shared_key = "lab.static_two"
routing = "static"
static_routes = ["10.2.0.0/25"]
"""
    nsx("g1", "ip addr add 192.0.2.5/24 dev g1o", check=False)
    e = Espd(tag, text + static)
    c = b1 = b2 = None
    try:
        check(f"[{tag}] espd up with a dynamic and a static connection", "gateway up" in e.text(), e.text()[-800:])
        nsx("g2", "ip route add throw 192.0.2.5 table 220", check=False)
        nsx("g2", "ip route add throw 192.0.2.1 table 220", check=False)
        c = Charon(tag, export_many(e.cfg, ["aws-t1", "st-t1"]))
        up = wait_for(lambda: e.text().count("CHILD_SA established") >= 2, 20)
        check(f"[{tag}] both tunnels established", up and c.load.returncode == 0, e.text()[-1500:] + c.log()[-1500:])
        if not up:
            return
        nsx("g2", "ip addr add 169.254.10.2/30 dev ipsec0", check=False)
        nsx("g2", "ip addr add 10.99.0.1/32 dev lo", check=False)
        b1 = Bird.attach("g1", f"{WORK}/{tag}-state/bird/bird.ctl")
        r = subprocess.run([ESPD, "export-config", e.cfg, "aws-t1", "--peer", "bird"], capture_output=True, text=True)
        b2 = Bird("g2", f"{tag}-cgw", r.stdout.replace("route 0.0.0.0/0 unreachable;", "route 10.99.0.0/24 unreachable;"))
        est = wait_for(lambda: b1.established("aws_aws_t1"), 45)
        r = subprocess.run([ESPD, "export-config", e.cfg, "--bird"], capture_output=True, text=True)
        check(f"[{tag}] BGP Established on the dynamic tunnel; espd's BIRD has no session for the static connection",
              est and "aws_st_t1" not in b1.cli("show protocols") and "aws_st_t1" not in r.stdout,
              b1.cli("show protocols") + e.text()[-800:])

        def routes():
            return {x["prefix"]: x for x in e.show("routes").get("routes", [])}
        ok = wait_for(lambda: "10.99.0.0/24" in routes(), 10)
        rs = routes()
        dyn, st = rs.get("10.99.0.0/24", {}), rs.get("10.2.0.0/25", {})
        check(f"[{tag}] show routes: 10.99.0.0/24 on aws-t1 from BGP, the static route 10.2.0.0/25 on st-t1",
              ok and dyn.get("tunnels") == ["aws-t1"] and dyn.get("source") == "bgp"
              and st.get("tunnels") == ["st-t1"] and st.get("source") == "static",
              json.dumps(rs))

        def outs():
            return {t["name"]: t.get("packets_out", 0) for t in e.show("tunnels").get("tunnels", [])}
        before = outs()
        r1 = nsx("hA", "ping -n -c 5 -i 0.2 -W 2 10.99.0.1", check=False)
        mid = outs()
        r2 = nsx("hA", "ping -n -c 5 -i 0.2 -W 2 10.2.0.1", check=False)
        after = outs()
        got1 = next((int(l.split(",")[1].split()[0]) for l in r1.stdout.splitlines() if "received" in l), 0)
        got2 = next((int(l.split(",")[1].split()[0]) for l in r2.stdout.splitlines() if "received" in l), 0)
        r3 = nsx("hA", "ping -n -c 2 -i 0.2 -W 1 10.2.0.200", check=False)
        after2 = outs()
        got3 = next((int(l.split(",")[1].split()[0]) for l in r3.stdout.splitlines() if "received" in l), 0)
        d = lambda a, b, t: b.get(t, 0) - a.get(t, 0)
        check(f"[{tag}] 10.2.0.200 (in the static tunnel's CIDR, not in its static routes) is not routed ({got3}/2)",
              got3 == 0 and d(after, after2, "st-t1") == 0, json.dumps([after, after2]))
        check(f"[{tag}] hA reaches 10.99.0.1 over aws-t1 ({got1}/5) and 10.2.0.1 over st-t1 ({got2}/5), each on its own tunnel",
              got1 == 5 and got2 == 5 and d(before, mid, "aws-t1") >= 5 and d(before, mid, "st-t1") == 0
              and d(mid, after, "st-t1") >= 5 and d(mid, after, "aws-t1") < 5,  # (BGP keepalives use aws-t1)
              json.dumps([before, mid, after]) + r1.stdout[-200:] + r2.stdout[-200:])
        wait_for(lambda: 'vpn_connection_tunnel_state{vpn_id="vpn-sw"} 0.5' in e.metrics(), 5)
        m = e.metrics()
        tun = {t["name"]: t for t in e.show("tunnels").get("tunnels", [])}
        check(f"[{tag}] TunnelState per connection: vpn-st 0.5 (st-t1 UP without BGP), vpn-sw 0.5 (aws-t1 UP with BGP Established)",
              'vpn_connection_tunnel_state{vpn_id="vpn-st"} 0.5' in m and 'vpn_connection_tunnel_state{vpn_id="vpn-sw"} 0.5' in m
              and tun.get("st-t1", {}).get("state") == "UP" and tun.get("st-t1", {}).get("bgp") is None
              and tun.get("aws-t1", {}).get("state") == "UP" and (tun.get("aws-t1", {}).get("bgp") or {}).get("state") == "Established",
              json.dumps(tun)[:1500] + "\n".join(l for l in m.splitlines() if "tunnel_state" in l))
    finally:
        for b in (b1, b2):
            if b:
                b.stop()
        for a in ("169.254.10.2/30 dev ipsec0", "10.99.0.1/32 dev lo"):
            nsx("g2", f"ip addr del {a}", check=False)
        if c:
            c.stop()
        e.stop()
        nsx("g1", "ip addr del 192.0.2.5/24 dev g1o", check=False)
        nsx("g2", "ip route flush table 220", check=False)


def failure_case(tag, p1, p2, sw_patch, want):
    e = Espd(tag, espd_config(tag, "add", p1, p2))
    c = None
    try:
        text = export(e.cfg, "start")
        for a, b in sw_patch:
            text = text.replace(a, b)
        c = Charon(tag, text)
        ok = wait_for(lambda: want in e.text(), 15)
        check(f"[{tag}] {want!r} logged, no tunnel", ok and "CHILD_SA established" not in e.text(),
              e.text()[-1200:] + "\n--- charon ---\n" + c.log()[-1500:])
    finally:
        if c:
            c.stop()
        e.stop()


def main():
    if os.geteuid() != 0:
        print("SKIP: needs root")
        return 0
    netns.up()
    try:
        sets = [
            ("aes128-sha256-g14-gcm", (["AES128"], ["SHA2-256"], [14]), (["AES128-GCM-16"], ["SHA2-256"])),
            ("gcm256-sha384-g20-cbc256", (["AES256-GCM-16"], ["SHA2-384"], [20]), (["AES256"], ["SHA2-256"])),
        ]
        pfs15 = "phase2_dh_groups = [15]\nphase1_lifetime_s = 120\nphase2_lifetime_s = 14\nrekey_margin_s = 5"
        for name, p1, p2 in sets:
            for who in ("strongswan", "espd"):
                if "g20" in name:
                    run_case(f"{name}-pfs15-{who}", p1, p2, who, extra=pfs15, rekey_wait=20)
                else:
                    run_case(f"{name}-{who}", p1, p2, who)
        rekey_case("rekey", float(os.environ.get("ESPD_REKEY_SECS", "40"))) if not os.environ.get("SKIP_LONG") else None
        dpd_case("dpd") if not os.environ.get("SKIP_LONG") else None
        collision_case("ike-collision")
        tunnel_interface_case("tunnel-interface")
        bgp_case("bgp")
        bgp_case("bgp-supervised", "supervised")
        bgp_two_tunnels_case("bgp-two-tunnels")
        static_and_dynamic_case("static-and-dynamic")
        failure_case("psk", (["AES128"], ["SHA2-256"], [14]), (["AES128-GCM-16"], ["SHA2-256"]),
                     [('secret = "lab.tunnel_one"', 'secret = "lab.wrong_key"')],
                     "AWS tunnel detected a pre-shared key mismatch with cgw: 192.0.2.2")
        failure_case("proposal", (["AES128"], ["SHA2-256"], [14]), (["AES128-GCM-16"], ["SHA2-256"]),
                     [("proposals = aes128-sha256-modp2048", "proposals = aes256-sha512-ecp384")], "No Proposal Match Found by AWS")
    finally:
        netns.down()
    return checks.summary()


if __name__ == "__main__":
    sys.exit(main())
