//! Clock trouble (SPEC section 4) on the real `numgen` binary, with its wall clock moved by
//! libfaketime: a step back of 10 s under `degrade` (strictly increasing, degraded numbers
//! until the clock passes the last timestamp again) and under `reject` (503 `NOT_READY` with
//! `Retry-After`), small steps that are absorbed, a forward jump, and a cluster node whose
//! clock runs 5 s ahead of its two peers on a real etcd.
//!
//! The process under test reads its offset from a file on every clock read
//! (`FAKETIME_TIMESTAMP_FILE`, `FAKETIME_NO_CACHE=1`); its monotonic clock stays real
//! (`FAKETIME_DONT_FAKE_MONOTONIC=1`), so timers and lease deadlines are unaffected. The file
//! is replaced by rename, so the server never reads a half-written offset. Without
//! libfaketime the tests skip, except on CI (`CI=true`), where that is a failure.
//!
//! A step back of at most 5 ms cannot be caught in the act through HTTP, but it can be made
//! with certainty: with the file switching between `+0` and `-0.003`, no reading is ever more
//! than 3 ms behind an earlier one, so every such step must be absorbed. That libfaketime
//! honours fractional offsets is checked on the server's own `/health` clock.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::etcd::Etcd;
use common::faketime::FakeClock;
use common::history::{History, Number, Recorder};
use common::server::{Client, Resp, Server, ServerOpts, assert_error, random_token};
use serde_json::Value;

/// How long a state change driven by a background task (100 ms clock tick, 1 s skew check,
/// 1 s heartbeat) may take on two busy cores.
const SETTLE: Duration = Duration::from_secs(10);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `timeout`.
fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The server's clock minus ours, ms, from `GET /health` (`now_ms`) at the round trip's middle.
fn clock_offset(s: &Server) -> i64 {
    let before = now_ms();
    let r = s.get("/health");
    let after = now_ms();
    assert_eq!(r.status, 200, "{}", r.text());
    let theirs = r.json()["now_ms"].as_i64().expect("now_ms");
    theirs - (before + after) / 2
}

/// Waits until the server's clock is `want_ms` (± 400 ms) off ours: the new offset is in use.
fn assert_clock_moved(s: &Server, want_ms: i64) {
    wait_for(
        &format!("server clock {want_ms:+} ms from ours"),
        Duration::from_secs(3),
        || ((clock_offset(s) - want_ms).abs() < 400).then_some(()),
    );
}

// ---------------------------------------------------------------------------------------
// Numbers

#[derive(Clone, Debug)]
struct Drawn {
    number: String,
    id: u64,
    degraded: bool,
}

fn drawn(v: &Value) -> Drawn {
    let d = Drawn {
        number: v["number"]
            .as_str()
            .expect("number is a string")
            .to_string(),
        id: v["id"]
            .as_str()
            .expect("id is a string")
            .parse()
            .expect("id is decimal"),
        degraded: v["degraded"].as_bool().expect("degraded is a bool"),
    };
    // Template `CLK{flag}-{SEQ:4}`: `D` exactly when degraded.
    let want = if d.degraded { "CLKD-" } else { "CLK-" };
    assert!(d.number.starts_with(want), "{{flag}} does not match: {v}");
    d
}

/// The numbers of a 200 response to `GET /numbers/{key}` (with or without `count`).
fn numbers_of(r: &Resp) -> Vec<Drawn> {
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    match v.get("numbers") {
        Some(list) => list
            .as_array()
            .expect("numbers array")
            .iter()
            .map(drawn)
            .collect(),
        None => vec![drawn(&v)],
    }
}

