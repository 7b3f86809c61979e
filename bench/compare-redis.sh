#!/usr/bin/env bash
# keel next to Redis with the same durability (appendonly yes, appendfsync always: fsync
# before every reply), on this machine, in interleaved rounds (keel, Redis, keel, Redis),
# 1 KiB values. Prints one line per run, then a table of the means with the ratios.
#
# Usage (from the repository root):  bash bench/compare-redis.sh [ROUNDS]
# Environment: DUR (seconds per keel run, default 8), RN (Redis requests per run, default
# 300000), KEEL_BIN (directory with keeld and keel-bench, default target/release; built
# when missing). Installs Debian's redis-server and redis-tools when they are missing.
# IGGY_BIN: a directory with iggy-server and iggy-bench built from Apache Iggy's source
# (nothing of Iggy is in this repository); when set, batches of 1000 also run on Iggy:
# 4 pinned producers, each batch fsynced before its ack (iggy-bench --enforce-fsync, with
# the bench topic's messages_required_to_save set to 1; see README "Performance").
#
# Server CPU per message: the server process's user + system time over the run (from
# /proc/PID/stat), divided by the messages acknowledged. keel-bench drives keel with its
# default engine: one mio event loop thread speaking the wire protocol, the way
# redis-benchmark drives Redis from one epoll loop.
set -u
rounds=${1:-2}
dur=${DUR:-8}
requests=${RN:-300000}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${KEEL_BIN:-$root/target/release}
if [ ! -x "$bin/keeld" ] || [ ! -x "$bin/keel-bench" ]; then
  (cd "$root" && cargo build --release -p keel-server -p keel-bench) || exit 1
fi
if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
  apt-get update -qq >/dev/null 2>&1
  apt-get install -y -qq redis-server redis-tools >/dev/null 2>&1 || { echo "cannot install redis"; exit 1; }
fi
results=$(mktemp)
trap 'rm -f "$results"' EXIT
hz=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

# keel_run WORKLOAD FLUSH ROLE keel-bench-args...   (ROLE: standalone | sync_master)
keel_run() {
  local workload=$1 flush=$2 role=$3; shift 3
  local tmp port pid slave_pid=""
  tmp=$(mktemp -d); port=$(free_port)
  if [ "$role" = sync_master ]; then
    local ha slave_port
    ha=$(free_port); slave_port=$(free_port)
    printf 'listen = "127.0.0.1:%s"\ndata_dir = "%s/m"\nflush = "%s"\nrole = "sync_master"\nbroker_name = "bench"\nha_port = %s\n' \
      "$port" "$tmp" "$flush" "$ha" > "$tmp/master.toml"
    printf 'listen = "127.0.0.1:%s"\ndata_dir = "%s/s"\nflush = "%s"\nrole = "slave"\nbroker_name = "bench"\nbroker_id = 1\nmaster_address = "127.0.0.1:%s"\nha_port = %s\n' \
      "$slave_port" "$tmp" "$flush" "$ha" "$(free_port)" > "$tmp/slave.toml"
    "$bin/keeld" --config "$tmp/master.toml" >"$tmp/master.log" 2>&1 & pid=$!
    wait_port "$port" || { echo "keeld did not start"; cat "$tmp/master.log"; return; }
    "$bin/keeld" --config "$tmp/slave.toml" >"$tmp/slave.log" 2>&1 & slave_pid=$!
    for _ in $(seq 200); do
      "$bin/keel" --broker "127.0.0.1:$port" stats 2>/dev/null | grep -q 'slaves_in_sync *1' && break
      sleep 0.05
    done
  else
    "$bin/keeld" --data-dir "$tmp/d" --listen "127.0.0.1:$port" --flush "$flush" >"$tmp/log" 2>&1 & pid=$!
    wait_port "$port" || { echo "keeld did not start"; cat "$tmp/log"; return; }
  fi
  local out
  out=$("$bin/keel-bench" --broker "127.0.0.1:$port" --broker-pid "$pid" --json --duration "$dur" "$@" 2>/dev/null | tail -1)
  kill -TERM "$pid" $slave_pid 2>/dev/null; wait "$pid" $slave_pid 2>/dev/null; rm -rf "$tmp"
  python3 - "$workload" "$out" >>"$results" <<'PY'
import json, sys
workload, out = sys.argv[1], sys.argv[2]
try:
    r = json.loads(out)
except ValueError:
    print(f"keel\t{workload}\tnan\tnan\tnan\tnan\tfailed")
    sys.exit()
cpu = r["broker_cpu_us_per_msg"] if r["broker_cpu_us_per_msg"] is not None else float("nan")
print(f"keel\t{workload}\t{r['msgs_per_sec']:.0f}\t{cpu:.2f}\t{r['p50_us']}\t{r['p99_us']}\terrors={r['errors']} not_ok={r['not_ok']} rec/fsync={r['records_per_fsync']}")
PY
  tail -1 "$results" | awk -F'\t' '{printf "  %-6s %-34s %10s msg/s  server %6s us/msg  p50 %6sus p99 %7sus  %s\n",$1,$2,$3,$4,$5,$6,$7}'
}

