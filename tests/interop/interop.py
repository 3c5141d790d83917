#!/usr/bin/env python3
"""Interop of `espd pcap` with implementations we did not write.

1. scapy's SecurityAssociation encrypts tunnel-mode ESP (every transform, raw ESP and
   NAT-T UDP 4500, IPv4 and IPv6 outer, inner IPv4 and IPv6, with and without ESN);
   `espd pcap decrypt` must recover every inner packet byte for byte.
2. `espd pcap encrypt` encrypts the same inner packets; scapy must decrypt every ESP packet
   to the original, and tshark (Wireshark's ESP dissector) must decrypt them and report the
   ICV good (esp.icv_good == 1) for every packet.
3. A 3000-byte inner packet through every transform: `espd pcap encrypt` gives ESP packets of
   at most 1500 bytes that scapy decrypts to fragments, that `espd pcap decrypt` reassembles
   to the original, and where a flipped byte in any position is dropped and counted.
4. Bad input: wrong key lengths, unknown algorithms and out-of-range values exit non-zero with
   a message naming the file, the SA and the key.

Usage: interop.py ESPD_BINARY [WORKDIR]. Prints PASS/FAIL per check and a closing
'N passed, M failed' line; exits 1 on any failure.
"""
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import checks  # noqa: E402
from checks import check  # noqa: E402
from scapy.all import ICMP, IP, UDP, Ether, IPv6, Raw, rdpcap, wrpcap, fragment
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.layers.inet6 import ICMPv6EchoRequest

ESPD = sys.argv[1]
WORK = sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp(prefix="espd-interop-")
os.makedirs(WORK, exist_ok=True)

# (espd encryption, espd integrity, scapy crypt, scapy auth, enc key len, int key len, tshark enc, tshark auth)
SUITES = [
    ("aes128-gcm16", "none", "AES-GCM", "NULL", 20, 0, "AES-GCM with 16 octet ICV [RFC4106]", "NULL"),
    ("aes256-gcm16", "none", "AES-GCM", "NULL", 36, 0, "AES-GCM with 16 octet ICV [RFC4106]", "NULL"),
    ("aes128-cbc", "sha1-96", "AES-CBC", "HMAC-SHA1-96", 16, 20, "AES-CBC [RFC3602]", "HMAC-SHA-1-96 [RFC2404]"),
    ("aes128-cbc", "sha256-128", "AES-CBC", "SHA2-256-128", 16, 32, "AES-CBC [RFC3602]", "HMAC-SHA-256-128 [RFC4868]"),
    ("aes256-cbc", "sha256-128", "AES-CBC", "SHA2-256-128", 32, 32, "AES-CBC [RFC3602]", "HMAC-SHA-256-128 [RFC4868]"),
    ("aes256-cbc", "sha384-192", "AES-CBC", "SHA2-384-192", 32, 48, "AES-CBC [RFC3602]", "HMAC-SHA-384-192 [RFC4868]"),
    ("aes128-cbc", "sha512-256", "AES-CBC", "SHA2-512-256", 16, 64, "AES-CBC [RFC3602]", "HMAC-SHA-512-256 [RFC4868]"),
    ("aes256-cbc", "sha512-256", "AES-CBC", "SHA2-512-256", 32, 64, "AES-CBC [RFC3602]", "HMAC-SHA-512-256 [RFC4868]"),
]


def key(n, salt):
    return bytes((i * 11 + salt) & 0xFF for i in range(n))


def addrs(v6):
    return ("2001:db8::1", "2001:db8::2") if v6 else ("192.0.2.1", "192.0.2.2")


def sa_toml(name, direction, spi, s, ek, ik, src, dst, nat, esn=False, extra=""):
    return f"""
[[sa]]
name = "{name}"
direction = "{direction}"
spi = {spi:#x}
encryption = "{s[0]}"
integrity = "{s[1]}"
enc_key = "{ek.hex()}"
int_key = "{ik.hex()}"
tunnel_src = "{src}"
tunnel_dst = "{dst}"
nat_t = {"true" if nat else "false"}
esn = {"true" if esn else "false"}
{extra}
"""


def scapy_sa(s, spi, ek, ik, src, dst, v6, nat, esn=False):
    th = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)
    return SecurityAssociation(
        ESP, spi=spi, crypt_algo=s[2], crypt_key=ek, auth_algo=s[3], auth_key=ik or None,
        tunnel_header=th, nat_t_header=UDP(sport=4500, dport=4500) if nat else None,
        esn_en=esn, esn=0)


