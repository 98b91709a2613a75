#!/usr/bin/env bash
# What a proxy in front of one api replica costs, measured in one run on one machine: `coffer
# bench` straight to `coffer serve`, through `coffer gateway` (rate limits on, raised above the
# load), and through nginx as a plain keep-alive reverse proxy. Two loads for each: single
# transfers (each answered after a commit) and `--reads` of one account (no commit, so the
# proxy's share is not hidden behind the store). The targets take turns in the order direct,
# gateway, nginx, nginx, gateway, direct, so that each has the same mean position in the run and
# drift of the machine or of the growing store does not favour one; each figure is the mean of
# its two runs. Prints requests/s, p50 and p99 against direct, and the CPU each process used, per
# second and per request. On a shared VM the hypervisor takes CPU from the guest ("steal") in
# bursts; that moves requests/s from run to run, while the CPU a process spends per request
# (which steal does not count) holds, so the summary gives both, with each proxy's CPU split into
# user space (its own code) and kernel (system calls and the loopback network they drive).
#
#   scripts/bench-gateway.sh                          # embedded store, 15 s per run
#   BENCH_SECONDS=30 BENCH_STORE=postgres scripts/bench-gateway.sh
#   BENCH_PROXY_CPUS=1 scripts/bench-gateway.sh       # the proxies on CPU 1, the rest elsewhere
#
# By default every process shares every core, so a proxy's CPU comes out of the replica's and
# the load generator's. With BENCH_PROXY_CPUS (a taskset CPU list) the proxies run on those CPUs
# and the replica and the load generator on the others, as when a gateway has a machine of its
# own: the ratio to direct then shows what a proxy adds to a replica's throughput and latency,
# not what it takes from its cores. nginx gets one worker per proxy CPU, as `auto` would on a
# machine of that size; the gateway's runtime sizes itself to the CPUs it may use.
#
# nginx comes from the Debian packages when /usr/sbin/nginx is missing (root or sudo needed); it
# runs from a temporary directory on a port of its own, not as the system service.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p coffer
bin=${CARGO_TARGET_DIR:-target}/release/coffer
seconds=${BENCH_SECONDS:-15}
store=${BENCH_STORE:-sqlite}
admin_url=${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
db=coffer_bench_gateway
nginx=/usr/sbin/nginx
token=bench-token
work=$(mktemp -d)
pids=()
# on_cpus WHOM: the taskset prefix that keeps the proxies (WHOM=proxy) or everything else
# (WHOM=rest) on their CPUs when BENCH_PROXY_CPUS is set, and nothing otherwise.
proxy_cpus=${BENCH_PROXY_CPUS:-}
if [ -n "$proxy_cpus" ]; then
  rest_cpus=$(python3 -c '
import os, sys
def cpus(spec):
    out = set()
    for part in spec.split(","):
        a, _, b = part.partition("-")
        out.update(range(int(a), int(b or a) + 1))
    return out
rest = sorted(os.sched_getaffinity(0) - cpus(sys.argv[1]))
if not rest: sys.exit("BENCH_PROXY_CPUS leaves no CPU for the replica and the load generator")
print(",".join(map(str, rest)))' "$proxy_cpus")
  proxy_workers=$(taskset -c "$proxy_cpus" nproc)
fi
on_cpus() {
  [ -z "$proxy_cpus" ] && return
  case $1 in proxy) echo taskset -c "$proxy_cpus" ;; rest) echo taskset -c "$rest_cpus" ;; esac
}
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  if [ "$store" = postgres ]; then psql "$admin_url" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ready() { # NAME PORT: wait until /readyz answers through that port
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$2/readyz" >/dev/null && return; sleep 0.1; done
  echo "$1 did not become ready" >&2; exit 1
}

if [ ! -x $nginx ]; then
  sudo=; [ "$(id -u)" -eq 0 ] || sudo=sudo
  apt_install() { $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null; }
  echo "installing nginx from the Debian packages" >&2
  apt_install nginx-light || apt_install nginx \
    || { $sudo apt-get update -q >/dev/null && { apt_install nginx-light || apt_install nginx; }; }
fi

# The replica and the gateway get the same store settings: the gateway checks bearer tokens
# against the store the replica serves.
case $store in
  sqlite) store_env=("COFFER_DATA_DIR=$work/data") ;;
  postgres)
    psql "$admin_url" -q -o /dev/null -c "SET client_min_messages = warning" \
      -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
    # PostgreSQL has no default webhook key: one made for this run, shared by the replicas.
    store_env=("COFFER_DATABASE_URL=${admin_url%/*}/$db"
      "COFFER_WEBHOOK_SECRET_KEYS=bench:$(head -c32 /dev/urandom | base64)") ;;
  *) echo "BENCH_STORE must be sqlite or postgres" >&2; exit 2 ;;
