#!/usr/bin/env bash
# `espd export-config --peer strongswan` output must load into strongSwan itself:
# for each tunnel of the example configs (and variants: IKEv1 only, GCM only, CBC+SHA2-512 with
# NAT-T forced), start an isolated charon in a private network namespace (loopback only, so
# nothing can leave it), then `swanctl --load-all` the generated file and require
# "successfully loaded 1 connections" and the PSK secret loaded.
# Usage: export_swanctl.sh ESPD_BINARY
set -u
ESPD=$(readlink -f "$1")
cd "$(dirname "$0")/../.."
W=$(mktemp -d /tmp/espd-export.XXXXXX)
NS="espd-exp-$$"
pass=0; fail=0
cleanup() {
  [ -f "$W/charon.pid" ] && kill "$(cat "$W/charon.pid")" 2>/dev/null
  ip netns del "$NS" 2>/dev/null
  rm -rf "$W"
}
trap cleanup EXIT
ip netns add "$NS" && ip -n "$NS" link set lo up

cat > "$W/strongswan.conf" <<EOC
charon {
  load_modular = yes
  plugins {
    include /etc/strongswan.d/charon/*.conf
    vici { socket = unix://$W/charon.vici }
  }
  filelog { log { path = $W/charon.log
                  default = 1 } }
}
swanctl { plugins { vici { socket = unix://$W/charon.vici } } }
EOC
mkdir -p "$W/run"
STRONGSWAN_CONF="$W/strongswan.conf" ip netns exec "$NS" unshare --mount --propagation private \
  sh -c "mount --bind '$W/run' /run && exec /usr/lib/ipsec/charon" > "$W/charon.stderr" 2>&1 &
echo $! > "$W/charon.pid"
for _ in $(seq 200); do [ -S "$W/charon.vici" ] && break; sleep 0.05; done
if [ ! -S "$W/charon.vici" ]; then
  echo "FAIL charon did not start"; cat "$W/charon.stderr"; echo "export: 0 passed, 1 failed"; exit 1
fi

check() { # name config tunnel
  local out="$W/$1.swanctl.conf"
  if ! "$ESPD" export-config "$2" "$3" --peer strongswan --out "$out" 2> "$W/err"; then
    echo "FAIL $1: export-config: $(cat "$W/err")"; fail=$((fail+1)); return
  fi
  swanctl --load-all --noprompt --uri "unix://$W/charon.vici" --file "$out" > "$W/load.txt" 2>&1
  if grep -q "successfully loaded 1 connections," "$W/load.txt" && grep -q "loaded ike secret" "$W/load.txt"; then
    echo "PASS $1: swanctl loaded it"; pass=$((pass+1))
  else
    echo "FAIL $1:"; cat "$W/load.txt"; fail=$((fail+1))
  fi
  # The generic text carries the same facts.
  if "$ESPD" export-config "$2" "$3" --peer generic | grep -q "Tunnel interface MTU"; then
    pass=$((pass+1))
  else
    echo "FAIL $1: generic export"; fail=$((fail+1))
  fi
}

check aws-t1 configs/aws-vpn.toml vpn-0a1b-t1
check aws-t2 configs/aws-vpn.toml vpn-0a1b-t2
check lab-t1 configs/lab-static.toml lab-t1
sed -e 's/ike_versions = \["ikev2"\]/ike_versions = ["ikev1"]/' -e 's/startup_action = "start"/startup_action = "add"/' \
    configs/aws-vpn.toml > "$W/v1.toml"
check ikev1-only "$W/v1.toml" vpn-0a1b-t1
sed -e 's/phase1_encryption = \["AES128", "AES256-GCM-16"\]/phase1_encryption = ["AES256-GCM-16"]/' configs/aws-vpn.toml > "$W/gcm.toml"
check gcm-only "$W/gcm.toml" vpn-0a1b-t1
sed -e 's/phase2_encryption = \["AES128-GCM-16"\]/phase2_encryption = ["AES256"]/' -e 's/phase2_integrity = \["SHA2-256"\]/phase2_integrity = ["SHA2-512"]/' \
    -e 's/nat_t = "auto"/nat_t = "force"/' configs/aws-vpn.toml > "$W/cbc.toml"
check cbc-sha512-natt "$W/cbc.toml" vpn-0a1b-t1
# Negative control: strongSwan does reject a bad proposal, so the checks above can fail.
sed -e 's/^    proposals = .*/    proposals = aes129-sha1-modp2048/' "$W/aws-t1.swanctl.conf" > "$W/broken.conf"
if swanctl --load-all --noprompt --uri "unix://$W/charon.vici" --file "$W/broken.conf" > "$W/load.txt" 2>&1 \
   || ! grep -q "successfully loaded 1 connections," "$W/load.txt"; then
  echo "PASS negative control: a bad proposal is rejected"; pass=$((pass+1))
else
  echo "FAIL negative control: swanctl accepted an invalid proposal"; fail=$((fail+1))
fi
echo "export: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
