#!/usr/bin/env bash
# The hostile-client set of issue 11 against a release node on loopback:
# a ping (pong) flood from one client that never reads, 20 non-readers
# sending 64 KiB request_ids, a request flood from one client, 4000
# slowloris connections, and a login flood from one address while 20 other
# addresses log in. For each: node RSS growth (peak), what the node did to
# the attackers, and a neighbour rider's location_update latency during
# the attack. Starts its own node on 127.0.0.1:8091 per attack, stops it;
# every attack ends by itself within SECONDS.
#   SECONDS_PER_ATTACK=10 scripts/attack.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_ATTACK=${SECONDS_PER_ATTACK:-10}
ADDR=127.0.0.1:8091
export NAVCAST_JWT_SECRET=${NAVCAST_JWT_SECRET:-attack-secret-$(date +%s)-0123456789}
export NAVCAST_AUTH_SEED_FILE=""
# The default single-node setup: accounts and tokens in a state file.
STATE=$(mktemp -d)
export NAVCAST_STATE_DIR=$STATE

cargo build --release -q -p navcast -p navcast-load
node_pid=
start_node() {
  NAVCAST_LISTEN=$ADDR ./target/release/navcast --log-level warn >/dev/null 2>&1 &
  node_pid=$!
  for _ in $(seq 100); do curl -sf "http://$ADDR/ready" >/dev/null && return; sleep 0.1; done
  echo "node did not become ready" >&2; exit 1
}
stop_node() { [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null || true; node_pid=; }
trap 'stop_node; rm -rf "$STATE"' EXIT

run() {
  start_node
  ./target/release/navcast-bench --url "ws://$ADDR" attack "$1" --attackers "$2" \
    --seconds "$SECONDS_PER_ATTACK" --pid "$node_pid"
  stop_node
}
run pong-flood 1
run big-request-id 20
run frame-flood 1
run slowloris 4000
run login-flood 64
echo "refresh-token rotation (memory must stay flat):"
start_node
./target/release/navcast-bench --url "ws://$ADDR" refresh --count 300000 --pid "$node_pid"
stop_node
echo "pong flood with the rate limit lifted (only the write-buffer cap bounds it; the heartbeat is 60 s):"
NAVCAST_WS_RATE_PER_S=1000000000 NAVCAST_WS_RATE_BURST=1000000000 run pong-flood 1
