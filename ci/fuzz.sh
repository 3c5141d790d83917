#!/usr/bin/env bash
# cargo-fuzz targets (fuzz/): the IKE decoder, the IKEv2 and IKEv1 responders and initiators fed arbitrary
# datagrams, ESP decapsulation, outer/inner reassembly. Each runs ESPD_FUZZ_SECONDS (default
# 10; set it higher for a soak, e.g. 600) without a sanitizer (safe Rust: a panic or a failed
# assertion is the finding); ESPD_FUZZ_SANITIZER=address builds with ASan instead.
# cargo-fuzz needs a nightly toolchain: without one this says so and exits 0 (the proptest
# suites in engine/tests/fuzz.rs and ike/tests still run in cargo test).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz: no nightly toolchain on this machine: cargo-fuzz targets not run"
  exit 0
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --quiet
fi
secs="${ESPD_FUZZ_SECONDS:-10}"
san="${ESPD_FUZZ_SANITIZER:-none}"
cd fuzz
cargo +nightly fuzz build -s "$san" -O >/dev/null 2>&1 || cargo +nightly fuzz build -s "$san" -O
for t in ike_message ike_responder ike_initiator ikev1_responder ikev1_initiator esp_decap reassembly; do
  mkdir -p "corpus/$t"
  out=$(cargo +nightly fuzz run -s "$san" -O "$t" "corpus/$t" -- -max_total_time="$secs" 2>&1) || {
    echo "$out" | tail -40
    echo "fuzz: $t FAILED (the crashing input is in fuzz/artifacts/$t)"
    exit 1
  }
  echo "fuzz: $t: $(echo "$out" | grep -E '^Done [0-9]+ runs' | tail -1)"
done
