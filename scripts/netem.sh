#!/usr/bin/env bash
# A load test over a phone-like link: the cluster (Redis, 3 nodes, nginx) in
# one network namespace, navcast-load in another, joined by a veth pair
# whose both directions delay and drop packets: with the kernel's `tc
# netem` qdisc where the kernel has it, else with navcast-netem (the same
# delay, jitter and loss applied in user space to packets that iptables
# sends to NFQUEUE; it does not reorder). SHAPER=kernel|user forces one.
#   scripts/netem.sh 4g|3g|lossy|none [LOAD_PROFILE]      (as root)
# Link profiles, each direction: 4g 40 ms ± 15 ms, 0.2 % loss; 3g 150 ms
# ± 50 ms, 1 % loss; lossy 80 ms, 5 % loss; none: the same namespaces and
# veth without netem (the baseline). LOAD_PROFILE defaults to
# config/loadtest/step-1000.toml at TIME_SCALE (default 0.1). The latency
# thresholds are raised by what the link adds: one round trip per request
# (two jitters), three for a connect (TCP, TLS 1.3, upgrade). Reports go to
# reports/netem-<link>*. Then it times TLS reconnects to nginx over the
# link, full handshakes against resumed ones (navcast-bench tls,
# TLS_SAMPLES=30; 0 skips it). Only the namespaces' own addresses
# (10.77.0.1/2) are used; the namespaces go away on exit, ctrl-c included.
set -euo pipefail
cd "$(dirname "$0")/.."
LINK=${1:?usage: scripts/netem.sh 4g|3g|lossy [LOAD_PROFILE]}
LOAD=${2:-config/loadtest/step-1000.toml}
TIME_SCALE=${TIME_SCALE:-0.1}
case $LINK in
  4g) NETEM="delay 40ms 15ms loss 0.2%"; ONE_WAY=40; JITTER=15; LOSS=0.2 ;;
  3g) NETEM="delay 150ms 50ms loss 1%"; ONE_WAY=150; JITTER=50; LOSS=1 ;;
  lossy) NETEM="delay 80ms loss 5%"; ONE_WAY=80; JITTER=0; LOSS=5 ;;
  # The same two namespaces and veth without netem: the baseline.
  none) NETEM=""; ONE_WAY=0; JITTER=0; LOSS=0 ;;
  *) echo "netem: unknown link profile $LINK (4g, 3g, lossy, none)" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "netem: needs root (network namespaces, tc)" >&2; exit 1; }
for tool in ip tc openssl; do
  command -v "$tool" >/dev/null || { echo "netem: $tool is missing: apt-get install -y iproute2 openssl" >&2; exit 1; }
done
command -v modprobe >/dev/null && { modprobe sch_netem 2>/dev/null || true; }
SHAPER=${SHAPER:-auto}

