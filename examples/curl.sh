#!/usr/bin/env bash
# numgen with curl: register a prefix, issue numbers (JSON, batch, text), decode an ID,
# read the audit history, and the Leaf-compatible route.
#
#   NUMGEN_URL=http://127.0.0.1:8080 NUMGEN_TOKEN=... examples/curl.sh
#
# Keep the `number` string: it is what never repeats. IDs are JSON strings too.
set -euo pipefail
url=${NUMGEN_URL:-http://127.0.0.1:8080}
auth="Authorization: Bearer ${NUMGEN_TOKEN:?set NUMGEN_TOKEN to the admin token}"
key=CURL-ORDERS

# PUT creates or replaces; POST would answer 409 PREFIX_EXISTS the second time.
curl -sf -X PUT "$url/prefix-configs/$key" -H "$auth" \
    -d '{"format":"ORD-{yy}{month}-{SEQ:19}","mode":"snowflake"}' >/dev/null

one=$(curl -sf "$url/numbers/$key")
echo "one:    $one"
id=$(sed -E 's/.*"id":"([0-9]+)".*/\1/' <<<"$one")

echo "batch:  $(curl -sf "$url/numbers/$key?count=3")"
echo "text:   $(curl -sf -H 'Accept: text/plain' "$url/numbers/$key?count=2" | paste -sd' ')"
echo "decode: $(curl -sf "$url/ids/$id")"
echo "leaf:   $(curl -sf "$url/api/snowflake/get/$key")"
echo "audit:  $(curl -sf -H "$auth" "$url/prefix-configs/$key/history" | head -c 160)..."

# Errors carry a code for programs: 400 PREFIX_NOT_REGISTERED here.
code=$(curl -s -o /dev/null -w '%{http_code}' "$url/numbers/NO-SUCH-KEY")
[[ $code == 400 ]] || { echo "expected 400 for an unregistered prefix, got $code" >&2; exit 1; }
echo "error:  $(curl -s "$url/numbers/NO-SUCH-KEY")"
