#!/usr/bin/env bash
# Node micro-benchmarks (issue 2): RSS per idle session and location_update
# round trips at fixed rates. Starts its own release node on 127.0.0.1:8090,
# prints the figures, stops the node. Everything stays on loopback and ends
# by itself.
#   SESSIONS=10000 RATES=5000,10000,20000,25000,30000 SECONDS_PER_STEP=10 scripts/bench-node.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SESSIONS=${SESSIONS:-10000}
RATES=${RATES:-5000,10000,20000,25000,30000}
SECONDS_PER_STEP=${SECONDS_PER_STEP:-10}
CONNECTIONS=${CONNECTIONS:-1000}
ADDR=127.0.0.1:8090
export NAVCAST_JWT_SECRET=${NAVCAST_JWT_SECRET:-bench-secret-$(date +%s)-0123456789}
ulimit -n 20000

cargo build --release -q -p navcast -p navcast-load
node_pid=
start_node() {
  # In memory (no state file), and no per-address cap on connections being
  # set up: the bench is one address opening thousands of sessions.
  NAVCAST_LISTEN=$ADDR NAVCAST_WS_RATE_PER_S=1000 NAVCAST_WS_RATE_BURST=1000 \
  NAVCAST_STATE_DIR="" NAVCAST_HTTP_MAX_PENDING_PER_ADDRESS=100000 \
    ./target/release/navcast --log-level warn &
  node_pid=$!
  for _ in $(seq 100); do curl -sf "http://$ADDR/ready" >/dev/null && return; sleep 0.1; done
  echo "node did not become ready" >&2; exit 1
}
stop_node() { [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null || true; node_pid=; }
trap stop_node EXIT

echo "== idle sessions =="
start_node
./target/release/navcast-bench --url "ws://$ADDR" idle --sessions "$SESSIONS" --pid "$node_pid"
stop_node

echo "== location_update round trips =="
start_node
./target/release/navcast-bench --url "ws://$ADDR" rtt --connections "$CONNECTIONS" --rates "$RATES" --seconds "$SECONDS_PER_STEP"
echo "node CPU time (s) and RSS (KiB):"; ps -o time=,rss= -p "$node_pid"
