#!/usr/bin/env bash
# The test suite: every unit and integration test of the workspace.
# Integration tests start real nodes on port 0 (and, where they need them,
# a real redis-server / nginx on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --workspace --locked "$@"
