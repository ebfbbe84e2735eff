#!/usr/bin/env python3
"""What kubernetes-validate cannot know about numgen's manifests (deploy/k8s/).

    scripts/check-k8s.py split ALL.yaml DIR        one file per rendered object, NN-kind-name.yaml
    scripts/check-k8s.py check STANDALONE.yaml CLUSTER.yaml

`check` reads the two rendered overlays (`kustomize build deploy/k8s/overlays/...`) and
fails (exit 1, listing why) unless: every container runs as non-root with a read-only root
filesystem, no privilege escalation and every capability dropped, with memory requests and
limits; numgen is probed on /health (liveness) and /ready (readiness), pauses in preStop
and has a grace period covering that pause, the 10 s drain and the lease revoke; it
advertises its pod IP (downward API) and takes its admin token from a Secret and its
config from a ConfigMap that the rendering contains; every Service and PodDisruptionBudget
selects pods that exist. The cluster overlay: 3 numgen replicas, a 3-member etcd
StatefulSet behind a headless Service, and numgen's etcd endpoints naming exactly those
members. The standalone overlay: 1 replica, replaced with Recreate, its data dir on a
PersistentVolumeClaim, no etcd.
"""

import os
import re
import sys

import yaml

# numgen's drain (http::DRAIN_TIMEOUT) and, after it, the stop of its tasks, the sequence
# tails given back, the high timestamp persisted and the lease revoked (store calls bounded
# by 2 s each): what the grace period must leave after the preStop pause.
DRAIN_S = 10
AFTER_DRAIN_S = 10


