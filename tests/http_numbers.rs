//! Black-box tests of the numbers route (SPEC 3.2) against the real `numgen` binary:
//! single numbers, batches and text, headers, keep-alive, overflow at the top of u64, the
//! sequence tail given back on a graceful stop, NOT_READY after a crash, and issuing
//! concurrently with config changes without a repeat.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::api::{batch_of, next, number_of};
use common::server::{Server, ServerOpts, assert_error};
use serde_json::json;

#[test]
fn numbers_batches_text_and_headers() {
    let s = Server::start(ServerOpts::default());
    s.register("SQ", r#"{"format":"{prefix}-{SEQ:5}","mode":"sequence"}"#);

    let r = s.get("/numbers/SQ");
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json"))
    );
    assert_eq!(number_of(&r), ("SQ-00001".into(), 1));
    let r = s.request("POST", "/numbers/SQ", &[], b"");
    assert_eq!(number_of(&r), ("SQ-00002".into(), 2));

    let r = s.get("/numbers/SQ?count=5");
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let batch = batch_of(&r);
    let ids: Vec<u64> = batch.iter().map(|b| b.1).collect();
    assert_eq!(ids, vec![3, 4, 5, 6, 7]);
    assert_eq!(batch[0].0, "SQ-00003");
    let one = batch_of(&s.get("/numbers/SQ?count=1"));
    assert_eq!(one, vec![("SQ-00008".into(), 8)]);

    // Text: one number, then one per line; still not cached.
    let text = [("Accept", "text/plain")];
    let r = s.request("GET", "/numbers/SQ", &text, b"");
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain"))
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.text().trim_end(), "SQ-00009");
    let r = s.request("POST", "/numbers/SQ?count=3", &text, b"");
    assert_eq!(
        r.text().lines().collect::<Vec<_>>(),
        ["SQ-00010", "SQ-00011", "SQ-00012"]
    );
    let r = s.request(
        "GET",
        "/numbers/SQ",
        &[("Accept", "application/json;q=0.5, text/plain")],
        b"",
    );
    assert_eq!(r.text().trim_end(), "SQ-00013");
    let r = s.request("GET", "/numbers/SQ", &[("Accept", "*/*")], b"");
    assert_eq!(number_of(&r).1, 14);
}

