#!/usr/bin/env bash
# Runs numgen standalone (embedded store in ./data, 127.0.0.1:8080 unless told otherwise).
# Installs protoc first when missing (the etcd client's build needs it). Extra arguments go
# to `numgen serve`, e.g. scripts/serve.sh --listen 127.0.0.1:9000 --data-dir /tmp/numgen
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
ensure_build_deps
exec cargo run --release --quiet -- serve "$@"
