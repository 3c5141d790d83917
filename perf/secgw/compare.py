#!/usr/bin/env python3
"""perf oneway against DPDK ipsec-secgw: one core, the same packets, the same run.

For each case (transform x direction x size) `perf oneway --export-secgw` writes its working
set (packets.pcap) and a matching ipsec-secgw configuration (same SPI, keys, addresses), then
rounds alternate: perf oneway (ours, with its raw-crypto baseline) and ipsec-secgw in each
of its configurations, every one pinned to the same core and replaying the same packets from
memory (net_pcap infinite_rx copies each packet into an mbuf, as perf's replay port copies
it into a pool buffer), output to a null sink. Medians over the rounds. The ratio is ours
over the best ipsec-secgw configuration of the same round (the runs of a round are seconds
apart, so a shared machine's slow and fast periods cancel better than across rounds), the
median of the rounds' ratios; `ratio_min` is the worst round. Only one comparison runs at
a time (a lock), and nothing else should run on core 0 meanwhile.

ipsec-secgw configurations measured:
  lib-cpu     librte_ipsec (-l), SA type cpu-crypto (synchronous ipsec-mb call)
  lib-cdev    librte_ipsec (-l), SA type no-offload (ipsec-mb crypto PMD queue pair)
  legacy      the example's own ESP code, no-offload
and, for context (encrypt only), `bypass`: the same run with the outbound policy set to
bypass, i.e. replay, classify, route and sink without ESP: the harness's own ceiling.
Anti-replay is off in ipsec-secgw (-w 0; the replayed capture repeats sequence numbers);
perf's decrypt keeps its window and resets it at each pass.

Setup (root, Debian 12): --install installs DPDK 22.11 (libdpdk-dev and the ipsec-mb,
pcap and null PMDs), fetches Debian's dpdk source package (adds a deb-src entry if none),
builds examples/ipsec-secgw into target/secgw with one change (the example requires RX
checksum offload, which the pcap PMD lacks; nothing in it reads the flags), reserves 512
2 MiB hugepages and mounts hugetlbfs. EAL runs with --no-pci: no NIC is touched.
"""

