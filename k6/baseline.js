// Baseline load: 1000 virtual users for 5 minutes (DURATION overrides; scripts/run-k6.sh
// runs 30 s), each asking for a batch of COUNT snowflake numbers (default 25) and pausing
// PAUSE seconds (default 1) between requests: about 1000 requests/s and 25,000 numbers/s.
// The count is batched because one k6 process cannot drive 10,000 requests/s on this
// machine next to the server; the target is numbers per second.
//
// Passes when: failed requests < 0.1 %, p95 latency < 50 ms, >= 10,000 numbers/s, every
// check holds (status, body, per-VU strictly increasing ids). Uniqueness across VUs is
// checked by scripts/run-k6.sh from the ranges each VU logs (see common.js).
//
//   scripts/run-k6.sh k6/baseline.js                  # 30 s
//   DURATION=5m scripts/run-k6.sh k6/baseline.js      # the full run
//   BASE_URL=http://127.0.0.1:8080 k6 run k6/baseline.js   # against a running server
import { sleep } from 'k6';
import { SNOWFLAKE_PREFIX, takeNumbers, timingTargets } from './common.js';

const COUNT = parseInt(__ENV.COUNT || '25', 10);
const PAUSE = parseFloat(__ENV.PAUSE || '1');

export const options = {
  scenarios: {
    baseline: {
      executor: 'constant-vus',
      vus: parseInt(__ENV.VUS || '1000', 10),
      duration: __ENV.DURATION || '5m',
      gracefulStop: '10s',
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.001'],
    ...timingTargets({
      http_req_duration: ['p(95)<50'],
      numbers_received: ['rate>=10000'],
    }),
    checks: ['rate==1.0'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(95)', 'p(99)', 'max'],
};

export default function () {
  takeNumbers(SNOWFLAKE_PREFIX, COUNT);
  sleep(PAUSE);
}
