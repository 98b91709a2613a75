#!/usr/bin/env bash
# A/B of two builds on the same machine in the same run: the cost of a change, as a ratio.
# Each round runs every scenario on the base build and then on the new one (alternating which
# goes first), on a fresh store each time; the report gives each side's median and new / base.
#
#   BASE_BIN=/path/to/previous/coffer scripts/bench-ab.sh       # NEW_BIN: this tree's release build
#   ROUNDS=5 BENCH_SECONDS=10 BASE_BIN=… NEW_BIN=… scripts/bench-ab.sh
#   SCENARIOS='postgres --connections 64' …                     # only the scenarios matching a regex
#
# Scenarios: the embedded store with single transfers (64 connections, 10,000 accounts) and with
# the batch endpoint (4 connections, batches of 8,000); PostgreSQL (BENCH_DATABASE_URL, default
# the local server) with single transfers and with batches.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${BASE_BIN:?BASE_BIN names the build to compare against}"
if [ -z "${NEW_BIN:-}" ]; then cargo build --release -q -p coffer; NEW_BIN=target/release/coffer; fi
rounds=${ROUNDS:-3}
seconds=${BENCH_SECONDS:-10}
admin_url=${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
base_url=${admin_url%/*}
db=coffer_bench_ab
token=bench-token
work=$(mktemp -d)
pid=
stop() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; pid=; }
trap 'stop; rm -rf "$work"; psql "$admin_url" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" 2>/dev/null || true' EXIT

# run BIN STORE ARGS...: one coffer bench run against a fresh store; prints transfers/s.
run() {
  local bin=$1 store=$2; shift 2
  local port env=()
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  rm -rf "$work/data"
  if [ "$store" = postgres ]; then
    psql "$admin_url" -q -o /dev/null -c "SET client_min_messages = warning" \
      -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
    env=(COFFER_DATABASE_URL="$base_url/$db" COFFER_WEBHOOK_SECRET_KEYS="bench:$(head -c32 /dev/urandom | base64)")
  fi
  env "${env[@]}" COFFER_BOOTSTRAP_TOKEN=$token COFFER_LOG_LEVEL=warn \
    "$bin" serve --listen "127.0.0.1:$port" --data-dir "$work/data" >/dev/null &
  pid=$!
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
  "$bin" bench --url "http://127.0.0.1:$port" --token $token --seconds "$seconds" --json "$@" \
    2>/dev/null > "$work/report.json"
  stop
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["errors"] == 0, r; print(round(r["transfers_per_second"]))' "$work/report.json"
}

scenarios=(
  "sqlite --connections 64 --accounts 10000"
  "sqlite --connections 4 --accounts 10000 --batch 8000"
  "postgres --connections 64 --accounts 10000"
  "postgres --connections 4 --accounts 10000 --batch 8000"
)

if [ -n "${SCENARIOS:-}" ]; then
  mapfile -t scenarios < <(printf '%s\n' "${scenarios[@]}" | grep -E -- "$SCENARIOS")
  [ "${#scenarios[@]}" -gt 0 ] || { echo "no scenario matches $SCENARIOS" >&2; exit 2; }
fi

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
echo "date:    $(date -u +%Y-%m-%dT%H:%MZ), $rounds rounds, $seconds s per run"
echo "base:    $BASE_BIN ($("$BASE_BIN" --version))"
echo "new:     $NEW_BIN ($("$NEW_BIN" --version))"
echo
results="$work/results"
for round in $(seq "$rounds"); do
  for i in "${!scenarios[@]}"; do
    read -r store args <<<"${scenarios[$i]}"
    # shellcheck disable=SC2086
    if [ $(( (round + i) % 2 )) -eq 0 ]; then order="base new"; else order="new base"; fi
    for side in $order; do
      bin=$BASE_BIN; [ "$side" = new ] && bin=$NEW_BIN
      # shellcheck disable=SC2086
      tps=$(run "$bin" "$store" $args)
      echo "$i $side $tps" >> "$results"
      echo "round $round, $store $args, $side: $tps transfers/s"
    done
  done
done
echo
python3 - "$results" "${scenarios[@]}" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
for i, name in enumerate(sys.argv[2:]):
    base = [int(r[2]) for r in rows if int(r[0]) == i and r[1] == "base"]
    new = [int(r[2]) for r in rows if int(r[0]) == i and r[1] == "new"]
    b, n = statistics.median(base), statistics.median(new)
    print(f"{name:55s} base {b:>9,.0f}/s  new {n:>9,.0f}/s  new/base {n / b:6.1%}  (base {base}, new {new})")
PY
