//! Worker IDs in cluster mode (SPEC sections 1.1, 4 and 5): how nodes claim, hand over and
//! take over worker IDs, with real etcd and real `numgen` binaries on loopback.
//!
//! - [`crashes_restarts_and_graceful_stops_never_repeat`]: kill -9 and restart, SIGTERM
//!   frees the worker ID at once, a crashed node's ID is taken over above its reservation.
//! - [`a_taken_over_worker_id_starts_above_its_reserved_high_timestamp`]: a high timestamp
//!   written ahead of the clock in etcd holds the next owner of the ID above it.
//! - [`a_node_without_a_free_worker_id_waits_for_one`]: 2 worker bits, a fifth node.
//!
//! The worker-ID source alone (claim, high timestamp, release) runs in
//! `tests/store_conformance.rs`, beside the standalone one.
//!
//! Each test starts its own etcd and uses its own etcd root, so tests stay independent and
//! may run in parallel. Tests that wait for a lease to expire or a node to be fenced use
//! 3 s leases (the minimum) to stay short; the others keep the default 10 s, so that an
//! etcd stalled for a few seconds by a loaded machine cannot fail them for a reason they
//! do not test. Timing asserts are generous bounds ("within a few seconds"), never tight.
//! Measurements are printed: run with `--nocapture` to see them.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::etcd::Etcd;
use common::server::{Server, assert_error};
use serde_json::Value;

#[test]
fn crashes_restarts_and_graceful_stops_never_repeat() {
    let Some(etcd) = Etcd::start() else { return };
    let c = Cluster::new(&etcd, "restarts", SHORT_TTL_S);
    let (mut a, _) = c.start_ready(&[]);
    let (mut b, _) = c.start_ready(&[]);
    let (survivor, _) = c.start_ready(&[]);
    assert_eq!(
        (
            worker_metric(&a),
            worker_metric(&b),
            worker_metric(&survivor)
        ),
        (0, 1, 2)
    );
    register(&a, "SF", "snowflake");
    register(&a, "SQ", "sequence");
    // Every number drawn, checked at the end: no number string or id repeated per prefix.
    let mut h = Checked::new();
    for s in [&a, &b, &survivor] {
        h.take(s, "SF", 500);
        h.take(s, "SQ", 50);
    }

    // SIGTERM: the lease is revoked, the worker key is gone and the ID free at once.
    let from_b = ids(&h.take(&b, "SF", 2000));
    let b_last = *from_b.iter().max().expect("numbers");
    let status = b.terminate();
    assert!(status.success(), "SIGTERM: {status}");
    let gone = Instant::now();
    let b_key = c.key("workers/0/1");
    assert_eq!(etcd_get(&c.endpoint, &b_key), None, "{b_key} after SIGTERM");
    wait_for(
        Duration::from_secs(1),
        || {
            format!(
                "worker 1 still listed 1 s after SIGTERM: {:?}",
                nodes(&survivor)
            )
        },
        || (!listed_workers(&survivor).contains(&1)).then_some(()),
    );
    println!(
        "measure: worker ID listed as free {} ms after the stopped process exited",
        gone.elapsed().as_millis()
    );
    // A new node takes the lowest free ID, 1, above what the stopped node used.
    let (d, _) = c.start_ready(&[]);
    assert_eq!(worker_metric(&d), 1, "{}", tail(&d));
    let first = h.take(&d, "SF", 1)[0].id;
    assert!(
        first > b_last,
        "the new owner of worker 1 issued {first}, not above the old owner's {b_last}"
    );
    h.take(&d, "SF", 1000);
    h.take(&d, "SQ", 50);

    // kill -9 and restart at once: the crashed lease still holds worker 0, so the restarted
    // process takes another ID; nothing repeats either way.
    h.take(&a, "SF", 2000);
    h.take(&a, "SQ", 10);
    a.kill9();
    // The crashed process can write nothing more: this is worker 0's final reservation.
    let mark = hwm(&c, 0);
    a.restart();
    wait_ready(&a, FEW_SECONDS);
    let a_worker = worker_metric(&a);
    println!("restarted right after kill -9: took worker {a_worker}");
    h.take(&a, "SF", 2000);
    h.take(&a, "SQ", 50);

    // Once the crashed lease expires, the next node to start takes worker 0 over, above
    // the crashed node's reservation.
    let mut taker = None;
    if a_worker != 0 {
        wait_for(
            Duration::from_secs(SHORT_TTL_S + 10),
            || format!("worker 0 never freed: {:?}", nodes(&survivor)),
            || (!listed_workers(&survivor).contains(&0)).then_some(()),
        );
        let (e, _) = c.start_ready(&[]);
        assert_eq!(worker_metric(&e), 0, "{}", tail(&e));
        taker = Some(e);
    }
    let owner = taker.as_ref().unwrap_or(&a);
    let first = h.take(owner, "SF", 1).remove(0);
    let v = decode(owner, first.id);
    assert_eq!(v["worker"], 0, "{v}");
    let ts = v["timestamp_ms"].as_u64().expect("timestamp_ms");
    assert!(
        ts > mark,
        "worker 0 taken over after kill -9 issued at {ts}, not above the reservation {mark}"
    );
    h.take(owner, "SF", 1000);
    h.take(owner, "SQ", 50);
    // The survivor never noticed anything.
    h.take(&survivor, "SF", 500);
    h.take(&survivor, "SQ", 50);
    let workers = listed_workers(&survivor);
    let distinct: HashSet<u64> = workers.iter().copied().collect();
    assert_eq!(distinct.len(), workers.len(), "{workers:?}");
    h.assert_clean();
}