esac

# The api role alone: the relay and the worker would spend the cores catching up on the previous
# run's events during the next one, which would charge one target for another's load.
api_port=$(free_port)
env "${store_env[@]}" COFFER_BOOTSTRAP_TOKEN=$token COFFER_LOG_LEVEL=warn \
  $(on_cpus rest) "$bin" serve --listen "127.0.0.1:$api_port" --roles api >/dev/null &
api_pid=$!; pids+=("$api_pid")
ready replica "$api_port"

# Limits stay on (every request is counted against its key and its address) but sit far above
# what two cores can send. No Redis: each gateway limits on its own.
gateway_port=$(free_port)
env -u COFFER_REDIS_URL "${store_env[@]}" COFFER_LOG_LEVEL=warn \
  COFFER_GATEWAY__RATE_LIMIT_PER_SECOND=1000000 COFFER_GATEWAY__RATE_LIMIT_BURST=1000000 \
  COFFER_GATEWAY__IP_RATE_LIMIT_PER_SECOND=1000000 COFFER_GATEWAY__IP_RATE_LIMIT_BURST=1000000 \
  $(on_cpus proxy) "$bin" gateway --listen "127.0.0.1:$gateway_port" --upstreams "http://127.0.0.1:$api_port" >/dev/null &
gateway_pid=$!; pids+=("$gateway_pid")
ready gateway "$gateway_port"

# nginx as it is usually put in front of an HTTP/1.1 service: kept-alive upstream connections,
# no access log. Its defaults of 1,000 requests per connection (client and upstream side) are
# raised so that reconnections do not count against it; the load generator never reconnects
# to the others either.
nginx_port=$(free_port)
mkdir -p "$work/nginx"
cat > "$work/nginx/nginx.conf" <<EOF
worker_processes ${proxy_workers:-auto};
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  keepalive_requests 1000000;
  upstream coffer {
    server 127.0.0.1:$api_port;
    keepalive 128;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$nginx_port;
    location / {
      proxy_pass http://coffer;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
EOF
$(on_cpus proxy) $nginx -p "$work/nginx" -e "$work/nginx/error.log" -c "$work/nginx/nginx.conf" &
nginx_pid=$!; pids+=("$nginx_pid")
ready nginx "$nginx_port"

# cpu PID...: CPU ticks used so far by each PID with its live child processes (nginx's workers),
# by this shell's finished children (the load generator, once it has exited), then the machine's
# busy, total and stolen ticks, then the last PID's ticks in user space alone (the rest of its
# ticks are the kernel's: system calls and the loopback network stack they drive). What the
# machine spent beyond these, steal aside, was spent by something else.
cpu() {
  python3 - "$$" "$@" <<'PY'
import os, sys
procs = {}
for name in os.listdir("/proc"):
    try:
        procs[int(name)] = open(f"/proc/{name}/stat").read().rsplit(")", 1)[1].split()
    except (ValueError, OSError):
        pass
shell, pids = int(sys.argv[1]), map(int, sys.argv[2:])
own = lambda f: int(f[11]) + int(f[12])  # utime + stime
out = [sum(own(f) for p, f in procs.items() if pid in (p, int(f[1]))) for pid in pids]
out.append(int(procs[shell][13]) + int(procs[shell][14]))  # cutime + cstime
ticks = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
user = sum(int(f[11]) for p, f in procs.items() if int(sys.argv[-1]) in (p, int(f[1])))
print(*out, sum(ticks) - ticks[3] - ticks[4] - ticks[7], sum(ticks), ticks[7], user)
PY
}

results=$work/results.tsv
runs=0
# run LOAD TARGET PORT PROXY_PID [ARGS...]: one `coffer bench` run; prints its figures and the CPU
# the load generator, the replica, the proxy and everything else used (the run's setup included),
# and keeps its report for the summary.
run() {
  local load=$1 target=$2 port=$3 proxy=$4; shift 4
  runs=$((runs + 1))
  local report="$work/run-$runs.json"
  local before after began ended
  before=$(cpu "$api_pid" "${proxy:-$api_pid}"); began=$(date +%s.%N)
  $(on_cpus rest) "$bin" bench --url "http://127.0.0.1:$port" --token $token --seconds "$seconds" \
    --connections 64 --accounts 10000 --json "$@" > "$report"
  after=$(cpu "$api_pid" "${proxy:-$api_pid}"); ended=$(date +%s.%N)
  printf '%s\t%s\t%s\n' "$load" "$target" "$report" >> "$results"
  python3 - "$load" "$target" "$report" "$before" "$after" "$began" "$ended" "$(getconf CLK_TCK)" "$(nproc)" "$proxy" <<'PY'
import json, sys
load, target, path, before, after, began, ended, hz, cores, proxy = sys.argv[1:]
r = json.load(open(path))
d = [b - a for a, b in zip(map(int, before.split()), map(int, after.split()))]
wall = float(ended) - float(began)
pct = lambda ticks: f"{100 * ticks / int(hz) / wall:.0f} %"
replica, proxy_ticks, client = d[0], d[1] if proxy else 0, d[2]
scale = int(cores) * int(hz) * wall / d[4]  # machine ticks to this run's ticks
busy, steal = d[3] * scale, d[5] * scale
l = r["latency_ms"]
requests = r["requests_per_second"] * wall
per_request = lambda ticks: 1e6 * ticks / int(hz) / requests  # µs of CPU per request
print(f"{load:9} {target:7} {r['requests_per_second']:8.0f} req/s  p50 {l['p50']:6.2f} ms  p99 {l['p99']:6.2f} ms"
      f"  errors {r['errors']}  cpu: client {pct(client)}, replica {pct(replica)},"
      f" proxy {pct(proxy_ticks) if proxy else '-'}, other {pct(max(0, busy - client - replica - proxy_ticks))},"
      f" stolen {pct(steal)} (machine {pct(busy)} of {100 * int(cores)} %)")
json.dump({"replica_us": per_request(replica), "proxy_us": per_request(proxy_ticks) if proxy else None,
           "proxy_user_us": per_request(d[6]) if proxy else None,
           "stolen_pct": 100 * steal / int(hz) / wall}, open(path + ".cpu", "w"))
PY
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
echo "date:    $(date -u +%Y-%m-%dT%H:%MZ), $seconds s per run, 64 connections, 10,000 accounts"
echo "coffer:  $("$bin" --version), store $store$([ "$store" = postgres ] && echo " $(psql "$admin_url" -Atc 'SHOW server_version')")"
echo "nginx:   $($nginx -v 2>&1 | sed 's/^nginx version: //'), worker_processes ${proxy_workers:-auto}"
if [ -n "$proxy_cpus" ]; then
  echo "cpus:    proxies on $proxy_cpus, replica and load generator on $rest_cpus"
else
  echo "cpus:    every process on every core"
fi
echo "load:    $(cut -d' ' -f1 /proc/loadavg) (1-minute load average before the first run)"
echo "order:   direct, gateway, nginx, nginx, gateway, direct (per load); CPU includes each run's setup"
echo
for load in transfers reads; do
  flags=(); [ $load = reads ] && flags=(--reads)
  for target in direct gateway nginx nginx gateway direct; do
    case $target in
      direct) run $load direct "$api_port" "" "${flags[@]}" ;;
      gateway) run $load gateway "$gateway_port" "$gateway_pid" "${flags[@]}" ;;
      nginx) run $load nginx "$nginx_port" "$nginx_pid" "${flags[@]}" ;;
    esac
  done
