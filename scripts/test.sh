#!/usr/bin/env bash
# The test suite: every unit and integration test of the workspace, after
# installing what it needs when missing (scripts/install-deps.sh --tests).
# Integration tests start real nodes on port 0 (and, where they need them,
# a real redis-server / nginx on loopback). The last line sums up all of
# cargo's per-binary results.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --tests
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
