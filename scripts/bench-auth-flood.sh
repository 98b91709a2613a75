#!/usr/bin/env bash
# Honest throughput under a flood of bad tokens (DESIGN §5): `coffer bench` on PostgreSQL alone,
# then the same run while another client sends FLOOD_RATE requests a second with random bearer
# tokens, on one server and one fresh database each. Prints both figures, their ratio, and every
# 5xx either client saw. The target: honest throughput at least 80 % of the quiet run, no 5xx.
#
# FLOOD_TOKENS=checksummed sends tokens of Coffer's shape with a valid checksum, which the server
# must look up; FLOOD_SOURCES=N spreads the flood over N loopback source addresses, each with its
# own allowance of failed authentications.
#
#   scripts/bench-auth-flood.sh
#   BENCH_SECONDS=30 FLOOD_RATE=5000 scripts/bench-auth-flood.sh
#   FLOOD_TOKENS=checksummed FLOOD_SOURCES=250 scripts/bench-auth-flood.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p coffer
bin=target/release/coffer
seconds=${BENCH_SECONDS:-15}
clients=${BENCH_CONNECTIONS:-64}
flood=${FLOOD_RATE:-5000}
flood_tokens=${FLOOD_TOKENS:-random}
flood_sources=${FLOOD_SOURCES:-}
admin_url=${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
base=${admin_url%/*}
db=coffer_bench_flood
token=bench-token
work=$(mktemp -d)
pid=
stop() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; pid=; }
trap 'stop; rm -rf "$work"' EXIT

run() { # NAME ARGS...: one coffer bench run on a fresh database, its report in $work/NAME.json
  psql "$admin_url" -q -o /dev/null -c "SET client_min_messages = warning" \
    -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
  local name=$1 port
  shift
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  COFFER_DATABASE_URL="$base/$db" COFFER_BOOTSTRAP_TOKEN=$token COFFER_LOG_LEVEL=error \
    COFFER_WEBHOOK_SECRET_KEYS="bench:$(head -c32 /dev/urandom | base64)" \
    "$bin" serve --listen "127.0.0.1:$port" --data-dir "$work/unused" >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
  "$bin" bench --url "http://127.0.0.1:$port" --token $token --seconds "$seconds" \
    --connections "$clients" --accounts 10000 --ledger BENCH --json "$@" 2>/dev/null > "$work/$name.json"
  stop
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
echo "date:    $(date -u +%Y-%m-%dT%H:%MZ), $seconds s per run, $clients honest connections, flood $flood req/s"
echo "flood:   $flood_tokens tokens from ${flood_sources:-one} source address(es)"
run quiet
run flooded --flood-per-second "$flood" --flood-tokens "$flood_tokens" ${flood_sources:+--flood-sources "$flood_sources"}
python3 - "$work/quiet.json" "$work/flooded.json" <<'PY'
import json, sys
quiet, flooded = (json.load(open(p)) for p in sys.argv[1:])
def server_errors(statuses):
    return sum(n for s, n in statuses.items() if int(s) >= 500)
for name, r in (("quiet", quiet), ("flooded", flooded)):
    l = r["latency_ms"]
    print(f"{name:8} {r['transfers_per_second']:8.0f} transfers/s  p99 {l['p99']:.1f} ms  "
          f"honest 5xx {server_errors(r['error_statuses'])}  errors {r['errors']}")
f = flooded["flood"]
print(f"flood    {f['per_second']:8.0f} req/s sent  statuses {f['statuses']}  5xx {server_errors(f['statuses'])}")
ratio = flooded["transfers_per_second"] / quiet["transfers_per_second"]
print(f"honest throughput under the flood: {100 * ratio:.0f} % of quiet (target >= 80 %)")
PY
psql "$admin_url" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)"
