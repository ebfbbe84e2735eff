#!/usr/bin/env bash
# Memory and start-up time of a standalone numgen (issue "Performance", targets 5 and 6).
#
#   1. RSS idle: VmRSS from /proc/PID/status a moment after start (target <= 20 MB).
#   2. RSS after registering PREFIXES prefixes (every SEQ_EVERY-th one in sequence mode)
#      and issuing one number from each (target <= 64 MB with 10,000).
#   3. RSS sampled every SAMPLE_S seconds during a CONNS-connection wrk run of SOAK seconds
#      that rotates over all those prefixes (target: flat), and after it.
#   4. Start-up: from exec to the first 200 on /ready, median of STARTS starts, with a
#      fresh data dir and with the data dir holding the prefixes of step 2 (target
#      <= 100 ms). Polled with curl, so the resolution is a few milliseconds.
#
# Everything is on 127.0.0.1 and bounded in time; only the processes this script started
# are stopped (trap on EXIT).
#
# Environment (defaults): PREFIXES=10000 SEQ_EVERY=10 SOAK=300 SAMPLE_S=10 CONNS=64
# THREADS=1 STARTS=7 SKIP_BUILD (set: use target/release as it is).
set -euo pipefail

PREFIXES=${PREFIXES:-10000}
SEQ_EVERY=${SEQ_EVERY:-10}
SOAK=${SOAK:-300}
SAMPLE_S=${SAMPLE_S:-10}
CONNS=${CONNS:-64}
THREADS=${THREADS:-1}
STARTS=${STARTS:-7}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# WORK, PIDS (stopped on exit), NUMGEN, TOKEN, start_numgen, stop_numgen, median, build.
. "$ROOT/scripts/harness.sh" bench-memory

command -v wrk >/dev/null || apt_install wrk

build --bin numgen

# start DATA_DIR LOG: start_numgen, and START_MS, the time from exec until /ready is 200.
start() {
    local t0
    t0=$(now_ms)
    start_numgen "$1" "$2"
    START_MS=$(($(now_ms) - t0))
}

startups() {
    local label=$1 dir=$2 runs=() i
    for i in $(seq 1 "$STARTS"); do
        [ "$dir" = fresh ] && d="$WORK/fresh$i" || d=$dir
        start "$d" "$WORK/start.log"
        runs+=("$START_MS")
        stop_numgen
    done
    printf '  %-34s median %s ms (runs: %s)\n' "$label" \
        "$(printf '%s\n' "${runs[@]}" | median)" "${runs[*]}"
}

echo "== start-up: exec to first 200 on /ready =="
startups "fresh data dir" fresh
echo

echo "== 1. RSS idle =="
start "$WORK/data" "$WORK/numgen.log"
sleep 2
IDLE=$(rss_kb "$PID")
echo "  idle, no prefixes: $(mb "$IDLE") (pid $PID, $ADDR)"
echo

echo "== 2. RSS with $PREFIXES prefixes =="
# One curl process for all of them, over one kept-alive connection.
: >"$WORK/register.curl"
: >"$WORK/issue.curl"
for i in $(seq 1 "$PREFIXES"); do
    key=$(printf 'MEM%05d' "$i")
    if [ $((i % SEQ_EVERY)) -eq 0 ]; then
        body='{\"format\":\"INV-{yy}-{SEQ:8}\",\"mode\":\"sequence\"}'
    else
        body='{\"format\":\"ORD-{date}-{SEQ:6}\"}'
    fi
    # "next" separates entries: none after the last one.
    [ "$i" -gt 1 ] && sep='next\n' || sep=''
    printf "${sep}"'url = "http://%s/prefix-configs/%s"\nrequest = "POST"\nheader = "Authorization: Bearer %s"\nheader = "Content-Type: application/json"\ndata = "%s"\noutput = "/dev/null"\nwrite-out = "%%{http_code}\\n"\n' \
        "$ADDR" "$key" "$TOKEN" "$body" >>"$WORK/register.curl"
    printf "${sep}"'url = "http://%s/numbers/%s"\noutput = "/dev/null"\nwrite-out = "%%{http_code}\\n"\n' \
        "$ADDR" "$key" >>"$WORK/issue.curl"
done
t0=$(now_ms)
curl -s -K "$WORK/register.curl" | sort | uniq -c | sed 's/^/  register: HTTP /'
echo "  registered in $(($(now_ms) - t0)) ms; RSS $(mb "$(rss_kb "$PID")")"
t0=$(now_ms)
curl -s -K "$WORK/issue.curl" | sort | uniq -c | sed 's/^/  one number each: HTTP /'
echo "  issued in $(($(now_ms) - t0)) ms"
sleep 2
WITH=$(rss_kb "$PID")
echo "  RSS with $PREFIXES prefixes: $(mb "$WITH")"
echo

echo "== 3. RSS during a $CONNS-connection run of ${SOAK}s over all $PREFIXES prefixes =="
cat >"$WORK/rotate.lua" <<EOF
local n = 0
request = function()
    n = n + 1
    return wrk.format(nil, string.format("/numbers/MEM%05d", n % $PREFIXES + 1))
end
EOF
wrk -t"$THREADS" -c"$CONNS" -d"${SOAK}s" --latency -s "$WORK/rotate.lua" "http://$ADDR/" >"$WORK/wrk.out" &
WRK=$!
PIDS+=("$WRK")
samples=()
elapsed=0
while kill -0 "$WRK" 2>/dev/null && [ "$elapsed" -lt "$SOAK" ]; do
    sleep "$SAMPLE_S"
    elapsed=$((elapsed + SAMPLE_S))
    kill -0 "$WRK" 2>/dev/null || break
    kb=$(rss_kb "$PID")
    samples+=("$kb")
    printf '  t=%4ss  RSS %s  threads %s\n' "$elapsed" "$(mb "$kb")" \
        "$(awk '/^Threads:/ { print $2 }' "/proc/$PID/status")"
done
wait "$WRK" || true
grep -E 'Requests/sec|99%|Non-2xx|Socket errors' "$WORK/wrk.out" | sed 's/^ */  wrk: /'
if [ "${#samples[@]}" -gt 0 ]; then
    printf '%s\n' "${samples[@]}" | awk -v n="${#samples[@]}" '
        NR == 1 { first = $1; lo = $1; hi = $1 }
        { if ($1 < lo) lo = $1; if ($1 > hi) hi = $1; last = $1 }
        END { printf "  during the run: min %.1f MB, max %.1f MB, first %.1f MB, last %.1f MB (%d samples)\n",
              lo / 1024, hi / 1024, first / 1024, last / 1024, n }'
    echo "  median of the samples: $(mb "$(printf '%s\n' "${samples[@]}" | median)")"
fi
sleep 5
echo "  5 s after the run: $(mb "$(rss_kb "$PID")")"
stop_numgen
echo

echo "== start-up with the $PREFIXES prefixes in the data dir =="
startups "restart, $PREFIXES prefixes" "$WORK/data"
echo

echo "summary: idle $(mb "$IDLE") (target <= 20 MB); with $PREFIXES prefixes $(mb "$WITH") (target <= 64 MB)"
