# Sourced by the scripts that build a private cluster and drive navcast-load
# at it (scale.sh, storm.sh), from the repository root.
#   need_tools NAME TOOL…  fails, naming the apt-get line, when a tool is missing
#   release_binaries       sets NODE_BIN and LOAD_BIN (building the release
#                          binaries unless both are given) and makes REPORT_DIR
#                          (default reports/)

need_tools() {
  local name=$1 tool
  shift
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "$name: $tool is missing: apt-get install -y $*" >&2; exit 1; }
  done
}

release_binaries() {
  if [ -z "${NODE_BIN:-}" ] || [ -z "${LOAD_BIN:-}" ]; then
    cargo build --release -q -p navcast -p navcast-load
  fi
  NODE_BIN=${NODE_BIN:-$PWD/target/release/navcast}
  LOAD_BIN=${LOAD_BIN:-$PWD/target/release/navcast-load}
  REPORT_DIR=${REPORT_DIR:-reports}
  mkdir -p "$REPORT_DIR"
}
