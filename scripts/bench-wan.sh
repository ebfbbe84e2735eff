#!/usr/bin/env bash
# Sequence latency over a WAN, and strict mode at speed (issue 12).
#
# Starts etcd and numgen (cluster mode) on 127.0.0.1, random free ports, temporary dirs.
# Registers a sequence prefix and a strict sequence prefix, and runs, each after a WARMUP
# run that lets the block sizing see the round trip and the rate,
#
#   wrk -t2 -c64 -d15s on the sequence prefix, then on the strict prefix,
#
# first with numgen straight on etcd ("lan"), then with a second numgen behind
# scripts/delay-proxy.py, which adds DELAY/2 ms each way, for each added round trip in
# DELAYS (default "0 50" ms). The proxy is Python and costs CPU and latency of its own, so
# the LAN figures are taken without it.
#
# Prints each run (req/s, p50, p99, non-2xx) and the ratios the issue asks for: sequence
# p99 with DELAY vs 0 through the proxy (target <= 1.5x); strict vs sequence req/s on the
# same numgen (target >= 0.3x and strict p99 <= 20 ms on lan). Not part of scripts/test.sh
# (about 2 minutes); SMOKE=1 makes every run 2 s for a quick check that the script works.
#
# Environment (defaults): DELAYS="0 50", DURATION=15s, WARMUP=3s, CONNS=64, THREADS=2,
# SKIP_BUILD=1 to use target/release/numgen as it is.
# Everything is on 127.0.0.1 and bounded in time; only the processes this script started
# are stopped (by PID, on exit).
set -euo pipefail

DELAYS=${DELAYS:-0 50}
DURATION=${DURATION:-15s}
WARMUP=${WARMUP:-3s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
if [ -n "${SMOKE:-}" ]; then
    DURATION=2s
    WARMUP=1s
fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# WORK, PIDS (stopped on exit), NUMGEN, TOKEN, start_numgen, register, build.
. "$ROOT/scripts/harness.sh" bench-wan

command -v wrk >/dev/null || apt_install wrk
command -v etcd >/dev/null || apt_install etcd-server
build --bin numgen

read -r ETCD_PORT PEER_PORT < <(python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
etcd --name wan --data-dir "$WORK/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
    --initial-cluster "wan=http://127.0.0.1:$PEER_PORT" >"$WORK/etcd.log" 2>&1 &
PIDS+=("$!")
for n in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$ETCD_PORT/health" >/dev/null && break
    [ "$n" = 100 ] && { echo "etcd did not become healthy" >&2; tail -20 "$WORK/etcd.log" >&2; exit 1; }
    sleep 0.1
done

echo 0 >"$WORK/delay"
python3 scripts/delay-proxy.py --upstream "127.0.0.1:$ETCD_PORT" \
    --delay-file "$WORK/delay" --port-file "$WORK/proxy.port" 2>"$WORK/proxy.log" &
PIDS+=("$!")
for n in $(seq 1 100); do
    [ -s "$WORK/proxy.port" ] && break
    [ "$n" = 100 ] && { echo "the delay proxy did not start" >&2; cat "$WORK/proxy.log" >&2; exit 1; }
    sleep 0.05
done
PROXY_PORT=$(cat "$WORK/proxy.port")

# start_on ENDPOINT LABEL: numgen (cluster mode) on the etcd at ENDPOINT, prefixes
# registered (the first time; the store keeps them).
start_on() {
    start_numgen "$WORK/data-$2" "$WORK/numgen-$2.log" \
        --etcd-endpoints "http://$1" --etcd-root /bench-wan
    if [ ! -e "$WORK/registered" ]; then
        register SEQ '{"format":"SEQ-{SEQ:12}","mode":"sequence"}'
        register STRICT '{"format":"STR-{SEQ:12}","mode":"sequence","strict":true}'
        touch "$WORK/registered"
    fi
    echo "numgen $ADDR -> $1 ($2)"
    echo "samples: $(curl -s "http://$ADDR/numbers/SEQ")  $(curl -s "http://$ADDR/numbers/STRICT")"
}

# Latency value from wrk ("481.00us", "3.82ms", "1.20s") in microseconds.
to_us() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) f = 1; else if (v ~ /ms$/) f = 1000; else if (v ~ /s$/) f = 1000000; else f = 1
        printf "%.0f", n * f
    }'
}

# run NAME KEY: one measured wrk run after a warm-up; sets RPS and P99 (us) and appends a
# table row "NAME rps p50 p99".
run() {
    local name=$1 key=$2 out rps p50 p99 bad
    wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" "http://$ADDR/numbers/$key" >/dev/null
    out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "http://$ADDR/numbers/$key")
    rps=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out")
    p50=$(to_us "$(awk '$1 == "50%" { print $2 }' <<<"$out")")
    p99=$(to_us "$(awk '$1 == "99%" { print $2 }' <<<"$out")")
    bad=$(awk '/Non-2xx/ { print $NF }' <<<"$out")
    printf '  %-12s %9s req/s  p50 %8s us  p99 %8s us  non-2xx %s\n' "$name" "$rps" "$p50" "$p99" "${bad:-0}"
    echo "$name $rps $p50 $p99" >>"$WORK/table"
}

echo "wrk -t$THREADS -c$CONNS -d$DURATION --latency (after a $WARMUP warm-up); $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
echo

# LAN: numgen straight on etcd (the strict target is judged here).
start_on "127.0.0.1:$ETCD_PORT" lan
echo "LAN, no proxy:"
run seq@lan SEQ
run strict@lan STRICT
stop_numgen
echo

# WAN: the same through the delay proxy, at each added round trip.
start_on "127.0.0.1:$PROXY_PORT" proxy
for d in $DELAYS; do
    # The proxy adds half of the round trip each way.
    awk -v d="$d" 'BEGIN { print d / 2 }' >"$WORK/delay"
    sleep 0.3 # the proxy reads the file every 100 ms
    echo "through the proxy, added round trip ${d} ms:"
    run "seq@$d" SEQ
    run "strict@$d" STRICT
done

echo
echo "| run | req/s | p50 | p99 |"
echo "|---|---|---|---|"
awk '{ printf "| %s | %d | %.2f ms | %.2f ms |\n", $1, $2, $3 / 1000, $4 / 1000 }' "$WORK/table"
echo
awk '
    { rps[$1] = $2; p99[$1] = $4; split($1, a, "@"); d[a[2]] = 1 }
    END {
        for (x in d) {
            if (("strict@" x) in rps && ("seq@" x) in rps && rps["seq@" x] > 0)
                printf "strict / sequence req/s at %s: %.3fx (target >= 0.3x, p99 <= 20 ms on lan)\n", x, rps["strict@" x] / rps["seq@" x]
            if (x != 0 && x != "lan" && ("seq@0" in p99) && ("seq@" x) in p99 && p99["seq@0"] > 0)
                printf "sequence p99 at +%s ms / at 0: %.2fx (target <= 1.5x)\n", x, p99["seq@" x] / p99["seq@0"]
        }
    }' "$WORK/table" | sort
cat "$WORK"/numgen-*.log | grep -c '"level":"WARN"' | xargs -I{} echo "numgen warnings: {}"