fn request(c: &mut Client, key: &str, count: u64) -> Resp {
    let path = if count == 1 {
        format!("/numbers/{key}")
    } else {
        format!("/numbers/{key}?count={count}")
    };
    c.request("GET", &path, &[], b"")
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// Every number drawn from one node process, one ordered stream of a test's [`History`]
/// (checked at the end with `assert_clean`: no number string or id repeated, across all
/// the test's nodes, and none going backwards on a node).
struct Ledger {
    rec: Recorder,
    last: Option<u64>,
    degraded: u64,
}

impl Ledger {
    fn new(history: &Arc<History>, node: &str) -> Ledger {
        Ledger {
            rec: history.recorder(node),
            last: None,
            degraded: 0,
        }
    }

    fn add(&mut self, list: Vec<Drawn>) -> Vec<Drawn> {
        let numbers: Vec<Number> = list
            .iter()
            .map(|d| Number {
                number: d.number.clone(),
                id: d.id.to_string(),
                degraded: d.degraded,
            })
            .collect();
        self.rec.record("CLK", &numbers);
        for d in &list {
            self.last = Some(d.id);
            self.degraded += u64::from(d.degraded);
        }
        list
    }

    /// Draws `count` numbers (one request) and records them.
    fn draw(&mut self, c: &mut Client, key: &str, count: u64) -> Vec<Drawn> {
        let list = numbers_of(&request(c, key, count));
        assert_eq!(list.len() as u64, count);
        self.add(list)
    }

    /// Singles and batches: `rounds` × (one, then a batch of `batch`).
    fn draw_mixed(&mut self, c: &mut Client, key: &str, rounds: usize, batch: u64) -> Vec<Drawn> {
        let mut all = Vec::new();
        for _ in 0..rounds {
            all.extend(self.draw(c, key, 1));
            all.extend(self.draw(c, key, batch));
        }
        all
    }
}

/// `GET /ids/{id}`.
fn decode(s: &Server, id: u64) -> Value {
    let r = s.get(&format!("/ids/{id}"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn register(s: &Server, key: &str) {
    s.register(key, r#"{"format":"CLK{flag}-{SEQ:4}","mode":"snowflake"}"#);
}

// ---------------------------------------------------------------------------------------
// Readiness, metrics, logs

/// `/ready`: (HTTP status, `status`, `reasons`).
fn ready(s: &Server) -> (u16, String, Vec<String>) {
    let r = s.get("/ready");
    let v = r.json();
    let reasons = v["reasons"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    (
        r.status,
        v["status"].as_str().unwrap_or_default().to_string(),
        reasons,
    )
}

fn wait_ready(s: &Server, timeout: Duration) {
    wait_for("/ready 200", timeout, || (ready(s).0 == 200).then_some(()));
}

/// The value of one series (`name{labels}` exactly as exported) in `/metrics`.
/// `numgen_clock_offset_seconds`, in ms.
fn offset_ms(s: &Server) -> f64 {
    metric(s, "numgen_clock_offset_seconds") * 1000.0
}

fn metric(s: &Server, series: &str) -> f64 {
    let text = s.get("/metrics").text();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no series {series} in /metrics:\n{text}"))
}

/// WARN records about degraded-number episodes with `reason`: (starts, ends).
fn episodes(s: &Server, reason: &str) -> (Vec<Value>, Vec<Value>) {
    s.log_records()
        .into_iter()
        .filter(|r| r["level"] == "WARN" && r["reason"] == reason)
        .partition(|r| r.get("degraded_numbers").is_none())
}

fn wait_episode_end(s: &Server, reason: &str) -> Value {
    wait_for(&format!("end of a {reason} episode logged"), SETTLE, || {
        episodes(s, reason).1.into_iter().next()
    })
}

fn start_standalone(clock: &FakeClock, opts: ServerOpts) -> Server {
    let s = Server::start(clock.apply(opts));
    register(&s, "CLK");
    // libfaketime is really in the process: its clock is ours (offset `+0`).
    assert_clock_moved(&s, 0);
    s
}

// ---------------------------------------------------------------------------------------
// Standalone

#[test]
fn a_ten_second_step_back_is_degraded_from_the_last_timestamp_until_the_clock_passes_it() {
    let Some(clock) = FakeClock::new("+0") else {
        return;
    };
    let s = start_standalone(&clock, ServerOpts::default());
    let mut c = s.client();
    let history = History::new();
    let mut ledger = Ledger::new(&history, "standalone");

    let before = ledger.draw_mixed(&mut c, "CLK", 10, 50);
    assert!(before.iter().all(|d| !d.degraded), "{before:?}");
    assert_eq!(ready(&s).0, 200);
    let last_ts = decode(&s, ledger.last.unwrap_or_default())["timestamp_ms"]
        .as_i64()
        .expect("timestamp_ms");

    clock.set("-10s");
    assert_clock_moved(&s, -10_000);
    let mut during = Vec::new();
    for round in 0..5 {
        during.extend(ledger.draw_mixed(&mut c, "CLK", 20, 200 * (round + 1)));
        let (status, state, reasons) = ready(&s);
        assert_eq!(
            (status, state.as_str(), reasons),
            (503, "degraded", vec!["clock_backward".to_string()])
        );
    }
    assert!(
        during.iter().all(|d| d.degraded),
        "a normal number while the clock is 10 s back: {:?}",
        during.iter().find(|d| !d.degraded)
    );
    // Text output carries the flag too.
    let r = c
        .request(
            "GET",
            "/numbers/CLK?count=3",
            &[("Accept", "text/plain")],
            b"",
        )
        .expect("text/plain batch");
    assert_eq!(r.status, 200, "{}", r.text());
    let lines: Vec<String> = r.text().lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines.iter().all(|l| l.starts_with("CLKD-")), "{lines:?}");
    // Those three are degraded too; the ledger learns about them through the next draw.
    let text_degraded = 3;
    // The logical clock runs on from the last timestamp, not from the (earlier) wall clock.
    for d in [
        &during[0],
        &during[during.len() / 2],
        &during[during.len() - 1],
    ] {
        let v = decode(&s, d.id);
        assert_eq!(v["degraded"], true, "{v}");
        let ts = v["timestamp_ms"].as_i64().expect("timestamp_ms");
        assert!(
            ts >= last_ts && ts < last_ts + 2_000,
            "degraded timestamp {ts} is not just after the last one {last_ts}: {v}"
        );
    }
    let start = wait_for("start of the episode logged", SETTLE, || {
        episodes(&s, "clock_backward").0.into_iter().next()
    });
    let msg = start["message"].as_str().unwrap_or_default();
    assert!(msg.contains("behind"), "{start}");

    // Rather than wait 10 s, put the clock right: it is past the last timestamp at once.
    clock.set("+0");
    assert_clock_moved(&s, 0);
    wait_ready(&s, SETTLE);
    let after = ledger.draw_mixed(&mut c, "CLK", 10, 50);
    assert!(
        after.iter().all(|d| !d.degraded),
        "{:?}",
        after.iter().find(|d| d.degraded)
    );
    assert_eq!(
        decode(&s, after[after.len() - 1].id)["degraded"],
        false,
        "normal again"
    );

    let marked = ledger.degraded + text_degraded;
    let end = wait_episode_end(&s, "clock_backward");
    assert_eq!(end["degraded_numbers"].as_u64(), Some(marked), "{end}");
    let (starts, ends) = episodes(&s, "clock_backward");
    assert_eq!(
        (starts.len(), ends.len()),
        (1, 1),
        "one WARN at start, one at end: {starts:?} {ends:?}"
    );
    assert_eq!(
        metric(&s, r#"numgen_degraded_total{reason="clock_backward"}"#),
        marked as f64
    );
    assert_eq!(
        metric(&s, r#"numgen_degraded_total{reason="clock_skew"}"#),
        0.0
    );
    drop(ledger);
    history.assert_clean();
}

#[test]
fn under_reject_a_ten_second_step_back_answers_503_until_the_clock_passes_the_last_timestamp() {
    let Some(clock) = FakeClock::new("+0") else {
        return;
    };
    let s = start_standalone(
        &clock,
        ServerOpts::default()
            .arg("--on-clock-backward")
            .arg("reject"),
    );
    let mut c = s.client();
    let history = History::new();
    let mut ledger = Ledger::new(&history, "standalone");
    let before = ledger.draw_mixed(&mut c, "CLK", 5, 100);
    assert!(before.iter().all(|d| !d.degraded));

    clock.set("-10s");
    assert_clock_moved(&s, -10_000);
    for count in [1, 1, 500, 1, 10_000] {
        let r = request(&mut c, "CLK", count);
        assert_error(&r, 503, "NOT_READY");
        let retry: u64 = r
            .header("retry-after")
            .unwrap_or_else(|| panic!("503 without Retry-After: {:?}", r.headers))
            .parse()
            .expect("Retry-After in seconds");
        assert!((1..=11).contains(&retry), "Retry-After {retry}");
    }
    let (status, state, reasons) = ready(&s);
    assert_eq!(
        (status, state.as_str(), reasons),
        (503, "not_ready", vec!["clock_backward".to_string()])
    );
    wait_for("start of the episode logged", SETTLE, || {
        episodes(&s, "clock_backward").0.into_iter().next()
    });

    clock.set("+0");
    assert_clock_moved(&s, 0);
    wait_ready(&s, SETTLE);
    let after = ledger.draw_mixed(&mut c, "CLK", 5, 100);
    assert!(after.iter().all(|d| !d.degraded));

    let end = wait_episode_end(&s, "clock_backward");
    assert_eq!(end["degraded_numbers"].as_u64(), Some(0), "{end}");
    let (starts, ends) = episodes(&s, "clock_backward");
    assert_eq!((starts.len(), ends.len()), (1, 1), "{starts:?} {ends:?}");
    assert_eq!(
        metric(&s, r#"numgen_degraded_total{reason="clock_backward"}"#),
        0.0
    );
    drop(ledger);
    history.assert_clean();
}

#[test]
fn steps_back_within_max_backward_wait_are_absorbed_and_larger_ones_are_not() {
    let Some(clock) = FakeClock::new("+0") else {
        return;
    };
    // Default max_backward_wait_ms = 5: back and forth by 3 ms, many times.
    let s = start_standalone(&clock, ServerOpts::default());
    let mut c = s.client();
    let history = History::new();
    let mut ledger = Ledger::new(&history, "first");
    for _ in 0..25 {
        clock.set("-0.003");
        ledger.draw_mixed(&mut c, "CLK", 2, 100);
        clock.set("+0");
        ledger.draw_mixed(&mut c, "CLK", 2, 100);
    }
    assert_eq!(ledger.degraded, 0, "a 3 ms step back degraded numbers");
    assert_eq!(ready(&s).0, 200);
    // Fractional offsets are honoured (so the 3 ms steps were real): 1.5 s, not 1 or 2 s.
    clock.set("-1.5");
    assert_clock_moved(&s, -1_500);
    // … and a step that size is an episode.
    wait_for("a 1.5 s step starts an episode", SETTLE, || {
        episodes(&s, "clock_backward").0.into_iter().next()
    });
    clock.set("+0");
    wait_ready(&s, SETTLE);
    assert_eq!(
        episodes(&s, "clock_backward").0.len(),
        1,
        "only the 1.5 s step is an episode"
    );
    drop(ledger);
    history.assert_clean();
    drop(s);

    // The threshold is the configured one: 1000 ms absorbs a 500 ms step, not a 3 s one.
    let s = start_standalone(
        &clock,
        ServerOpts::default()
            .arg("--max-backward-wait-ms")
            .arg("1000"),
    );
    let mut c = s.client();
    // Another data dir: another node's numbers, which may repeat the first one's.
    let history = History::new();
    let mut ledger = Ledger::new(&history, "second");
    ledger.draw_mixed(&mut c, "CLK", 3, 100);
    clock.set("-0.5");
    assert_clock_moved(&s, -500);
    for _ in 0..5 {
        ledger.draw_mixed(&mut c, "CLK", 2, 100);
        assert_eq!(ready(&s).0, 200);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(ledger.degraded, 0, "a 500 ms step back with a 1000 ms wait");
    clock.set("+0");
    assert_clock_moved(&s, 0);
    clock.set("-3");
    assert_clock_moved(&s, -3_000);
    let during = ledger.draw_mixed(&mut c, "CLK", 3, 100);
    assert!(during.iter().all(|d| d.degraded), "a 3 s step back");
    assert_eq!(ready(&s).0, 503);
    clock.set("+0");
    wait_ready(&s, SETTLE);
    let after = ledger.draw_mixed(&mut c, "CLK", 3, 100);
    assert!(after.iter().all(|d| !d.degraded));
    let (starts, _) = episodes(&s, "clock_backward");
    assert_eq!(
        starts.len(),
        1,
        "only the 3 s step is an episode: {starts:?}"
    );
    drop(ledger);
    history.assert_clean();
}

#[test]
fn a_forward_jump_is_logged_and_counted_and_numbers_stay_valid() {
    let Some(clock) = FakeClock::new("+0") else {
        return;
    };
    let s = start_standalone(&clock, ServerOpts::default());
    let mut c = s.client();
    let history = History::new();
    let mut ledger = Ledger::new(&history, "standalone");
    ledger.draw_mixed(&mut c, "CLK", 5, 100);
    assert_eq!(metric(&s, "numgen_clock_forward_jumps_total"), 0.0);

    clock.set("+30s");
    assert_clock_moved(&s, 30_000);
    let jump = wait_for("forward jump logged", SETTLE, || {
        s.log_records()
            .into_iter()
            .find(|r| r["level"] == "WARN" && r.get("jump_ms").is_some())
    });
    let ms = jump["jump_ms"].as_i64().unwrap_or_default();
    assert!((29_000..=31_000).contains(&ms), "{jump}");
    assert_eq!(metric(&s, "numgen_clock_forward_jumps_total"), 1.0);

    let after = ledger.draw_mixed(&mut c, "CLK", 10, 200);
    assert!(
        after.iter().all(|d| !d.degraded),
        "a jump forward degrades nothing"
    );
    let last = decode(&s, after[after.len() - 1].id);
    let ts = last["timestamp_ms"].as_i64().expect("timestamp_ms");
    assert!(
        (ts - (now_ms() + 30_000)).abs() < 3_000,
        "timestamp {ts} should follow the new clock: {last}"
    );
    assert_eq!(ready(&s).0, 200);
    assert_eq!(episodes(&s, "clock_backward").0.len(), 0);
    drop(ledger);
    history.assert_clean();
}

// ---------------------------------------------------------------------------------------
// Cluster: peer skew

/// The `/cluster/nodes` entry of `s`, as seen through `via`.
fn node_entry(via: &Server, s: &Server) -> Option<Value> {
    let r = via.get("/cluster/nodes");
    assert_eq!(r.status, 200, "{}", r.text());
    let addr = s.addr().to_string();
    r.json()["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["addr"] == addr.as_str())
        .cloned()
}

fn published_offset(via: &Server, s: &Server) -> Option<f64> {
    node_entry(via, s)?["clock_offset_ms"].as_f64()
}

#[test]
fn a_node_five_seconds_ahead_of_its_peers_is_degraded_until_its_clock_is_put_right() {
    let Some(clock) = FakeClock::new("+5s") else {
        return;
    };
    let Some(etcd) = Etcd::start() else {
        return;
    };
    let root = format!("/clock-test-{}", random_token());
    let cluster = || {
        ServerOpts::default()
            .admin_token("t")
            .arg("--etcd-endpoints")
            .arg(etcd.endpoint())
            .arg("--etcd-root")
            .arg(root.as_str())
            .arg("--lease-ttl-s")
            .arg("3")
    };
    let a = Server::start(cluster());
    let b = Server::start(cluster());
    let fast = Server::start(clock.apply(cluster()));
    assert_clock_moved(&fast, 5_000);
    assert_clock_moved(&a, 0);
    let nodes = [&a, &b, &fast];
    for s in nodes {
        wait_for("a worker ID", SETTLE, || {
            (metric(s, "numgen_worker_id") >= 0.0).then_some(())
        });
    }
    register(&a, "CLK");
    let mut clients: Vec<Client> = nodes.iter().map(|s| s.client()).collect();
    let history = History::new();
    let mut ledgers: Vec<Ledger> = ["a", "b", "fast"]
        .iter()
        .map(|n| Ledger::new(&history, n))
        .collect();
    for i in 0..3 {
        let c = &mut clients[i];
        let got = wait_for("the prefix is known on every node", SETTLE, || {
            let r = request(c, "CLK", 1);
            (r.status == 200).then_some(r)
        });
        ledgers[i].add(numbers_of(&got));
    }

    // The fast node judges itself against the median of three clocks.
    wait_for("the fast node is marked skewed", 2 * SETTLE, || {
        let (status, _, reasons) = ready(&fast);
        (status == 503 && reasons.iter().any(|r| r == "clock_skew")).then_some(())
    });
    let (_, state, reasons) = ready(&fast);
    assert_eq!(
        (state.as_str(), reasons),
        ("degraded", vec!["clock_skew".to_string()])
    );
    let offset = offset_ms(&fast);
    assert!(
        (offset - 5_000.0).abs() < 500.0,
        "fast node offset {offset}"
    );
    wait_for("offsets published in /cluster/nodes", SETTLE, || {
        let f = published_offset(&a, &fast)?;
        let pa = published_offset(&b, &a)?;
        let pb = published_offset(&fast, &b)?;
        ((f - 5_000.0).abs() < 500.0 && pa.abs() < 500.0 && pb.abs() < 500.0).then_some(())
    });
    for peer in [&a, &b] {
        assert_eq!(ready(peer).0, 200, "a peer of the fast node stays ready");
        let o = offset_ms(peer);
        assert!(o.abs() < 500.0, "peer offset {o}");
    }
    for round in 0..5 {
        for i in 0..3 {
            let got = ledgers[i].draw_mixed(&mut clients[i], "CLK", 2, 100 * (round + 1));
            let want_degraded = i == 2;
            assert!(
                got.iter().all(|d| d.degraded == want_degraded),
                "node {i}: {:?}",
                got.iter().find(|d| d.degraded != want_degraded)
            );
        }
    }
    let last_fast = ledgers[2].last.unwrap_or_default();
    assert_eq!(decode(&fast, last_fast)["degraded"], true);
    assert_eq!(
        decode(&a, last_fast)["degraded"],
        true,
        "any node decodes it"
    );
    let skew_start = wait_for("start of the skew episode logged", SETTLE, || {
        episodes(&fast, "clock_skew").0.into_iter().next()
    });
    assert!(
        metric(&fast, r#"numgen_degraded_total{reason="clock_skew"}"#)
            >= ledgers[2].degraded as f64,
        "{skew_start}"
    );
    for peer in [&a, &b] {
        assert!(
            episodes(peer, "clock_skew").0.is_empty(),
            "a peer was judged skewed"
        );
    }

    // Put the clock right. Its numbers so far carry timestamps 5 s ahead, so it is first in a
    // backward episode for about 5 s (degraded, from its last timestamp), then normal.
    clock.set("+0");
    assert_clock_moved(&fast, 0);
    wait_for("the fast node is normal again", 3 * SETTLE, || {
        ledgers[2].draw_mixed(&mut clients[2], "CLK", 1, 20);
        (ready(&fast).0 == 200).then_some(())
    });
    let after = ledgers[2].draw_mixed(&mut clients[2], "CLK", 5, 100);
    assert!(
        after.iter().all(|d| !d.degraded),
        "{:?}",
        after.iter().find(|d| d.degraded)
    );
    let offset = offset_ms(&fast);
    assert!(offset.abs() < 500.0, "offset after the fix {offset}");
    wait_for("the fixed offset is published", SETTLE, || {
        (published_offset(&a, &fast)?.abs() < 500.0).then_some(())
    });
    let end = wait_episode_end(&fast, "clock_skew");
    assert_eq!(
        end["degraded_numbers"].as_f64(),
        Some(metric(
            &fast,
            r#"numgen_degraded_total{reason="clock_skew"}"#
        )),
        "{end}"
    );
    let (starts, ends) = episodes(&fast, "clock_skew");
    assert_eq!((starts.len(), ends.len()), (1, 1), "{starts:?} {ends:?}");
    for i in 0..2 {
        let got = ledgers[i].draw_mixed(&mut clients[i], "CLK", 2, 100);
        assert!(got.iter().all(|d| !d.degraded));
    }

    // Nothing repeats across the three nodes.
    drop(ledgers);
    let report = history.assert_clean();
    assert!(report.numbers > 3_000, "{}", report.numbers);
}

// ---------------------------------------------------------------------------------------
// Cluster: a clock a year ahead (issue 10, finding 9)

/// Cluster-mode options on `etcd` under `root` (3 s leases: the window is 4 s).
fn cluster_opts(etcd: &Etcd, root: &str) -> ServerOpts {
    ServerOpts::default()
        .admin_token("t")
        .arg("--etcd-endpoints")
        .arg(etcd.endpoint())
        .arg("--etcd-root")
        .arg(root)
        .arg("--lease-ttl-s")
        .arg("3")
}

/// The persisted high timestamp of worker `w` (datacenter 0) under `root`.
fn etcd_mark(etcd: &Etcd, root: &str, w: i64) -> Option<u64> {
    let key = format!("{root}/hwm/0/{w}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut c = etcd_client::Client::connect([etcd.endpoint()], None)
            .await
            .expect("connect to etcd");
        let r = c.get(key, None).await.expect("get");
        r.kvs().first()?.value_str().ok()?.parse().ok()
    })
}

const YEAR_MS: i64 = 365 * 86_400_000;

/// A node whose clock is a year ahead starts among two normal peers: they judge it ahead
/// before it claims a worker ID, so it reserves — and issues, degraded — on their time. Its
/// worker ID's mark never goes beyond the peers' time plus the reservation window (4 s),
/// so the ID stays usable for everyone else.
#[test]
fn a_node_a_year_ahead_of_two_peers_never_pushes_its_mark_past_their_time() {
    let Some(clock) = FakeClock::new("+365d") else {
        return;
    };
    let Some(etcd) = Etcd::start() else {
        return;
    };
    let root = format!("/year-ahead-{}", random_token());
    let a = Server::start(cluster_opts(&etcd, &root));
    let b = Server::start(cluster_opts(&etcd, &root));
    for s in [&a, &b] {
        wait_ready(s, SETTLE);
    }
    let fast = Server::start(clock.apply(cluster_opts(&etcd, &root)));
    assert_clock_moved(&fast, YEAR_MS);
    let worker = wait_for("the fast node's worker ID", SETTLE, || {
        let w = metric(&fast, "numgen_worker_id") as i64;
        (w >= 0).then_some(w)
    });
    register(&a, "CLK");
    let history = History::new();
    let nodes = [("a", &a), ("b", &b), ("fast", &fast)];
    let mut clients: Vec<Client> = nodes.iter().map(|(_, s)| s.client()).collect();
    let mut ledgers: Vec<Ledger> = nodes
        .iter()
        .map(|(n, _)| Ledger::new(&history, n))
        .collect();
    // Several renewals of the reservation (every second or so): the mark stays near the
    // peers' time, never a year ahead.
    let until = Instant::now() + Duration::from_secs(4);
    let mut highest_ahead = i64::MIN;
    while Instant::now() < until {
        for i in 0..3 {
            let r = request(&mut clients[i], "CLK", 20);
            if r.status == 200 {
                let got = ledgers[i].add(numbers_of(&r));
                if i == 2 {
                    assert!(got.iter().all(|d| d.degraded), "{got:?}");
                }
            }
        }
        let mark = etcd_mark(&etcd, &root, worker).expect("the fast node's mark");
        let ahead = mark as i64 - now_ms();
        highest_ahead = highest_ahead.max(ahead);
        assert!(
            ahead < 6_000,
            "worker {worker}'s mark is {ahead} ms ahead of the peers' time\n{}",
            fast.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("measure: the fast node's mark at most {highest_ahead} ms ahead of real time");
    assert!(ledgers[2].degraded > 0, "the fast node issued nothing");
    let (status, state, reasons) = ready(&fast);
    assert_eq!(
        (status, state.as_str(), reasons),
        (503, "degraded", vec!["clock_skew".to_string()])
    );
    // Its numbers carry the peers' time, not its own.
    let last = decode(&fast, ledgers[2].last.unwrap_or_default());
    let ts = last["timestamp_ms"].as_i64().expect("timestamp_ms");
    assert!((ts - now_ms()).abs() < 6_000, "{last}");
    drop(ledgers);
    history.assert_clean();
}

/// A node ran alone with its clock a year ahead (no peers to judge it) and wrote that into
/// its worker ID's mark. Restarted with its clock put right, it skips that worker ID (WARN
/// naming it) and takes another, ready and normal at once, rather than wait a year.
#[test]
fn a_restart_that_finds_a_far_ahead_mark_skips_that_worker_id() {
    let Some(clock) = FakeClock::new("+365d") else {
        return;
    };
    let Some(etcd) = Etcd::start() else {
        return;
    };
    let root = format!("/far-mark-{}", random_token());
    let mut s = Server::start(clock.apply(cluster_opts(&etcd, &root)));
    wait_ready(&s, SETTLE);
    assert_eq!(metric(&s, "numgen_worker_id"), 0.0);
    register(&s, "CLK");
    let history = History::new();
    let mut before = Ledger::new(&history, "a year ahead");
    before.draw_mixed(&mut s.client(), "CLK", 3, 100);
    let mark = etcd_mark(&etcd, &root, 0).expect("worker 0's mark");
    assert!(mark as i64 - now_ms() > YEAR_MS - 60_000, "mark {mark}");

    clock.set("+0");
    s.restart();
    assert_clock_moved(&s, 0);
    let warn = wait_for("a WARN naming the skipped worker ID", SETTLE, || {
        s.log_records().into_iter().find(|r| {
            r["level"] == "WARN"
                && r["worker"] == 0
                && r["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("implausibly far ahead"))
        })
    });
    println!("observe: {warn}");
    wait_ready(&s, SETTLE);
    assert_eq!(metric(&s, "numgen_worker_id"), 1.0);
    let mut after = Ledger::new(&history, "put right");
    let got = after.draw_mixed(&mut s.client(), "CLK", 5, 100);
    assert!(got.iter().all(|d| !d.degraded), "{got:?}");
    let ts = decode(&s, after.last.unwrap_or_default())["timestamp_ms"]
        .as_i64()
        .expect("timestamp_ms");
    assert!((ts - now_ms()).abs() < 5_000, "timestamp {ts}");
    drop((before, after));
    history.assert_clean();
}
