#!/usr/bin/env bash
# Runs numgen's clients against a live server: the examples (examples/curl.sh, client.py,
# client.mjs) and a client generated from the OpenAPI document with openapi-python-client
# (PyPI), which registers a prefix and issues numbers (openapi/generated_client_test.py).
#
#   scripts/check-clients.sh [path/to/numgen]      (default: target/release/numgen)
#
# Starts the binary standalone (scripts/harness.sh: free loopback port, temporary data dir,
# random token; stopped by its PID on every exit path). The client is generated from the
# document the server serves (GET /openapi.json) into the temporary dir: nothing generated
# is committed, the document is the source.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-target/release/numgen}
case $bin in /*) ;; *) bin=$PWD/$bin ;; esac
cd "$ROOT"

. "$ROOT/scripts/harness.sh" clients
NUMGEN=$bin

die() {
    echo "check-clients.sh: $*" >&2
    exit 1
}

for tool in node python3 openapi-python-client; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done
[[ -x $NUMGEN ]] || die "$NUMGEN is not an executable (build it: cargo build --release)"

log=$WORK/numgen.log
start_numgen "$WORK/data" "$log"
echo "check-clients.sh: numgen (pid $PID) on http://$ADDR"
export NUMGEN_URL=http://$ADDR NUMGEN_TOKEN=$TOKEN

status=0
run() {
    echo "--- $*"
    "$@" || { echo "check-clients.sh: FAILED: $*" >&2; status=1; }
}
run bash examples/curl.sh
run python3 examples/client.py
run node examples/client.mjs

curl -sf "http://$ADDR/openapi.json" -o "$WORK/openapi.json"
(cd "$WORK" && openapi-python-client generate --path openapi.json --meta none \
    --output-path numgen_client >/dev/null) || die "openapi-python-client could not generate a client"
run python3 openapi/generated_client_test.py "$WORK"

kill -0 "$PID" 2>/dev/null || { echo "check-clients.sh: numgen died" >&2; status=1; }
if [[ $status -ne 0 ]]; then
    tail -n 30 "$log" >&2 || true
fi
exit "$status"
