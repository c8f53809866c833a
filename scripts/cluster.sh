#!/usr/bin/env bash
# A local navcast cluster: redis-server, N nodes and nginx (HTTP + HTTPS),
# all on loopback, with pids, logs and generated config under .cluster/.
#   scripts/cluster.sh up|down|status
# Settings (environment, defaults shown):
#   NODES=3 NODE_BASE_PORT=9001 REDIS_PORT=6380 HTTP_PORT=8080 HTTPS_PORT=8443
#   NGINX_WORKERS=2 NGINX_WORKER_CONNECTIONS=9000 (a worker carries half as
#   many wss sessions: each holds the client's and the node's connection)
#   NGINX_UPSTREAM_SOURCES=0 (N > 0: nginx reaches the nodes from 127.0.1.1 …
#   127.0.1.N; past ~14 000 connections from one address to one node the
#   kernel's source-port search costs nginx its CPU)
#   MONITORING=1 also starts Prometheus (Debian package `prometheus`)
#   scraping the nodes, Redis (prometheus-redis-exporter), nginx
#   (stub_status through prometheus-nginx-exporter) and a running
#   navcast-load (`--metrics-listen 127.0.0.1:$LOAD_METRICS_PORT`), with the
#   rules of monitoring/alerts.yml; its data lives in $CLUSTER_DIR/prometheus.
#   PROM_PORT=9090 REDIS_EXPORTER_PORT=9121 NGINX_EXPORTER_PORT=9113
#   NGINX_STATUS_PORT=8081 LOAD_METRICS_PORT=9464 PROM_SCRAPE=5s
#   BIND=127.0.0.1 CLUSTER_DIR=.cluster NAVCAST_BUS_TOPOLOGY=broadcast
#   REDIS_ARGS: more redis-server flags for the single Redis (e.g.
#   "--auto-aof-rewrite-min-size 8gb").
#   REDIS_SHARDS=0: one redis-server on REDIS_PORT. REDIS_SHARDS=N (≥ 1)
#   runs a Redis Cluster instead: N masters and N replicas on ports
#   REDIS_PORT … REDIS_PORT+2N-1 (cluster bus ports 10000 higher), each
#   with its append-only file; the nodes get NAVCAST_REDIS_MODE=
#   cluster, every server as a seed, and the targeted bus (sharded pub/sub).
#   TLS_CERT/TLS_KEY (default: a generated dev certificate)
#   NODE_BIN (default: target/release/navcast, built when missing or stale)
#   LOGIN_LIMITS=load (default) lifts the per-address login limits: the load
#   client logs in thousands of riders from one loopback address; set
#   LOGIN_LIMITS=default to run the nodes with production's limits.
# `up` is idempotent (running parts are kept), waits until every part is
# ready and prints the URLs; `down` stops only what `up` started.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
NODES=${NODES:-3}
NODE_BASE_PORT=${NODE_BASE_PORT:-9001}
REDIS_PORT=${REDIS_PORT:-6380}
REDIS_SHARDS=${REDIS_SHARDS:-0}
HTTP_PORT=${HTTP_PORT:-8080}
HTTPS_PORT=${HTTPS_PORT:-8443}
NGINX_STATUS_PORT=${NGINX_STATUS_PORT:-8081}
PROM_PORT=${PROM_PORT:-9090}
REDIS_EXPORTER_PORT=${REDIS_EXPORTER_PORT:-9121}
NGINX_EXPORTER_PORT=${NGINX_EXPORTER_PORT:-9113}
LOAD_METRICS_PORT=${LOAD_METRICS_PORT:-9464}
BIND=${BIND:-127.0.0.1}
CLUSTER_DIR=${CLUSTER_DIR:-.cluster}
mkdir -p "$CLUSTER_DIR"
DIR=$(cd "$CLUSTER_DIR" && pwd)
RUN=$DIR/run LOGS=$DIR/logs TMP=$DIR/tmp TLS=$DIR/tls
BIN=${NODE_BIN:-$ROOT/target/release/navcast}

