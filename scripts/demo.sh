#!/usr/bin/env bash
# The main job, on a fresh Debian machine: install what is missing, build,
# start a local cluster (Redis + 3 nodes + nginx with TLS), run the
# step-1000 load test at time scale 0.1 (150 s) over wss through nginx,
# write the CSV/HTML/JSON reports to reports/, print the pass/fail table,
# and stop the cluster. Exit code: the load test's (0 = every criterion met).
# With MONITORING=1 the cluster also runs Prometheus and the exporters, the
# load client serves its live measures to it, and every dashboard panel's
# query is printed (as of the end of the run) before the cluster stops.
#   PROFILE=config/loadtest/step-1000.toml TIME_SCALE=0.1 [MONITORING=1] scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-config/loadtest/step-1000.toml}
TIME_SCALE=${TIME_SCALE:-0.1}
name=$(basename "$PROFILE" .toml)

scripts/install-deps.sh

echo "demo: building (release)"
cargo build --release -q -p navcast -p navcast-load
trap 'scripts/cluster.sh down >/dev/null 2>&1 || true' EXIT
scripts/cluster.sh up
mkdir -p reports
ulimit -n 20000 2>/dev/null || true
echo "demo: $name at time scale $TIME_SCALE through nginx (wss)"
# nginx keeps /stats private: the client reads each node's own /stats
# (sessions and memory for the report) on the node ports.
stats=
for i in $(seq 1 "${NODES:-3}"); do
  stats+="${stats:+,}http://${BIND:-127.0.0.1}:$(( ${NODE_BASE_PORT:-9001} + i - 1 ))"
done
metrics=()
[ "${MONITORING:-0}" = 1 ] && metrics=(--metrics-listen "127.0.0.1:${LOAD_METRICS_PORT:-9464}")
set +e
./target/release/navcast-load run \
  --host "wss://127.0.0.1:${HTTPS_PORT:-8443}" --ca-file .cluster/tls/cert.pem \
  --stats-url "$stats" "${metrics[@]}" \
  --profile "$PROFILE" --time-scale "$TIME_SCALE" \
  --csv "reports/$name" --html "reports/$name.html" --json "reports/$name.json"
status=$?
set -e
if [ "${MONITORING:-0}" = 1 ]; then
  # As of a few seconds before the end: the client's series go stale once
  # it has stopped serving them.
  echo "demo: the dashboard's queries (reports/$name-dashboard.txt)"
  AT=$(( $(date +%s) - 3 )) scripts/dashboard-queries.py "http://127.0.0.1:${PROM_PORT:-9090}" \
    | tee "reports/$name-dashboard.txt" || true
fi
echo "demo: reports in reports/$name*.csv, reports/$name.html, reports/$name.json"
exit $status
