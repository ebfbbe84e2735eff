#!/usr/bin/env bash
# Runs every test of numgen, installing what the tests need when it is missing (protoc,
# etcd, faketime, hurl, k6, hadolint, cargo-llvm-cov; see scripts/deps.sh):
#   1. formatting and clippy (warnings are errors),
#   2. cargo test --release under cargo llvm-cov (line coverage): unit and property tests,
#      in-process server tests, the store conformance suite on redb and on a real etcd,
#      black-box HTTP tests against the real binary (standalone and cluster), concurrency,
#      crash (kill -9) and clock fault-injection (libfaketime) tests. The binary the tests
#      spawn is instrumented too (cargo llvm-cov sets LLVM_PROFILE_FILE for the tests and
#      their children), so its lines count. The tests run once, only here.
#   3. the hurl suites against a freshly started, plain (uninstrumented) release binary,
#   4. short checks: k6 scenarios (short durations; recovery.js restarts a real etcd under
#      a cluster-mode node), the Dockerfile lint, and one pass of
#      the criterion benchmarks (they must build and run; no timing is judged here),
#   5. the coverage report: the per-file table and the total; the run fails when line
#      coverage is below COVERAGE_MIN (85) percent,
#   6. a smoke run of the parser fuzzers (scripts/fuzz.sh, seconds per target).
# Every server it starts listens on 127.0.0.1 and is stopped by its PID. Under CI=true a
# missing tool fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh

COVERAGE_MIN=${COVERAGE_MIN:-85}
started=$(date +%s)
step() { printf '\n=== %s (%ss)\n' "$*" "$(( $(date +%s) - started ))"; }

step "dependencies"
ensure_test_deps
ensure_coverage_deps

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings

# cargo llvm-cov builds into target/llvm-cov-target, so the plain release build below is
# not replaced by instrumented code; it removes the previous run's profiles first.
step "cargo test --release, with line coverage (cargo llvm-cov)"
cargo llvm-cov --release --no-report --quiet

step "release build for hurl and k6"
cargo build --release --quiet

step "hurl suites"
scripts/run-hurl.sh target/release/numgen

step "k6 (short runs; correctness only: TIMING_TARGETS=0)"
export TIMING_TARGETS=0
SKIP_BUILD=1 scripts/run-k6.sh k6/baseline.js
SKIP_BUILD=1 HOLD=${K6_SPIKE_HOLD:-10s} scripts/run-k6.sh k6/spike.js
SKIP_BUILD=1 DURATION=${K6_ENDURANCE:-60s} scripts/run-k6.sh k6/endurance.js
SKIP_BUILD=1 scripts/run-k6.sh k6/recovery.js

step "Dockerfile lint"
hadolint Dockerfile

step "benchmarks build and run once"
cargo bench --quiet --bench engine -- --test >/dev/null

step "line coverage of cargo test (unit, in-process and the spawned binary); minimum ${COVERAGE_MIN}%"
cargo llvm-cov report --release --fail-under-lines "$COVERAGE_MIN"

step "fuzzing smoke run: each parser target for FUZZ_SMOKE_SECS (10) seconds (scripts/fuzz.sh)"
FUZZ_SECS=${FUZZ_SMOKE_SECS:-10} scripts/fuzz.sh

step "all tests passed"
