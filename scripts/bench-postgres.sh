#!/usr/bin/env bash
# Coffer on PostgreSQL against PostgreSQL alone, in one run on the same server: `coffer bench`
# (single transfers over HTTP, 64 connections) and pgbench's built-in tpcb-like script with the
# same client count, uniform (scale 10: ten branch rows) and hot (scale 1: one branch row that
# every transaction updates). Prints both figures and their ratio.
#
#   scripts/bench-postgres.sh
#   BENCH_SECONDS=30 BENCH_DATABASE_URL=postgres://postgres@db:5432/postgres scripts/bench-postgres.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p coffer
bin=target/release/coffer
seconds=${BENCH_SECONDS:-15}
clients=${BENCH_CONNECTIONS:-64}
admin_url=${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
base=${admin_url%/*}
coffer_db=coffer_bench
pgbench_db=coffer_pgbench
token=bench-token
work=$(mktemp -d)
pid=
stop() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; pid=; }
trap 'stop; rm -rf "$work"' EXIT

fresh_db() { psql "$admin_url" -q -o /dev/null -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1"; }

coffer_tps() { # ARGS...: one coffer bench run on a fresh database; prints the transfers/s
  fresh_db $coffer_db
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  # PostgreSQL has no default webhook key: one made for this run.
  COFFER_DATABASE_URL="$base/$coffer_db" COFFER_BOOTSTRAP_TOKEN=$token COFFER_LOG_LEVEL=warn \
    COFFER_WEBHOOK_SECRET_KEYS="bench:$(head -c32 /dev/urandom | base64)" \
    "$bin" serve --listen "127.0.0.1:$port" --data-dir "$work/unused" >/dev/null &
  pid=$!
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
  "$bin" bench --url "http://127.0.0.1:$port" --token $token --seconds "$seconds" \
    --connections "$clients" --ledger BENCH --json "$@" 2>/dev/null > "$work/report.json"
  stop
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); l=r['latency_ms']; print('  coffer: %.0f transfers/s, p99 %.1f ms, errors %d' % (r['transfers_per_second'], l['p99'], r['errors']))" "$work/report.json" >&2
  python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["transfers_per_second"]))' "$work/report.json"
}

pgbench_tps() { # SCALE: pgbench tpcb-like on a fresh database; prints the TPS
  fresh_db $pgbench_db
  pgbench -q -i -s "$1" "$base/$pgbench_db" >/dev/null 2>&1
  pgbench -n -b tpcb-like -c "$clients" -j 2 -T "$seconds" "$base/$pgbench_db" 2>/dev/null \
    | awk '/^tps/ {print int($3)}' | head -1
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
echo "server:  $(psql "$admin_url" -Atc 'SHOW server_version'), synchronous_commit=$(psql "$admin_url" -Atc 'SHOW synchronous_commit'), fsync=$(psql "$admin_url" -Atc 'SHOW fsync')"
echo "date:    $(date -u +%Y-%m-%dT%H:%MZ), $seconds s per run, $clients clients"
echo
echo "-- uniform"
coffer_uniform=$(coffer_tps --accounts 10000)
pgbench_uniform=$(pgbench_tps 10)
echo "coffer bench --accounts 10000: $coffer_uniform transfers/s"
echo "pgbench tpcb-like, scale 10:   $pgbench_uniform tps"
echo "-- hot account"
coffer_hot=$(coffer_tps --accounts 10000 --hot)
pgbench_hot=$(pgbench_tps 1)
echo "coffer bench --hot:            $coffer_hot transfers/s"
echo "pgbench tpcb-like, scale 1:    $pgbench_hot tps"
echo
python3 - "$coffer_uniform" "$pgbench_uniform" "$coffer_hot" "$pgbench_hot" <<'PY'
import sys
cu, pu, ch, ph = map(float, sys.argv[1:])
print(f"uniform: coffer / pgbench = {cu / pu:.2f}x")
print(f"hot:     coffer / pgbench = {ch / ph:.2f}x")
print(f"coffer hot / uniform      = {100 * ch / cu:.0f} %")
PY
psql "$admin_url" -qc "DROP DATABASE IF EXISTS $coffer_db WITH (FORCE)" -c "DROP DATABASE IF EXISTS $pgbench_db WITH (FORCE)"