# redis_run WORKLOAD PIPELINE
redis_run() {
  local workload=$1 pipeline=$2 tmp port pid
  tmp=$(mktemp -d); port=$(free_port)
  redis-server --port "$port" --bind 127.0.0.1 --dir "$tmp" --appendonly yes --appendfsync always --save '' >"$tmp/log" 2>&1 & pid=$!
  wait_port "$port" || { echo "redis did not start"; return; }
  local c0 c1 row
  c0=$(cpu_ticks "$pid")
  row=$(redis-benchmark -p "$port" -t set -d 1024 -c 64 -n "$requests" -P "$pipeline" --csv 2>/dev/null | grep '"SET"')
  c1=$(cpu_ticks "$pid")
  kill -TERM "$pid"; wait "$pid" 2>/dev/null; rm -rf "$tmp"
  python3 - "$workload" "$row" "$c0" "$c1" "$hz" "$requests" >>"$results" <<'PY'
import csv, sys
workload, row, c0, c1, hz, n = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
fields = next(csv.reader([row]))
rps, p50, p99 = float(fields[1]), float(fields[5]) * 1000, float(fields[7]) * 1000
print(f"redis\t{workload}\t{rps:.0f}\t{(c1 - c0) / hz * 1e6 / n:.2f}\t{p50:.0f}\t{p99:.0f}\t")
PY
  tail -1 "$results" | awk -F'\t' '{printf "  %-6s %-34s %10s msg/s  server %6s us/msg  p50 %6sus p99 %7sus\n",$1,$2,$3,$4,$5,$6}'
}

# iggy_run WORKLOAD: 4 pinned producers, 1 KiB messages, batches of 1000, fsync enforced.
iggy_run() {
  local workload=$1 tmp pid
  [ -n "${IGGY_BIN:-}" ] || return 0
  tmp=$(mktemp -d)
  (cd "$tmp" && IGGY_ROOT_USERNAME=iggy IGGY_ROOT_PASSWORD=iggy IGGY_SYSTEM_PATH="$tmp/data" \
     IGGY_CONFIG_PATH="${IGGY_CONFIG:-$IGGY_BIN/../../core/server/config.toml}" \
     exec "$IGGY_BIN/iggy-server" >"$tmp/log" 2>&1) & pid=$!
  wait_port 8090 || { echo "iggy did not start"; tail -5 "$tmp/log"; kill "$pid"; return; }
  local c0 c1 out batches
  batches=$(( ${IGGY_BATCHES:-500} ))
  c0=$(cpu_ticks "$pid")
  out=$("$IGGY_BIN/iggy-bench" -m 1024 -P 1000 -b "$batches" --enforce-fsync pinned-producer -p 4 tcp 2>&1 | grep "Producers Results")
  c1=$(cpu_ticks "$pid")
  kill -TERM "$pid"; wait "$pid" 2>/dev/null; rm -rf "$tmp"
  python3 - "$workload" "$out" "$c0" "$c1" "$hz" "$(( batches * 4000 ))" >>"$results" <<'PY'
import re, sys
workload, out, c0, c1, hz, n = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
rate = re.search(r"([0-9.]+) messages/s", out)
p50 = re.search(r"p50 latency: ([0-9.]+) ms", out)
p99 = re.search(r"p99 latency: ([0-9.]+) ms", out)
if not rate:
    print(f"iggy\t{workload}\tnan\tnan\tnan\tnan\tfailed")
else:
    print(f"iggy\t{workload}\t{float(rate.group(1)):.0f}\t{(c1 - c0) / hz * 1e6 / n:.2f}\t{float(p50.group(1)) * 1000:.0f}\t{float(p99.group(1)) * 1000:.0f}\t")
PY
  tail -1 "$results" | awk -F'\t' '{printf "  %-6s %-34s %10s msg/s  server %6s us/msg  p50 %6sus p99 %7sus\n",$1,$2,$3,$4,$5,$6}'
}

