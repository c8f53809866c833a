#!/usr/bin/env bash
# City-sized load through nginx on one machine (#14 §2): the city-100k
# profile (100 000 riders over 10 min, 10 % navigating, 1 % watched, 5 min
# hold) over wss through nginx to as many nodes as the open-file limit
# needs, with Redis, from as many navcast-load processes and source
# addresses as the limits need. Prints the report, then the RSS and CPU of
# each part and what each costs per session.
#   scripts/scale.sh [USERS] [TIME_SCALE]          (default 100000 1.0)
# The limits it plans around: a process may open 20 000 files; a proxied
# session holds two in one nginx worker (client and node); a node holds up
# to ~19 000 sessions; one source address reaches one nginx port ~28 000
# times (the ephemeral range), and past ~14 000 connections to one
# destination the kernel's source-port search gets expensive (Linux tries
# even ports first), so nginx reaches the nodes from several addresses. As root it raises nf_conntrack_max when
# the connection count needs it. The cluster is private to the run (own
# ports and directory) and is taken down on exit, ctrl-c included.
# Settings: SCALE_PORT_BASE=9600, REPORT_DIR=reports, NODE_BIN / LOAD_BIN,
# SCALE_KEEP=1 (keep the cluster's logs and the samples after the run).
# samples.txt has one line per 5 s (less at small time scales): time,
# sessions, nodes' RSS KiB, nginx's RSS KiB, then the kernel's TCP sockets
# in use, TIME_WAIT, and TCP memory in pages (/proc/net/sockstat; compare
# with net.ipv4.tcp_mem), then the CPU seconds so far of the nodes, of
# nginx's workers and of Redis. From those it prints the share of a core
# each part used over the hold, when the ramp's logins are over: the figure
# that says whether the machine, not the software, was the limit.
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${1:-100000}
TIME_SCALE=${2:-1.0}
SESSIONS=$(( USERS + USERS / 100 + 1 ))
# Nodes: at most 16 000 sessions each (headroom under ~19 000).
NODES=$(( (SESSIONS + 15999) / 16000 )); [ "$NODES" -lt 2 ] && NODES=2
# nginx: 18 000 connections per worker = 9 000 sessions, but the kernel
# spreads connections over the workers' reuseport sockets by hash, not
# evenly, and logins need connections too: plan 6 000 sessions a worker
# (at 8 600 a worker, one ran out of worker_connections and the upstreams
# were marked down).
WORKERS=$(( (SESSIONS + 5999) / 6000 )); [ "$WORKERS" -lt 2 ] && WORKERS=2
# Client processes: at most 16 000 sockets each.
PROCESSES=$(( (SESSIONS + 15999) / 16000 ))
# Source addresses: at most 20 000 connections each to nginx's port.
ADDRS=$(( (SESSIONS + 19999) / 20000 + 1 ))
# nginx's sources towards the nodes: at most ~5 000 connections from one
# address to one node, well under the ~14 000 where the kernel's search
# for a free source port starts to eat the CPU.
UPSTREAM_SOURCES=$(( (SESSIONS / NODES + 4999) / 5000 ))
PORTS=${SCALE_PORT_BASE:-9600}
WORK=$(mktemp -d)
export CLUSTER_DIR=$WORK/cluster NODES NODE_BASE_PORT=$((PORTS + 1)) REDIS_PORT=$((PORTS + 90)) \
  HTTP_PORT=$((PORTS + 80)) HTTPS_PORT=$((PORTS + 43)) NGINX_STATUS_PORT=$((PORTS + 81)) \
  NGINX_WORKERS=$WORKERS NGINX_WORKER_CONNECTIONS=18000 NGINX_UPSTREAM_SOURCES=$UPSTREAM_SOURCES \
  NAVCAST_AUTH_ARGON2_MEMORY_KIB=1024 NAVCAST_AUTH_ARGON2_ITERATIONS=1 \
  NAVCAST_WS_PING_INTERVAL=${SCALE_PING_INTERVAL:-60s} NAVCAST_WS_PONG_TIMEOUT=${SCALE_PONG_TIMEOUT:-85s}
