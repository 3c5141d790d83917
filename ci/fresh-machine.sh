#!/usr/bin/env bash
# The README's first command as a fresh machine would run it (Rust and gcc only): in a
# private mount namespace, clang and bpftool are replaced by a stub that fails, and
# /usr/include by a copy without libelf's and ipsec-mb's headers; then a clean clone of HEAD
# builds and runs `cargo run --release -p perf -- loopback` in a target directory of its own.
# Root only (mount namespaces). Not part of the test command (a second cold release build
# takes minutes); ci/layers.sh checks the same property from the dependency graph on every
# run. Usage: sudo ci/fresh-machine.sh
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d /tmp/espd-fresh.XXXXXX)"
trap 'rm -rf "$work"' EXIT
git clone -q "$here" "$work/clone"
cp -a /usr/include "$work/include"
rm -f "$work/include/gelf.h" "$work/include/libelf.h" "$work/include/intel-ipsec-mb.h"
printf '#!/bin/sh\necho "not installed" >&2\nexit 127\n' > "$work/missing"
chmod +x "$work/missing"
unshare --mount bash -euo pipefail -c '
  mount --make-rprivate /
  for f in /usr/bin/clang /usr/bin/clang++ /usr/bin/clang-[0-9]* /usr/bin/clang++-[0-9]* /usr/bin/bpftool; do
    [ -e "$f" ] && mount --bind "$1/missing" "$f"
  done
  mount --bind "$1/include" /usr/include
  echo "== clang: $(clang --version 2>&1 | head -1); libelf.h: $(ls /usr/include/libelf.h 2>&1 | cut -c1-60)"
  cd "$1/clone"
  CARGO_TARGET_DIR="$1/target" cargo run --release -q -p perf -- loopback --duration 3
' _ "$work"
