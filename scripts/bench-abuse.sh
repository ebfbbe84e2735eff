#!/usr/bin/env bash
# What hostile clients can make numgen hold, and what an honest client sees meanwhile
# (issue 11, SPEC 7). Not a test: it prints figures and checks them against the targets.
#
# Builds release, starts numgen (temporary data dir, random admin token, free loopback
# port), registers a snowflake prefix, then:
#   1. an honest client alone: wrk, one connection, GET /numbers/K, for DURATION;
#   2. the attack (scripts/abuse.py, held for ATTACK_SECS): H2 HTTP/2 connections that
#      set a zero window and open 200 streams of ?count=10000 each and never read, plus
#      SILENT TCP connections that send nothing; each one the server closes is opened
#      again at once. Meanwhile the honest client runs again on its own connection;
#   3. the attackers leave; numgen's RSS is read again once its connections are gone
#      ("idle", 1 s after its open fds are back to the level before) and once the honest
#      client has run for DURATION again ("serving again").
# "Before" is read 1 s after the honest client's first DURATION run (after a 2 s warm-up),
# and "serving again" right after the same honest run: both sampled after the same warm-up.
# Each reading also prints numgen's threads and its anonymous memory (smaps_rollup).
# RSS (VmRSS) is sampled every 100 ms. Targets: peak RSS < 256 MiB; honest p99 < 10 ms;
# RSS after within 20% of before.
#
# Environment (defaults): DURATION=15s (each honest run), ATTACK_SECS=40, H2=100,
# SILENT=2000, SKIP_BUILD=1 to use target/release/numgen as it is. Everything is on
# 127.0.0.1 and bounded in time; only the processes this script started are stopped.
set -euo pipefail

DURATION=${DURATION:-15s}
ATTACK_SECS=${ATTACK_SECS:-40}
H2=${H2:-100}
SILENT=${SILENT:-2000}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# WORK, PIDS (stopped on exit), NUMGEN, start_numgen, register, rss_kb, mb, build.
. "$ROOT/scripts/harness.sh" bench-abuse

command -v wrk >/dev/null || apt_install wrk
python3 -c 'import h2' 2>/dev/null || pip_install h2
# 2,100 attacking sockets on this side, as many on numgen's (which inherits the limit).
ulimit -n "$(( (H2 + SILENT) * 2 + 1024 ))"

build --bin numgen
start_numgen "$WORK/data" "$WORK/numgen.log"
register K '{"format":"K-{SEQ:19}"}'
echo "numgen pid $PID at $ADDR; $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"

# Latency value from wrk ("481.00us", "3.82ms", "1.20s") in microseconds.
to_us() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.0f", v }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.0f", v * 1000 }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.0f", v * 1000000 }
        else print v }'
}

# honest NAME: one wrk connection for DURATION; prints req/s and p99, sets P99_US.
honest() {
    local out
    out=$(wrk -t1 -c1 -d"$DURATION" --latency "http://$ADDR/numbers/K")
    P99_US=$(to_us "$(awk '$1 == "99%" { print $2 }' <<<"$out")")
    printf '  %-22s %8.0f req/s  p50 %s  p99 %s us  %s\n' "$1" \
        "$(awk '/^Requests\/sec/ { print $2 }' <<<"$out")" \
        "$(awk '$1 == "50%" { print $2 }' <<<"$out")" "$P99_US" \
        "$(grep -o 'Non-2xx.*\|Socket errors.*' <<<"$out" | tr '\n' ' ')"
}

open_fds() { ls "/proc/$PID/fd" | wc -l; }
threads() { ls "/proc/$PID/task" | wc -l; }
# Where the resident memory is: anonymous (heap, stacks) and file-backed (the binary).
smaps() { awk '/^(Anonymous|Rss|Private_Dirty):/ { printf "%s %d kB  ", $1, $2 }' "/proc/$PID/smaps_rollup"; }

# Warm up, then the level before.
wrk -t1 -c1 -d2s "http://$ADDR/numbers/K" >/dev/null
honest "honest, alone"
P99_ALONE=$P99_US
sleep 1
BEFORE=$(rss_kb "$PID")
FDS_BEFORE=$(open_fds)
echo "  RSS before: $(mb "$BEFORE") ($FDS_BEFORE open fds, $(threads) threads; $(smaps))"

# RSS samples every 100 ms until the sampler is stopped.
( while kill -0 "$PID" 2>/dev/null; do rss_kb "$PID"; sleep 0.1; done ) >"$WORK/rss" 2>/dev/null &
SAMPLER=$!
PIDS+=("$SAMPLER")

echo "== attack: $H2 zero-window HTTP/2 connections x 200 streams of 10,000, $SILENT silent TCP, ${ATTACK_SECS}s"
python3 "$ROOT/scripts/abuse.py" 127.0.0.1 "${ADDR##*:}" --key K --h2 "$H2" --silent "$SILENT" \
    --seconds "$ATTACK_SECS" >"$WORK/abuse.out" 2>&1 &
ATTACKER=$!
PIDS+=("$ATTACKER")
for _ in $(seq 1 600); do
    grep -q ready "$WORK/abuse.out" && break
    kill -0 "$ATTACKER" 2>/dev/null || { cat "$WORK/abuse.out" >&2; exit 1; }
    sleep 0.1
done
grep -q ready "$WORK/abuse.out" || { echo "the attackers did not connect" >&2; exit 1; }
echo "  attackers connected; numgen has $(open_fds) open fds, $(threads) threads, RSS $(mb "$(rss_kb "$PID")")"
honest "honest, under attack"
P99_ATTACK=$P99_US
wait "$ATTACKER" || true
echo "  attackers: $(tail -n1 "$WORK/abuse.out")"

# After: wait (bounded) until numgen has closed the attackers' connections.
for _ in $(seq 1 300); do
    [ "$(open_fds)" -le $((FDS_BEFORE + 2)) ] && break
    sleep 0.1
done
sleep 1
kill "$SAMPLER" 2>/dev/null || true
wait "$SAMPLER" 2>/dev/null || true
AFTER_IDLE=$(rss_kb "$PID")
echo "  RSS after, idle: $(mb "$AFTER_IDLE") ($(open_fds) open fds, $(threads) threads; $(smaps))"
PEAK=$(sort -n "$WORK/rss" | tail -n1)
HWM=$(awk '/^VmHWM:/ { print $2 }' "/proc/$PID/status")
# RSS once honest traffic has resumed is the level the service keeps; the target compares
# it with "before". (numgen collects freed memory when its connections fall: src/http/memory.rs.)
honest "honest, after"
AFTER=$(rss_kb "$PID")
echo "  RSS after, serving again: $(mb "$AFTER") ($(open_fds) open fds, $(threads) threads; $(smaps))"

echo "== result"
echo "  RSS before $(mb "$BEFORE"), peak during $(mb "$PEAK") (VmHWM $(mb "$HWM")), after: idle $(mb "$AFTER_IDLE"), serving again $(mb "$AFTER") ($(open_fds) open fds)"
echo "  honest p99: alone $P99_ALONE us, under attack $P99_ATTACK us"
ok=1
check() { if eval "$1"; then echo "  ok    $2"; else echo "  MISSED $2"; ok=0; fi; }
check "[ $PEAK -lt $((256 * 1024)) ]" "peak RSS < 256 MiB"
check "[ $P99_ATTACK -lt 10000 ]" "honest p99 under attack < 10 ms"
check "[ $((AFTER * 10)) -le $((BEFORE * 12)) ]" "RSS after within 20% of before"
[ "$ok" = 1 ] || exit 1
