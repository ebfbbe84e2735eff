// Recovery: numgen in cluster mode while its etcd is restarted mid-run. scripts/run-k6.sh
// starts a real etcd on loopback, numgen against it, and restarts etcd ETCD_RESTART_AT s
// after k6 starts (down ETCD_DOWN s, default 3: shorter than the lease fence, so the node
// keeps its worker ID).
//
// Each iteration asks for a batch of snowflake numbers and a batch of sequence numbers:
// - snowflake numbers need no etcd per request: every request must succeed, outage or not;
// - sequence numbers come from blocks reserved in etcd: while etcd is down the node serves
//   from the blocks it holds, and only once they run out answers 503 STORAGE_UNAVAILABLE,
//   the one refusal allowed here (counted in sequence_unavailable).
// No number may repeat: per VU at once, across VUs by run-k6.sh (see common.js).
//
//   scripts/run-k6.sh k6/recovery.js                               # 30 s, etcd down at 10 s
//   DURATION=2m ETCD_RESTART_AT=30 ETCD_DOWN=5 scripts/run-k6.sh k6/recovery.js
import { check, sleep } from 'k6';
import { Counter } from 'k6/metrics';
import { SEQUENCE_PREFIX, SNOWFLAKE_PREFIX, takeNumbers } from './common.js';

const COUNT = parseInt(__ENV.COUNT || '20', 10);
const PAUSE = parseFloat(__ENV.PAUSE || '0.05');
const sequenceUnavailable = new Counter('sequence_unavailable');

export const options = {
  scenarios: {
    recovery: {
      executor: 'constant-vus',
      vus: parseInt(__ENV.VUS || '50', 10),
      duration: __ENV.DURATION || '30s',
      gracefulStop: '10s',
    },
  },
  thresholds: {
    // Snowflake requests never fail; sequence 503s are marked expected and counted apart.
    http_req_failed: ['rate==0'],
    checks: ['rate==1.0'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(95)', 'p(99)', 'max'],
};

function storageUnavailable(res) {
  let code = '';
  try {
    code = res.json().code;
  } catch (e) {
    code = '';
  }
  const ok = check(res, {
    'a sequence refusal is 503 STORAGE_UNAVAILABLE': () =>
      res.status === 503 && code === 'STORAGE_UNAVAILABLE',
  });
  if (ok) {
    sequenceUnavailable.add(1);
  }
  return true;
}

export default function () {
  takeNumbers(SNOWFLAKE_PREFIX, COUNT);
  takeNumbers(SEQUENCE_PREFIX, COUNT, {
    expectedStatuses: [200, 503],
    tolerate: storageUnavailable,
  });
  sleep(PAUSE);
}
