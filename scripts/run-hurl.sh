#!/usr/bin/env bash
# Runs the hurl suites (hurl/*.hurl) against a freshly started numgen.
#
#   scripts/run-hurl.sh [path/to/numgen]      (default: target/release/numgen)
#
# Starts the binary standalone on a free loopback port (it binds 127.0.0.1:0 and the port
# is read from its `listening` log line), with a temporary data dir and a random admin
# token, waits for GET /health, then runs
#   hurl --test --variable base=http://127.0.0.1:PORT --secret token=... hurl/*.hurl
# (`--secret`: a variable that hurl keeps out of its output). The server is stopped by its
# PID (SIGTERM, SIGKILL after 10 s) on every exit path. Exits non-zero when hurl is
# missing, the server does not come up or dies during the run, or a suite fails.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-target/release/numgen}
case $bin in /*) ;; *) bin=$PWD/$bin ;; esac

die() {
    echo "run-hurl: $*" >&2
    exit 1
}

command -v hurl >/dev/null 2>&1 || die "hurl is not installed (https://hurl.dev)"
[[ -x $bin ]] || die "$bin is not an executable (build it: cargo build --release)"

work=$(mktemp -d "${TMPDIR:-/tmp}/numgen-hurl.XXXXXX")
log=$work/numgen.log
pid=

stop_server() {
    [[ -n $pid ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "run-hurl: numgen (pid $pid) ignored SIGTERM; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    pid=
}

cleanup() {
    local status=$?
    stop_server
    if [[ $status -ne 0 && -s $log ]]; then
        echo "run-hurl: last lines of the server log ($log):" >&2
        tail -n 30 "$log" >&2 || true
        echo "run-hurl: keeping $work" >&2
    else
        rm -rf "$work"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

token=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')

# The token goes through the environment, so that it does not show in `ps`.
NUMGEN_ADMIN_TOKEN=$token NUMGEN_LOG_FORMAT=json RUST_LOG=${RUST_LOG:-info} \
    "$bin" serve --listen 127.0.0.1:0 --data-dir "$work/data" 2>"$log" &
pid=$!

# The bound address, from {"message":"listening","addr":"127.0.0.1:PORT",...}.
addr=
for _ in $(seq 200); do
    addr=$(grep -m1 '"message":"listening"' "$log" 2>/dev/null |
        sed -n 's/.*"addr":"\(127\.0\.0\.1:[0-9]*\)".*/\1/p' || true)
    [[ -n $addr ]] && break
    kill -0 "$pid" 2>/dev/null || die "numgen exited before listening"
    sleep 0.1
done
[[ -n $addr ]] || die "numgen did not log 'listening' within 20 s"
port=${addr##*:}

# GET /health over bash's /dev/tcp: nothing else needed.
health() {
    local reply
    exec 3<>"/dev/tcp/127.0.0.1/$port" || return 1
    printf 'GET /health HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$addr" >&3
    reply=$(timeout 2 head -n 1 <&3 || true)
    exec 3<&- 3>&-
    [[ $reply == "HTTP/1.1 200"* ]]
}
ok=
for _ in $(seq 100); do
    if health 2>/dev/null; then
        ok=1
        break
    fi
    kill -0 "$pid" 2>/dev/null || die "numgen exited before /health answered"
    sleep 0.1
done
[[ -n $ok ]] || die "GET /health did not answer 200 within 10 s"

echo "run-hurl: numgen (pid $pid) on http://$addr"
status=0
hurl --test --variable "base=http://$addr" --secret "token=$token" "$root"/hurl/*.hurl ||
    status=$?

if ! kill -0 "$pid" 2>/dev/null; then
    echo "run-hurl: numgen died during the run" >&2
    status=1
fi
exit "$status"