# A process counts as alive when it exists and is not a zombie (a killed
# daemon whose parent has not reaped it yet must be started again).
alive() {
  [ -f "$1" ] || return 1
  local pid
  pid=$(cat "$1")
  kill -0 "$pid" 2>/dev/null || return 1
  ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}

need() {
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v nginx >/dev/null || missing+=(nginx)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v curl >/dev/null || missing+=(curl)
  if [ "${MONITORING:-0}" = 1 ]; then
    command -v prometheus >/dev/null || missing+=(prometheus)
    command -v prometheus-redis-exporter >/dev/null || missing+=(prometheus-redis-exporter)
    command -v prometheus-nginx-exporter >/dev/null || missing+=(prometheus-nginx-exporter)
  fi
  if ((${#missing[@]})); then
    echo "cluster: missing ${missing[*]}; install with: apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
}

wait_for() { # url what [curl args]
  local url=$1 what=$2; shift 2
  for _ in $(seq 150); do
    curl -sf "$@" "$url" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "cluster: $what did not become ready ($url); see $LOGS" >&2
  return 1
}

redis_cluster_ports() {
  seq "$REDIS_PORT" $((REDIS_PORT + 2 * REDIS_SHARDS - 1))
}

# A Redis Cluster of REDIS_SHARDS masters, each with one replica; every
# server with its append-only file in its own directory. Created once: a
# cluster that is up and healthy is kept.
redis_cluster_up() {
  if [ "${NAVCAST_BUS_TOPOLOGY:-targeted}" != targeted ]; then
    echo "cluster: REDIS_SHARDS needs the targeted bus (NAVCAST_BUS_TOPOLOGY=targeted): broadcast is classic pub/sub, copied to every shard" >&2
    exit 2
  fi
  command -v redis-cli >/dev/null || { echo "cluster: redis-cli missing: apt-get install -y redis-tools" >&2; exit 1; }
  local p
  for p in $(redis_cluster_ports); do
    alive "$RUN/redis-$p.pid" && continue
    mkdir -p "$DIR/redis-cluster/$p"
    redis-server --bind 127.0.0.1 --port "$p" --save "" \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
      --appendonly yes --appendfsync everysec \
      --dir "$DIR/redis-cluster/$p" --daemonize yes --pidfile "$RUN/redis-$p.pid" \
      --logfile "$LOGS/redis-$p.log" >/dev/null
  done
  for p in $(redis_cluster_ports); do
    for _ in $(seq 100); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
  done
  if ! redis-cli -p "$REDIS_PORT" cluster info | grep -q '^cluster_state:ok'; then
    local ports; ports=($(redis_cluster_ports))
    if [ "$(redis-cli -p "$REDIS_PORT" cluster info | grep '^cluster_known_nodes:' | tr -dc 0-9)" = 1 ]; then
      # Joined by hand (redis-cli --cluster create wants 3 masters or
      # more): slots split evenly over the masters, everyone meets the
      # first server, the server after the masters follows master i.
      local i
      for i in $(seq 0 $((REDIS_SHARDS - 1))); do
        redis-cli -p "${ports[$i]}" cluster addslotsrange $((i * 16384 / REDIS_SHARDS)) $(((i + 1) * 16384 / REDIS_SHARDS - 1)) >/dev/null
      done
      for p in "${ports[@]:1}"; do redis-cli -p "$p" cluster meet 127.0.0.1 "$REDIS_PORT" >/dev/null; done
      for p in "${ports[@]}"; do
        for _ in $(seq 100); do
          [ "$(redis-cli -p "$p" cluster info | grep '^cluster_known_nodes:' | tr -dc 0-9)" = $((2 * REDIS_SHARDS)) ] && break
          sleep 0.1
        done
      done
      for i in $(seq 0 $((REDIS_SHARDS - 1))); do
        local id; id=$(redis-cli -p "${ports[$i]}" cluster myid)
        for _ in $(seq 100); do
          [ "$(redis-cli -p "${ports[$((REDIS_SHARDS + i))]}" cluster replicate "$id")" = OK ] && break
          sleep 0.1
        done
      done
    fi
    local ok=0
    for _ in $(seq 150); do
      ok=1
      for p in "${ports[@]}"; do
        redis-cli -p "$p" cluster info | grep -q '^cluster_state:ok' || { ok=0; break; }
      done
      [ $ok = 1 ] && break
      sleep 0.2
    done
    [ $ok = 1 ] || { echo "cluster: the Redis Cluster did not reach cluster_state:ok (see $LOGS/redis-*.log)" >&2; exit 1; }
  fi
}

up() {
  need
  mkdir -p "$RUN" "$LOGS" "$TMP" "$DIR/redis"
  if [ -z "${NODE_BIN:-}" ] && { [ ! -x "$BIN" ] || [ -n "$(find src data Cargo.toml -newer "$BIN" -print -quit 2>/dev/null)" ]; }; then
    echo "cluster: building navcast (release)"
    cargo build --release -q -p navcast
  fi
  [ -s "$DIR/jwt_secret" ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$DIR/jwt_secret"
  chmod 600 "$DIR/jwt_secret"

  local redis_env=(NAVCAST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT)
  if [ "$REDIS_SHARDS" -gt 0 ]; then
    redis_cluster_up
    local seeds=""
    for p in $(redis_cluster_ports); do seeds+="${seeds:+,}redis://127.0.0.1:$p"; done
    redis_env=(NAVCAST_REDIS_URL="$seeds" NAVCAST_REDIS_MODE=cluster NAVCAST_BUS_TOPOLOGY=targeted)
  elif ! alive "$RUN/redis.pid"; then
    # Append-only file, fsynced every second, in a directory that outlives
    # the process: what Redis acknowledged more than ~1 s before a crash
    # survives it (accounts, refresh tokens, shares, routes).
    # shellcheck disable=SC2086 # REDIS_ARGS is a list of redis-server flags
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" \
      --appendonly yes --appendfsync everysec \
      --dir "$DIR/redis" --daemonize yes --pidfile "$RUN/redis.pid" \
      --logfile "$LOGS/redis.log" ${REDIS_ARGS:-} >/dev/null
    for _ in $(seq 50); do alive "$RUN/redis.pid" && break; sleep 0.1; done
  fi
  ulimit -n 20000 2>/dev/null || true
  for i in $(seq 1 "$NODES"); do
    local port=$((NODE_BASE_PORT + i - 1))
    alive "$RUN/node-$i.pid" && continue
    local limits=()
    if [ "${LOGIN_LIMITS:-load}" = load ]; then
      limits=(NAVCAST_AUTH_ATTEMPTS_PER_ADDRESS=100000000 NAVCAST_AUTH_HASHES_PER_ADDRESS=100000)
    fi
    # nginx (on loopback) names the client in X-Real-IP; trust only it.
    env "${limits[@]}" NAVCAST_HTTP_TRUSTED_PROXIES=127.0.0.1 \
    NAVCAST_NODE_ID=node-$i NAVCAST_LISTEN=$BIND:$port \
      "${redis_env[@]}" \
      NAVCAST_JWT_SECRET=$(cat "$DIR/jwt_secret") NAVCAST_LOG_FORMAT=json \
      nohup "$BIN" >"$LOGS/node-$i.log" 2>&1 &
    echo $! > "$RUN/node-$i.pid"
  done

  local cert=${TLS_CERT:-$TLS/cert.pem} key=${TLS_KEY:-$TLS/key.pem}
  [ -n "${TLS_CERT:-}" ] || scripts/dev-cert.sh "$TLS" >/dev/null
  local upstreams="" sources=""
  for i in $(seq 1 "$NODES"); do
    upstreams+="        server $BIND:$((NODE_BASE_PORT + i - 1)) max_fails=2 fail_timeout=5s;"$'\n'
  done
  # NGINX_UPSTREAM_SOURCES=N: nginx connects to the nodes from 127.0.1.1 …
  # 127.0.1.N, one per client connection (see the template); 0 = the
  # kernel's choice of one address.
  local n=${NGINX_UPSTREAM_SOURCES:-0}
  if [ "$n" -gt 0 ]; then
    for i in $(seq 1 $((n - 1))); do
      sources+="        $(awk -v n="$n" 'BEGIN { printf "%.2f", 100 / n }')% 127.0.1.$i;"$'\n'
    done
    sources+="        * 127.0.1.$n;"$'\n'
  else
    sources='        * "";'$'\n'
  fi
  sed -e "s#@@RUN@@#$RUN#g" -e "s#@@LOGS@@#$LOGS#g" -e "s#@@TMP@@#$TMP#g" \
      -e "s#@@BIND@@#$BIND#g" -e "s#@@HTTP_PORT@@#$HTTP_PORT#g" \
      -e "s#@@HTTPS_PORT@@#$HTTPS_PORT#g" -e "s#@@TLS_CERT@@#$cert#g" \
      -e "s#@@TLS_KEY@@#$key#g" -e "s#@@WORKERS@@#${NGINX_WORKERS:-2}#g" \
      -e "s#@@STATUS_LISTEN@@#127.0.0.1:$NGINX_STATUS_PORT#g" \
      -e "s#@@WORKER_CONNECTIONS@@#${NGINX_WORKER_CONNECTIONS:-9000}#g" nginx/navcast.conf.template \
    | awk -v ups="$upstreams" -v src="$sources" '/@@UPSTREAMS@@/ { printf "%s", ups; next } /@@UPSTREAM_SOURCES@@/ { printf "%s", src; next } { print }' \
    > "$DIR/nginx.conf"
  nginx -t -q -c "$DIR/nginx.conf" -p "$DIR" -g "error_log $LOGS/nginx-error.log;"
  if alive "$RUN/nginx.pid"; then
    nginx -s reload -c "$DIR/nginx.conf" -p "$DIR"
  else
    nginx -c "$DIR/nginx.conf" -p "$DIR"
  fi

  for i in $(seq 1 "$NODES"); do
    wait_for "http://$BIND:$((NODE_BASE_PORT + i - 1))/ready" "node-$i"
  done
  wait_for "http://$BIND:$HTTP_PORT/health" "nginx (http)"
  wait_for "https://$BIND:$HTTPS_PORT/health" "nginx (https)" --cacert "$cert"
  [ "${MONITORING:-0}" = 1 ] && monitoring_up
  local redis_desc="redis 127.0.0.1:$REDIS_PORT"
  [ "$REDIS_SHARDS" -gt 0 ] && redis_desc="redis cluster of $REDIS_SHARDS shards on 127.0.0.1:$REDIS_PORT…$((REDIS_PORT + 2 * REDIS_SHARDS - 1))"
  echo "cluster up: $redis_desc, $NODES nodes on $BIND:$NODE_BASE_PORT…"
  echo "  wss://$BIND:$HTTPS_PORT/api/v1/ws/{user_id}   (CA file: $cert)"
  echo "  https://$BIND:$HTTPS_PORT/api/v1/auth/login"
  echo "  http://$BIND:$HTTP_PORT/health"
  for i in $(seq 1 "$NODES"); do
    echo "  node-$i: http://$BIND:$((NODE_BASE_PORT + i - 1))/stats  /metrics"
  done
  if [ "${MONITORING:-0}" = 1 ]; then
    echo "  prometheus: http://127.0.0.1:$PROM_PORT  (alerts: /alerts; a load run scraped at 127.0.0.1:$LOAD_METRICS_PORT)"
  fi
}

# Prometheus and the two exporters, each started only when not running.
monitoring_up() {
  mkdir -p "$DIR/prometheus"
  if ! alive "$RUN/redis-exporter.pid"; then
    nohup prometheus-redis-exporter -redis.addr "redis://127.0.0.1:$REDIS_PORT" \
      -web.listen-address "127.0.0.1:$REDIS_EXPORTER_PORT" >"$LOGS/redis-exporter.log" 2>&1 &
    echo $! > "$RUN/redis-exporter.pid"
  fi
  if ! alive "$RUN/nginx-exporter.pid"; then
    nohup prometheus-nginx-exporter -nginx.scrape-uri "http://127.0.0.1:$NGINX_STATUS_PORT/stub_status" \
      -web.listen-address "127.0.0.1:$NGINX_EXPORTER_PORT" >"$LOGS/nginx-exporter.log" 2>&1 &
    echo $! > "$RUN/nginx-exporter.pid"
  fi
  local nodes=""
  for i in $(seq 1 "$NODES"); do
    nodes+="${nodes:+, }'$BIND:$((NODE_BASE_PORT + i - 1))'"
  done
  cat > "$DIR/prometheus.yml" <<EOF
# Generated by scripts/cluster.sh (MONITORING=1).
global:
  scrape_interval: ${PROM_SCRAPE:-5s}
  evaluation_interval: ${PROM_SCRAPE:-5s}
rule_files:
  - $ROOT/monitoring/alerts.yml
scrape_configs:
  - job_name: navcast
    static_configs:
      - targets: [$nodes]
  - job_name: redis
    static_configs:
      - targets: ['127.0.0.1:$REDIS_EXPORTER_PORT']
  - job_name: nginx
    static_configs:
      - targets: ['127.0.0.1:$NGINX_EXPORTER_PORT']
  - job_name: navcast-load
    static_configs:
      - targets: ['127.0.0.1:$LOAD_METRICS_PORT']
EOF
  promtool check config "$DIR/prometheus.yml" >/dev/null
  if alive "$RUN/prometheus.pid"; then
    kill -HUP "$(cat "$RUN/prometheus.pid")"
  else
    nohup prometheus --config.file "$DIR/prometheus.yml" --storage.tsdb.path "$DIR/prometheus" \
      --storage.tsdb.retention.time 2d --web.listen-address "127.0.0.1:$PROM_PORT" \
      >"$LOGS/prometheus.log" 2>&1 &
    echo $! > "$RUN/prometheus.pid"
  fi
  wait_for "http://127.0.0.1:$PROM_PORT/-/ready" "prometheus"
  wait_for "http://127.0.0.1:$REDIS_EXPORTER_PORT/metrics" "prometheus-redis-exporter"
  wait_for "http://127.0.0.1:$NGINX_EXPORTER_PORT/metrics" "prometheus-nginx-exporter"
}

stop_pid() { # pidfile name
  if alive "$1"; then
    local pid; pid=$(cat "$1")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    echo "stopped $2"
  fi
  rm -f "$1"
}

down() {
  stop_pid "$RUN/prometheus.pid" prometheus
  stop_pid "$RUN/nginx-exporter.pid" prometheus-nginx-exporter
  stop_pid "$RUN/redis-exporter.pid" prometheus-redis-exporter
  stop_pid "$RUN/nginx.pid" nginx
  for f in "$RUN"/node-*.pid; do
    [ -e "$f" ] && stop_pid "$f" "$(basename "$f" .pid)"
  done
  stop_pid "$RUN/redis.pid" redis
  for f in "$RUN"/redis-[0-9]*.pid; do
    [ -e "$f" ] && stop_pid "$f" "$(basename "$f" .pid)"
  done
  return 0
}

status() {
  local rc=0 line
  for f in "$RUN"/redis.pid "$RUN"/redis-[0-9]*.pid "$RUN"/node-*.pid "$RUN"/nginx.pid "$RUN"/prometheus.pid \
           "$RUN"/redis-exporter.pid "$RUN"/nginx-exporter.pid; do
    [ -e "$f" ] || continue
    local name; name=$(basename "$f" .pid)
    if alive "$f"; then line="$name: running (pid $(cat "$f"))"; else line="$name: dead"; rc=1; fi
    if [[ $name == node-* ]] && alive "$f"; then
      local port=$((NODE_BASE_PORT + ${name#node-} - 1))
      local s; s=$(curl -s "http://$BIND:$port/stats" || true)
      line+=" ready=$(curl -s -o /dev/null -w '%{http_code}' "http://$BIND:$port/ready" || true) sessions=$(echo "$s" | grep -o '"sessions":[0-9]*' | head -1 | cut -d: -f2 || true)"
    fi
    echo "$line"
  done
  [ -n "$(ls "$RUN" 2>/dev/null)" ] || { echo "cluster: not running"; rc=3; }
  return $rc
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: scripts/cluster.sh up|down|status" >&2; exit 2 ;;
esac
