#!/usr/bin/env python3
"""Regenerates the bundled sample captures in configs/pcap/ (scapy, fixed content):
inner.pcap (plaintext traffic: ICMP, UDP, a TCP SYN, IPv6, a 3000-byte datagram) and
esp-from-scapy.pcap (the same traffic encrypted by scapy with the "b-to-a" SA of
configs/static-sa.toml, i.e. what gateway A receives)."""
import os
from scapy.all import ICMP, IP, TCP, UDP, Ether, IPv6, Raw, wrpcap
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.layers.inet6 import ICMPv6EchoRequest

here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs", "pcap")
eth = Ether(src="02:00:00:00:00:0a", dst="02:00:00:00:00:0b")
pk = []
for i in range(8):
    pk.append(IP(src="198.51.100.1", dst="203.0.113.1", id=100 + i) / ICMP(id=1, seq=i) / Raw(bytes(56)))
pk.append(IP(src="198.51.100.1", dst="203.0.113.1", id=200, flags="DF") / TCP(sport=40000, dport=443, flags="S", options=[("MSS", 1460)]))
pk.append(IP(src="198.51.100.1", dst="203.0.113.1", id=201) / UDP(sport=5000, dport=6000) / Raw(bytes(range(256)) * 4))
pk.append(IPv6(src="2001:db8:1::1", dst="2001:db8:2::1") / ICMPv6EchoRequest(id=9, seq=1, data=b"ipv6 inner" * 10))
pk.append(IP(src="198.51.100.1", dst="203.0.113.1", id=202) / UDP(sport=5000, dport=6001) / Raw(bytes((i * 13) & 0xFF for i in range(2972))))
wrpcap(os.path.join(here, "inner.pcap"), [eth / p for p in pk])
sa = SecurityAssociation(ESP, spi=0x0D0C0B0A, crypt_algo="AES-GCM",
                         crypt_key=bytes.fromhex("101112131415161718191a1b1c1d1e1fbeef0002"),
                         tunnel_header=IP(src="192.0.2.2", dst="192.0.2.1"))
rev = []
for i, p in enumerate(pk):
    if len(p) > 1446:
        continue  # scapy does not fragment before encrypting; espd does
    rev.append(eth / sa.encrypt(p, seq_num=i + 1, iv=(i + 1).to_bytes(8, "big")))
rev.append(rev[0])  # a replayed packet, to show the replay counter
wrpcap(os.path.join(here, "esp-from-scapy.pcap"), rev)