W1="64 conns, 1 in flight"
W16="64 conns, 16 in flight"
WB100="4 conns, batches of 100"
WB1000="4 conns, batches of 1000"
WSM="sync_master + 1 slave, 64x1"
WASYNC="async flush, 64x1"
for round in $(seq "$rounds"); do
  echo "--- round $round"
  keel_run "$W1" sync standalone --producers 64 --size 1024 --mode sync
  redis_run "$W1" 1
  keel_run "$W16" sync standalone --producers 64 --size 1024 --mode async --window 16
  redis_run "$W16" 16
  keel_run "$WB100" sync standalone --producers 4 --size 1024 --mode sync --batch 100
  keel_run "$WB1000" sync standalone --producers 4 --size 1024 --mode sync --batch 1000
  iggy_run "$WB1000"
  keel_run "$WSM" sync sync_master --producers 64 --size 1024 --mode sync
  keel_run "$WASYNC" async standalone --producers 64 --size 1024 --mode sync
done

python3 - "$results" "$W1" "$W16" "$WB100" "$WB1000" "$WSM" "$WASYNC" <<'PY'
import math, sys
from collections import defaultdict
path, w1, w16, wb100, wb1000, wsm, wasync = sys.argv[1:]
runs = defaultdict(list)
for line in open(path):
    server, workload, rate, cpu, *_ = line.rstrip("\n").split("\t")
    runs[(server, workload)].append((float(rate), float(cpu)))
def mean(server, workload, index):
    values = [run[index] for run in runs.get((server, workload), []) if not math.isnan(run[index])]
    return sum(values) / len(values) if values else float("nan")
def cell(value, digits=0):
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"
def ratio(a, b):
    return "-" if math.isnan(a) or math.isnan(b) or b == 0 else f"{a / b:.2f}x"
print()
print("| workload (1 KiB, fsync before every ack) | keel msgs/s | Redis msgs/s | keel / Redis | server CPU per message, keel / Redis | CPU ratio |")
print("|---|---|---|---|---|---|")
for workload in (w1, w16):
    k, r = mean("keel", workload, 0), mean("redis", workload, 0)
    kc, rc = mean("keel", workload, 1), mean("redis", workload, 1)
    print(f"| {workload} | {cell(k)} | {cell(r)} | {ratio(k, r)} | {cell(kc, 2)} us / {cell(rc, 2)} us | {ratio(kc, rc)} |")
k, kc = mean("keel", wb100, 0), mean("keel", wb100, 1)
print(f"| {wb100} (SEND_BATCH) | {cell(k)} | - | - | {cell(kc, 2)} us / - | - |")
k, kc = mean("keel", wb1000, 0), mean("keel", wb1000, 1)
i, ic = mean("iggy", wb1000, 0), mean("iggy", wb1000, 1)
print(f"| {wb1000} (SEND_BATCH) | {cell(k)} | Iggy {cell(i)} | {ratio(k, i)} | {cell(kc, 2)} us / Iggy {cell(ic, 2)} us | {ratio(kc, ic)} |")
standalone = mean("keel", w1, 0)
for workload in (wsm, wasync):
    k, kc = mean("keel", workload, 0), mean("keel", workload, 1)
    print(f"| {workload} | {cell(k)} | - | {ratio(k, standalone)} of standalone sync | {cell(kc, 2)} us / - | - |")
PY
