#!/usr/bin/env bash
# Tests a live numgen against its own OpenAPI document with schemathesis (PyPI), a tool
# nobody here wrote: every check (status codes, content types, headers, response schemas,
# positive and negative data, missing headers, unsupported methods, ignored auth, ...),
# every phase (examples, coverage, fuzzing, stateful: register -> issue -> decode ->
# history -> delete through the document's links), with the admin token.
#
#   scripts/schemathesis.sh [path/to/numgen]      (default: target/release/numgen)
#
# Starts the binary standalone (scripts/harness.sh: free loopback port, temporary data dir,
# random token), registers the prefixes the document's examples name (ORDERS, snowflake;
# invoice.eu-1, sequence), reads the document from the server (GET /openapi.json: what a
# client gets), and runs
#   schemathesis --config-file openapi/schemathesis.toml run http://ADDR/openapi.json
#     --checks all --seed SEED --max-examples MAX_EXAMPLES -H 'Authorization: Bearer ...'
# What the config narrows, and why, is in README.md ("API (OpenAPI)"). The seed is fixed
# so that a run is repeatable (SEED=random for a fresh one); the server is stopped by its
# PID on every exit path. Reports (JUnit, and the failures as pytest reproductions) go to
# target/schemathesis/.
#
# Environment: SEED (13), MAX_EXAMPLES (40), LIMIT (seconds, 900: the run is killed after
# it, a bound reached only when something hangs; a normal run takes one to two minutes).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-target/release/numgen}
case $bin in /*) ;; *) bin=$PWD/$bin ;; esac
cd "$ROOT"

. "$ROOT/scripts/harness.sh" schemathesis
NUMGEN=$bin
SEED=${SEED:-13}
MAX_EXAMPLES=${MAX_EXAMPLES:-40}
LIMIT=${LIMIT:-900}
REPORTS=${REPORTS:-$TARGET_DIR/schemathesis}

die() {
    echo "schemathesis.sh: $*" >&2
    exit 1
}

command -v schemathesis >/dev/null 2>&1 || die "schemathesis is not installed (pip install schemathesis)"
[[ -x $NUMGEN ]] || die "$NUMGEN is not an executable (build it: cargo build --release)"

log=$WORK/numgen.log
start_numgen "$WORK/data" "$log"
echo "schemathesis.sh: numgen (pid $PID) on http://$ADDR"
register ORDERS '{"format":"ORDER-{yy}{month}-{SEQ:19}","mode":"snowflake"}'
register invoice.eu-1 '{"format":"INV-{year}-{SEQ:6}","mode":"sequence","initial_seq":1000}'

seed=(--seed "$SEED")
[[ $SEED == random ]] && seed=()
mkdir -p "$REPORTS"
status=0
timeout "$LIMIT" schemathesis --config-file openapi/schemathesis.toml run "http://$ADDR/openapi.json" \
    --checks all --exclude-checks use_after_free --workers 1 "${seed[@]}" --max-examples "$MAX_EXAMPLES" \
    --header "Authorization: Bearer $TOKEN" \
    --report junit,pytest --report-dir "$REPORTS" --output-sanitize true ||
    status=$?
if ! kill -0 "$PID" 2>/dev/null; then
    echo "schemathesis.sh: numgen died during the run" >&2
    status=1
fi
# No request may get a 500 or kill a worker (SPEC 3.5): the server log must not show one.
if grep -q '"level":"ERROR"' "$log"; then
    echo "schemathesis.sh: the server logged errors:" >&2
    grep '"level":"ERROR"' "$log" | tail -n 20 >&2
    status=1
fi
if [[ $status -ne 0 ]]; then
    echo "schemathesis.sh: last lines of the server log:" >&2
    tail -n 30 "$log" >&2 || true
fi
exit "$status"