import argparse
import fcntl
import glob
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "target", "secgw")
SECGW = os.path.join(OUT, "ipsec-secgw")
PKGS = [
    "libdpdk-dev",
    "dpdk",
    "librte-crypto-ipsec-mb23",
    "librte-net-pcap23",
    "librte-net-null23",
    "pkg-config",
    "libpcap-dev",
    "dpkg-dev",
]
TRANSFORMS = {"gcm": "aes128-gcm16", "cbc": "aes128-cbc+sha1-96"}
# perf oneway pins its worker to core 0: ipsec-secgw's lcore is the same core.
CORE = 0
CONFIGS = [("lib-cpu", ["-l"], "secgw-cpu.cfg"), ("lib-cdev", ["-l"], "secgw.cfg"),
           ("legacy", [], "secgw.cfg")]


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def install():
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    srcs = " ".join(open(f).read() for f in glob.glob("/etc/apt/sources.list.d/*.sources")
                    + glob.glob("/etc/apt/sources.list") if os.path.isfile(f))
    if "deb-src" not in srcs:
        with open("/etc/apt/sources.list.d/perf-secgw-src.sources", "w") as f:
            f.write("Types: deb-src\nURIs: http://deb.debian.org/debian\n"
                    "Suites: bookworm bookworm-updates\nComponents: main\n"
                    "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    run(["apt-get", "update", "-qq"], env=env, stdout=subprocess.DEVNULL)
    run(["apt-get", "install", "-y", "-qq", *PKGS], env=env, stdout=subprocess.DEVNULL)
    os.makedirs(OUT, exist_ok=True)
    work = tempfile.mkdtemp(prefix="secgw-src-", dir=OUT)
    run(["apt-get", "source", "--download-only", "-qq", "dpdk"], cwd=work,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tarball = glob.glob(os.path.join(work, "dpdk_*.orig.tar.xz"))[0]
    run(["tar", "xf", tarball, "--wildcards", "*/examples/ipsec-secgw/*",
         "*/examples/common/*"], cwd=work)
    src = glob.glob(os.path.join(work, "dpdk-*", "examples", "ipsec-secgw"))[0]
    c = os.path.join(src, "ipsec-secgw.c")
    text = open(c).read()
    patched = text.replace("\t\t.offloads = RTE_ETH_RX_OFFLOAD_CHECKSUM,", "\t\t.offloads = 0,", 1)
    if patched == text:
        sys.exit("compare.py: ipsec-secgw.c: the RX checksum offload line was not found")
    open(c, "w").write(patched)
    run(["make", "-j2", "static=0"], cwd=src, stdout=subprocess.DEVNULL)
    shutil.copy(os.path.join(src, "build", "ipsec-secgw-shared"), SECGW)
    shutil.rmtree(work)


def hugepages():
    total = int(re.search(r"HugePages_Total:\s+(\d+)", open("/proc/meminfo").read()).group(1))
    if total < 512:
        with open("/proc/sys/vm/nr_hugepages", "w") as f:
            f.write("512")
    os.makedirs("/dev/hugepages", exist_ok=True)
    if subprocess.run(["mountpoint", "-q", "/dev/hugepages"]).returncode != 0:
        run(["mount", "-t", "hugetlbfs", "nodev", "/dev/hugepages"])


def ours(perf, transform, direction, size, duration, export=None):
    cmd = [perf, "oneway", "--transform", transform, "--direction", direction,
           "--packet-size", str(size), "--duration", str(duration), "--json"]
    if export:
        cmd += ["--export-secgw", export]
    out = run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
    v = json.loads(out)
    if v["drops"]:
        sys.exit(f"compare.py: perf oneway dropped {v['drops']}: {v['drops_by_reason']}")
    return v


def secgw(d, transform, extra, cfg, duration, core):
    """Mpps ipsec-secgw forwarded, from its once-a-second totals (the first one skipped)."""
    vdev = "crypto_aesni_gcm0" if "gcm" in transform else "crypto_aesni_mb0"
    args = open(os.path.join(d, "secgw.args")).read().split()
    cmd = ["timeout", "-s", "INT", str(duration + 2.5), SECGW, "-l", str(core), "-n", "1",
           "--no-pci", "--file-prefix", "perfsecgw", "--log-level", "*:error",
           "--vdev", f"net_pcap0,rx_pcap={d}/packets.pcap,infinite_rx=1",
           "--vdev", "net_null0,no-rx=1", "--vdev", vdev, "--",
           *args, *extra, "-w", "0", "-t", "1", "-s", "32768",
           "-f", os.path.join(d, cfg), "--config", f"(0,0,{core}),(1,0,{core})"]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", p.stdout)
    sent = [int(x) for x in re.findall(r"Total packets sent:\s+(\d+)", text)]
    dropped = [int(x) for x in re.findall(r"Total packets dropped:\s+(\d+)", text)]
    if len(sent) < 3:
        sys.exit("compare.py: ipsec-secgw printed no statistics:\n" + text[-3000:])
    if dropped[-1]:
        sys.exit(f"compare.py: ipsec-secgw dropped {dropped[-1]} packets "
                 f"({' '.join(extra)} {cfg}): the configuration does not match the packets")
    return (sent[-1] - sent[1]) / (len(sent) - 2) / 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--install", action="store_true",
                    help="install DPDK and build ipsec-secgw (root, Debian 12)")
    ap.add_argument("--transforms", default="gcm,cbc")
    ap.add_argument("--directions", default="encrypt,decrypt")
    ap.add_argument("--sizes", default="64,1400")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.install:
        install()
    if not os.path.exists(SECGW):
        sys.exit(f"compare.py: {SECGW} not built: run perf/secgw/compare.py --install (root)")
    lock = open(os.path.join(OUT, ".lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        sys.exit("compare.py: another comparison is running (it would share core 0)")
    hugepages()
    run(["cargo", "build", "--release", "-q", "-p", "perf"], cwd=ROOT)
    perf = os.path.join(ROOT, "target", "release", "perf")
    cpu = open("/proc/cpuinfo").read()
    model = re.search(r"model name\s*:\s*(.*)", cpu).group(1)
    flags = re.search(r"flags\s*:\s*(.*)", cpu).group(1).split()
    results = []
    work = tempfile.mkdtemp(prefix="secgw-")
    for tname in a.transforms.split(","):
        transform = TRANSFORMS[tname]
        for direction in a.directions.split(","):
            for size in [int(s) for s in a.sizes.split(",")]:
                d = os.path.join(work, f"{tname}-{direction}-{size}")
                ms, base, dp = [], [], {c[0]: [] for c in CONFIGS}
                for r in range(a.rounds):
                    v = ours(perf, transform, direction, size, a.duration,
                             export=d if r == 0 else None)
                    ms.append(v["mpps"])
                    base.append(v["baseline_crypto_mpps"])
                    for name, extra, cfg in CONFIGS:
                        dp[name].append(secgw(d, transform, extra, cfg, a.duration, CORE))
                med = {k: statistics.median(v) for k, v in dp.items()}
                best = max(med, key=med.get)
                ratios = [ms[r] / max(dp[c][r] for c in dp) for r in range(a.rounds)]
                bypass = None
                if direction == "encrypt":
                    cfg = open(os.path.join(d, "secgw.cfg")).read()
                    cfg = re.sub(r"sp ipv4 out esp protect \d+", "sp ipv4 out esp bypass", cfg)
                    cfg = re.sub(r"(?m)^sa out .*\n", "", cfg)
                    open(os.path.join(d, "secgw-bypass.cfg"), "w").write(cfg)
                    bypass = secgw(d, transform, ["-l"], "secgw-bypass.cfg", a.duration, CORE)
                row = {
                    "transform": transform, "direction": direction, "size": size,
                    "ours_mpps": statistics.median(ms), "ours_runs": ms,
                    "raw_crypto_mpps": statistics.median(base),
                    "secgw_mpps": med, "secgw_runs": dp, "secgw_best": best,
                    "ratio": statistics.median(ratios),
                    "ratio_min": min(ratios),
                    "secgw_bypass_mpps": bypass,
                }
                results.append(row)
                if not a.json:
                    print(f"{transform:<20} {direction:<8} {size:>5} B  ours "
                          f"{row['ours_mpps']:6.3f} Mpps (raw crypto {row['raw_crypto_mpps']:6.3f})"
                          f"  ipsec-secgw " + " ".join(f"{k} {v:6.3f}" for k, v in med.items())
                          + (f" (bypass {bypass:6.3f})" if bypass else "")
                          + f"  ratio {row['ratio']:.2f} (worst round {row['ratio_min']:.2f})",
                          flush=True)
    shutil.rmtree(work)
    summary = {"machine": model, "avx512": "avx512f" in flags, "vaes": "vaes" in flags,
               "rounds": a.rounds, "duration_s": a.duration, "core": CORE,
               "working_set_packets": 16384, "results": results}
    if a.json:
        print(json.dumps(summary))
    else:
        print(f"machine: {model}; AVX-512 {'yes' if summary['avx512'] else 'no'}, "
              f"VAES {'yes' if summary['vaes'] else 'no'}; {a.rounds} rounds of "
              f"{a.duration} s, medians; ratio = ours / best ipsec-secgw configuration of the "
              "same round, median over rounds")


if __name__ == "__main__":
    main()
