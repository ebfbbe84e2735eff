// Shared by the k6 scripts: ask numgen for numbers and check what comes back.
//
// How uniqueness is checked (k6 VUs share no memory, so it takes two parts):
//
// 1. In the VU, at once: a VU's requests run one after another, and numgen promises numbers
//    strictly increasing per prefix on one node (SPEC 1.1, 1.2), so every id a VU receives
//    for a prefix must be greater than the one before it, within a batch and across its
//    batches. The check `ids strictly increase for this VU` fails on any repeat within the
//    VU. It needs one BigInt per prefix per VU (ids pass 2^53, so they are never Numbers).
// 2. Across VUs, after the run: every VU writes each run of consecutive ids it received as
//    one console line `NGR <prefix> <first> <last>` (ids zero-padded to 20 digits, so that
//    text order is number order; a batch in one time unit is one line). scripts/run-k6.sh
//    sends these lines to a file with --console-output, sorts them per prefix and fails when
//    two ranges overlap, which is exactly "some id was received twice", and when the
//    ranges do not add up to the `numbers_received` counter. Every id is covered; nothing is
//    sampled. Set LOG_RANGES=0 to skip part 2 (very long runs; see endurance.js).
import http from 'k6/http';
import { check } from 'k6';
import { Counter } from 'k6/metrics';

export const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8080';
export const SNOWFLAKE_PREFIX = __ENV.PREFIX || 'K6ORDER';
export const SEQUENCE_PREFIX = __ENV.SEQUENCE_PREFIX || 'K6INVOICE';
const LOG_RANGES = (__ENV.LOG_RANGES || '1') !== '0';

// Numbers received in 200 responses, all VUs together.
export const numbersReceived = new Counter('numbers_received');

// Per VU (module state is per VU in k6): the last id received per prefix.
const lastId = {};

function pad(id) {
  return id.toString().padStart(20, '0');
}

function logRange(prefix, first, last) {
  if (LOG_RANGES) {
    console.log(`NGR ${prefix} ${pad(first)} ${pad(last)}`);
  }
}

/**
 * Asks for `count` numbers of `prefix` (one request) and checks the answer. Returns the
 * number of ids received (0 on failure). `opts.tolerate(res)` accepts a refusal as
 * expected; `opts.expectedStatuses` tells k6 which statuses are not failed requests.
 */
export function takeNumbers(prefix, count, opts = {}) {
  const url = `${BASE_URL}/numbers/${prefix}` + (count > 1 ? `?count=${count}` : '');
  const params = { tags: { name: `/numbers/${prefix}` }, timeout: '10s' };
  if (opts.expectedStatuses) {
    params.responseCallback = http.expectedStatuses(...opts.expectedStatuses);
  }
  const res = http.get(url, params);
  // A refusal the scenario allows (opts.tolerate) is counted by the caller, not a failure.
  if (res.status !== 200 && opts.tolerate && opts.tolerate(res)) {
    return 0;
  }
  if (!check(res, { 'status is 200': (r) => r.status === 200 })) {
    // run-k6.sh prints these lines when k6 fails: which answer broke the run.
    console.log(`NGE ${prefix} ${res.status} ${res.error || ''} ${String(res.body).slice(0, 300)}`);
    return 0;
  }
  let ids;
  try {
    const body = res.json();
    ids = count > 1 ? body.numbers.map((n) => n.id) : [body.id];
  } catch (e) {
    check(null, { 'body is a numbers answer': () => false });
    return 0;
  }
  check(ids, { 'got as many numbers as asked': (v) => v.length === count });

  let increasing = true;
  let last = lastId[prefix] === undefined ? -1n : lastId[prefix];
  let first = null;
  let prev = null;
  for (const text of ids) {
    const id = BigInt(text);
    if (id <= last) {
      increasing = false;
    }
    if (id > last) {
      last = id;
    }
    if (first !== null && id === prev + 1n) {
      prev = id;
    } else {
      if (first !== null) {
        logRange(prefix, first, prev);
      }
      first = id;
      prev = id;
    }
  }
  if (first !== null) {
    logRange(prefix, first, prev);
  }
  lastId[prefix] = last;
  check(null, { 'ids strictly increase for this VU': () => increasing });
  numbersReceived.add(ids.length);
  return ids.length;
}

// Latency and throughput targets judge a benchmark run on a machine of its own. The short
// runs in scripts/test.sh set TIMING_TARGETS=0: on a shared, noisy machine they judge
// correctness only (failed requests, checks, overlaps), never time.
export function timingTargets(targets) {
  return (__ENV.TIMING_TARGETS || '1') === '0' ? {} : targets;
}
