//! Cluster mode under load (SPEC sections 1, 3.3 and 5): real etcd and three real `numgen`
//! binaries on loopback.
//!
//! - [`three_nodes_issue_unique_numbers_concurrently`]: distinct worker IDs, configs shared
//!   at once, no duplicate under load, increasing per connection; throughput and start-up
//!   time are printed. The numbers of the mixed load go to the history checker
//!   (`common::history`): no string or id repeated per prefix, none going backwards on a
//!   connection; the millions of the throughput phase are checked on their ids.
//!
//! Each test starts its own etcd and uses its own etcd root, so tests stay independent and
//! may run in parallel. Tests that wait for a lease to expire or a node to be fenced use
//! 3 s leases (the minimum) to stay short; the others keep the default 10 s, so that an
//! etcd stalled for a few seconds by a loaded machine cannot fail them for a reason they
//! do not test. Timing asserts are generous bounds ("within a few seconds"), never tight.
//! Measurements are printed: run with `--nocapture` to see them.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::etcd::Etcd;
use common::history::{History, Recorder};
use common::server::{Client, Server};

/// What one client thread drew from one node.
#[derive(Default)]
struct Drawn {
    snow: Vec<u64>,
    seq: Vec<u64>,
    requests: u64,
}

/// Request sizes, cycled: mostly single requests, some batches.
const SNOW_SIZES: [u64; 12] = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 25, 300];
const SEQ_SIZES: [u64; 6] = [1, 1, 1, 1, 10, 50];

/// One keep-alive connection drawing `snow` snowflake and `seq` sequence numbers, each
/// recorded with `rec` (one ordered stream: the history checker sees that each prefix's
/// numbers increase on it).
fn hammer(addr: SocketAddr, snow: u64, seq: u64, salt: usize, mut rec: Recorder) -> Drawn {
    let mut c = Client::connect(addr).expect("connect");
    let mut out = Drawn::default();
    let (mut i, mut j) = (salt, salt);
    while (out.snow.len() as u64) < snow || (out.seq.len() as u64) < seq {
        let left = snow - out.snow.len() as u64;
        if left > 0 {
            let n = SNOW_SIZES[i % SNOW_SIZES.len()].min(left);
            i += 1;
            let got = draw(&mut c, "SF", n).unwrap_or_else(|r| panic!("SF: {}", r.text()));
            record(&mut rec, "SF", &got);
            out.snow.extend(got.iter().map(|n| n.id));
            out.requests += 1;
        }
        let left = seq - out.seq.len() as u64;
        if left > 0 && (i.is_multiple_of(10) || out.snow.len() as u64 == snow) {
            let n = SEQ_SIZES[j % SEQ_SIZES.len()].min(left);
            j += 1;
            let got = draw(&mut c, "SQ", n).unwrap_or_else(|r| panic!("SQ: {}", r.text()));
            record(&mut rec, "SQ", &got);
            out.seq.extend(got.iter().map(|n| n.id));
            out.requests += 1;
        }
    }
    out
}

