#!/usr/bin/env bash
# TLS cost, side by side: keel-bench (client engine: the client library, as an
# application sends) against one keeld with logins, first over plaintext, then over TLS,
# interleaved ROUNDS times. Certificates are made here with openssl.
#
#   bench/tls-bench.sh [SECONDS] [ROUNDS] [extra keel-bench flags...]
set -euo pipefail
seconds=${1:-10}
rounds=${2:-2}
shift $(( $# > 2 ? 2 : $# )) || true
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/target/release"
[ -x "$bin/keeld" ] && [ -x "$bin/keel" ] && [ -x "$bin/keel-bench" ] || {
  echo "build first: cargo build --release" >&2; exit 2; }
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

cd "$work"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=keel bench CA" -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=127.0.0.1" -keyout broker.key -out broker.csr 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > san.ext
openssl x509 -req -in broker.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
  -extfile san.ext -out broker.crt 2>/dev/null

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
start() { # name, tls keys -> sets address and pid
  local name=$1 tls=$2 port
  port=$(free_port)
  cat > "$name.toml" <<TOML
listen = "127.0.0.1:$port"
data_dir = "$work/$name-data"
[security]
auth = "required"
$tls
TOML
  KEEL_PASSWORD="bench admin pw" "$bin/keeld" --config "$name.toml" add-admin --user ops >/dev/null
  RUST_LOG=warn "$bin/keeld" --config "$name.toml" > "$name.out" 2> "$name.log" &
  pids+=($!)
  eval "${name}_pid=$!"
  eval "${name}_address=127.0.0.1:$port"
  for _ in $(seq 100); do grep -q "listening" "$name.out" 2>/dev/null && return; sleep 0.1; done
  echo "$name did not start: $(cat "$name.log")" >&2; exit 1
}
start plain ""
start tls "tls_cert_file = \"$work/broker.crt\"
tls_key_file = \"$work/broker.key\""

prepare() { # address, extra keel flags
  local address=$1; shift
  export KEEL_PASSWORD="bench admin pw"
  "$bin/keel" --broker "$address" "$@" --user ops acl grant --principal bench --resource admin:* --actions '*' >/dev/null
  "$bin/keel" --broker "$address" "$@" --user ops acl grant --principal bench --resource topic:bench --actions publish,subscribe >/dev/null
  "$bin/keel" --broker "$address" "$@" --user ops token create bench --out "$work/token-$address" >/dev/null
  unset KEEL_PASSWORD
}
prepare "$plain_address"
prepare "$tls_address" --tls-ca "$work/ca.crt"

run() { # label, address, pid, extra flags
  local label=$1 address=$2 pid=$3; shift 3
  local line
  line=$("$bin/keel-bench" --broker "$address" --broker-pid "$pid" --engine client \
    --token-file "$work/token-$address" --duration "$seconds" --json "$@" 2>"$work/bench.err") || { echo "$label: keel-bench failed: $(tail -3 "$work/bench.err")" >&2; return 1; }
  python3 - "$label" "$line" <<'PY'
import json, sys
label, data = sys.argv[1], json.loads(sys.argv[2])
def find(*keys):
    for key in keys:
        node = data
        try:
            for part in key.split('.'):
                node = node[part]
            return node
        except (KeyError, TypeError):
            pass
    return None
cpu = find('broker_cpu_us_per_msg')
print(f"{label:<10} {find('msgs_per_sec'):>10.0f} msgs/s  p50 {find('p50_us')} us  "
      f"p99 {find('p99_us')} us  broker CPU {cpu if cpu is None else round(cpu, 2)} us/msg  "
      f"not ok {find('not_ok')}")
PY
}
echo "keel-bench --engine client $*, ${seconds}s, $rounds rounds (logins on both)"
for round in $(seq "$rounds"); do
  run plaintext "$plain_address" "$plain_pid" "$@"
  run tls "$tls_address" "$tls_pid" --tls-ca "$work/ca.crt" "$@"
done
