#!/usr/bin/env bash
# Coffer's benchmark: builds the release binary, serves a fresh embedded store, and drives it with
# `coffer bench` over HTTP. The reference in the same run is the same server with group commit
# turned off (one SQLite transaction, one fsync, per command): the ratio is what batching buys.
#
#   scripts/bench.sh                 # 15 s per scenario
#   BENCH_SECONDS=30 scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p coffer
bin=target/release/coffer
seconds=${BENCH_SECONDS:-15}
token=bench-token
work=$(mktemp -d)
pid=
stop() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; pid=; }
trap 'stop; rm -rf "$work"' EXIT

# serve NAME [ENV=VALUE ...]: start a server on a fresh data directory.
serve() {
  local name=$1; shift
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  env "$@" COFFER_BOOTSTRAP_TOKEN=$token COFFER_LOG_LEVEL=warn \
    "$bin" serve --listen "127.0.0.1:$port" --data-dir "$work/$name" >/dev/null &
  pid=$!
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && return; sleep 0.1; done
  echo "server $name did not start" >&2; exit 1
}

bench() {
  echo "== coffer bench $*"
  "$bin" bench --url "http://127.0.0.1:$port" --token $token --seconds "$seconds" "$@"
  echo
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
echo "date:    $(date -u +%Y-%m-%dT%H:%MZ)"
echo

serve grouped
bench --connections 64 --accounts 10000 --ledger UNIFORM
bench --connections 64 --accounts 10000 --hot --ledger HOT
bench --connections 4 --accounts 10000 --batch 8000 --ledger BATCH
stop

echo "-- reference: the same server, one transaction per command (group commit off)"
serve naive COFFER_STORE__BATCH_SIZE_MAX=1 COFFER_STORE__BATCH_WAIT_US=0
bench --connections 64 --accounts 10000 --ledger UNIFORM
stop
