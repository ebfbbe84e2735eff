//! Many keep-alive connections issuing at once against the real `numgen` binary: on one
//! snowflake prefix, on 100 prefixes, on a sequence-mode prefix, and with batches mixed into
//! single requests. Only correctness is asserted (SPEC 1.1, 1.2): no number (string or id)
//! twice per prefix, each connection's numbers strictly increasing per prefix (a
//! connection's requests are sequential, and a prefix's numbers increase on one node) —
//! both by the history checker (`common::history`) — and sequence numbers dense.
//! The rate each case reached is printed (`--nocapture`), never asserted: the machine is
//! shared.

mod common;

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::history::{History, Recorder, parse_numbers};
use common::rng::Rng;
use common::server::{Client, Server, ServerOpts};

/// Connections (one thread and one keep-alive [`Client`] each).
const CONNS: usize = 16;
/// Requests per connection in the single-number cases.
const PER_CONN: usize = 10_000;
/// Requests per connection in the mixed cases (about half of them batches).
const MIXED_PER_CONN: usize = 1_000;
/// Largest batch of the mixed cases.
const MAX_BATCH: u32 = 500;
/// How many 503s one connection retries (none is expected here).
const MAX_503_RETRIES: usize = 200;

/// What one connection received.
struct Got {
    /// Per prefix, the ids in the order received.
    ids: Vec<Vec<u64>>,
    /// Every number received, as the connection's stream of the run's [`History`].
    rec: Recorder,
    requests: usize,
    /// The `code` of each 503 answer that was retried (none is expected).
    retried: Vec<String>,
}

/// Issues `count` numbers of prefix `keys[p]` on `c` (`None`: a single-number request),
/// retrying 503s, into `got`.
fn issue(c: &mut Client, keys: &[String], p: usize, count: Option<u32>, got: &mut Got) {
    let key = &keys[p];
    let path = match count {
        Some(n) => format!("/numbers/{key}?count={n}"),
        None => format!("/numbers/{key}"),
    };
    loop {
        got.requests += 1;
        let r = c
            .request("GET", &path, &[], b"")
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        match r.status {
            200 => {
                let nums = parse_numbers(&r.body, count.is_some())
                    .unwrap_or_else(|e| panic!("GET {path}: {e}"));
                let want = count.unwrap_or(1) as usize;
                assert_eq!(nums.len(), want, "GET {path}: {} numbers", nums.len());
                assert!(
                    nums.iter().all(|n| !n.degraded),
                    "GET {path}: degraded: {}",
                    r.text()
                );
                got.rec.record(key, &nums);
                got.ids[p].extend(nums.iter().map(|n| {
                    n.id_u64()
                        .unwrap_or_else(|| panic!("GET {path}: id {:?}", n.id))
                }));
                return;
            }
            503 if got.retried.len() < MAX_503_RETRIES => {
                let v = r.json();
                got.retried
                    .push(v["code"].as_str().unwrap_or_default().to_string());
                thread::sleep(Duration::from_millis(20));
            }
            s => panic!("GET {path}: status {s}: {}", r.text()),
        }
    }
}

/// What a case produced.
struct Run {
    history: Arc<History>,
    per_conn: Vec<Got>,
    requests: usize,
    numbers: usize,
    retried: Vec<String>,
    elapsed: Duration,
}

/// The server's log lines at WARN and ERROR.
fn warnings(server: &Server) -> String {
    server
        .log_records()
        .iter()
        .filter(|r| matches!(r["level"].as_str(), Some("WARN" | "ERROR")))
        .map(|r| format!("{r}\n"))
        .collect()
}