def load(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def split(path, out):
    for i, doc in enumerate(load(path)):
        name = f"{i:02d}-{doc['kind'].lower()}-{doc['metadata']['name']}.yaml"
        with open(os.path.join(out, name), "w", encoding="utf-8") as f:
            yaml.safe_dump(doc, f, sort_keys=False)


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def one(docs, kind, name, errors):
    found = [d for d in by_kind(docs, kind) if d["metadata"]["name"] == name]
    if len(found) != 1:
        errors.append(f"want one {kind} {name}, found {len(found)}")
        return None
    return found[0]


def workloads(docs):
    return by_kind(docs, "Deployment") + by_kind(docs, "StatefulSet")


def check_security(w, errors):
    spec = w["spec"]["template"]["spec"]
    pod_sc = spec.get("securityContext", {})
    name = w["metadata"]["name"]
    if spec.get("automountServiceAccountToken") is not False:
        errors.append(f"{name}: mounts a service account token it does not need")
    for c in spec["containers"]:
        sc = c.get("securityContext", {})
        where = f"{name}/{c['name']}"
        if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
            errors.append(f"{where}: may run as root")
        if sc.get("readOnlyRootFilesystem") is not True:
            errors.append(f"{where}: root filesystem is writable")
        if sc.get("allowPrivilegeEscalation") is not False:
            errors.append(f"{where}: privilege escalation allowed")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            errors.append(f"{where}: capabilities not all dropped")
        res = c.get("resources", {})
        if not res.get("requests", {}).get("memory") or not res.get("limits", {}).get("memory"):
            errors.append(f"{where}: no memory request and limit")


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def check_numgen(docs, errors):
    d = one(docs, "Deployment", "numgen", errors)
    if d is None:
        return None
    spec = d["spec"]["template"]["spec"]
    c = next((c for c in spec["containers"] if c["name"] == "numgen"), None)
    if c is None:
        errors.append("numgen: no container named numgen")
        return None
    if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/health":
        errors.append("numgen: liveness is not GET /health")
    if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/ready":
        errors.append("numgen: readiness is not GET /ready")
    pause = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pause_s = int(pause[1]) if len(pause) == 2 and pause[0] == "sleep" else None
    if pause_s is None:
        errors.append(f"numgen: preStop is not a pause: {pause}")
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if pause_s is not None and grace < pause_s + DRAIN_S + AFTER_DRAIN_S:
        errors.append(f"numgen: grace {grace}s < preStop {pause_s}s + drain {DRAIN_S}s + {AFTER_DRAIN_S}s")
    env = env_of(c)
    pod_ip = env.get("POD_IP", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    if pod_ip != "status.podIP" or "$(POD_IP)" not in env.get("NUMGEN_ADVERTISE_ADDR", {}).get("value", ""):
        errors.append("numgen: does not advertise its pod IP")
    ref = env.get("NUMGEN_ADMIN_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef", {})
    secret = one(docs, "Secret", ref.get("name", "?"), errors)
    if secret is not None and ref.get("key") not in secret.get("data", {}):
        errors.append(f"numgen: secret {ref.get('name')} has no key {ref.get('key')}")
    maps = [v["configMap"]["name"] for v in spec.get("volumes", []) if "configMap" in v]
    for m in maps:
        one(docs, "ConfigMap", m, errors)
    if not maps:
        errors.append("numgen: no ConfigMap mounted")
    args = c.get("args", [])
    if "--config" not in args:
        errors.append(f"numgen: not started with its config file: {args}")
    return d, c


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def check_selectors(docs, errors):
    pods = [w["spec"]["template"]["metadata"]["labels"] for w in workloads(docs)]
    for s in by_kind(docs, "Service"):
        if not any(selects(s["spec"]["selector"], p) for p in pods):
            errors.append(f"service {s['metadata']['name']} selects no pod")
    for p in by_kind(docs, "PodDisruptionBudget"):
        if not any(selects(p["spec"]["selector"]["matchLabels"], l) for l in pods):
            errors.append(f"PDB {p['metadata']['name']} selects no pod")


def check_cluster(docs, errors):
    got = check_numgen(docs, errors)
    if got is None:
        return
    d, c = got
    if d["spec"]["replicas"] != 3:
        errors.append(f"cluster: {d['spec']['replicas']} numgen replicas, want 3")
    sts = one(docs, "StatefulSet", "numgen-etcd", errors)
    if sts is None:
        return
    if sts["spec"]["replicas"] != 3:
        errors.append("cluster: etcd is not 3 members")
    svc = one(docs, "Service", sts["spec"]["serviceName"], errors)
    if svc is not None and svc["spec"].get("clusterIP") != "None":
        errors.append("cluster: the etcd Service is not headless")
    members = [f"http://{sts['metadata']['name']}-{i}.{sts['spec']['serviceName']}:2379" for i in range(3)]
    endpoints = env_of(c).get("NUMGEN_ETCD_ENDPOINTS", {}).get("value", "").split(",")
    if sorted(endpoints) != sorted(members):
        errors.append(f"cluster: numgen's etcd endpoints {endpoints} are not the members {members}")
    cmd = " ".join(sts["spec"]["template"]["spec"]["containers"][0].get("command", []))
    initial = re.search(r"--initial-cluster=(\S+)", cmd)
    names = sorted(m.split("=")[0] for m in initial.group(1).split(",")) if initial else []
    if names != [f"{sts['metadata']['name']}-{i}" for i in range(3)]:
        errors.append(f"cluster: etcd's initial cluster {names} is not its pods")


def check_standalone(docs, errors):
    got = check_numgen(docs, errors)
    if got is None:
        return
    d, c = got
    if d["spec"]["replicas"] != 1 or d["spec"].get("strategy", {}).get("type") != "Recreate":
        errors.append("standalone: want 1 replica replaced with Recreate")
    data_dir = env_of(c).get("NUMGEN_DATA_DIR", {}).get("value")
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    vols = {v["name"]: v for v in d["spec"]["template"]["spec"].get("volumes", [])}
    claim = vols.get(mounts.get(data_dir), {}).get("persistentVolumeClaim", {}).get("claimName")
    if claim is None:
        errors.append(f"standalone: data dir {data_dir} is not on a PersistentVolumeClaim")
    else:
        one(docs, "PersistentVolumeClaim", claim, errors)
    if by_kind(docs, "StatefulSet") or "NUMGEN_ETCD_ENDPOINTS" in env_of(c):
        errors.append("standalone: has etcd")


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "split":
        split(sys.argv[2], sys.argv[3])
        return
    if len(sys.argv) != 4 or sys.argv[1] != "check":
        sys.exit(__doc__)
    errors = []
    for path, check in ((sys.argv[2], check_standalone), (sys.argv[3], check_cluster)):
        docs = load(path)
        found = []
        for w in workloads(docs):
            check_security(w, found)
        check_selectors(docs, found)
        check(docs, found)
        errors += [f"{os.path.basename(os.path.dirname(path))}: {e}" for e in found]
    if errors:
        print("Kubernetes manifests check failed:", *errors, sep="\n  ", file=sys.stderr)
        sys.exit(1)
    print("Kubernetes manifests ok: security, probes, drain, pod IP, Secret, ConfigMap, "
          "selectors, etcd members, standalone volume")


if __name__ == "__main__":
    main()
