#!/usr/bin/env bash
# Runs the hurl suites (hurl/*.hurl) against a freshly started numgen.
#
#   scripts/run-hurl.sh [path/to/numgen]      (default: target/release/numgen)
#
# Starts the binary standalone with scripts/harness.sh (`start_numgen`: a free loopback
# port, a temporary data dir, a random admin token, back once GET /ready answers 200),
# then runs
#   hurl --test --variable base=http://127.0.0.1:PORT --secret token=... hurl/*.hurl
# (`--secret`: a variable that hurl keeps out of its output). The harness stops the server
# by its PID on every exit path. Exits non-zero when hurl is missing, the server does not
# come up or dies during the run, or a suite fails; then the server log's last lines show.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-target/release/numgen}
case $bin in /*) ;; *) bin=$PWD/$bin ;; esac

. "$ROOT/scripts/harness.sh" hurl
NUMGEN=$bin
trap 'exit 130' INT
trap 'exit 143' TERM

die() {
    echo "run-hurl: $*" >&2
    exit 1
}

command -v hurl >/dev/null 2>&1 || die "hurl is not installed (https://hurl.dev)"
[[ -x $NUMGEN ]] || die "$NUMGEN is not an executable (build it: cargo build --release)"

log=$WORK/numgen.log
start_numgen "$WORK/data" "$log"
echo "run-hurl: numgen (pid $PID) on http://$ADDR"

status=0
hurl --test --variable "base=http://$ADDR" --secret "token=$TOKEN" "$ROOT"/hurl/*.hurl ||
    status=$?
if ! kill -0 "$PID" 2>/dev/null; then
    echo "run-hurl: numgen died during the run" >&2
    status=1
fi
if [[ $status -ne 0 ]]; then
    echo "run-hurl: last lines of the server log:" >&2
    tail -n 30 "$log" >&2 || true
fi
exit "$status"