/// Draws from every `addrs` node on `threads` connections each for `for_` with `count` per
/// request (text/plain); returns the numbers and the request count. Millions of numbers:
/// checked here on their ids (each line is exactly `TP-{id}`, so a repeated string is a
/// repeated id) rather than by the history checker, which would take most of a minute.
fn flood(addrs: &[SocketAddr], threads: usize, count: u64, for_: Duration) -> (Vec<u64>, u64) {
    let handles: Vec<_> = addrs
        .iter()
        .flat_map(|&a| std::iter::repeat_n(a, threads))
        .map(|addr| {
            thread::spawn(move || {
                let mut c = Client::connect(addr).expect("connect");
                let path = if count == 1 {
                    "/numbers/TP".to_string()
                } else {
                    format!("/numbers/TP?count={count}")
                };
                let (mut got, mut requests) = (Vec::new(), 0u64);
                let end = Instant::now() + for_;
                while Instant::now() < end {
                    let r = c
                        .request("GET", &path, &[("Accept", "text/plain")], b"")
                        .expect("request");
                    assert_eq!(r.status, 200, "{}", r.text());
                    requests += 1;
                    for line in r.text().lines() {
                        let id = line.strip_prefix("TP-").and_then(|i| i.parse::<u64>().ok());
                        let id = id.unwrap_or_else(|| panic!("line {line:?}"));
                        assert_eq!(line, format!("TP-{id}"), "not the id's rendering");
                        got.push(id);
                    }
                }
                (got, requests)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut requests = 0;
    for h in handles {
        let (got, r) = h.join().expect("flood thread");
        all.extend(got);
        requests += r;
    }
    (all, requests)
}

#[test]
fn three_nodes_issue_unique_numbers_concurrently() {
    let Some(etcd) = Etcd::start() else { return };
    let c = Cluster::new(&etcd, "three", TTL_S);
    let mut servers = Vec::new();
    for _ in 0..3 {
        let (s, took) = c.start_ready(&[]);
        println!(
            "measure: process start to first 200 on /ready: {} ms",
            took.as_millis()
        );
        servers.push(s);
    }

    // Distinct worker IDs, the same on /cluster/nodes (from every node) and in /metrics.
    let mut workers = Vec::new();
    for s in &servers {
        let list = nodes(s);
        assert_eq!(list.len(), 3, "{list:?}");
        let me = list
            .iter()
            .find(|n| n["addr"] == s.addr().to_string().as_str())
            .unwrap_or_else(|| panic!("{} not in {list:?}", s.addr()));
        let w = me["worker_id"].as_u64().expect("worker_id");
        assert_eq!(
            worker_metric(s),
            w as i64,
            "numgen_worker_id of {}",
            s.addr()
        );
        assert_eq!(metric(s, "numgen_lease_healthy"), Some(1.0));
        assert_eq!(me["dc_id"], 0);
        assert!(me["heartbeat_ms"].as_u64().is_some_and(|h| h > 0), "{me}");
        assert!(me["clock_offset_ms"].is_number(), "{me}");
        workers.push(w);
    }
    let distinct: HashSet<u64> = workers.iter().copied().collect();
    assert_eq!(distinct.len(), 3, "worker IDs {workers:?}");
    // Each node claimed the lowest free ID when it started.
    assert_eq!(workers, vec![0, 1, 2]);

    // A config registered on one node is usable on every node at once.
    register(&servers[0], "SF", "snowflake");
    register(&servers[0], "SQ", "sequence");
    register(&servers[0], "TP", "snowflake");
    for s in &servers[1..] {
        take(s, "SF", 1);
        take(s, "SQ", 1);
        take(s, "TP", 1);
    }

    // 100,000 snowflake and 10,000 sequence numbers from three connections per node.
    const SNOW: u64 = 100_000;
    const SEQ: u64 = 10_000;
    const PER_NODE: usize = 3;
    let conns = (servers.len() * PER_NODE) as u64;
    let history = History::new();
    let t0 = Instant::now();
    let handles: Vec<_> = (0..conns as usize)
        .map(|k| {
            let addr = servers[k / PER_NODE].addr();
            let snow = SNOW / conns + u64::from((k as u64) < SNOW % conns);
            let seq = SEQ / conns + u64::from((k as u64) < SEQ % conns);
            let rec = history.recorder(addr.to_string());
            thread::spawn(move || (k / PER_NODE, hammer(addr, snow, seq, k * 7, rec)))
        })
        .collect();
    let results: Vec<(usize, Drawn)> = handles
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .collect();
    let took = t0.elapsed();

    // Nothing repeated across nodes, nothing backwards on a connection.
    let report = history.assert_clean();
    assert_eq!(report.numbers as u64, SNOW + SEQ);
    let mut requests = 0;
    let mut highest_seq = 0;
    for (node, d) in &results {
        requests += d.requests;
        highest_seq = highest_seq.max(d.seq.iter().copied().max().unwrap_or(0));
        assert!(d.seq.iter().all(|&n| n >= 1), "sequence numbers start at 1");
        // Every snowflake number carries the worker ID of the node that issued it.
        let w = workers[*node];
        if let Some(bad) = d.snow.iter().find(|&&id| worker_of(id, 6) != w) {
            panic!(
                "node with worker {w} issued {bad} (worker {})",
                worker_of(*bad, 6)
            );
        }
    }
    for (k, s) in servers.iter().enumerate() {
        let id = results
            .iter()
            .find(|(n, _)| *n == k)
            .and_then(|(_, d)| d.snow.first().copied())
            .expect("a number");
        let v = decode(s, id);
        assert_eq!(v["worker"].as_u64(), Some(workers[k]), "{v}");
        assert_eq!(v["degraded"], false, "{v}");
    }
    println!(
        "measure: mixed load, 3 nodes x {PER_NODE} connections: {} snowflake + {} sequence numbers \
         in {} ms ({} requests): {:.0} numbers/s, {:.0} requests/s; highest sequence number {}",
        SNOW,
        SEQ,
        took.as_millis(),
        requests,
        (SNOW + SEQ) as f64 / took.as_secs_f64(),
        requests as f64 / took.as_secs_f64(),
        highest_seq
    );

    // Throughput from three nodes at once (informational): batches, then single requests.
    let addrs: Vec<SocketAddr> = servers.iter().map(Server::addr).collect();
    let mut tp = HashSet::new();
    for (count, label) in [(1000, "batches of 1000"), (1, "single requests")] {
        let for_ = Duration::from_secs(2);
        let t0 = Instant::now();
        let (got, requests) = flood(&addrs, 2, count, for_);
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "measure: 3 nodes x 2 connections, {label}: {:.0} numbers/s ({:.0} requests/s)",
            got.len() as f64 / secs,
            requests as f64 / secs
        );
        add_unique(&mut tp, got, "TP across nodes");
    }
    for s in &servers {
        assert_eq!(ready(s).0, 200);
    }
}
