# shellcheck shell=bash
# What the scripts that start their own numgen share (bench-http.sh, bench-memory.sh,
# run-k6.sh). Sourced with the script's name once ROOT is set:
#
#   . "$ROOT/scripts/harness.sh" bench-http
#
# It sources deps.sh (apt_install, pip_install), makes WORK (a temporary dir removed on
# exit), installs protoc and curl when missing, and sets NUMGEN (the release binary) and
# TOKEN (a random admin token). Every process the script starts goes into PIDS; on exit
# they are stopped by PID (SIGTERM, then waited for), `harness_cleanup` runs if the
# script defined one, and WORK is removed.

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
NUMGEN=$TARGET_DIR/release/numgen
WORK=$(mktemp -d -t "numgen-${1:-harness}.XXXXXX")
PIDS=()
TOKEN=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')

_harness_exit() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if declare -F harness_cleanup >/dev/null; then harness_cleanup; fi
    rm -rf "$WORK"
}
trap _harness_exit EXIT

. "$ROOT/scripts/deps.sh"
command -v protoc >/dev/null || apt_install protobuf-compiler
command -v curl >/dev/null || apt_install curl

# build [cargo build args...]: a quiet release build, unless SKIP_BUILD is set.
build() {
    if [ -z "${SKIP_BUILD:-}" ]; then
        cargo build --release --quiet "$@"
    fi
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f MB", k / 1024 }'; }
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# wait_listening LOG PATTERN PID: prints the 127.0.0.1:PORT in the first match of PATTERN
# in LOG; fails, showing the log, when PID exits or about 10 s pass. Polls without a
# pause at first, so that start-up times keep a resolution of a few milliseconds.
wait_listening() {
    local log=$1 pattern=$2 pid=$3 addr n
    for n in $(seq 1 2000); do
        addr=$(grep -o "$pattern" "$log" 2>/dev/null | head -n1 | grep -o '127\.0\.0\.1:[0-9]*' || true)
        if [ -n "$addr" ]; then
            echo "$addr"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || break
        [ "$n" -gt 200 ] && sleep 0.005
    done
    echo "server (pid $pid) did not start; log:" >&2
    cat "$log" >&2
    return 1
}

# start_numgen DATA_DIR LOG [serve args...]: starts numgen on a free loopback port with
# TOKEN and JSON logs; returns once /ready answers 200, with PID and ADDR set.
start_numgen() {
    local dir=$1 log=$2 code="" n
    shift 2
    NUMGEN_ADMIN_TOKEN=$TOKEN NUMGEN_LOG_FORMAT=json RUST_LOG=${RUST_LOG:-warn,numgen::app=info} \
        "$NUMGEN" serve --listen 127.0.0.1:0 --data-dir "$dir" "$@" 2>"$log" &
    PID=$!
    PIDS+=("$PID")
    ADDR=$(wait_listening "$log" '"addr":"127\.0\.0\.1:[0-9]*"' "$PID")
    for n in $(seq 1 2000); do
        code=$(curl -s -o /dev/null -w '%{http_code}' "http://$ADDR/ready" || true)
        [ "$code" = 200 ] && return 0
        kill -0 "$PID" 2>/dev/null || break
        [ "$n" -gt 200 ] && sleep 0.005
    done
    echo "numgen (pid $PID) not ready (last /ready: ${code:-none}); log:" >&2
    cat "$log" >&2
    exit 1
}

# stop_numgen: SIGTERM to the numgen started last, and wait for it.
stop_numgen() {
    kill -TERM "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
}

# register KEY BODY: POST /prefix-configs/KEY on the numgen at ADDR; fails unless 200.
register() {
    local key=$1 body=$2 code
    code=$(curl -s -o "$WORK/reg.out" -w '%{http_code}' -X POST \
        -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
        --data "$body" "http://$ADDR/prefix-configs/$key")
    [ "$code" = 200 ] || { echo "registering $key: HTTP $code $(cat "$WORK/reg.out")" >&2; exit 1; }
}