def inner_packets():
    pk = [
        IP(src="198.51.100.1", dst="203.0.113.1", id=1) / ICMP(id=7, seq=1) / Raw(b"espd interop " * 3),
        IP(src="198.51.100.1", dst="203.0.113.1", id=2) / UDP(sport=1234, dport=40000) / Raw(bytes(range(200))),
        IPv6(src="2001:db8:1::1", dst="2001:db8:2::1") / ICMPv6EchoRequest(id=1, seq=2, data=b"v6" * 40),
        IP(src="198.51.100.1", dst="203.0.113.1", id=3) / UDP(sport=1, dport=2) / Raw(b"x" * 1300),
        IP(src="198.51.100.1", dst="203.0.113.1", id=4) / UDP(sport=1, dport=2) / Raw(b""),
    ]
    return [bytes(p) for p in pk]


def run(args, expect_ok=True):
    r = subprocess.run([ESPD] + args, capture_output=True, text=True)
    if expect_ok and r.returncode != 0:
        print(r.stderr)
    return r


def inner_of(frame_bytes):
    """The IP packet of an Ethernet frame."""
    return bytes(Ether(frame_bytes).payload)


def scapy_to_espd():
    for s in SUITES:
        for v6 in (False, True):
            for nat in (False, True):
                for esn in ((False, True) if not v6 and not nat else (False,)):
                    tag = f"{s[0]}+{s[1]} outer={'v6' if v6 else 'v4'} nat_t={nat} esn={esn}"
                    ek, ik = key(s[4], 1), key(s[5], 2)
                    src, dst = addrs(v6)
                    spi = 0x2000 + len(tag)
                    sa = scapy_sa(s, spi, ek, ik, src, dst, v6, nat, esn)
                    inner = inner_packets()
                    frames = []
                    for k, p in enumerate(inner):
                        seq = k + 1 if not esn else k + 1
                        e = sa.encrypt(IPv6(p) if p[0] >> 4 == 6 else IP(p), seq_num=seq)
                        frames.append(Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01") / e)
                    frames.append(frames[1])  # a replay: must be dropped and counted
                    d = os.path.join(WORK, "s2e")
                    os.makedirs(d, exist_ok=True)
                    fin, fout, fsa = (os.path.join(d, x) for x in ("esp.pcap", "inner.pcap", "sa.toml"))
                    wrpcap(fin, frames)
                    with open(fsa, "w") as f:
                        f.write(sa_toml("in", "in", spi, s, ek, ik, dst, src, nat, esn))
                    r = run(["pcap", "decrypt", "--sa", fsa, "--in", fin, "--out", fout, "--json"])
                    if r.returncode != 0:
                        check(f"scapy->espd {tag}", False, r.stderr)
                        continue
                    got = [inner_of(bytes(x)) for x in rdpcap(fout)]
                    stats = json.loads(r.stdout)["sas"][0]
                    ok = got == inner and stats["drops"] == {"replay": 1}
                    check(f"scapy->espd {tag}", ok, f"got {len(got)} of {len(inner)}, stats {stats}")


def tshark_check(pcap, uat, expect):
    cmd = ["tshark", "-n", "-r", pcap, "-o", "esp.enable_encryption_decode:TRUE",
           "-o", "esp.enable_authentication_check:TRUE", "-o", f"uat:esp_sa:{uat}",
           "-T", "fields", "-e", "esp.icv_good", "-e", "esp.sequence", "-Y", "esp"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    lines = [l for l in r.stdout.splitlines() if l.strip()]
    good = [l for l in lines if l.split("\t")[0] == "1"]
    return len(lines) == expect and len(good) == expect, f"{len(good)}/{len(lines)} ICV good, expected {expect}: {r.stderr[-300:]}"


def espd_to_scapy_and_tshark():
    for s in SUITES:
        for v6 in (False, True):
            for nat in (False, True):
                tag = f"{s[0]}+{s[1]} outer={'v6' if v6 else 'v4'} nat_t={nat}"
                ek, ik = key(s[4], 3), key(s[5], 4)
                src, dst = addrs(v6)
                spi = 0x3000 + len(tag)
                inner = inner_packets()
                d = os.path.join(WORK, "e2s")
                os.makedirs(d, exist_ok=True)
                fin, fout, fsa = (os.path.join(d, x) for x in ("inner.pcap", "esp.pcap", "sa.toml"))
                wrpcap(fin, [Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / (IPv6(p) if p[0] >> 4 == 6 else IP(p)) for p in inner])
                with open(fsa, "w") as f:
                    f.write(sa_toml("out", "out", spi, s, ek, ik, src, dst, nat, extra="mss_clamp = false"))
                fkeys = os.path.join(d, "esp_sa")
                r = run(["pcap", "encrypt", "--sa", fsa, "--in", fin, "--out", fout, "--export-keys", fkeys])
                if r.returncode != 0:
                    check(f"espd->scapy {tag}", False, r.stderr)
                    continue
                sa = scapy_sa(s, spi, ek, ik, src, dst, v6, nat)
                outs = rdpcap(fout)
                got = []
                sizes_ok = True
                for fr in outs:
                    sizes_ok &= len(bytes(fr.payload)) <= 1500
                    outer = fr.payload
                    got.append(bytes(sa.decrypt(outer)))
                check(f"espd->scapy {tag}", got == inner and sizes_ok, f"{len(got)} packets")
                fam = "IPv6" if v6 else "IPv4"
                auth_key = "0x" + ik.hex() if ik else ""
                uat = f'"{fam}","{src}","{dst}","{spi:#010x}","{s[6]}","0x{ek.hex()}","{s[7]}","{auth_key}"'
                # espd --export-keys writes the same line (what an operator hands to tshark).
                exported = open(fkeys).read().strip()
                check(f"--export-keys {tag}", exported == uat and "exported to" in r.stderr, f"{exported!r} != {uat!r}")
                ok, detail = tshark_check(fout, exported, len(inner))
                check(f"espd->tshark {tag}", ok, detail)


def pcapng():
    """pcapng, as Wireshark's own editcap writes it, in both directions: scapy's ESP in a
    pcapng decrypts and comes back as pcapng that scapy reads; inner packets in a pcapng
    encrypt to a pcapng that tshark decrypts with every ICV good."""
    s = SUITES[2]  # AES-128-CBC + HMAC-SHA1-96
    ek, ik = key(s[4], 7), key(s[5], 8)
    src, dst = addrs(False)
    spi = 0x4242
    d = os.path.join(WORK, "pcapng")
    os.makedirs(d, exist_ok=True)
    f = {x: os.path.join(d, x) for x in ("esp.pcap", "esp.pcapng", "inner.pcapng", "in.pcap", "in.pcapng", "esp-out.pcapng", "in.toml", "out.toml")}
    inner = inner_packets()
    sa = scapy_sa(s, spi, ek, ik, src, dst, False, False)
    wrpcap(f["esp.pcap"], [Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01") / sa.encrypt(IPv6(p) if p[0] >> 4 == 6 else IP(p), seq_num=k + 1) for k, p in enumerate(inner)])
    wrpcap(f["in.pcap"], [Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / (IPv6(p) if p[0] >> 4 == 6 else IP(p)) for p in inner])
    for a, b in (("esp.pcap", "esp.pcapng"), ("in.pcap", "in.pcapng")):
        subprocess.run(["editcap", "-F", "pcapng", f[a], f[b]], check=True, capture_output=True)
    with open(f["in.toml"], "w") as fh:
        fh.write(sa_toml("in", "in", spi, s, ek, ik, dst, src, False))
    with open(f["out.toml"], "w") as fh:
        fh.write(sa_toml("out", "out", spi, s, ek, ik, src, dst, False, extra="mss_clamp = false"))
    magic = lambda path: open(path, "rb").read(4)
    check("pcapng: editcap wrote pcapng", magic(f["esp.pcapng"]) == b"\x0a\x0d\x0d\x0a")
    r = run(["pcap", "decrypt", "--sa", f["in.toml"], "--in", f["esp.pcapng"], "--out", f["inner.pcapng"]])
    got = [inner_of(bytes(x)) for x in rdpcap(f["inner.pcapng"])] if r.returncode == 0 else []
    check("pcapng: scapy's ESP in a pcapng decrypts; the output is pcapng scapy reads",
          r.returncode == 0 and got == inner and magic(f["inner.pcapng"]) == b"\x0a\x0d\x0d\x0a", r.stderr + f" got {len(got)} of {len(inner)}")
    r = run(["pcap", "encrypt", "--sa", f["out.toml"], "--in", f["in.pcapng"], "--out", f["esp-out.pcapng"]])
    uat = f'"IPv4","{src}","{dst}","{spi:#010x}","{s[6]}","0x{ek.hex()}","{s[7]}","0x{ik.hex()}"'
    ok, detail = tshark_check(f["esp-out.pcapng"], uat, len(inner)) if r.returncode == 0 else (False, r.stderr)
    check("pcapng: a pcapng of inner packets encrypts to pcapng; tshark decrypts it, ICV good", ok and magic(f["esp-out.pcapng"]) == b"\x0a\x0d\x0d\x0a", detail)
    # The timestamps survive: tshark reads the same times from input and output.
    times = lambda path: subprocess.run(["tshark", "-n", "-r", path, "-T", "fields", "-e", "frame.time_epoch"], capture_output=True, text=True).stdout.split()
    check("pcapng: timestamps carried from input to output", times(f["in.pcapng"]) == times(f["esp-out.pcapng"])[:len(inner)],
          f"{times(f['in.pcapng'])[:3]} vs {times(f['esp-out.pcapng'])[:3]}")


def fragmentation():
    big = IP(src="198.51.100.1", dst="203.0.113.1", id=99, flags="DF") / UDP(sport=5, dport=6) / Raw(bytes((i * 7) & 0xFF for i in range(2972)))
    assert len(big) == 3000
    for s in SUITES:
        for nat in (False, True):
            tag = f"{s[0]}+{s[1]} nat_t={nat}"
            ek, ik = key(s[4], 5), key(s[5], 6)
            src, dst = addrs(False)
            d = os.path.join(WORK, "frag")
            os.makedirs(d, exist_ok=True)
            fin, fesp, fout, fsa_o, fsa_i = (os.path.join(d, x) for x in ("big.pcap", "esp.pcap", "back.pcap", "o.toml", "i.toml"))
            wrpcap(fin, [Ether() / big])
            with open(fsa_o, "w") as f:
                f.write(sa_toml("o", "out", 0x4444, s, ek, ik, src, dst, nat))
            with open(fsa_i, "w") as f:
                f.write(sa_toml("i", "in", 0x4444, s, ek, ik, dst, src, nat))
            r = run(["pcap", "encrypt", "--sa", fsa_o, "--in", fin, "--out", fesp, "--json"])
            outs = rdpcap(fesp)
            sa = scapy_sa(s, 0x4444, ek, ik, src, dst, False, nat)
            frags = [sa.decrypt(fr.payload) for fr in outs]
            fits = all(len(bytes(fr.payload)) <= 1500 for fr in outs)
            # scapy sees IP fragments whose payloads concatenate to the original payload.
            payload = b"".join(bytes(f.payload) for f in sorted(frags, key=lambda f: f.frag))
            want_payload = bytes(big.payload)
            check(f"fragment 3000B {tag}: {len(outs)} ESP packets <= 1500 B, scapy decrypts the fragments",
                  fits and len(outs) == 3 and payload == want_payload, f"sizes {[len(bytes(o.payload)) for o in outs]}")
            r = run(["pcap", "decrypt", "--sa", fsa_i, "--in", fesp, "--out", fout, "--json"])
            back = [inner_of(bytes(x)) for x in rdpcap(fout)]
            want = IP(bytes(big))
            want.flags = 0  # DF cleared by fragmentation before encryption (df_policy = clear)
            want.chksum = None
            check(f"reassemble 3000B {tag}", back == [bytes(want)], f"{len(back)} packets")
            # Tamper with each byte position of the first ESP packet (sampled every 7 bytes
            # plus the last 40): every one is dropped and counted.
            raw = bytes(outs[0])
            positions = sorted(set(list(range(14, len(raw), 7)) + list(range(len(raw) - 40, len(raw)))))
            esp_start = 14 + 20 + (8 if nat else 0)
            tampered = []
            for pos in positions:
                if pos < esp_start:
                    continue  # outer headers are not covered by ESP integrity
                b = bytearray(raw)
                b[pos] ^= 0x01
                tampered.append(Ether(bytes(b)))
            ft = os.path.join(d, "tampered.pcap")
            wrpcap(ft, tampered)
            r = run(["pcap", "decrypt", "--sa", fsa_i, "--in", ft, "--out", fout, "--json"])
            j = json.loads(r.stdout)
            dropped = j["sas"][0]["drops_total"] + sum(j["global_drops"].values())
            check(f"tamper {tag}: {len(tampered)} flipped packets all dropped",
                  len(rdpcap(fout)) == 0 and dropped == len(tampered) and j["sas"][0]["packets"] == 0, str(j))


def outer_fragments():
    """ESP packets whose outer IP packet was fragmented on the path (scapy fragments them):
    reassembled before decryption by default, dropped and counted with --no-outer-reassembly."""
    from scapy.all import fragment6, IPv6ExtHdrFragment
    s = SUITES[3]
    for v6 in (False, True):
        ek, ik = key(s[4], 7), key(s[5], 8)
        src, dst = addrs(v6)
        sa = scapy_sa(s, 0x5555, ek, ik, src, dst, v6, False)
        inner = IP(src="198.51.100.1", dst="203.0.113.1", id=77) / UDP(sport=9, dport=9) / Raw(bytes(1300))
        e = sa.encrypt(inner, seq_num=1)
        if v6:
            frags = fragment6(IPv6(src=src, dst=dst) / IPv6ExtHdrFragment(id=0x1234) / bytes(e.payload), 600)
            frags = [IPv6(bytes(f)) for f in frags]
            for f in frags:  # the fragment header must say ESP follows
                f[IPv6ExtHdrFragment].nh = 50
            frags = [IPv6(bytes(f)) for f in frags]
        else:
            frags = fragment(e, fragsize=600)
        d = os.path.join(WORK, "ofrag")
        os.makedirs(d, exist_ok=True)
        fin, fout, fsa = (os.path.join(d, x) for x in ("esp.pcap", "inner.pcap", "sa.toml"))
        wrpcap(fin, [Ether() / f for f in reversed(frags)])
        with open(fsa, "w") as f:
            f.write(sa_toml("in", "in", 0x5555, s, ek, ik, dst, src, False))
        tag = f"outer={'v6' if v6 else 'v4'} {len(frags)} fragments"
        r = run(["pcap", "decrypt", "--sa", fsa, "--in", fin, "--out", fout, "--json"])
        j = json.loads(r.stdout)
        got = [inner_of(bytes(x)) for x in rdpcap(fout)]
        check(f"outer fragments reassembled before decryption, {tag}",
              len(frags) > 1 and got == [bytes(inner)] and j["outer_reassembled"] == 1, str(j))
        r = run(["pcap", "decrypt", "--no-outer-reassembly", "--sa", fsa, "--in", fin, "--out", fout, "--json"])
        j = json.loads(r.stdout)
        check(f"outer fragments dropped and counted with --no-outer-reassembly, {tag}",
              j["global_drops"].get("outer_fragment") == len(frags) and len(rdpcap(fout)) == 0, str(j))


def bad_input():
    d = os.path.join(WORK, "bad")
    os.makedirs(d, exist_ok=True)
    s = SUITES[0]
    src, dst = addrs(False)
    cases = [
        ("short key", sa_toml("t1", "out", 0x100, s, key(16, 0), b"", src, dst, False), ['"t1"', "enc_key", "20 bytes"]),
        ("unknown alg", sa_toml("t2", "out", 0x100, ("aes192-gcm16", "none"), key(20, 0), b"", src, dst, False),
         ['"t2"', "encryption", "allowed: aes128-gcm16"]),
        ("window", sa_toml("t3", "in", 0x100, s, key(20, 0), b"", src, dst, False, extra="replay_window = 4096"),
         ['"t3"', "replay_window", "64..=2048"]),
    ]
    empty = os.path.join(d, "empty.pcap")
    wrpcap(empty, [Ether() / IP()])
    for name, text, needles in cases:
        f = os.path.join(d, "sa.toml")
        with open(f, "w") as fh:
            fh.write(text)
        r = run(["pcap", "encrypt", "--sa", f, "--in", empty, "--out", os.path.join(d, "o.pcap")], expect_ok=False)
        ok = r.returncode != 0 and all(n in r.stderr for n in needles) and "sa.toml" in r.stderr
        check(f"bad input: {name}", ok, r.stderr)
    r = run(["pcap", "decrypt", "--sa", os.path.join(d, "missing.toml"), "--in", empty, "--out", os.path.join(d, "o.pcap")], expect_ok=False)
    check("bad input: missing file", r.returncode != 0 and "missing.toml" in r.stderr, r.stderr)


scapy_to_espd()
espd_to_scapy_and_tshark()
pcapng()
fragmentation()
outer_fragments()
bad_input()
sys.exit(checks.summary("interop: "))
