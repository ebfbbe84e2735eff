#!/usr/bin/env bash
# Coverage-guided fuzzing of numgen's parsers (issue 11) with cargo-fuzz (libFuzzer):
# format templates, prefix config bodies, path/query/Accept reading, ID decoding. The
# targets are in fuzz/fuzz_targets/, their seed corpora in fuzz/corpus/<target>/.
#
# Only the stable toolchain is installed here: cargo-fuzz's nightly flags
# (-Zsanitizer, -Cpasses=sancov-module, ...) go through with RUSTC_BOOTSTRAP=1. Without a
# sanitizer (`-s none`): numgen and its parsers are safe Rust, and AddressSanitizer would
# halve the executions per second on this 2-core machine.
#
# Environment (defaults): FUZZ_SECS=180 per target; TARGETS (all four); UPDATE_CORPUS=1
# writes what the run found into fuzz/corpus/ (otherwise into a temporary directory, the
# repository's corpus only seeds the run). A crash fails the script; its input is in
# fuzz/artifacts/<target>/ and goes into a regression test with the fix.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
. scripts/deps.sh

FUZZ_SECS=${FUZZ_SECS:-180}
TARGETS=${TARGETS:-template prefix_config request id_decode}
ensure_fuzz_deps

export RUSTC_BOOTSTRAP=1
cargo fuzz build -s none --fuzz-dir fuzz

WORK=$(mktemp -d -t numgen-fuzz.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
failed=0
for t in $TARGETS; do
    if [ "${UPDATE_CORPUS:-0}" = 1 ]; then dirs=("fuzz/corpus/$t"); else
        mkdir -p "$WORK/$t"
        dirs=("$WORK/$t" "fuzz/corpus/$t")
    fi
    # timeout: a bound even if libFuzzer's own does not fire.
    if timeout $((FUZZ_SECS + 120)) cargo fuzz run -s none --fuzz-dir fuzz "$t" "${dirs[@]}" -- \
        -max_total_time="$FUZZ_SECS" -max_len=4096 -timeout=10 -print_final_stats=1 \
        >"$WORK/$t.log" 2>&1; then
        result=ok
    else
        result=FAILED
        failed=1
        tail -n 40 "$WORK/$t.log" >&2
    fi
    runs=$(awk '/^stat::number_of_executed_units:/ { print $2 }' "$WORK/$t.log")
    cov=$(grep -o 'cov: [0-9]*' "$WORK/$t.log" | tail -n1)
    corp=$(grep -o 'corp: [0-9]*/[0-9]*[a-zA-Z]*' "$WORK/$t.log" | tail -n1)
    printf '%-14s %-6s %10s execs in %ss  %s  %s\n' "$t" "$result" "${runs:-?}" "$FUZZ_SECS" "$cov" "$corp"
done
exit "$failed"