SRV=ncsrv$$ CLI=nccli$$ SRV_IP=10.77.0.1 CLI_IP=10.77.0.2
WORK=$(mktemp -d)
SHAPER_PID= RMEM_RESTORE=
cleanup() {
  [ -n "$RMEM_RESTORE" ] && sysctl -qw net.core.rmem_default="$RMEM_RESTORE"
  if [ -n "$SHAPER_PID" ]; then
    kill "$SHAPER_PID" 2>/dev/null && wait "$SHAPER_PID" 2>/dev/null || true
    cat "$WORK/shaper.log" 2>/dev/null | grep -v ready || true
  fi
  ip netns exec "$SRV" env CLUSTER_DIR="$WORK/cluster" BIND=$SRV_IP scripts/cluster.sh down >/dev/null 2>&1 || true
  ip netns del "$SRV" 2>/dev/null || true
  ip netns del "$CLI" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cargo build --release -q -p navcast -p navcast-load --bins

ip netns add "$SRV"
ip netns add "$CLI"
ip link add "v$SRV" type veth peer name "v$CLI"
ip link set "v$SRV" netns "$SRV"
ip link set "v$CLI" netns "$CLI"
ip -n "$SRV" addr add $SRV_IP/24 dev "v$SRV"
ip -n "$CLI" addr add $CLI_IP/24 dev "v$CLI"
for ns in "$SRV" "$CLI"; do
  ip -n "$ns" link set lo up
  ip -n "$ns" link set "v$ns" up
done
# Which shaper: the kernel's netem qdisc if it has one.
if [ -n "$NETEM" ] && [ "$SHAPER" = auto ]; then
  # shellcheck disable=SC2086
  if ip netns exec "$CLI" tc qdisc add dev "v$CLI" root netem $NETEM 2>/dev/null; then
    ip netns exec "$CLI" tc qdisc del dev "v$CLI" root
    SHAPER=kernel
  else
    SHAPER=user
  fi
fi
if [ -n "$NETEM" ] && [ "$SHAPER" = kernel ]; then
  for ns in "$SRV" "$CLI"; do
    # Delay and loss on each side's way out: both directions of the link.
    # shellcheck disable=SC2086
    if ! ip netns exec "$ns" tc qdisc add dev "v$ns" root netem $NETEM; then
      echo "netem: this kernel ($(uname -r)) has no netem qdisc (CONFIG_NET_SCH_NETEM); run with SHAPER=user" >&2
      exit 1
    fi
  done
elif [ -n "$NETEM" ]; then
  command -v iptables >/dev/null || { echo "netem: iptables is missing: apt-get install -y iptables" >&2; exit 1; }
  # Both directions of the client's end go through navcast-netem: queue 0
  # what the client sends, queue 1 what it receives. Segmentation offload
  # is capped so a dropped packet is one segment, as on a radio link.
  ip -n "$CLI" link set "v$CLI" gso_max_segs 1 2>/dev/null || true
  ip -n "$SRV" link set "v$SRV" gso_max_segs 1 2>/dev/null || true
  # Real-time priority, as the kernel's qdisc would have: a shaper that
  # waits for a core while the load runs adds delay the profile lacks.
  rt=()
  command -v chrt >/dev/null && rt=(chrt -f 20)
  # The kernel hands the queued packets over a netlink socket whose buffer
  # is net.core.rmem_default (global, not per namespace; 208 KiB): a burst
  # of replies overflows it, and each message lost there is a packet
  # dropped beyond the profile's loss. The shaper's socket is created with
  # 8 MiB; the default is put back as soon as it is.
  rmem=$(sysctl -n net.core.rmem_default)
  RMEM_RESTORE=$rmem
  sysctl -qw net.core.rmem_default=8388608
  ip netns exec "$CLI" "${rt[@]}" ./target/release/navcast-netem --delay-ms "$ONE_WAY" --jitter-ms "$JITTER" \
    --loss-pct "$LOSS" --queues 0,1 >"$WORK/shaper.log" 2>&1 &
  SHAPER_PID=$!
  for _ in $(seq 100); do
    grep -q ready "$WORK/shaper.log" 2>/dev/null && break
    kill -0 "$SHAPER_PID" 2>/dev/null || { cat "$WORK/shaper.log" >&2; exit 1; }
    sleep 0.05
  done
  sysctl -qw net.core.rmem_default="$rmem"
  RMEM_RESTORE=
  grep -q ready "$WORK/shaper.log" || { echo "netem: navcast-netem did not start" >&2; exit 1; }
  ip netns exec "$CLI" iptables -t mangle -A OUTPUT -o "v$CLI" -j NFQUEUE --queue-num 0
  ip netns exec "$CLI" iptables -t mangle -A PREROUTING -i "v$CLI" -j NFQUEUE --queue-num 1
fi

# A certificate for the cluster's address on the link.
mkdir -p "$WORK/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$WORK/tls/key.pem" -out "$WORK/tls/cert.pem" -days 2 -subj "/CN=navcast-netem" \
  -addext "subjectAltName=IP:$SRV_IP" -addext "basicConstraints=critical,CA:FALSE" >/dev/null 2>&1

DESCRIBE="${NETEM:-no delay, no loss} each way"
[ -n "$NETEM" ] && DESCRIBE="$DESCRIBE, $SHAPER shaper"
echo "netem: link $LINK ($DESCRIBE); cluster in $SRV at $SRV_IP, client in $CLI"
ip netns exec "$SRV" env CLUSTER_DIR="$WORK/cluster" BIND=$SRV_IP \
  TLS_CERT="$WORK/tls/cert.pem" TLS_KEY="$WORK/tls/key.pem" \
  NODE_BIN="$PWD/target/release/navcast" scripts/cluster.sh up | tail -1

# What the link adds: a request waits one round trip (and up to two
# jitters); a connect three.
rtt=$(( 2 * ONE_WAY + 2 * JITTER ))
name=$(basename "$LOAD" .toml)
threshold() {
  local key=$1 added=$2 base
  base=$(sed -n "s/^$key *= *\([0-9.]*\).*/\1/p" "$LOAD" | head -1)
  if [ -n "$base" ]; then
    echo "--threshold $key=$(awk -v a="$base" -v b="$added" 'BEGIN { print a + b }')"
  fi
}
extra="$(threshold connect_p95_ms $((3 * rtt))) $(threshold start_navigation_p95_ms $rtt) \
$(threshold location_update_p95_ms $rtt) $(threshold reconnect_p95_ms $((3 * rtt)))"
mkdir -p reports
ulimit -n 20000 2>/dev/null || true
set +e
# shellcheck disable=SC2086
ip netns exec "$CLI" ./target/release/navcast-load run \
  --host "wss://$SRV_IP:8443" --ca-file "$WORK/tls/cert.pem" \
  --profile "$LOAD" --time-scale "$TIME_SCALE" --server-stats-every 0 \
  --network "$LINK: $DESCRIBE" $extra \
  --csv "reports/netem-$LINK-$name" --html "reports/netem-$LINK-$name.html" \
  --json "reports/netem-$LINK-$name.json"
status=$?
# A phone coming back: full TLS handshakes against resumed ones, through
# the same link to nginx.
if [ "${TLS_SAMPLES:-30}" -gt 0 ]; then
  ip netns exec "$CLI" ./target/release/navcast-bench tls --tls-addr "$SRV_IP:8443" \
    --ca-file "$WORK/tls/cert.pem" --count "${TLS_SAMPLES:-30}"
fi
set -e
echo "netem: reports in reports/netem-$LINK-$name*"
exit $status
