#!/usr/bin/env python3
"""numgen from Python, standard library only.

    NUMGEN_URL=http://127.0.0.1:8080 NUMGEN_TOKEN=... python3 examples/client.py

Store and print the `number` string: it is what never repeats. IDs arrive as strings
(JavaScript loses integers above 2**53); Python's int holds them exactly when you need
to compare or sort them.
"""
import json
import os
import urllib.error
import urllib.request

URL = os.environ.get("NUMGEN_URL", "http://127.0.0.1:8080")
TOKEN = os.environ["NUMGEN_TOKEN"]


def call(method, path, body=None, admin=False, accept="application/json"):
    """(status, body) of one request; the body is parsed JSON unless text was asked for."""
    headers = {"Accept": accept}
    if admin:
        headers["Authorization"] = f"Bearer {TOKEN}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(URL + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status, raw = resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read().decode()
    return status, (raw if accept == "text/plain" else json.loads(raw))


key = "PY-INVOICES"
# PUT creates or replaces: a sequence counter per year, from 1001.
status, reg = call("PUT", f"/prefix-configs/{key}", admin=True,
                   body={"format": "INV-{year}-{SEQ:6}", "mode": "sequence", "initial_seq": 1000})
assert status == 200, reg
print("registered:", reg["config"])

status, one = call("GET", f"/numbers/{key}")
assert status == 200 and isinstance(one["id"], str), one
print("one:", one["number"], "id", one["id"])

status, batch = call("GET", f"/numbers/{key}?count=5")
numbers = [n["number"] for n in batch["numbers"]]
ids = [int(n["id"]) for n in batch["numbers"]]
assert ids == sorted(ids) and len(set(numbers)) == 5, batch
print("batch:", numbers)

status, text = call("GET", f"/numbers/{key}?count=2", accept="text/plain")
print("text:", text.split("\n"))

status, err = call("GET", "/numbers/NO-SUCH-KEY")
assert status == 400 and err["code"] == "PREFIX_NOT_REGISTERED", err
print("error:", err["code"], "-", err["error"])

status, history = call("GET", f"/prefix-configs/{key}/history", admin=True)
latest = history["history"][0]
print("audit:", latest["action"], "by", latest["token_fingerprint"], "from", latest["peer"])
