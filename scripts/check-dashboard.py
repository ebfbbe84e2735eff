#!/usr/bin/env python3
"""Checks deploy/grafana/numgen.json against what numgen really exports.

    scripts/check-dashboard.py DASHBOARD.json METRICS.txt [METRICS.txt ...]

METRICS.txt are `GET /metrics` answers of live numgen nodes. Fails (exit 1, saying why)
when the dashboard is not well-formed (JSON, unique panel ids, panels inside the 24-column
grid, every panel with a query on the dashboard's data source variable), when an
expression or variable query names a `numgen_*` metric that none of the nodes exports, or
when an expression is not valid PromQL (`promtool check rules` on every expression, with
Grafana's variables replaced).
"""

import json
import os
import re
import subprocess
import sys
import tempfile

METRIC = re.compile(r"\bnumgen_[a-zA-Z0-9_]*")
TYPE = re.compile(r"^# TYPE (\S+) (\S+)")
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$instance": ".*"}


def exported(paths):
    """The metric families the scraped nodes export, and every series name they may
    have (histograms with their suffixes)."""
    families, names = set(), set()
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                m = TYPE.match(line)
                if not m:
                    continue
                name, kind = m.groups()
                families.add(name)
                names.add(name)
                if kind == "histogram":
                    names.update(name + s for s in ("_bucket", "_sum", "_count"))
    return families, names


def queries(dash):
    """(where, PromQL) of every panel target and every query variable."""
    for p in dash.get("panels", []):
        for t in p.get("targets", []):
            yield f"panel {p.get('id')} {p.get('title')!r} {t.get('refId')}", t.get("expr", "")
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query", "") if isinstance(q, dict) else q
            yield f"variable {v.get('name')!r}", q


def structure_errors(dash):
    errors = []
    for key in ("title", "uid", "panels", "schemaVersion"):
        if key not in dash:
            errors.append(f"no {key!r}")
    ids = [p.get("id") for p in dash.get("panels", [])]
    if len(ids) != len(set(ids)) or None in ids:
        errors.append(f"panel ids missing or repeated: {ids}")
    variables = {v.get("name") for v in dash.get("templating", {}).get("list", [])}
    for p in dash.get("panels", []):
        g = p.get("gridPos", {})
        if not all(isinstance(g.get(k), int) for k in "hwxy") or g["x"] + g["w"] > 24:
            errors.append(f"panel {p.get('id')}: bad gridPos {g}")
        if p.get("type") == "row":
            continue
        if not p.get("targets"):
            errors.append(f"panel {p.get('id')} {p.get('title')!r}: no query")
        refs = [t.get("refId") for t in p.get("targets", [])]
        if len(refs) != len(set(refs)):
            errors.append(f"panel {p.get('id')}: repeated refIds {refs}")
        for t in p.get("targets", []) + [p]:
            uid = t.get("datasource", {}).get("uid", "")
            if uid.strip("${}") not in variables:
                errors.append(f"panel {p.get('id')}: data source {uid!r} is not a variable")
    return errors


def promql_errors(exprs):
    """Runs promtool check rules over every expression; its complaints."""
    rules = [{"record": f"check:expr_{i}", "expr": e} for i, (_, e) in enumerate(exprs)]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
    try:
        r = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    return [] if r.returncode == 0 else [r.stdout + r.stderr]


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    with open(sys.argv[1], encoding="utf-8") as f:
        dash = json.load(f)
    families, names = exported(sys.argv[2:])
    if not names:
        sys.exit("no metric families in the scraped metrics")
    errors = structure_errors(dash)
    used = set()
    exprs = []
    for where, q in queries(dash):
        found = set(METRIC.findall(q))
        if not found:
            errors.append(f"{where}: names no numgen metric: {q!r}")
        for name in sorted(found - names):
            errors.append(f"{where}: {name} is not exported by numgen")
        used |= found
        if not where.startswith("variable"):
            for var, value in GRAFANA_VARS.items():
                q = q.replace(var, value)
            exprs.append((where, q))
    errors += promql_errors(exprs)
    if errors:
        print("dashboard check failed:", *errors, sep="\n  ", file=sys.stderr)
        sys.exit(1)
    unused = sorted(n for n in families if not any(u.startswith(n) for u in used))
    print(f"dashboard ok: {len(exprs)} expressions over {len(used)} metrics, all exported; "
          f"not charted: {', '.join(unused) or 'none'}")


if __name__ == "__main__":
    main()
