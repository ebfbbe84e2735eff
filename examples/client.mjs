// numgen from JavaScript (Node 18+, no dependencies: the built-in fetch).
//
//   NUMGEN_URL=http://127.0.0.1:8080 NUMGEN_TOKEN=... node examples/client.mjs
//
// Store and print the `number` string: it is what never repeats. IDs arrive as strings
// because a JavaScript number holds integers exactly only up to 2^53, and snowflake IDs
// are around 2^58: when an ID must be numeric (to compare or sort), use BigInt, never Number.
const url = process.env.NUMGEN_URL ?? "http://127.0.0.1:8080";
const token = process.env.NUMGEN_TOKEN;
if (!token) throw new Error("set NUMGEN_TOKEN to the admin token");

async function call(method, path, { body, admin = false, accept = "application/json" } = {}) {
  const headers = { Accept: accept };
  if (admin) headers.Authorization = `Bearer ${token}`;
  const resp = await fetch(url + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await resp.text();
  return [resp.status, accept === "text/plain" ? text : JSON.parse(text)];
}

function check(ok, what) {
  if (!ok) throw new Error(what);
}

const key = "JS-ORDERS";
// PUT creates or replaces: 63-bit snowflake IDs, rendered into the order number.
let [status, body] = await call("PUT", `/prefix-configs/${key}`, {
  admin: true,
  body: { format: "ORD-{yy}{month}-{SEQ:19}", mode: "snowflake" },
});
check(status === 200, JSON.stringify(body));

[status, body] = await call("GET", `/numbers/${key}?count=5`);
const numbers = body.numbers.map((n) => n.number);
const ids = body.numbers.map((n) => BigInt(n.id));
for (let i = 1; i < ids.length; i++) check(ids[i] > ids[i - 1], "IDs increase");
check(new Set(numbers).size === numbers.length, "numbers are unique");
console.log("batch:", numbers);
// What Number would do to them: not exact above 2^53.
console.log("id", body.numbers[0].id, "as Number:", Number(body.numbers[0].id),
  "safe:", Number.isSafeInteger(Number(body.numbers[0].id)));

[status, body] = await call("GET", `/api/snowflake/get/${key}`, { accept: "text/plain" });
check(status === 200 && BigInt(body) > ids.at(-1), `leaf route: ${body}`);
console.log("leaf:", body);

[status, body] = await call("GET", `/ids/${ids[0]}`);
console.log("decode:", body);

[status, body] = await call("GET", "/numbers/NO-SUCH-KEY");
check(status === 400 && body.code === "PREFIX_NOT_REGISTERED", JSON.stringify(body));
console.log("error:", body.code, "-", body.error);