# The bus topology (NAVCAST_BUS_TOPOLOGY, cluster.sh's default broadcast)
# and Redis's flags (REDIS_ARGS, e.g. "--auto-aof-rewrite-min-size 8gb" to
# keep the append-only file from being rewritten, a fork each time, during
# the run) pass through. The best of four full runs on the 2-core box was
# broadcast with Redis's default rewrites; targeted, or no rewrites, did
# worse there, within a run-to-run spread too wide to say which matters.
# The heartbeat of a city: a ping a minute per idle phone (SCALE_PING_INTERVAL;
# the node's default is 20 s). At 100 000 sessions 20 s means 5 000 pings
# and 5 000 pongs a second through TLS at nginx, more messages than the
# riders' updates; a minute is what phones' radios prefer, and stays under
# nginx's 90 s proxy_read_timeout.
cleanup() {
  scripts/cluster.sh down >/dev/null 2>&1 || true
  if [ "${SCALE_KEEP:-0}" = 1 ]; then
    echo "scale: logs and samples kept in $WORK (cluster/logs, samples.txt, load.log)"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=scripts/lib/run-env.sh
. scripts/lib/run-env.sh
need_tools scale redis-server nginx curl
release_binaries
ulimit -n 20000
if [ "$(id -u)" = 0 ] && [ -w /proc/sys/net/netfilter/nf_conntrack_max ]; then
  need=$(( SESSIONS * 3 ))
  have=$(cat /proc/sys/net/netfilter/nf_conntrack_max)
  [ "$have" -lt "$need" ] && echo "$need" > /proc/sys/net/netfilter/nf_conntrack_max
fi
echo "scale: $USERS riders ($SESSIONS sessions) at time scale $TIME_SCALE: $NODES nodes, nginx with $WORKERS workers, $PROCESSES client processes over 127.0.0.2-127.0.0.$((ADDRS + 1))"
NODE_BIN=$NODE_BIN scripts/cluster.sh up | tail -2

# The riders' accounts exist before the run, as a city's do: the ramp is
# riders logging in and connecting, not signing up.
echo "scale: provisioning $USERS riders' accounts (not measured)"
"$LOAD_BIN" provision --host "wss://127.0.0.1:$HTTPS_PORT" --ca-file "$CLUSTER_DIR/tls/cert.pem" \
  --profile config/loadtest/city-100k.toml --users "$USERS" --threads 2 \
  --provision-concurrency 64 --out "$WORK/accounts.json" > "$WORK/provision.log" 2>&1 \
  || { cat "$WORK/provision.log"; exit 1; }


stats=
for i in $(seq 1 "$NODES"); do stats+="${stats:+,}http://127.0.0.1:$((NODE_BASE_PORT + i - 1))"; done
cpu_of() { # pid → CPU seconds (user + system) of it and its children
  awk '{ print ($14 + $15 + $16 + $17) / 100 }' "/proc/$1/stat"
}
nginx_pids() { pgrep -P "$(cat "$CLUSTER_DIR/run/nginx.pid")"; }
cpu_sum() { # pids → their CPU seconds together
  local p total=0
  for p in "$@"; do
    total=$(awk -v a="$total" -v b="$(cpu_of "$p" 2>/dev/null || echo 0)" 'BEGIN { print a + b }')
  done
  echo "$total"
}
pids_in() { local f; for f in "$@"; do if [ -f "$f" ]; then cat "$f"; fi; done; }
# shellcheck disable=SC2046 # the pids are words
nodes_cpu() { cpu_sum $(pids_in "$CLUSTER_DIR"/run/node-*.pid); }
# shellcheck disable=SC2046
nginx_cpu() { cpu_sum $(nginx_pids); }
# shellcheck disable=SC2046
redis_cpu() { cpu_sum $(pids_in "$CLUSTER_DIR"/run/redis*.pid); }
before_nodes=$(nodes_cpu)
before_nginx=$(nginx_cpu)

# Peak RSS of the nodes and of nginx, and the CPU of each part, sampled
# while the run goes.
every=$(awk -v t="$TIME_SCALE" 'BEGIN { e = 30 * t; if (e > 5) e = 5; if (e < 1) e = 1; print e }')
sample() {
  while sleep "$every"; do
    local n=0 g=0
    for i in $(seq 1 "$NODES"); do n=$(( n + $(awk '/VmRSS/ { print $2 }' "/proc/$(cat "$CLUSTER_DIR/run/node-$i.pid")/status") )); done
    for p in $(nginx_pids) "$(cat "$CLUSTER_DIR/run/nginx.pid")"; do g=$(( g + $(awk '/VmRSS/ { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0) )); done
    local s=0
    for i in $(seq 1 "$NODES"); do
      s=$(( s + $(curl -s "http://127.0.0.1:$((NODE_BASE_PORT + i - 1))/stats" | grep -o '"sessions":[0-9]*' | head -1 | cut -d: -f2) ))
    done
    echo "$(date +%s) $s $n $g $(awk '/^TCP:/ { print $3, $7, $11 }' /proc/net/sockstat)" \
      "$(nodes_cpu) $(nginx_cpu) $(redis_cpu)"
  done
}
sample > "$WORK/samples.txt" &
SAMPLER=$!

set +e
"$LOAD_BIN" run --host "wss://127.0.0.1:$HTTPS_PORT" --ca-file "$CLUSTER_DIR/tls/cert.pem" \
  --accounts "$WORK/accounts.json" \
  --profile config/loadtest/city-100k.toml --users "$USERS" --time-scale "$TIME_SCALE" \
  --processes "$PROCESSES" --source-ips "127.0.0.2-127.0.0.$((ADDRS + 1))" \
  --stats-url "$stats" --server-stats-every 10 --quiet \
  --json "$REPORT_DIR/city-$USERS.json" --html "$REPORT_DIR/city-$USERS.html" \
  --csv "$REPORT_DIR/city-$USERS" > "$WORK/load.log" 2>&1
status=$?
set -e
kill "$SAMPLER" 2>/dev/null || true
# --quiet keeps the per-second progress lines out and prints the closing
# report only on a failed criterion (or the error); a passing run's report
# is printed from its JSON.
cat "$WORK/load.log"
if [ "$status" = 0 ]; then
  "$LOAD_BIN" merge "$REPORT_DIR/city-$USERS.json"
fi

after_nodes=$(nodes_cpu)
after_nginx=$(nginx_cpu)
# The sample with the most sessions: RSS per session of nodes and nginx.
peak=$(sort -k2 -n "$WORK/samples.txt" | tail -1)
read -r _ psessions pnodes pnginx _ <<< "${peak:-0 0 0 0}"
base_nodes=$(head -1 "$WORK/samples.txt" | awk '{ print $3 }')
python3 - "$REPORT_DIR/city-$USERS.json" "$psessions" "$pnodes" "$pnginx" "${base_nodes:-0}" \
  "$(awk -v a="$after_nodes" -v b="$before_nodes" 'BEGIN { print a - b }')" \
  "$(awk -v a="$after_nginx" -v b="$before_nginx" 'BEGIN { print a - b }')" "$WORK/samples.txt" <<'PY'
import json, sys
path, sessions, nodes_kib, nginx_kib, base_kib, nodes_cpu, nginx_cpu, samples = sys.argv[1:]
s = json.load(open(path))
sessions, nodes_kib, nginx_kib, base_kib = int(sessions), int(nodes_kib), int(nginx_kib), int(base_kib or 0)
c = s["client"]
per = lambda kib: f"{kib / max(sessions, 1):.1f} KiB"
print(f"scale: peak {sessions} sessions on the nodes")
print(f"scale: nodes RSS {nodes_kib / 1024:.0f} MiB ({per(nodes_kib)}/session; {per(nodes_kib - base_kib)}/session above the first sample), CPU {float(nodes_cpu):.0f} s")
print(f"scale: nginx RSS {nginx_kib / 1024:.0f} MiB ({per(nginx_kib)}/session), CPU {float(nginx_cpu):.0f} s")
print(f"scale: client RSS {c['peak_rss_bytes'] / 2**20:.0f} MiB ({per(c['peak_rss_bytes'] / 1024)}/session), CPU {c['cpu_s']:.0f} s over {c['processes']} processes")
# CPU over the last stage (the hold), as the run timed it, a few seconds in
# from each end: the ramp's logins and the closing of every session at the
# end are not in it.
hold = s["stages"][-1]
start = s["started_unix_ms"] / 1000
lo, hi = start + hold["start_s"] + 3, start + hold["end_s"] - 3
rows = [list(map(float, l.split())) for l in open(samples)]
rows = [r for r in rows if len(r) >= 10 and lo <= r[0] <= hi]
if len(rows) >= 2 and rows[-1][0] > rows[0][0]:
    d = rows[-1][0] - rows[0][0]
    share = lambda i: 100 * (rows[-1][i] - rows[0][i]) / d
    print(f"scale: CPU over the {hold['name']} ({d:.0f} s), % of one core: nodes {share(7):.1f}, nginx {share(8):.1f}, Redis {share(9):.1f} (the client reports its own above)")
PY
echo "scale: reports in $REPORT_DIR/city-$USERS.{json,html}"
exit $status
