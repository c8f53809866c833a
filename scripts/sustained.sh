#!/usr/bin/env bash
# The sustained stage at time scale 1.0 through the local cluster (wss via
# nginx), sampling every node's RSS once a minute, so memory drift under a
# steady 1000 riders is visible. Reports go to reports/sustained-1000*.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p navcast -p navcast-load
trap 'kill $sampler 2>/dev/null || true; scripts/cluster.sh down >/dev/null 2>&1 || true' EXIT
scripts/cluster.sh up
mkdir -p reports
ulimit -n 20000 2>/dev/null || true
(
  while true; do
    line="$(date +%s)"
    for port in 9001 9002 9003; do
      rss=$(curl -s "http://127.0.0.1:$port/stats" | grep -o '"rss_bytes":[0-9]*' | cut -d: -f2)
      sessions=$(curl -s "http://127.0.0.1:$port/stats" | grep -o '"sessions":[0-9]*' | head -1 | cut -d: -f2)
      line+=" $port:rss_kib=$((rss / 1024)),sessions=$sessions"
    done
    echo "$line"
    sleep 60
  done
) > reports/sustained-1000_rss.log &
sampler=$!
./target/release/navcast-load run --host wss://127.0.0.1:8443 --ca-file .cluster/tls/cert.pem \
  --profile config/loadtest/sustained-1000.toml --time-scale 1.0 \
  --csv reports/sustained-1000 --html reports/sustained-1000.html --json reports/sustained-1000.json
status=$?
echo "node RSS samples (reports/sustained-1000_rss.log):"
cat reports/sustained-1000_rss.log
exit $status
