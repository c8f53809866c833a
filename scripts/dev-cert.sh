#!/usr/bin/env bash
# Makes a self-signed development certificate for 127.0.0.1 / localhost.
#   scripts/dev-cert.sh DIR   → DIR/cert.pem, DIR/key.pem (kept if present)
# For real certificates, skip this and point TLS_CERT/TLS_KEY
# (cluster.sh) or the compose volume at your files.
set -euo pipefail
dir=${1:?usage: scripts/dev-cert.sh DIR}
command -v openssl >/dev/null || { echo "openssl is missing: apt-get install -y openssl" >&2; exit 1; }
mkdir -p "$dir"
if [ -s "$dir/cert.pem" ] && [ -s "$dir/key.pem" ]; then exit 0; fi
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$dir/key.pem" -out "$dir/cert.pem" -days 365 \
  -subj "/CN=navcast-dev" \
  -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
  -addext "basicConstraints=critical,CA:FALSE" >/dev/null 2>&1
chmod 600 "$dir/key.pem"
echo "dev certificate: $dir/cert.pem (self-signed; clients need it as CA file)"
