#!/usr/bin/env bash
# The crate layering, checked from cargo's own dependency graph (README "Layout"):
# - engine (the sans-IO data plane) depends on no I/O, daemon or CLI crate;
# - the main job (`perf loopback`, perf without its `xdp` feature) builds with only Rust and
#   a C compiler: nothing in its graph needs clang, libelf or libbpf;
# - ike and telemetry stay free of the daemon and of AF_XDP.
set -euo pipefail
cd "$(dirname "$0")/.."

bad=0
deny() { # crate edges forbidden...
  local pkg=$1 edges=$2; shift 2
  local tree
  tree=$(cargo tree --quiet -p "$pkg" -e "$edges" --prefix none --offline 2>/dev/null || cargo tree --quiet -p "$pkg" -e "$edges" --prefix none)
  for dep in "$@"; do
    if grep -qE "^$dep v" <<<"$tree"; then
      echo "FAIL layering: $pkg depends on $dep ($edges edges): $(cargo tree --quiet -p "$pkg" -e "$edges" -i "$dep" --prefix none | tr '\n' ' ' | cut -c1-300)"
      bad=1
    fi
  done
}
deny engine normal,build afxdp espd ike telemetry xdp-prog libbpf-rs libbpf-sys libbpf-cargo clap signal-hook
deny perf normal,build xdp-prog libbpf-rs libbpf-sys libbpf-cargo espd
deny ike normal,build engine espd afxdp libbpf-sys clap
deny telemetry normal,build espd afxdp ike libbpf-sys clap
deny afxdp normal,build espd ike xdp-prog clap
if [ $bad -ne 0 ]; then exit 1; fi
echo "layering: engine, ike, telemetry, afxdp and perf's main job depend only on what they should"
