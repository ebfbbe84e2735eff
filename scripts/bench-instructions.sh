#!/usr/bin/env bash
# Instructions per request of two numgen binaries, counted by valgrind's callgrind: a
# figure that does not move with the load of a shared machine, where req/s and CPU time
# move by 10 % from one run to the next. For A/B checks of a change to the request path.
#
#   scripts/bench-instructions.sh BASE_BINARY [CANDIDATE_BINARY]
#
# CANDIDATE defaults to target/release/numgen (built unless SKIP_BUILD is set). Build a
# base from another commit with e.g. `git worktree add /tmp/base REV` and `cargo build
# --release` there. Each binary runs under callgrind with one tokio worker, standalone on
# a free loopback port; instrumentation is switched on only for a wrk run of DURATION
# (after a warm-up), so start-up and registration are not counted. Per path (a snowflake
# number, a sequence number, a batch of 64) the two binaries alternate ROUNDS times.
# Prints instructions per request of each run, the medians and candidate/base.
#
# Environment (defaults): DURATION=10s, ROUNDS=3, CONNS=4. Needs valgrind and wrk
# (installed when missing). Only the processes this script started are stopped.
set -euo pipefail

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-4}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
. "$ROOT/scripts/harness.sh" bench-instructions

[ $# -ge 1 ] || { echo "usage: $0 BASE_BINARY [CANDIDATE_BINARY]" >&2; exit 2; }
BASE=$(realpath "$1")
if [ $# -ge 2 ]; then
    CANDIDATE=$(realpath "$2")
else
    build --bin numgen
    CANDIDATE=$NUMGEN
fi
for bin in "$BASE" "$CANDIDATE"; do
    [ -x "$bin" ] || { echo "$bin is not an executable" >&2; exit 2; }
done
command -v wrk >/dev/null || apt_install wrk
command -v valgrind >/dev/null || apt_install valgrind

# measure NAME BINARY PATH: one run; appends instructions/request to $WORK/NAME.
measure() {
    local name=$1 bin=$2 path=$3 dir out requests total pid
    dir=$(mktemp -d "$WORK/run.XXXXXX")
    NUMGEN_ADMIN_TOKEN=$TOKEN NUMGEN_LOG_FORMAT=json RUST_LOG=warn,numgen::app=info \
        TOKIO_WORKER_THREADS=1 \
        valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$dir/callgrind.out" \
        "$bin" serve --listen 127.0.0.1:0 --data-dir "$dir/data" 2>"$dir/log" &
    pid=$!
    PIDS+=("$pid")
    ADDR=$(wait_listening "$dir/log" '"addr":"127\.0\.0\.1:[0-9]*"' "$pid")
    for _ in $(seq 1 600); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$ADDR/ready")" = 200 ] && break
        sleep 0.1
    done
    register ORDER '{"format":"ORDER-{year}-{SEQ:6}"}'
    register INVOICE '{"format":"INV-{year}-{SEQ:20}","mode":"sequence"}'
    wrk -t1 -c"$CONNS" -d2s "http://$ADDR$path" >/dev/null
    callgrind_control -i on "$pid" >/dev/null 2>&1
    out=$(wrk -t1 -c"$CONNS" -d"$DURATION" "http://$ADDR$path")
    callgrind_control -i off "$pid" >/dev/null 2>&1
    kill -TERM "$pid"
    wait "$pid" || true
    requests=$(awk '/ requests in / { print $1 }' <<<"$out")
    total=$(callgrind_annotate "$dir/callgrind.out" 2>/dev/null |
        awk '/PROGRAM TOTALS/ && !done { gsub(",", ""); print $1; done = 1 }')
    awk -v t="$total" -v n="$requests" 'BEGIN { printf "%.0f\n", t / n }' >>"$WORK/$name"
    printf '  %-22s %8s requests  %8s instructions/request\n' "$name" "$requests" \
        "$(tail -1 "$WORK/$name")"
    rm -rf "$dir"
}

echo "base      $BASE"
echo "candidate $CANDIDATE"
echo "callgrind, 1 tokio worker, wrk -c$CONNS for $DURATION per run, $ROUNDS rounds"
for shape in "snowflake /numbers/ORDER" "sequence /numbers/INVOICE" \
    "batch64 /numbers/ORDER?count=64"; do
    set -- $shape
    echo
    echo "== $1 ($2)"
    for _ in $(seq 1 "$ROUNDS"); do
        measure "base-$1" "$BASE" "$2"
        measure "candidate-$1" "$CANDIDATE" "$2"
    done
    b=$(median <"$WORK/base-$1")
    c=$(median <"$WORK/candidate-$1")
    awk -v b="$b" -v c="$c" 'BEGIN {
        printf "  median base %.0f, candidate %.0f instructions/request: candidate/base %.4f\n", b, c, c / b
    }'
done
