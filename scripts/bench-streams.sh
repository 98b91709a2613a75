#!/usr/bin/env bash
# What open, idle event streams (`GET /v1/events/stream`) cost a server: its CPU with none open,
# then with BENCH_STREAMS (default 256, the default limit) open and idle, each measured over
# BENCH_SECONDS (default 10). One api-only server on a fresh embedded store, on loopback.
#
# COFFER_BIN runs another build of coffer instead of this tree's release build (to compare two).
set -euo pipefail
cd "$(dirname "$0")/.."

streams=${BENCH_STREAMS:-256}
seconds=${BENCH_SECONDS:-10}
if [[ -z "${COFFER_BIN:-}" ]]; then
    cargo build --release -q -p coffer
fi
bin=${COFFER_BIN:-${CARGO_TARGET_DIR:-target}/release/coffer}
command -v curl >/dev/null || { echo "curl is needed" >&2; exit 1; }

dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

COFFER_BOOTSTRAP_TOKEN=bench COFFER_LOG_LEVEL=warn COFFER_API__MAX_EVENT_STREAMS="$streams" \
    "$bin" serve --roles api --listen "127.0.0.1:$port" --data-dir "$dir" >/dev/null &
server=$!
pids+=("$server")
for _ in $(seq 100); do
    curl -sf "$base/readyz" >/dev/null && break
    sleep 0.1
done

ticks=$(getconf CLK_TCK)
# The server's CPU, in % of one core, over BENCH_SECONDS.
measure() {
    local before after
    before=$(awk '{print $14 + $15}' "/proc/$server/stat")
    sleep "$seconds"
    after=$(awk '{print $14 + $15}' "/proc/$server/stat")
    awk -v d="$((after - before))" -v t="$ticks" -v s="$seconds" 'BEGIN { printf "%.1f", d * 100 / t / s }'
}

sleep 1
idle=$(measure)
for _ in $(seq "$streams"); do
    curl -sN -H "Authorization: Bearer bench" "$base/v1/events/stream" >/dev/null &
    pids+=("$!")
done
sleep 2
open=$(ss -Htn state established "( sport = :$port )" | wc -l)
with_streams=$(measure)

echo "coffer:  $("$bin" --version 2>/dev/null || echo "$bin")"
echo "streams: $streams asked for, $open connections open on the server; ${seconds} s per measurement"
echo
echo "| server | CPU (% of one core) |"
echo "|---|---|"
echo "| no stream open | $idle |"
echo "| $streams idle streams | $with_streams |"
