#!/usr/bin/env bash
# Checks what operators deploy with the tools of their ecosystem (README "Kubernetes",
# "Dashboards and alerts"):
#   1. Prometheus rules: `promtool check rules` on deploy/prometheus/alerts.yaml and its
#      unit tests, `promtool test rules deploy/prometheus/alerts.test.yaml`;
#   2. live metrics: the release binary standalone (its clock moved by libfaketime, so
#      that it issues degraded numbers too) and in cluster mode on a real etcd, each after
#      issuing snowflake and sequence numbers and answering an error; `promtool check
#      metrics` on each `GET /metrics` must be clean;
#   3. the Grafana dashboard: well-formed, every expression valid PromQL and naming only
#      metrics those live nodes export (scripts/check-dashboard.py);
#   4. Kubernetes: both kustomize overlays rendered (`kustomize build`) and every
#      rendered object validated by kubernetes-validate (strict) against K8S_VERSIONS,
#      then what a schema cannot say (scripts/check-k8s.py: security, probes, drain, ...).
#
#   scripts/check-ops.sh            (SKIP_BUILD=1: use target/release as it is)
#
# Every process it starts listens on 127.0.0.1 and is stopped by its PID.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# kubernetes-validate knows versions up to its own (1.37.0 for 1.37.x); the manifests are
# checked against the newest and an older one still widely run.
K8S_VERSIONS=${K8S_VERSIONS:-1.33.0 1.37.0}

# WORK, PIDS (stopped on exit), NUMGEN, TOKEN, start_numgen, register, build.
. "$ROOT/scripts/harness.sh" check-ops
ensure_ops_deps

echo "--- promtool check rules / test rules"
promtool check rules deploy/prometheus/alerts.yaml
(cd deploy/prometheus && promtool test rules alerts.test.yaml)

echo "--- live /metrics (release binary)"
build --bin numgen

# issue_all NAME: on the numgen at ADDR, registers a snowflake and a sequence prefix,
# issues numbers of both, asks for an unknown prefix, and saves /metrics as $WORK/NAME.prom.
issue_all() {
    register SNOW '{"format":"SN-{SEQ:19}{flag}"}'
    register INV '{"format":"INV-{SEQ:6}","mode":"sequence"}'
    curl -sf "http://$ADDR/numbers/SNOW?count=10" >/dev/null
    curl -sf "http://$ADDR/numbers/INV?count=10" >/dev/null
    curl -s -o /dev/null "http://$ADDR/numbers/UNKNOWN"
}

LIBFAKETIME=$(ls /usr/lib/*/faketime/libfaketime.so.1 /usr/lib/faketime/libfaketime.so.1 2>/dev/null | head -n1 || true)
[ -n "$LIBFAKETIME" ] || { echo "libfaketime not found (Debian package faketime)" >&2; exit 1; }
echo "+0" >"$WORK/clock"
LD_PRELOAD=$LIBFAKETIME FAKETIME_TIMESTAMP_FILE=$WORK/clock FAKETIME_NO_CACHE=1 \
    FAKETIME_DONT_FAKE_MONOTONIC=1 start_numgen "$WORK/standalone" "$WORK/standalone.log"
issue_all
# A step back of 10 s: under the default policy the next numbers are degraded.
echo "-10s" >"$WORK/clock.new" && mv "$WORK/clock.new" "$WORK/clock"
degraded=""
for _ in $(seq 1 100); do
    if curl -sf "http://$ADDR/numbers/SNOW?count=3" | grep -q '"degraded":true'; then
        degraded=1
        break
    fi
    sleep 0.1
done
[ -n "$degraded" ] || { echo "the standalone node issued no degraded number" >&2; exit 1; }
curl -sf "http://$ADDR/metrics" >"$WORK/standalone.prom"
stop_numgen

command -v etcd >/dev/null || apt_install etcd-server
read -r ETCD_PORT PEER_PORT < <(python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
etcd --name ops --data-dir "$WORK/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
    --initial-cluster "ops=http://127.0.0.1:$PEER_PORT" >"$WORK/etcd.log" 2>&1 &
PIDS+=("$!")
for n in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$ETCD_PORT/health" >/dev/null && break
    [ "$n" = 100 ] && { echo "etcd did not become healthy" >&2; tail -20 "$WORK/etcd.log" >&2; exit 1; }
    sleep 0.1
done
start_numgen "$WORK/cluster" "$WORK/cluster.log" \
    --etcd-endpoints "http://127.0.0.1:$ETCD_PORT" --etcd-root /check-ops
issue_all
curl -sf "http://$ADDR/metrics" >"$WORK/cluster.prom"
stop_numgen

for name in standalone cluster; do
    echo "promtool check metrics ($name node, $(grep -c '^# TYPE' "$WORK/$name.prom") families)"
    promtool check metrics <"$WORK/$name.prom"
done
grep -q '^numgen_numbers_degraded_total{prefix="SNOW"}' "$WORK/standalone.prom" \
    || { echo "no degraded numbers in the standalone node's metrics" >&2; exit 1; }

echo "--- Grafana dashboard"
python3 scripts/check-dashboard.py deploy/grafana/numgen.json "$WORK/standalone.prom" "$WORK/cluster.prom"

echo "--- Kubernetes manifests (kustomize build, kubernetes-validate $K8S_VERSIONS)"
for overlay in standalone cluster; do
    out="$WORK/k8s-$overlay"
    mkdir -p "$out"
    kustomize build "deploy/k8s/overlays/$overlay" >"$out/all.yaml"
    # One file per object, so that a failure names it.
    python3 scripts/check-k8s.py split "$out/all.yaml" "$out"
    echo "$overlay: $(ls "$out" | grep -vc '^all.yaml$') objects"
    for v in $K8S_VERSIONS; do
        kubernetes-validate --strict --quiet -k "$v" "$out"/[0-9]*.yaml
    done
done
python3 scripts/check-k8s.py check "$WORK/k8s-standalone/all.yaml" "$WORK/k8s-cluster/all.yaml"
echo "ops checks passed"
