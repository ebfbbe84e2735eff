// Spike: 100 virtual users, then 5000 within 5 seconds, held for HOLD (default 20 s), then
// back down. Each user asks for one snowflake number and pauses PAUSE seconds (default 1),
// so the load jumps from about 100 to about 5000 requests/s and 4900 new connections.
//
// Passes when no request fails and every check holds (status, body, per-VU strictly
// increasing ids); uniqueness across VUs is checked by scripts/run-k6.sh (see common.js).
// Latency is reported, not judged: the spike is about not failing.
//
//   scripts/run-k6.sh k6/spike.js
import { sleep } from 'k6';
import { SNOWFLAKE_PREFIX, takeNumbers } from './common.js';

const PAUSE = parseFloat(__ENV.PAUSE || '1');
const HOLD = __ENV.HOLD || '20s';

export const options = {
  scenarios: {
    spike: {
      executor: 'ramping-vus',
      startVUs: 100,
      stages: [
        { duration: '10s', target: 100 },
        { duration: '5s', target: 5000 },
        { duration: HOLD, target: 5000 },
        { duration: '5s', target: 100 },
      ],
      gracefulRampDown: '10s',
      gracefulStop: '10s',
    },
  },
  thresholds: {
    http_req_failed: ['rate==0'],
    checks: ['rate==1.0'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(95)', 'p(99)', 'max'],
};

export default function () {
  takeNumbers(SNOWFLAKE_PREFIX, 1);
  sleep(PAUSE);
}