#[test]
fn a_taken_over_worker_id_starts_above_its_reserved_high_timestamp() {
    let Some(etcd) = Etcd::start() else { return };
    let c = Cluster::new(&etcd, "takeover", SHORT_TTL_S);
    let (mut old, _) = c.start_ready(&[]);
    assert_eq!(worker_metric(&old), 0);
    register(&old, "SF", "snowflake");
    let mut h = Checked::new();
    let before = ids(&h.take(&old, "SF", 3000));
    let old_max = *before.iter().max().expect("numbers");

    // The old owner crashes; its lease is revoked (as if it had expired) and worker 0's
    // high timestamp is set 3 s ahead of the clock.
    old.kill9();
    let (_, lease) = etcd_get(&c.endpoint, &c.key("workers/0/0")).expect("worker key");
    etcd_revoke(&c.endpoint, lease);
    let mark = hwm(&c, 0).max(now_ms() + 3000);
    etcd_put(&c.endpoint, &c.key("hwm/0/0"), &mark.to_string());

    let t0 = Instant::now();
    let new = c.start(&[]);
    // It takes worker 0 and issues nothing until its clock has passed the mark.
    let mut client = new.client();
    let first = wait_for(
        FEW_SECONDS,
        || format!("no number from the new owner\n{}", tail(&new)),
        || {
            let (status, body) = ready(&new);
            match draw(&mut client, "SF", 1) {
                Ok(n) => n.into_iter().next(),
                Err(r) => {
                    assert_error(&r, 503, "NOT_READY");
                    assert_eq!(status, 503, "ready, then refused a number: {body}");
                    None
                }
            }
        },
    );
    println!(
        "measure: takeover 3 s ahead: first number {} ms after start, {} ms after the mark",
        t0.elapsed().as_millis(),
        now_ms() as i64 - mark as i64
    );
    assert_eq!(worker_metric(&new), 0);
    let v = decode(&new, first.id);
    assert_eq!(v["worker"], 0, "{v}");
    let ts = v["timestamp_ms"].as_u64().expect("timestamp_ms");
    assert!(ts > mark, "first number at {ts}, not above the mark {mark}");
    assert!(
        first.id > old_max,
        "{} not above the old owner's {old_max}",
        first.id
    );
    h.add(&new, "SF", std::slice::from_ref(&first));
    h.take(&new, "SF", 3000);
    wait_ready(&new, FEW_SECONDS);

    // A mark far beyond the reservation window: the next owner of that ID still starts
    // above it, and says its numbers are degraded (they run ahead of the clock).
    let far = now_ms() + 60_000;
    etcd_put(&c.endpoint, &c.key("hwm/0/1"), &far.to_string());
    let ahead = c.start(&[]);
    let mut client = ahead.client();
    let first = wait_for(
        FEW_SECONDS,
        || format!("no number from the node 60 s behind\n{}", tail(&ahead)),
        || {
            draw(&mut client, "SF", 1)
                .ok()
                .and_then(|n| n.into_iter().next())
        },
    );
    assert_eq!(worker_metric(&ahead), 1);
    let v = decode(&ahead, first.id);
    assert_eq!(v["worker"], 1, "{v}");
    assert!(
        v["timestamp_ms"].as_u64().is_some_and(|ts| ts > far),
        "first number {v} not above the mark {far}"
    );
    assert!(
        first.degraded,
        "a number 60 s ahead of the clock is not marked degraded: {v}"
    );
    let (status, body) = ready(&ahead);
    assert_eq!(status, 503, "{body}");
    h.add(&ahead, "SF", std::slice::from_ref(&first));
    h.take(&ahead, "SF", 1000);
    h.assert_clean();
}

