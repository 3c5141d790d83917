#!/usr/bin/env python3
"""Runs inside the peer namespace: scapy plays the remote gateway (192.0.2.2) against one
espd gateway (192.0.2.1), with SAs espd did not build. Prints one JSON object of results.

Usage: scapy_peer.py IFACE GW_MAC ENC_KEY_IN INT_KEY_IN ENC_KEY_OUT INT_KEY_OUT CRYPT AUTH NAT(0/1)
  *_IN:  the SA scapy encrypts with (espd's inbound SA 0x2001)
  *_OUT: the SA scapy decrypts with (espd's outbound SA 0x1001)
"""
import json
import sys
import time

from scapy.all import ICMP, IP, UDP, Ether, Raw, AsyncSniffer, get_if_hwaddr, sendp, conf
from scapy.layers.ipsec import ESP, SecurityAssociation

conf.verb = 0
iface, gw_mac, eki, iki, eko, iko, crypt, auth, nat = sys.argv[1:10]
nat = nat == "1"
me, gw = "192.0.2.2", "192.0.2.1"
my_mac = get_if_hwaddr(iface)


def mk(spi, ek, ik, src, dst):
    return SecurityAssociation(
        ESP, spi=spi, crypt_algo=crypt, crypt_key=bytes.fromhex(ek),
        auth_algo=auth, auth_key=bytes.fromhex(ik) if ik != "-" else None,
        tunnel_header=IP(src=src, dst=dst),
        nat_t_header=UDP(sport=4500, dport=4500) if nat else None)


sa_in = mk(0x2001, eki, iki, me, gw)
sa_out = mk(0x1001, eko, iko, gw, me)
stranger = mk(0x9999, eki, iki, me, gw)


def frame(ip_pkt):
    return Ether(src=my_mac, dst=gw_mac) / ip_pkt


def echo(seq, ident=77):
    return IP(src="10.2.0.2", dst="10.1.0.2") / ICMP(id=ident, seq=seq) / Raw(b"scapy peer " * 4)


def replies(pkts, ident=77):
    """Echo replies for `ident` among the sniffed ESP packets, decrypted with sa_out."""
    seqs = []
    bad = 0
    for p in pkts:
        if IP not in p or p[IP].src != gw:
            continue
        try:
            inner = sa_out.decrypt(p[IP])
        except Exception:
            bad += 1
            continue
        if ICMP in inner and inner[ICMP].type == 0 and inner[ICMP].id == ident:
            seqs.append(inner[ICMP].seq)
    return sorted(seqs), bad


res = {}
flt = "udp port 4500" if nat else "esp"
sn = AsyncSniffer(iface=iface, filter=f"{flt} and src host {gw}")
sn.start()
time.sleep(0.5)
first = None
for i in range(1, 6):
    f = frame(sa_in.encrypt(echo(i)))
    first = first or f
    sendp(f, iface=iface)
    time.sleep(0.05)
time.sleep(1.0)
pkts = sn.stop()
res["echo_replies"], res["undecryptable"] = replies(pkts)

# Bad input at the outside interface.
sendp(frame(stranger.encrypt(echo(100))), iface=iface)                     # unknown SPI
sendp(first, iface=iface)                                                   # replay
good = bytes(frame(sa_in.encrypt(echo(101))))
sendp(Ether(good[:-1] + bytes([good[-1] ^ 0x55])), iface=iface)            # bad ICV
hdr = IP(src=me, dst=gw, proto=50)
if nat:
    sendp(frame(IP(src=me, dst=gw) / UDP(sport=4500, dport=4500) / Raw(b"\x00\x00\x20\x01\x00\x00\x00\x63")), iface=iface)  # truncated ESP
else:
    sendp(frame(hdr / Raw(b"\x00\x00\x20\x01\x00\x00\x00\x63")), iface=iface)  # truncated ESP
sendp(Ether(src=my_mac, dst=gw_mac, type=0x88B5) / Raw(b"\xde\xad" * 30), iface=iface)  # not IP
sendp(frame(IP(src=me, dst=gw, proto=50, ihl=15) / Raw(b"\x00" * 8)), iface=iface)  # bad IHL
res["bad_sent"] = 6

# IKE and SSH-like traffic for the gateway's kernel.
sendp(frame(IP(src=me, dst=gw) / UDP(sport=500, dport=500) / Raw(b"IKE_SA_INIT?" * 4)), iface=iface)
sendp(frame(IP(src=me, dst=gw) / UDP(sport=4500, dport=4500) / Raw(b"\x00\x00\x00\x00" + b"IKE over 4500")), iface=iface)

# Forwarding continues after the bad input.
sn = AsyncSniffer(iface=iface, filter=f"{flt} and src host {gw}")
sn.start()
time.sleep(0.5)
for i in range(10, 13):
    sendp(frame(sa_in.encrypt(echo(i))), iface=iface)
    time.sleep(0.05)
time.sleep(1.0)
res["echo_replies_after"], _ = replies(sn.stop())
print(json.dumps(res))
