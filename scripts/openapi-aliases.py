#!/usr/bin/env python3
"""Writes the `/api` aliases of openapi/numgen.json from the paths they alias.

SPEC 3: every route is also served under `/api`. The document lists each alias as a path
of its own (what a generated client and schemathesis see), a copy of the canonical path
item whose operation IDs end in `Api` (operation IDs are unique). Edit the canonical
paths, then run

    scripts/openapi-aliases.py [openapi/numgen.json]

to rewrite every `/api...` path from them; `cargo test` (http::openapi) fails while an
alias differs from its path.
"""
import copy
import json
import sys
from collections import OrderedDict

path = sys.argv[1] if len(sys.argv) > 1 else "openapi/numgen.json"
with open(path, encoding="utf-8") as f:
    doc = json.load(f, object_pairs_hook=OrderedDict)

paths = OrderedDict()
for name, item in doc["paths"].items():
    if name.startswith("/api/"):
        continue
    paths[name] = item
    alias = copy.deepcopy(item)
    for op in alias.values():
        if isinstance(op, dict) and "operationId" in op:
            op["operationId"] += "Api"
    paths["/api" + name] = alias
doc["paths"] = paths

with open(path, "w", encoding="utf-8") as f:
    json.dump(doc, f, indent=2, ensure_ascii=False)
    f.write("\n")
