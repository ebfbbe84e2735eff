#!/usr/bin/env bash
# HTTP throughput and latency of numgen against a bare hyper server (issue "Performance").
#
# Builds release, starts numgen (temporary data dir, random admin token, free loopback
# port) and examples/bare_hyper.rs (the same connection builder, runtime and headers, a
# constant 85-byte body), registers a snowflake prefix and a sequence prefix, then runs wrk
# against each in turn, A B A B A B, so that noise from a shared machine falls on both
# sides alike. Prints every run, the medians of req/s and p99, and the ratios, plus the
# server's CPU time per request (from /proc/PID/stat), a steadier figure than req/s when
# other work shares the machine:
#
#   1. GET /numbers/{key}, snowflake, one number, JSON, vs bare hyper: CONNS connections
#      (target: req/s >= 0.85x bare, p99 <= 1.5x bare), then 1 connection.
#   2. sequence mode vs snowflake, same shape (target: >= 0.9x).
#   3. count=1000 batches, JSON and Accept: text/plain; numbers/s = req/s x 1000
#      (target: >= 2,000,000 numbers/s). One snowflake prefix can issue at most 4096
#      numbers per 1 ms unit (4,096,000/s), so the batch runs also spread over BATCH_KEYS
#      prefixes to show what the HTTP path itself sustains.
#
# Everything is on 127.0.0.1 and bounded in time. Only the processes this script started
# are stopped (trap on EXIT).
#
# Environment (defaults):
#   DURATION=10s      length of each wrk run
#   CONNS=64          connections of the main runs (the 1-connection runs are extra)
#   THREADS=1         wrk threads
#   ROUNDS=3          A/B pairs per comparison
#   WARMUP=2s         an unrecorded wrk run against each server first
#   BATCH_KEYS=64     prefixes of the spread batch runs (0 skips them)
#   SKIP_BUILD=1      use the binaries already in target/release
#   WORKERS=          tokio worker threads of both servers (TOKIO_WORKER_THREADS); unset:
#                     tokio's default, one per core, as src/main.rs runs. A diagnostic:
#                     with 1, the servers and wrk no longer share cores.
set -euo pipefail

DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-1}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-2s}
BATCH_KEYS=${BATCH_KEYS:-64}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# WORK, PIDS (stopped on exit), NUMGEN, TOKEN, start_numgen, register, median, build.
. "$ROOT/scripts/harness.sh" bench-http

command -v wrk >/dev/null || apt_install wrk

build --bin numgen --example bare_hyper
BARE=$TARGET_DIR/release/examples/bare_hyper

[ -n "${WORKERS:-}" ] && export TOKIO_WORKER_THREADS=$WORKERS
start_numgen "$WORK/data" "$WORK/numgen.log"
NUMGEN_PID=$PID
NG=$ADDR

"$BARE" 0 2>"$WORK/bare.log" &
BARE_PID=$!
PIDS+=("$BARE_PID")
BH=$(wait_listening "$WORK/bare.log" 'listening on 127\.0\.0\.1:[0-9]*' "$BARE_PID")

register ORDER '{"format":"ORDER-{year}-{SEQ:6}"}'
# Same rendered width as ORDER's snowflake numbers; its id is the short counter.
register INVOICE '{"format":"INV-{year}-{SEQ:20}","mode":"sequence"}'
for i in $(seq 1 "$BATCH_KEYS"); do
    register "BATCH$i" '{"format":"B-{year}-{SEQ:6}"}'
done

echo "numgen $NG (pid $NUMGEN_PID), bare hyper $BH (pid $BARE_PID)"
echo "samples: $(curl -s "http://$NG/numbers/ORDER")  $(curl -s "http://$NG/numbers/INVOICE")"
echo "         $(curl -s "http://$BH/numbers/ORDER")"
echo "wrk -t$THREADS --latency, $DURATION per run, $ROUNDS rounds; $(nproc) cores; tokio workers ${WORKERS:-default}; load $(cut -d' ' -f1-3 /proc/loadavg)"
echo

# Latency value from wrk ("481.00us", "3.82ms", "1.20s") in microseconds.
to_us() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) f = 1; else if (v ~ /ms$/) f = 1000; else if (v ~ /s$/) f = 1000000; else f = 1
        printf "%.0f", n * f
    }'
}

minmax() { sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.0f-%.0f", lo, hi }'; }

# CPU time (user + system, clock ticks) the process PID has used so far.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)

# run NAME CONNS URL [wrk args...]: one wrk run against the server the name is about
# (bare* = bare hyper, else numgen); appends "rps p99_us cpu_us_per_request" to $WORK/NAME.
# The server's CPU time per request is a steadier figure than req/s on a shared machine.
run() {
    local name=$1 conns=$2 url=$3
    shift 3
    local pid=$NUMGEN_PID out rps p99 errors requests t0 t1 cpu
    case "$name" in bare*) pid=$BARE_PID ;; esac
    t0=$(cpu_ticks "$pid")
    out=$(wrk -t"$THREADS" -c"$conns" -d"$DURATION" --latency "$@" "$url")
    t1=$(cpu_ticks "$pid")
    rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
    requests=$(awk '/ requests in / { print $1 }' <<<"$out")
    p99=$(to_us "$(awk '$1 == "99%" { print $2 }' <<<"$out")")
    cpu=$(awk -v d=$((t1 - t0)) -v t="$TICK" -v n="$requests" 'BEGIN { printf "%.2f", (n > 0) ? d / t / n * 1e6 : 0 }')
    errors=$(grep -E 'Non-2xx|Socket errors' <<<"$out" | tr -s ' ' | tr '\n' ';' || true)
    printf '  %-16s c=%-3s %10.0f req/s  p99 %7s us  server CPU %6s us/req  %s\n' \
        "$name" "$conns" "$rps" "$p99" "$cpu" "$errors"
    echo "$rps $p99 $cpu" >>"$WORK/$name"
}