done

echo
python3 - "$results" <<'PY'
import json, sys
runs = {}
for line in open(sys.argv[1]):
    load, target, path = line.rstrip("\n").split("\t")
    runs.setdefault((load, target), []).append(json.load(open(path)) | json.load(open(path + ".cpu")))
mean = lambda xs: sum(xs) / len(xs)
print("requests/s, p50, p99 and CPU per request: the mean of each target's runs (requests/s of each")
print("run in brackets); stolen: CPU the hypervisor took from the machine, in % of one core")
print()
print("| load | target | requests/s | p50 | p99 | errors | / direct | replica CPU/req | proxy CPU/req (user + kernel) | stolen |")
print("|---|---|---|---|---|---|---|---|---|---|")
for load in ("transfers", "reads"):
    direct = mean([r["requests_per_second"] for r in runs[(load, "direct")]])
    for target in ("direct", "gateway", "nginx"):
        rs = runs[(load, target)]
        rps = mean([r["requests_per_second"] for r in rs])
        each = ", ".join(f"{r['requests_per_second']:,.0f}" for r in rs)
        p50 = mean([r["latency_ms"]["p50"] for r in rs])
        p99 = mean([r["latency_ms"]["p99"] for r in rs])
        errors = sum(r["errors"] for r in rs)
        replica = mean([r["replica_us"] for r in rs])
        if target == "direct":
            proxy = "-"
        else:
            total, user = mean([r["proxy_us"] for r in rs]), mean([r["proxy_user_us"] for r in rs])
            proxy = f"{total:.1f} µs ({user:.1f} + {total - user:.1f})"
        stolen = mean([r["stolen_pct"] for r in rs])
        print(f"| {load} | {target} | {rps:,.0f} ({each}) | {p50:.2f} ms | {p99:.2f} ms | {errors} | {rps / direct:.2f}"
              f" | {replica:.1f} µs | {proxy} | {stolen:.0f} % |")
PY
