#!/usr/bin/env bash
# The event pipeline's benchmark (`coffer bench-events`), on the embedded store and on
# PostgreSQL, against the local NATS JetStream: relay throughput beside a bare JetStream
# publisher of the same events (same run, same broker), and commit → consumer latency at a
# steady 5,000 transfers/s.
#
#   scripts/bench-events.sh
#   BENCH_NATS_URL=nats://127.0.0.1:4222 BENCH_RATE=5000 BENCH_SECONDS=20 scripts/bench-events.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p coffer
bin=target/release/coffer
nats=${BENCH_NATS_URL:-nats://127.0.0.1:4222}
admin_url=${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
base=${admin_url%/*}
db=coffer_bench_events
args=(--rate "${BENCH_RATE:-5000}" --seconds "${BENCH_SECONDS:-20}" --backlog "${BENCH_BACKLOG:-100000}" --json)

echo "embedded store (SQLite):"
COFFER_NATS_URL=$nats COFFER_LOG_LEVEL=warn "$bin" bench-events "${args[@]}"

echo "PostgreSQL:"
psql "$admin_url" -q -o /dev/null -c "SET client_min_messages = warning" \
  -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
COFFER_NATS_URL=$nats COFFER_DATABASE_URL="$base/$db" COFFER_LOG_LEVEL=warn "$bin" bench-events "${args[@]}"
psql "$admin_url" -q -o /dev/null -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"