# compare A_NAME A_URL B_NAME B_URL CONNS [wrk args...]: alternate, then medians and B/A.
compare() {
    local a=$1 ua=$2 b=$3 ub=$4 conns=$5
    shift 5
    rm -f "$WORK/$a" "$WORK/$b"
    for _ in $(seq 1 "$ROUNDS"); do
        run "$a" "$conns" "$ua" "$@"
        run "$b" "$conns" "$ub" "$@"
    done
    local ra rb pa pb ca cb
    ra=$(cut -d' ' -f1 "$WORK/$a" | median)
    rb=$(cut -d' ' -f1 "$WORK/$b" | median)
    pa=$(cut -d' ' -f2 "$WORK/$a" | median)
    pb=$(cut -d' ' -f2 "$WORK/$b" | median)
    ca=$(cut -d' ' -f3 "$WORK/$a" | median)
    cb=$(cut -d' ' -f3 "$WORK/$b" | median)
    for side in "$a $ra $pa $ca" "$b $rb $pb $cb"; do
        set -- $side
        printf '  median %-9s %10.0f req/s (%s)  p99 %s us (%s)  CPU %s us/req\n' "$1" "$2" \
            "$(cut -d' ' -f1 "$WORK/$1" | minmax)" "$3" "$(cut -d' ' -f2 "$WORK/$1" | minmax)" "$4"
    done
    awk -v ra="$ra" -v rb="$rb" -v pa="$pa" -v pb="$pb" -v ca="$ca" -v cb="$cb" -v a="$a" -v b="$b" 'BEGIN {
        printf "  ratio %s/%s: req/s %.3f  p99 %.2f  CPU per request %.2f\n", b, a, rb / ra, pb / pa, cb / ca
    }'
    echo
}

# report NAME FACTOR: median and range of req/s x FACTOR (numbers/s), and of p99.
report() {
    local name=$1 factor=$2 r
    r=$(cut -d' ' -f1 "$WORK/$name" | median)
    printf '  median %-19s %12.0f numbers/s (%s req/s; range %s)  p99 %s us (%s)\n' "$name" \
        "$(awk -v r="$r" -v f="$factor" 'BEGIN { print r * f }')" "$r" \
        "$(cut -d' ' -f1 "$WORK/$name" | minmax)" \
        "$(cut -d' ' -f2 "$WORK/$name" | median)" "$(cut -d' ' -f2 "$WORK/$name" | minmax)"
}

if [ "$WARMUP" != 0 ]; then
    for url in "http://$BH/numbers/ORDER" "http://$NG/numbers/ORDER" "http://$NG/numbers/INVOICE"; do
        wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" "$url" >/dev/null
    done
fi

echo "== 1. one snowflake number, JSON: numgen vs bare hyper =="
compare bare "http://$BH/numbers/ORDER" numgen "http://$NG/numbers/ORDER" "$CONNS"
if [ "$CONNS" != 1 ]; then
    echo "== 1b. the same over 1 connection =="
    compare bare-c1 "http://$BH/numbers/ORDER" numgen-c1 "http://$NG/numbers/ORDER" 1
fi

echo "== 2. sequence mode vs snowflake, one number, JSON =="
compare snowflake "http://$NG/numbers/ORDER" sequence "http://$NG/numbers/INVOICE" "$CONNS"

echo "== 3. batches of 1000 on one prefix (numbers/s = req/s x 1000; one prefix caps at 4,096,000/s) =="
rm -f "$WORK/batch-json" "$WORK/batch-text"
for _ in $(seq 1 "$ROUNDS"); do
    run batch-json "$CONNS" "http://$NG/numbers/ORDER?count=1000"
    run batch-text "$CONNS" "http://$NG/numbers/ORDER?count=1000" -H 'Accept: text/plain'
done
report batch-json 1000
report batch-text 1000
echo

if [ "$BATCH_KEYS" -gt 0 ]; then
    echo "== 3b. batches of 1000 spread over $BATCH_KEYS prefixes (bound by HTTP and rendering, not by a prefix) =="
    cat >"$WORK/spread.lua" <<EOF
local n = 0
request = function()
    n = n + 1
    return wrk.format(nil, "/numbers/BATCH" .. (n % $BATCH_KEYS + 1) .. "?count=1000")
end
EOF
    rm -f "$WORK/spread-json" "$WORK/spread-text"
    for _ in $(seq 1 "$ROUNDS"); do
        run spread-json "$CONNS" "http://$NG/" -s "$WORK/spread.lua"
        run spread-text "$CONNS" "http://$NG/" -s "$WORK/spread.lua" -H 'Accept: text/plain'
    done
    report spread-json 1000
    report spread-text 1000
    echo
fi

echo "numgen RSS after the runs: $(awk '/VmRSS/ { print $2 " " $3 }' "/proc/$NUMGEN_PID/status")"