#[test]
fn a_node_without_a_free_worker_id_waits_for_one() {
    let Some(etcd) = Etcd::start() else { return };
    let c = Cluster::new(&etcd, "full", TTL_S);
    let layout = ["--layout-worker-bits", "2", "--layout-timestamp-bits", "45"];
    let mut four: Vec<Server> = (0..4).map(|_| c.start_ready(&layout).0).collect();
    let workers: Vec<i64> = four.iter().map(worker_metric).collect();
    assert_eq!(workers, vec![0, 1, 2, 3]);
    register(&four[0], "SF", "snowflake");

    let fifth = c.start(&layout);
    fifth
        .wait_for_log(FEW_SECONDS, |r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.contains("no worker ID free"))
                && r["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("all 4 worker IDs of datacenter 0 are taken"))
        })
        .unwrap_or_else(|| panic!("no log line saying all IDs are taken\n{}", tail(&fifth)));
    let (status, body) = ready(&fifth);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "not_ready", "{body}");
    assert!(
        body["reasons"]
            .as_array()
            .is_some_and(|a| a.contains(&Value::from("no_worker_id"))),
        "{body}"
    );
    assert_error(&fifth.get("/numbers/SF"), 503, "NOT_READY");
    assert_error(&fifth.get("/numbers/SF?count=10"), 503, "NOT_READY");
    assert_eq!(worker_metric(&fifth), -1);
    assert_eq!(listed_workers(&fifth), vec![0, 1, 2, 3]);
    // Sequence numbers need no worker ID; SPEC does not say whether such a node serves
    // them. What it does is printed, with a template that shows the worker ID.
    four[0].register(
        "SQW",
        r#"{"format":"{prefix}-{dc}.{worker}-{SEQ:1}","mode":"sequence"}"#,
    );
    let seq = fifth.get("/numbers/SQW");
    println!(
        "observe: sequence number from the node without a worker ID: {} {}",
        seq.status,
        seq.text()
    );

    // One node stops: the fifth takes its ID and becomes ready.
    let mut h = Checked::new();
    let leaving = &mut four[2];
    let last = *ids(&h.take(leaving, "SF", 2000))
        .iter()
        .max()
        .expect("numbers");
    let status = leaving.terminate();
    assert!(status.success(), "SIGTERM: {status}");
    let t0 = Instant::now();
    wait_ready(&fifth, FEW_SECONDS);
    println!(
        "measure: the waiting node was ready {} ms after a node stopped",
        t0.elapsed().as_millis()
    );
    assert_eq!(worker_metric(&fifth), 2);
    let nums = ids(&h.take(&fifth, "SF", 1000));
    assert!(nums.iter().all(|&id| worker_of(id, 2) == 2), "{nums:?}");
    assert!(
        nums[0] > last,
        "{} not above the old owner's {last}",
        nums[0]
    );
    assert_eq!(decode(&fifth, nums[0])["worker"], 2);
    h.take(&four[0], "SF", 1000);
    h.assert_clean();
}
