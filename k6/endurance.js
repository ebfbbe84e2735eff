// Endurance: VUS virtual users (default 50) for DURATION (default 60s, as CI runs it),
// each alternating between a snowflake prefix and a sequence-mode prefix, COUNT numbers
// (default 10) per request, pausing PAUSE seconds (default 0.5): about 100 requests/s.
// Watch the server's RSS (scripts/run-k6.sh prints it before and after) and latency over
// time; the checks and thresholds are those of the baseline, so a slow leak or a stall
// shows up as a failed threshold or a growing RSS.
//
// The 12-hour run:
//
//   DURATION=12h LOG_RANGES=0 scripts/run-k6.sh k6/endurance.js
//
// LOG_RANGES=0 keeps the per-VU checks (strictly increasing ids, so no repeat within a VU)
// but skips the cross-VU range log, which at the default rate grows by about 20 MB an hour;
// keep it on (the default) when the disk allows, and the run is checked end to end.
import { sleep } from 'k6';
import { SEQUENCE_PREFIX, SNOWFLAKE_PREFIX, takeNumbers, timingTargets } from './common.js';

const COUNT = parseInt(__ENV.COUNT || '10', 10);
const PAUSE = parseFloat(__ENV.PAUSE || '0.5');

export const options = {
  scenarios: {
    endurance: {
      executor: 'constant-vus',
      vus: parseInt(__ENV.VUS || '50', 10),
      duration: __ENV.DURATION || '60s',
      gracefulStop: '10s',
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.001'],
    ...timingTargets({
      http_req_duration: ['p(95)<50'],
    }),
    checks: ['rate==1.0'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(95)', 'p(99)', 'max'],
};

let turn = 0;

export default function () {
  turn += 1;
  takeNumbers(turn % 2 === 0 ? SEQUENCE_PREFIX : SNOWFLAKE_PREFIX, COUNT);
  sleep(PAUSE);
}
