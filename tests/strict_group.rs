//! Strict sequence prefixes under concurrency, on real etcd and three real `numgen` nodes:
//! the requests waiting on a prefix share one reservation (group commit,
//! `src/sequence/strict.rs`), and a node is killed with `kill -9` mid-run.
//!
//! Asserted: no `number` string or id repeated across all nodes (the history checker), each
//! connection's numbers increasing; every number a client got an answer for is at or below
//! the durable counter in etcd, after the kill and after the killed node restarts (strict:
//! nothing is handed out that is not reserved); the restarted node continues above every
//! number answered before. How many reservations the requests took is printed, not
//! asserted (it depends on timing).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;

use common::cluster::*;
use common::etcd::Etcd;
use common::history::{History, Recorder};
use common::server::Client;

const KEY: &str = "STRICT";
/// Client connections per node.
const CLIENTS: usize = 8;
/// Request sizes, cycled.
const SIZES: [u64; 5] = [1, 1, 1, 3, 20];

/// What a client thread did.
struct Drew {
    requests: u64,
    max: u64,
}

/// Draws strict numbers on one connection until `stop`, or until the node goes away
/// (its connection fails: the node was killed). A refusal is allowed only as 503 (a node
/// being killed can fail requests in flight); every number answered is recorded.
fn client(
    addr: SocketAddr,
    salt: usize,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicU64>,
    mut rec: Recorder,
) -> Drew {
    let mut drew = Drew {
        requests: 0,
        max: 0,
    };
    let Ok(mut c) = Client::connect(addr) else {
        return drew;
    };
    let mut i = salt;
    while !stop.load(Ordering::Relaxed) {
        let n = SIZES[i % SIZES.len()];
        i += 1;
        match try_draw(&mut c, KEY, n) {
            Ok(nums) => {
                record(&mut rec, KEY, &nums);
                drew.requests += 1;
                progress.fetch_add(1, Ordering::Relaxed);
                drew.max = drew.max.max(nums.iter().map(|n| n.id).max().unwrap_or(0));
            }
            Err(Some(r)) => assert_eq!(r.status, 503, "{}", r.text()),
            Err(None) => break,
        }
    }
    drew
}

fn counter(c: &Cluster) -> u64 {
    etcd_get(&c.endpoint, &c.key(&format!("seq/{KEY}")))
        .map(|(v, _)| v.trim().parse().expect("counter is a number"))
        .unwrap_or(0)
}

#[test]
fn grouped_strict_requests_survive_a_kill_without_repeats() {
    let Some(etcd) = Etcd::start() else { return };
    let c = Cluster::new(&etcd, "strict-group", TTL_S);
    let mut nodes: Vec<_> = (0..3).map(|_| c.start_ready(&[]).0).collect();
    nodes[0].register(
        KEY,
        r#"{"format":"{prefix}-{SEQ:1}","mode":"sequence","strict":true}"#,
    );
    for s in &nodes {
        // Every node sees the config (read-through on first use).
        take(s, KEY, 1);
    }

    let history = History::new();
    // Requests answered, per node.
    let progress: Vec<_> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let answered = |nodes: &[usize]| -> u64 {
        nodes
            .iter()
            .map(|&n| progress[n].load(Ordering::Relaxed))
            .sum()
    };
    let stops: Vec<_> = (0..3).map(|_| Arc::new(AtomicBool::new(false))).collect();
    let mut threads = Vec::new();
    for (n, s) in nodes.iter().enumerate() {
        for t in 0..CLIENTS {
            let (addr, stop) = (s.addr(), stops[n].clone());
            let rec = history.recorder(format!("node{n}-conn{t}"));
            let progress = progress[n].clone();
            threads.push((
                n,
                thread::spawn(move || client(addr, t, stop, progress, rec)),
            ));
        }
    }
    let reservations = |s: &common::server::Server| {
        metric(
            s,
            &format!("numgen_sequence_blocks_reserved_total{{prefix=\"{KEY}\"}}"),
        )
    };
    // Let the load run, then kill node 1 in the middle of it.
    wait_for(
        FEW_SECONDS * 4,
        || format!("the clients made no progress: {}", answered(&[0, 1, 2])),
        || (answered(&[0, 1, 2]) >= 600 && answered(&[1]) >= 100).then_some(()),
    );
    nodes[1].kill9();
    let at_kill = counter(&c);
    // The others go on for a while after the kill.
    let before = answered(&[0, 2]);
    wait_for(
        FEW_SECONDS * 4,
        || "the surviving nodes made no progress".into(),
        || (answered(&[0, 2]) >= before + 400).then_some(()),
    );
    for s in &stops {
        s.store(true, Ordering::Relaxed);
    }
    let mut max_answered = 0;
    let mut per_node = [0u64; 3];
    for (n, t) in threads {
        let d = t.join().expect("client thread");
        max_answered = max_answered.max(d.max);
        per_node[n] += d.requests;
    }
    let durable = counter(&c);
    assert!(
        at_kill <= durable,
        "the counter went back: {at_kill} then {durable}"
    );
    assert!(
        max_answered <= durable,
        "{max_answered} was answered but the counter is at {durable}"
    );
    for (n, s) in nodes.iter().enumerate() {
        if n != 1 {
            println!(
                "node {n}: {} strict requests in {} reservations",
                per_node[n],
                reservations(s).unwrap_or(0.0)
            );
        }
    }
    println!(
        "node 1 (killed): {} requests answered; counter {at_kill} at the kill, {durable} at the end",
        per_node[1]
    );

    // The killed node restarts and continues above everything answered before.
    nodes[1].restart();
    wait_ready(&nodes[1], FEW_SECONDS);
    let mut rec = history.recorder("node1-restarted");
    let after = take(&nodes[1], KEY, 5);
    record(&mut rec, KEY, &after);
    drop(rec);
    assert!(
        after.iter().all(|n| n.id > max_answered),
        "the restarted node repeated or went below {max_answered}: {:?}",
        ids(&after)
    );
    assert!(max_answered.max(ids(&after).into_iter().max().unwrap_or(0)) <= counter(&c));
    let report = history.assert_clean();
    println!(
        "history: {} numbers, {} requests answered, none repeated",
        report.numbers,
        answered(&[0, 1, 2])
    );
}