#[test]
fn snowflake_batches_increase_in_issue_order_and_keep_alive_works() {
    let s = Server::start(ServerOpts::default());
    s.register("SF", r#"{"format":"SF-{SEQ:3}","mode":"snowflake"}"#);
    let text = [("Accept", "text/plain")];
    // Snowflake: strictly increasing in issue order, within and across batches.
    let mut last = 0u64;
    let mut seen = HashSet::new();
    for count in [1, 7, 100, 4096, 10_000] {
        let batch = batch_of(&s.get(&format!("/numbers/SF?count={count}")));
        assert_eq!(batch.len(), count);
        for (number, id) in batch {
            assert!(id > last, "{id} after {last}");
            assert_eq!(number, format!("SF-{id}"));
            assert!(seen.insert(id));
            last = id;
        }
    }
    let r = s.request("GET", "/numbers/SF?count=3", &text, b"");
    let lines: Vec<u64> = r
        .text()
        .lines()
        .map(|l| l.trim_start_matches("SF-").parse().expect("number"))
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(
        lines[0] > last && lines.windows(2).all(|w| w[0] < w[1]),
        "{lines:?}"
    );

    // Keep-alive: many requests on one connection.
    let mut c = s.client();
    let mut prev = 0;
    for _ in 0..300 {
        let r = c
            .request("GET", "/api/numbers/SF", &[], b"")
            .expect("keep-alive");
        let (_, id) = number_of(&r);
        assert!(id > prev);
        prev = id;
    }
}

#[test]
fn refused_overflowing_batches_do_not_burn_the_last_numbers() {
    let s = Server::start(ServerOpts::default());
    for (key, strict) in [("MAXBLOCK", false), ("MAXSTRICT", true)] {
        s.register(
            key,
            &json!({
                "format": "M{SEQ:3}",
                "mode": "sequence",
                "strict": strict,
                "initial_seq": (u64::MAX - 2).to_string(),
            })
            .to_string(),
        );
        // Two numbers are left: a batch of three is refused...
        assert_error(
            &s.get(&format!("/numbers/{key}?count=3")),
            409,
            "SEQUENCE_OVERFLOW",
        );
        // ...and issued nothing, so both are still there.
        let got = batch_of(&s.get(&format!("/numbers/{key}?count=2")));
        assert_eq!(
            got.iter().map(|g| g.1).collect::<Vec<_>>(),
            [u64::MAX - 1, u64::MAX],
            "{key}"
        );
        assert_error(&s.get(&format!("/numbers/{key}")), 409, "SEQUENCE_OVERFLOW");
    }
}

#[test]
fn a_graceful_stop_gives_the_sequence_tail_back() {
    let mut s = Server::start(ServerOpts::default());
    s.register("TAIL", r#"{"format":"T-{SEQ:3}","mode":"sequence"}"#);
    s.register("TAILSF", r#"{"format":"S-{SEQ:3}","mode":"snowflake"}"#);
    assert_eq!(batch_of(&s.get("/numbers/TAIL?count=3")).len(), 3);
    let (_, snow) = next(&s, "TAILSF");
    let status = s.terminate();
    assert!(status.success(), "SIGTERM: {status}");
    s.restart();
    // The block's unused numbers went back: the counter goes on without a gap.
    assert_eq!(next(&s, "TAIL").0, "T-004");
    assert!(next(&s, "TAILSF").1 > snow);
    assert_eq!(s.get("/ready").status, 200);
}

#[test]
fn not_ready_while_the_clock_is_behind_a_crashed_nodes_reservation() {
    let mut s = Server::start(ServerOpts::default());
    s.register("NR", r#"{"format":"NR-{SEQ:3}","mode":"snowflake"}"#);
    s.register("NRSEQ", r#"{"format":"NS-{SEQ:3}","mode":"sequence"}"#);
    let (_, before) = next(&s, "NR");
    // A crash leaves timestamps reserved ahead of the clock; the restarted node waits.
    s.kill9();
    s.restart();
    let r = s.get("/numbers/NR");
    if r.status == 200 {
        // The restart took longer than the reservation window: nothing to see.
        eprintln!("restart outlasted the reservation window; NOT_READY not observed");
        return;
    }
    assert_error(&r, 503, "NOT_READY");
    // Logged once where it became a response: a WARN (an expected state), with the route.
    let logged = s.wait_for_log(Duration::from_secs(5), |l| {
        l["level"] == "WARN" && l["code"] == "NOT_READY" && l["route"] == "/numbers/{key}"
    });
    assert!(logged.is_some(), "no WARN for the 503:\n{}", s.logs());
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=5).contains(&retry), "Retry-After {retry}");
    let ready = s.get("/ready");
    if ready.status == 503 {
        let v = ready.json();
        assert_eq!(v["status"], "not_ready");
        assert!(
            v["reasons"].as_array().is_some_and(|r| !r.is_empty()),
            "{v}"
        );
    }
    // Sequence numbers do not depend on the clock; health is fine meanwhile.
    assert_eq!(next(&s, "NRSEQ").0, "NS-001");
    assert_eq!(s.get("/health").status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = s.get("/numbers/NR");
        if r.status == 200 {
            assert!(number_of(&r).1 > before);
            break;
        }
        assert_error(&r, 503, "NOT_READY");
        assert!(Instant::now() < deadline, "still not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(s.get("/ready").status, 200);
}

fn seq_config(literal: &str) -> String {
    json!({"format": format!("{literal}-{{SEQ:6}}"), "mode": "sequence"}).to_string()
}

fn snow_config(literal: &str) -> String {
    json!({"format": format!("{literal}-{{SEQ:3}}"), "mode": "snowflake"}).to_string()
}

/// Replaces `CSEQ` and `CSNOW` with another format each round, every third round also
/// deletes and registers them again, until `stop`; returns how many rounds it made.
fn churn_configs(s: &Server, stop: &std::sync::atomic::AtomicBool) -> usize {
    let mut round = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        round += 1;
        let f = if round % 2 == 0 { "Q" } else { "R" };
        for (key, body) in [("CSEQ", seq_config(f)), ("CSNOW", snow_config(f))] {
            let path = format!("/prefix-configs/{key}");
            assert_eq!(s.admin("PUT", &path, &body).status, 200);
            if round % 3 == 0 {
                assert_eq!(s.admin("DELETE", &path, "").status, 200);
                assert_eq!(s.admin("POST", &path, &body).status, 200);
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    round
}

/// Issues from `threads` keep-alive connections while another replaces, deletes and
/// registers the prefixes again: no number repeats, and each connection sees increasing
/// IDs per prefix.
#[test]
fn concurrent_issuing_across_config_changes_never_repeats() {
    let s = Server::start(ServerOpts::default());
    s.register("CSEQ", &seq_config("Q"));
    s.register(
        "CSTRICT",
        r#"{"format":"T{SEQ:3}","mode":"sequence","strict":true}"#,
    );
    s.register("CSNOW", &snow_config("W"));
    let keys = ["CSEQ", "CSTRICT", "CSNOW"];
    let stop = std::sync::atomic::AtomicBool::new(false);
    let results: Vec<Vec<(usize, u64)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..6)
            .map(|t| {
                let s = &s;
                scope.spawn(move || {
                    let mut c = s.client();
                    let mut got = Vec::new();
                    let mut last = [0u64; 3];
                    for i in 0..250 {
                        let k = (i + t) % keys.len();
                        let count = 1 + (i * 7 + t) % 5;
                        let r = c
                            .request(
                                "GET",
                                &format!("/numbers/{}?count={count}", keys[k]),
                                &[],
                                b"",
                            )
                            .expect("request");
                        if r.status == 400 {
                            // Deleted for a moment.
                            assert_eq!(r.json()["code"], "PREFIX_NOT_REGISTERED");
                            continue;
                        }
                        if r.status == 503 {
                            // Replaced under the request on every try (the churn is
                            // faster than a first block on a loaded machine): the
                            // contract's answer, to retry.
                            let v = r.json();
                            assert_eq!(v["code"], "NOT_READY", "{v}");
                            let why = v["error"].as_str().unwrap_or_default();
                            assert!(why.contains("changed while issuing"), "{v}");
                            continue;
                        }
                        for (_, id) in batch_of(&r) {
                            assert!(id > last[k], "{}: {id} after {}", keys[k], last[k]);
                            last[k] = id;
                            got.push((k, id));
                        }
                    }
                    got
                })
            })
            .collect();
        let admin = scope.spawn(|| churn_configs(&s, &stop));
        // Join every worker before unwrapping any: the churn must stop even when a
        // worker failed, or the scope would wait on it for ever.
        let joined: Vec<_> = workers.into_iter().map(|w| w.join()).collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let rounds = admin.join().expect("admin");
        let results = joined
            .into_iter()
            .map(|r| r.unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect();
        assert!(rounds > 3, "only {rounds} config changes");
        results
    });
    let mut seen = HashSet::new();
    let mut total = 0;
    for (k, id) in results.into_iter().flatten() {
        total += 1;
        assert!(seen.insert((k, id)), "{} issued {id} twice", keys[k]);
    }
    assert!(total > 1000, "only {total} numbers");
    let strict: Vec<u64> = {
        let mut v: Vec<u64> = seen.iter().filter(|(k, _)| *k == 1).map(|p| p.1).collect();
        v.sort_unstable();
        v
    };
    // Strict and never replaced: dense from 1.
    assert_eq!(strict, (1..=strict.len() as u64).collect::<Vec<_>>());
}
