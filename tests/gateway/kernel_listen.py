#!/usr/bin/env python3
"""Runs in the gateway namespace: counts what reaches the kernel on UDP 500, UDP 4500 and
TCP 22 of ADDR for SECS seconds. Prints JSON."""
import json
import select
import socket
import sys
import time

addr, secs = sys.argv[1], float(sys.argv[2])
u500 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u500.bind((addr, 500))
u4500 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u4500.bind((addr, 4500))
tcp = socket.socket(); tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); tcp.bind((addr, 22)); tcp.listen(4)
got = {"udp500": 0, "udp4500": 0, "tcp22": 0}
print("ready", flush=True)
end = time.time() + secs
while time.time() < end:
    r, _, _ = select.select([u500, u4500, tcp], [], [], 0.1)
    for s in r:
        if s is tcp:
            c, _ = tcp.accept(); c.sendall(b"SSH-2.0-test\r\n"); c.close(); got["tcp22"] += 1
        else:
            s.recvfrom(2000); got["udp500" if s is u500 else "udp4500"] += 1
print(json.dumps(got), flush=True)