/// Runs `work(connection index, client, got)` on [`CONNS`] connections at once.
fn drive<F>(server: &Server, prefixes: usize, work: F) -> Run
where
    F: Fn(usize, &mut Client, &mut Got) + Sync,
{
    let barrier = Barrier::new(CONNS + 1);
    let history = History::new();
    let (results, elapsed) = thread::scope(|s| {
        let handles: Vec<_> = (0..CONNS)
            .map(|i| {
                let (work, barrier) = (&work, &barrier);
                let mut client = server.client();
                let rec = history.recorder(format!("connection {i}"));
                s.spawn(move || {
                    let mut got = Got {
                        ids: vec![Vec::new(); prefixes],
                        rec,
                        requests: 0,
                        retried: Vec::new(),
                    };
                    barrier.wait();
                    work(i, &mut client, &mut got);
                    got.rec.flush();
                    got
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|e| {
                    eprintln!("server warnings:\n{}", warnings(server));
                    std::panic::resume_unwind(e)
                })
            })
            .collect();
        (results, start.elapsed())
    });
    Run {
        history,
        requests: results.iter().map(|g| g.requests).sum(),
        numbers: results.iter().flat_map(|g| &g.ids).map(Vec::len).sum(),
        retried: results.iter().flat_map(|g| g.retried.clone()).collect(),
        per_conn: results,
        elapsed,
    }
}

/// Asserts per-connection increase and uniqueness per prefix (the history checker),
/// prints the rates, and returns each prefix's ids sorted.
fn check(name: &str, keys: &[String], run: &Run) -> Vec<Vec<u64>> {
    let report = run.history.check();
    assert!(report.is_clean(), "{name}: {}", report.describe());
    assert_eq!(report.numbers, run.numbers, "{name}: numbers recorded");
    let mut sorted_all = Vec::with_capacity(keys.len());
    for p in 0..keys.len() {
        let mut all: Vec<u64> = run
            .per_conn
            .iter()
            .flat_map(|g| g.ids[p].iter().copied())
            .collect();
        all.sort_unstable();
        sorted_all.push(all);
    }
    let secs = run.elapsed.as_secs_f64().max(1e-9);
    println!(
        "{name}: {} requests, {} numbers on {} prefix(es) over {CONNS} connections in {:.2?}: \
         {:.0} req/s, {:.0} numbers/s; 503s retried: {:?}",
        run.requests,
        run.numbers,
        keys.len(),
        run.elapsed,
        run.requests as f64 / secs,
        run.numbers as f64 / secs,
        run.retried,
    );
    sorted_all
}

/// Asserts that the sorted ids are exactly `1..=len`: a single node that never stopped
/// leaves no gap (SPEC 1.2: gaps come only from a node that dies).
fn assert_dense(name: &str, server: &Server, sorted: &[u64]) {
    let gaps: Vec<(u64, u64)> = sorted
        .windows(2)
        .filter(|w| w[1] != w[0] + 1)
        .map(|w| (w[0], w[1]))
        .take(10)
        .collect();
    assert!(
        sorted.first() == Some(&1) && sorted.last() == Some(&(sorted.len() as u64)),
        "{name}: {} numbers from {:?} to {:?}, want 1..={}; gaps (after, next): {gaps:?}\n\
         server warnings:\n{}",
        sorted.len(),
        sorted.first(),
        sorted.last(),
        sorted.len(),
        warnings(server)
    );
}

fn single_requests_on(keys: &[String]) -> impl Fn(usize, &mut Client, &mut Got) + Sync {
    move |_, c, got| {
        for _ in 0..PER_CONN {
            issue(c, keys, 0, None, got);
        }
    }
}

#[test]
fn one_snowflake_prefix_from_16_connections() {
    let s = Server::start(ServerOpts::default());
    s.register("ONE", r#"{"format":"ONE-{SEQ:19}"}"#);
    let keys = ["ONE".to_string()];
    let run = drive(&s, 1, single_requests_on(&keys));
    let all = check("one snowflake prefix", &keys, &run);
    assert_eq!(all[0].len(), CONNS * PER_CONN);
}

#[test]
fn a_hundred_snowflake_prefixes_at_once() {
    let s = Server::start(ServerOpts::default());
    let keys: Vec<String> = (0..100).map(|i| format!("MANY{i:02}")).collect();
    for k in &keys {
        s.register(k, r#"{"format":"{prefix}-{SEQ:19}"}"#);
    }
    let run = drive(&s, keys.len(), |conn, c, got| {
        let mut rng = Rng::new(conn as u64 + 1);
        for _ in 0..PER_CONN {
            let p = rng.below(keys.len());
            issue(c, &keys, p, None, got);
        }
    });
    let all = check("100 snowflake prefixes", &keys, &run);
    assert_eq!(all.iter().map(Vec::len).sum::<usize>(), CONNS * PER_CONN);
    assert!(
        all.iter().all(|ids| !ids.is_empty()),
        "every prefix was used"
    );
}

#[test]
fn one_sequence_prefix_from_16_connections() {
    let s = Server::start(ServerOpts::default());
    s.register("SEQ", r#"{"format":"S-{SEQ:8}","mode":"sequence"}"#);
    let keys = ["SEQ".to_string()];
    let run = drive(&s, 1, single_requests_on(&keys));
    let all = check("one sequence prefix", &keys, &run);
    assert_eq!(all[0].len(), CONNS * PER_CONN);
    assert_dense("one sequence prefix", &s, &all[0]);
}

/// Single requests and batches of 1..=[`MAX_BATCH`] interleaved on one prefix; returns
/// the server and the ids, sorted.
fn mixed(name: &str, config: &str) -> (Server, Vec<u64>) {
    let s = Server::start(ServerOpts::default());
    s.register("MIX", config);
    let keys = ["MIX".to_string()];
    let run = drive(&s, 1, |conn, c, got| {
        let mut rng = Rng::new(1000 + conn as u64);
        for _ in 0..MIXED_PER_CONN {
            let count = match rng.below(2) {
                0 => None,
                _ => Some(1 + rng.below(MAX_BATCH as usize) as u32),
            };
            issue(c, &keys, 0, count, got);
        }
    });
    let mut all = check(name, &keys, &run);
    assert_eq!(all[0].len(), run.numbers);
    (s, all.remove(0))
}

#[test]
fn batches_mixed_with_single_requests_on_a_snowflake_prefix() {
    mixed("mixed, snowflake", r#"{"format":"MIX-{SEQ:19}"}"#);
}

#[test]
fn batches_mixed_with_single_requests_on_a_sequence_prefix() {
    let (s, all) = mixed(
        "mixed, sequence",
        r#"{"format":"MIX-{SEQ:8}","mode":"sequence"}"#,
    );
    assert_dense("mixed, sequence", &s, &all);
}
