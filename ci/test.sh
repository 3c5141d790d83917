#!/usr/bin/env bash
# The test command (README line 2, called by .ci/run). On a fresh Debian machine with only
# Rust, gcc and Python it installs what the tests need, idempotently and quietly:
#   apt: libipsec-mb-dev (the fast crypto backend), tshark (independent ESP decryption),
#        strongSwan's charon + swanctl (loads the exported customer-gateway configs),
#        clang + libelf-dev (the XDP program and libbpf), tcpdump, iputils-ping, ethtool
#        (the network-namespace gateway tests), nftables (the strongSwan test holds IKE
#        datagrams back with it to make IKE SA rekeys collide), bird2 (BGP over the tunnel
#        interfaces, both sides)
#   pip: scapy, cryptography (independent ESP implementation)
# then runs: cargo fmt --check, cargo clippy -D warnings, cargo test (unit, known-answer,
# property, zero-allocation, CLI), and the scapy/tshark interop suite.
# Slow soaks are gated: ESPD_SOAK=1 raises the property-test case counts, runs each
# cargo-fuzz target (ci/fuzz.sh) for 10 minutes instead of 10 seconds, and pings across
# the strongSwan rekeys for 5 minutes instead of 40 s.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '== %s (at %d s)\n' "$*" "$SECONDS"; }

need_apt=()
for pkg in libipsec-mb-dev tshark strongswan-charon strongswan-swanctl libstrongswan-standard-plugins libcharon-extra-plugins iproute2 clang libelf-dev tcpdump iputils-ping ethtool nftables bird2; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]} (apt)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo 'wireshark-common wireshark-common/install-setuid boolean false' | $SUDO debconf-set-selections
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
if ! python3 -c 'import scapy, cryptography' 2>/dev/null; then
  log "installing scapy, cryptography (pip)"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore scapy cryptography
fi

if [ "${ESPD_SOAK:-0}" = "1" ]; then
  export PROPTEST_CASES=20000
  export ESPD_FUZZ_SECONDS="${ESPD_FUZZ_SECONDS:-600}"
  # The strongSwan rekey cases (IKEv2 and IKEv1): ping across rekeys for 5 minutes, not 40 s.
  export ESPD_REKEY_SECS="${ESPD_REKEY_SECS:-300}"
fi

log "crate layering (cargo tree)"
./ci/layers.sh

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --all-features --quiet -- -D warnings

log "cargo test"
# As root: also the tests #[ignore]d for needing root (their reason says so).
cargo test --workspace --all-features --quiet -- --include-ignored 2>&1 | grep -v '^$'

log "cargo-fuzz targets (${ESPD_FUZZ_SECONDS:-10} s each; nightly toolchain)"
./ci/fuzz.sh

# The scripts below use the espd and perf binaries that `cargo test` just built for the
# integration tests (all features): building them again with default features cost about
# 2.5 minutes of a cold 2-core run.
[ -x target/debug/espd ] && [ -x target/debug/perf ] || cargo build --quiet -p espd -p perf --all-features

log "crypto backends"
target/debug/espd crypto

log "IKE: the MODP primes in ike/src/groups.rs are exactly RFC 2409 / RFC 3526's formula"
python3 tests/ike/modp_primes.py ike/src/groups.rs 2>&1 | grep -v ': True$' || true
python3 tests/ike/modp_primes.py ike/src/groups.rs 2>/dev/null

log "interop: scapy and tshark against espd pcap"
python3 tests/interop/interop.py target/debug/espd "$(mktemp -d)" 2>&1 | grep -v -e '^PASS' -e 'WARNING: '

log "export-config: strongSwan loads what espd exports"
bash tests/interop/export_swanctl.sh target/debug/espd

log "espd run: two gateways, scapy as the peer, bad input, SIGHUP (network namespaces)"
python3 tests/gateway/gateway.py target/debug/espd 2>&1 | grep -v -e '^PASS' -e 'WARNING: '

log "IKEv2: espd run against strongSwan (both initiate, two proposal sets, rekeys, DPD, IKE SA rekey collision, PSK and proposal mismatch)"
python3 tests/ike/strongswan.py target/debug/espd 2>&1 | grep -v -e '^PASS' -e 'WARNING: '

log "perf stress --dut: 200 IKEv2 tunnels into espd run, 3 into strongSwan, traffic through each, the NDR through espd (network namespaces)"
python3 tests/stress/stress.py target/debug/espd target/debug/perf 2>&1 | grep -v -e '^PASS' -e 'WARNING: '

log "IKEv1: espd run against strongSwan version = 1 (main + quick mode, two proposal sets, espd's rekeys and DPD restart, rekeys under ping, PSK and proposal mismatch, tshark ISAKMP decryption)"
python3 tests/ike/strongswan_v1.py target/debug/espd 2>&1 | grep -v -e '^PASS' -e 'WARNING: '
log "done"
