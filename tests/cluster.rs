//! Cluster mode end to end (SPEC sections 1, 3.3, 4 and 5): real etcd processes and real
//! `numgen` binaries, on loopback. Each test starts its own etcd and uses its own etcd root,
//! so tests stay independent and may run in parallel.
//!
//! - [`three_nodes_issue_unique_numbers_concurrently`]: distinct worker IDs, configs shared
//!   at once, no duplicate under load, increasing per connection; throughput and start-up
//!   time are printed.
//! - [`crashes_restarts_and_graceful_stops_never_repeat`]: kill -9 and restart, SIGTERM
//!   frees the worker ID at once, a crashed node's ID is taken over above its reservation.
//! - [`a_taken_over_worker_id_starts_above_its_reserved_high_timestamp`]: a high timestamp
//!   written ahead of the clock in etcd holds the next owner of the ID above it.
//! - [`an_etcd_outage_degrades_or_rejects_and_every_node_recovers`]: etcd frozen past the
//!   lease TTL, `degrade` and `reject` side by side; re-acquire time is printed.
//! - [`a_node_without_a_free_worker_id_waits_for_one`]: 2 worker bits, a fifth node.
//! - [`degraded_numbers_keep_coming_when_the_fence_comes_after_the_reservation`]
//!   (etcd frozen right after a lease renewal): the reservation still has room at the fence.
//!
//! The worker-ID source alone (`EtcdCluster`, no `numgen` process), on a real etcd:
//! - [`a_late_lower_reservation_leaves_the_high_timestamp_where_it_was`]: a renewal that
//!   commits after a later, higher one does not lower the mark the next owner starts above.
//! - [`a_graceful_release_still_lowers_the_high_timestamp`]: the final write at a stop does.
//! - [`an_unreadable_high_timestamp_refuses_the_claim`]: no claim without a known floor.
//!
//! Tests that wait for a lease to expire or a node to be fenced use 3 s leases (the
//! minimum) to stay short; the others keep the default 10 s, so that an etcd stalled for a
//! few seconds by a loaded machine cannot fail them for a reason they do not test. Timing
//! asserts are generous bounds ("within a few seconds"), never tight. Measurements are
//! printed: run with `--nocapture` to see them.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::etcd::Etcd;
use common::server::{Client, Resp, Server, ServerOpts, assert_error, random_token};
use numgen::clock::SystemClock;
use numgen::cluster::etcd::{ClusterSettings, EtcdCluster};
use numgen::store::StoreError;
use numgen::worker::{WorkerError, WorkerSource};
use serde_json::Value;

/// The lease TTL of the tests that wait for a lease to expire or a node to be fenced (the
/// minimum the config accepts, to keep them short).
const SHORT_TTL_S: u64 = 3;
/// The lease TTL of the tests whose outcome does not depend on it (the default): a loaded
/// machine can stall etcd for seconds, and a lease lost by accident there would only make
/// those tests fail for a reason they do not test.
const TTL_S: u64 = 10;
/// Generous bound for anything the contract says happens "within a few seconds".
const FEW_SECONDS: Duration = Duration::from_secs(15);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the nodes of one cluster share: etcd, a root of their own, the admin token and
/// the lease TTL.
struct Cluster {
    endpoint: String,
    root: String,
    token: String,
    ttl_s: u64,
}

impl Cluster {
    fn new(etcd: &Etcd, name: &str, ttl_s: u64) -> Cluster {
        Cluster {
            endpoint: etcd.endpoint(),
            root: format!("/numgen-test/{name}-{}", &random_token()[..8]),
            token: random_token(),
            ttl_s,
        }
    }

    fn opts(&self, extra: &[&str]) -> ServerOpts {
        let mut opts = ServerOpts::default()
            .admin_token(self.token.clone())
            .arg("--etcd-endpoints")
            .arg(self.endpoint.clone())
            .arg("--etcd-root")
            .arg(self.root.clone())
            .arg("--lease-ttl-s")
            .arg(self.ttl_s.to_string());
        for a in extra {
            opts = opts.arg(*a);
        }
        opts
    }

    /// Starts a node (it listens; it may not hold a worker ID yet).
    fn start(&self, extra: &[&str]) -> Server {
        Server::start(self.opts(extra))
    }

    /// Starts a node and waits for its first 200 on `/ready`; also returns the time from
    /// spawning the process to that 200.
    fn start_ready(&self, extra: &[&str]) -> (Server, Duration) {
        let t0 = Instant::now();
        let s = self.start(extra);
        wait_ready(&s, FEW_SECONDS);
        (s, t0.elapsed())
    }

    /// An etcd key under this cluster's root.
    fn key(&self, rel: &str) -> String {
        format!("{}/{rel}", self.root)
    }
}

/// The last lines of a server's log, for failure messages.
fn tail(s: &Server) -> String {
    let logs = s.logs();
    let lines: Vec<&str> = logs.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Polls `f` every 20 ms until it gives a value; panics with `what()` after `timeout`.
fn wait_for<T>(
    timeout: Duration,
    what: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{}", what());
        thread::sleep(Duration::from_millis(20));
    }
}

/// `GET /ready`: status and body.
fn ready(s: &Server) -> (u16, Value) {
    let r = s.get("/ready");
    (r.status, r.json())
}

/// Waits until `/ready` is 200; returns how long that took.
fn wait_ready(s: &Server, timeout: Duration) -> Duration {
    let t0 = Instant::now();
    wait_for(
        timeout,
        || format!("{} not ready within {timeout:?}\n{}", s.addr(), tail(s)),
        || (ready(s).0 == 200).then_some(()),
    );
    t0.elapsed()
}

/// The value of one series in `/metrics` (`name` with its labels, as printed).
fn metric(s: &Server, series: &str) -> Option<f64> {
    let text = s.get("/metrics").text();
    text.lines()
        .filter_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .find_map(|v| v.trim().parse().ok())
}

fn worker_metric(s: &Server) -> i64 {
    metric(s, "numgen_worker_id").map_or(i64::MIN, |v| v as i64)
}

/// `GET /cluster/nodes`.
fn nodes(s: &Server) -> Vec<Value> {
    let r = s.get("/cluster/nodes");
    assert_eq!(r.status, 200, "/cluster/nodes: {}", r.text());
    r.json()["nodes"].as_array().cloned().unwrap_or_default()
}

/// The worker IDs `/cluster/nodes` lists, sorted.
fn listed_workers(s: &Server) -> Vec<u64> {
    let mut w: Vec<u64> = nodes(s)
        .iter()
        .filter_map(|n| n["worker_id"].as_u64())
        .collect();
    w.sort_unstable();
    w
}

/// `GET /ids/{id}`.
fn decode(s: &Server, id: u64) -> Value {
    let r = s.get(&format!("/ids/{id}"));
    assert_eq!(r.status, 200, "/ids/{id}: {}", r.text());
    r.json()
}

/// Every prefix here uses this template, so that the rendered number can be checked
/// against its ID and its degraded flag.
fn register(s: &Server, key: &str, mode: &str) {
    s.register(
        key,
        &format!(r#"{{"format":"{{prefix}}-{{SEQ:1}}{{flag}}","mode":"{mode}"}}"#),
    );
}

/// One issued number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Num {
    id: u64,
    degraded: bool,
}

/// The numbers of a 200 answer (single or batch), each checked against its rendering.
fn parse_numbers(key: &str, r: &Resp) -> Vec<Num> {
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let one = |n: &Value| -> Num {
        let id = n["id"]
            .as_str()
            .and_then(|i| i.parse().ok())
            .unwrap_or_else(|| panic!("id of {n}"));
        let degraded = n["degraded"]
            .as_bool()
            .unwrap_or_else(|| panic!("degraded of {n}"));
        let want = format!("{key}-{id}{}", if degraded { "D" } else { "" });
        assert_eq!(n["number"], want.as_str(), "{n}");
        Num { id, degraded }
    };
    match v.get("numbers") {
        Some(list) => list
            .as_array()
            .expect("numbers array")
            .iter()
            .map(one)
            .collect(),
        None => vec![one(&v)],
    }
}

/// Draws `count` numbers of `key` on `client` (a single request when `count` is 1):
/// the numbers, or the refusal; `Err(None)` when the connection failed.
fn try_draw(client: &mut Client, key: &str, count: u64) -> Result<Vec<Num>, Option<Resp>> {
    let path = if count == 1 {
        format!("/numbers/{key}")
    } else {
        format!("/numbers/{key}?count={count}")
    };
    let r = client.request("GET", &path, &[], b"").map_err(|_| None)?;
    if r.status == 200 {
        let nums = parse_numbers(key, &r);
        assert_eq!(nums.len() as u64, count, "{path}");
        Ok(nums)
    } else {
        Err(Some(r))
    }
}

/// [`try_draw`], panicking when the connection fails.
fn draw(client: &mut Client, key: &str, count: u64) -> Result<Vec<Num>, Resp> {
    try_draw(client, key, count)
        .map_err(|r| r.unwrap_or_else(|| panic!("GET /numbers/{key}: connection failed")))
}

/// Draws `count` numbers of `key` from `s` on a fresh connection; panics unless 200.
fn take(s: &Server, key: &str, count: u64) -> Vec<Num> {
    draw(&mut s.client(), key, count)
        .unwrap_or_else(|r| panic!("{key} x{count} from {}: {}", s.addr(), r.text()))
}

fn ids(nums: &[Num]) -> Vec<u64> {
    nums.iter().map(|n| n.id).collect()
}

/// Adds `new` to `seen`, panicking on the first number seen before.
fn add_unique(seen: &mut HashSet<u64>, new: impl IntoIterator<Item = u64>, what: &str) {
    for id in new {
        assert!(seen.insert(id), "{what}: {id} was issued twice");
    }
}

/// Asserts that `ids` strictly increase.
fn assert_increasing(ids: &[u64], what: &str) {
    if let Some(w) = ids.windows(2).find(|w| w[0] >= w[1]) {
        panic!("{what}: {} then {}", w[0], w[1]);
    }
}

/// Worker field of a snowflake ID whose layout has 12 sequence bits.
fn worker_of(id: u64, worker_bits: u32) -> u64 {
    (id >> 12) & ((1 << worker_bits) - 1)
}

/// Runs `f` on a small tokio runtime (for etcd-client calls from a plain test).
fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

async fn etcd_client(endpoint: &str) -> etcd_client::Client {
    etcd_client::Client::connect([endpoint], None)
        .await
        .expect("connect to etcd")
}

/// The value and lease of an etcd key.
fn etcd_get(endpoint: &str, key: &str) -> Option<(String, i64)> {
    block_on(async {
        let mut c = etcd_client(endpoint).await;
        let resp = c.get(key, None).await.expect("etcd get");
        resp.kvs()
            .first()
            .map(|kv| (kv.value_str().expect("UTF-8 value").to_string(), kv.lease()))
    })
}

fn etcd_put(endpoint: &str, key: &str, value: &str) {
    block_on(async {
        let mut c = etcd_client(endpoint).await;
        c.put(key, value, None).await.expect("etcd put");
    });
}

fn etcd_revoke(endpoint: &str, lease: i64) {
    block_on(async {
        let mut c = etcd_client(endpoint).await;
        c.lease_revoke(lease).await.expect("etcd lease revoke");
    });
}

/// The persisted high timestamp of worker `w` in datacenter 0.
fn hwm(c: &Cluster, w: u64) -> u64 {
    let (v, _) = etcd_get(&c.endpoint, &c.key(&format!("hwm/0/{w}"))).expect("hwm key");
    v.trim().parse().expect("hwm is a number")
}

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

/// One keep-alive connection drawing `snow` snowflake and `seq` sequence numbers, checking
/// that each prefix's numbers increase on it.
fn hammer(addr: SocketAddr, snow: u64, seq: u64, salt: usize) -> Drawn {
    let mut c = Client::connect(addr).expect("connect");
    let mut out = Drawn::default();
    let (mut i, mut j) = (salt, salt);
    while (out.snow.len() as u64) < snow || (out.seq.len() as u64) < seq {
        let left = snow - out.snow.len() as u64;
        if left > 0 {
            let n = SNOW_SIZES[i % SNOW_SIZES.len()].min(left);
            i += 1;
            let got = draw(&mut c, "SF", n).unwrap_or_else(|r| panic!("SF: {}", r.text()));
            out.snow.extend(got.iter().map(|n| n.id));
            out.requests += 1;
        }
        let left = seq - out.seq.len() as u64;
        if left > 0 && (i.is_multiple_of(10) || out.snow.len() as u64 == snow) {
            let n = SEQ_SIZES[j % SEQ_SIZES.len()].min(left);
            j += 1;
            let got = draw(&mut c, "SQ", n).unwrap_or_else(|r| panic!("SQ: {}", r.text()));
            out.seq.extend(got.iter().map(|n| n.id));
            out.requests += 1;
        }
    }
    assert_increasing(&out.snow, "SF on one connection");
    assert_increasing(&out.seq, "SQ on one connection");
    out
}

/// Draws from every `addrs` node on `threads` connections each for `for_` with `count` per
/// request (text/plain); returns the numbers and the request count.
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
                        got.push(id.unwrap_or_else(|| panic!("line {line:?}")));
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
    let t0 = Instant::now();
    let handles: Vec<_> = (0..conns as usize)
        .map(|k| {
            let addr = servers[k / PER_NODE].addr();
            let snow = SNOW / conns + u64::from((k as u64) < SNOW % conns);
            let seq = SEQ / conns + u64::from((k as u64) < SEQ % conns);
            thread::spawn(move || (k / PER_NODE, hammer(addr, snow, seq, k * 7)))
        })
        .collect();
    let results: Vec<(usize, Drawn)> = handles
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .collect();
    let took = t0.elapsed();

    let mut snow = HashSet::new();
    let mut seq = HashSet::new();
    let mut requests = 0;
    for (node, d) in &results {
        add_unique(&mut snow, d.snow.iter().copied(), "SF across nodes");
        add_unique(&mut seq, d.seq.iter().copied(), "SQ across nodes");
        requests += d.requests;
        // Every snowflake number carries the worker ID of the node that issued it.
        let w = workers[*node];
        if let Some(bad) = d.snow.iter().find(|&&id| worker_of(id, 6) != w) {
            panic!(
                "node with worker {w} issued {bad} (worker {})",
                worker_of(*bad, 6)
            );
        }
    }
    assert_eq!(snow.len() as u64, SNOW);
    assert_eq!(seq.len() as u64, SEQ);
    assert!(seq.iter().all(|&n| n >= 1), "sequence numbers start at 1");
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
        seq.iter().max().copied().unwrap_or(0)
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
    let mut snow = HashSet::new();
    let mut seq = HashSet::new();
    for s in [&a, &b, &survivor] {
        add_unique(&mut snow, ids(&take(s, "SF", 500)), "SF");
        add_unique(&mut seq, ids(&take(s, "SQ", 50)), "SQ");
    }

    // SIGTERM: the lease is revoked, the worker key is gone and the ID free at once.
    let from_b = ids(&take(&b, "SF", 2000));
    let b_last = *from_b.iter().max().expect("numbers");
    add_unique(&mut snow, from_b, "SF");
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
    let first = take(&d, "SF", 1)[0].id;
    assert!(
        first > b_last,
        "the new owner of worker 1 issued {first}, not above the old owner's {b_last}"
    );
    add_unique(&mut snow, [first], "SF after a graceful handover");
    add_unique(&mut snow, ids(&take(&d, "SF", 1000)), "SF");
    add_unique(&mut seq, ids(&take(&d, "SQ", 50)), "SQ");

    // kill -9 and restart at once: the crashed lease still holds worker 0, so the restarted
    // process takes another ID; nothing repeats either way.
    add_unique(&mut snow, ids(&take(&a, "SF", 2000)), "SF");
    add_unique(&mut seq, ids(&take(&a, "SQ", 10)), "SQ");
    a.kill9();
    // The crashed process can write nothing more: this is worker 0's final reservation.
    let mark = hwm(&c, 0);
    a.restart();
    wait_ready(&a, FEW_SECONDS);
    let a_worker = worker_metric(&a);
    println!("restarted right after kill -9: took worker {a_worker}");
    add_unique(&mut snow, ids(&take(&a, "SF", 2000)), "SF after kill -9");
    add_unique(&mut seq, ids(&take(&a, "SQ", 50)), "SQ after kill -9");

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
    let first = take(owner, "SF", 1)[0];
    let v = decode(owner, first.id);
    assert_eq!(v["worker"], 0, "{v}");
    let ts = v["timestamp_ms"].as_u64().expect("timestamp_ms");
    assert!(
        ts > mark,
        "worker 0 taken over after kill -9 issued at {ts}, not above the reservation {mark}"
    );
    add_unique(&mut snow, [first.id], "SF after takeover");
    add_unique(
        &mut snow,
        ids(&take(owner, "SF", 1000)),
        "SF after takeover",
    );
    add_unique(&mut seq, ids(&take(owner, "SQ", 50)), "SQ after takeover");
    // The survivor never noticed anything.
    add_unique(&mut snow, ids(&take(&survivor, "SF", 500)), "SF");
    add_unique(&mut seq, ids(&take(&survivor, "SQ", 50)), "SQ");
    let workers = listed_workers(&survivor);
    let distinct: HashSet<u64> = workers.iter().copied().collect();
    assert_eq!(distinct.len(), workers.len(), "{workers:?}");
}

#[test]
fn a_taken_over_worker_id_starts_above_its_reserved_high_timestamp() {
    let Some(etcd) = Etcd::start() else { return };
    let c = Cluster::new(&etcd, "takeover", SHORT_TTL_S);
    let (mut old, _) = c.start_ready(&[]);
    assert_eq!(worker_metric(&old), 0);
    register(&old, "SF", "snowflake");
    let before = ids(&take(&old, "SF", 3000));
    let old_max = *before.iter().max().expect("numbers");
    let mut seen = HashSet::new();
    add_unique(&mut seen, before, "SF");

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
                Ok(n) => Some(n[0]),
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
    add_unique(&mut seen, [first.id], "SF after takeover");
    add_unique(&mut seen, ids(&take(&new, "SF", 3000)), "SF after takeover");
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
        || draw(&mut client, "SF", 1).ok().map(|n| n[0]),
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
    add_unique(&mut seen, [first.id], "SF 60 s ahead");
}

/// A refused request: status, code and message.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Refusal {
    status: u16,
    code: String,
    error: String,
}

impl Refusal {
    fn of(r: &Resp) -> Refusal {
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        Refusal {
            status: r.status,
            code: v["code"].as_str().unwrap_or("?").to_string(),
            error: v["error"].as_str().unwrap_or("?").to_string(),
        }
    }
}

/// One request of a [`Collector`]: when it was sent, what came back.
struct Answer {
    sent: Instant,
    got: Result<Vec<Num>, Refusal>,
}

/// A client thread drawing snowflake numbers from one node, about once a millisecond,
/// until told to stop.
struct Collector {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<Vec<Answer>>,
}

impl Collector {
    fn start(addr: SocketAddr) -> Collector {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let mut c = Client::connect(addr).expect("connect");
            let mut out = Vec::new();
            let mut i = 0u64;
            while !flag.load(Ordering::Relaxed) {
                let n = if i.is_multiple_of(2) { 1 } else { 20 };
                i += 1;
                let sent = Instant::now();
                let got = match try_draw(&mut c, "SF", n) {
                    Ok(nums) => Ok(nums),
                    Err(Some(r)) => Err(Refusal::of(&r)),
                    // The node is gone: the test is over (it failed elsewhere).
                    Err(None) => break,
                };
                out.push(Answer { sent, got });
                thread::sleep(Duration::from_millis(1));
            }
            out
        });
        Collector { stop, handle }
    }

    fn finish(self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("collector")
    }
}

/// Milliseconds from `origin` to `t` (negative before it).
fn ms_since(origin: Instant, t: Instant) -> i128 {
    t.saturating_duration_since(origin).as_millis() as i128
        - origin.saturating_duration_since(t).as_millis() as i128
}

#[test]
fn an_etcd_outage_degrades_or_rejects_and_every_node_recovers() {
    let Some(etcd) = Etcd::start() else { return };
    let deg = Cluster::new(&etcd, "degrade", SHORT_TTL_S);
    let rej = Cluster::new(&etcd, "reject", SHORT_TTL_S);
    let reject = ["--on-lease-loss", "reject"];
    let d: Vec<Server> = (0..2).map(|_| deg.start_ready(&[]).0).collect();
    let r: Vec<Server> = (0..2).map(|_| rej.start_ready(&reject).0).collect();
    register(&d[0], "SF", "snowflake");
    register(&d[0], "SQ", "sequence");
    register(&r[0], "SF", "snowflake");
    let all = || d.iter().chain(&r);

    let mut snow_d = HashSet::new();
    let mut snow_r = HashSet::new();
    let mut seq = HashSet::new();
    for s in &d {
        add_unique(&mut snow_d, ids(&take(s, "SF", 1000)), "SF before");
        add_unique(&mut seq, ids(&take(s, "SQ", 20)), "SQ before");
    }
    for s in &r {
        add_unique(&mut snow_r, ids(&take(s, "SF", 1000)), "SF before");
    }

    let collectors: Vec<(bool, Collector)> = all()
        .enumerate()
        .map(|(k, s)| (k < d.len(), Collector::start(s.addr())))
        .collect();
    thread::sleep(Duration::from_millis(300));

    // etcd freezes. Within the lease TTL every node is fenced.
    etcd.pause();
    let paused = Instant::now();
    // Refusals a policy does not allow: gathered, with when they happened, and reported
    // together at the end, after every other check.
    let mut problems = Vec::new();
    for s in all() {
        wait_for(
            FEW_SECONDS,
            || format!("{} not fenced: {:?}\n{}", s.addr(), ready(s), tail(s)),
            || (metric(s, "numgen_lease_healthy") == Some(0.0)).then_some(()),
        );
    }
    println!(
        "measure: every node fenced {} ms after etcd froze",
        paused.elapsed().as_millis()
    );
    for s in &d {
        let (status, body) = ready(s);
        assert_eq!(status, 503, "{body}");
        assert_eq!(
            body,
            serde_json::json!({"status": "degraded", "reasons": ["lease_lost"]})
        );
        match draw(&mut s.client(), "SF", 10) {
            Ok(nums) => {
                assert!(nums.iter().all(|n| n.degraded), "{nums:?}");
                add_unique(&mut snow_d, ids(&nums), "SF during the outage");
                let count = metric(s, r#"numgen_degraded_total{reason="lease_lost"}"#);
                assert!(count.unwrap_or(0.0) >= 10.0, "degraded count {count:?}");
            }
            Err(r) => problems.push(format!(
                "degrade node {}: fenced, {} ms after etcd froze, refused: {} {}",
                s.addr(),
                paused.elapsed().as_millis(),
                r.status,
                r.text()
            )),
        }
    }
    for s in &r {
        let (status, body) = ready(s);
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["status"], "not_ready", "{body}");
        assert!(
            body["reasons"]
                .as_array()
                .is_some_and(|a| a.contains(&Value::from("lease_lost"))),
            "{body}"
        );
        let refused = s.get("/numbers/SF");
        assert_error(&refused, 503, "NOT_READY");
        assert!(refused.header("retry-after").is_some(), "no Retry-After");
    }
    // Sequence numbers come from the held block, then the store is needed.
    add_unique(&mut seq, ids(&take(&d[1], "SQ", 5)), "SQ from a held block");
    let mut sq = d[0].client();
    let mut from_blocks = 0;
    let unavailable = (0..40).find_map(|_| match draw(&mut sq, "SQ", 500) {
        Ok(nums) => {
            from_blocks += nums.len();
            add_unique(&mut seq, ids(&nums), "SQ from held blocks");
            None
        }
        Err(r) => Some(r),
    });
    let unavailable = unavailable.expect("sequence numbers kept coming with etcd frozen");
    assert_error(&unavailable, 503, "STORAGE_UNAVAILABLE");
    assert!(from_blocks > 0, "no sequence number from the held blocks");

    // Past the lease TTL, then etcd comes back: every node is ready and normal again.
    let past = Duration::from_secs(SHORT_TTL_S + 2);
    if let Some(left) = past.checked_sub(paused.elapsed()) {
        thread::sleep(left);
    }
    etcd.resume();
    let resumed = Instant::now();
    let mut back: Vec<Option<Duration>> = vec![None; d.len() + r.len()];
    wait_for(
        FEW_SECONDS,
        || {
            let states: Vec<_> = all().map(|s| (s.addr(), ready(s))).collect();
            format!("not every node recovered: {states:?}")
        },
        || {
            for (k, s) in all().enumerate() {
                if back[k].is_none() && ready(s).0 == 200 {
                    back[k] = Some(resumed.elapsed());
                }
            }
            back.iter().all(Option::is_some).then_some(())
        },
    );
    let times: Vec<u128> = back.iter().flatten().map(Duration::as_millis).collect();
    println!("measure: ready again after etcd returned (ms, per node): {times:?}");
    for s in all() {
        let nums = take(s, "SF", 10);
        assert!(
            nums.iter().all(|n| !n.degraded),
            "{}: {nums:?}\n{}",
            s.addr(),
            tail(s)
        );
        assert_eq!(metric(s, "numgen_lease_healthy"), Some(1.0));
    }
    thread::sleep(Duration::from_millis(300));

    // Everything from before, during and after the outage: nothing repeats, and each
    // node's numbers increase.
    let back_after = ms_since(paused, resumed);
    for (k, (is_d, col)) in collectors.into_iter().enumerate() {
        let answers = col.finish();
        let node = all().nth(k).map(Server::addr).expect("node");
        let (snow, label) = if is_d {
            (&mut snow_d, "degrade")
        } else {
            (&mut snow_r, "reject")
        };
        let (mut degraded, mut refused, mut last) = (0, 0, 0);
        let mut bad: Vec<(i128, Refusal)> = Vec::new();
        for Answer { sent, got } in answers {
            match got {
                Ok(nums) => {
                    degraded += nums.iter().filter(|n| n.degraded).count();
                    let ids = ids(&nums);
                    assert!(ids[0] > last, "{label} {node}: {} after {last}", ids[0]);
                    last = *ids.last().unwrap_or(&last);
                    add_unique(snow, ids, label);
                }
                Err(r) if !is_d && r.status == 503 && r.code == "NOT_READY" => refused += 1,
                Err(r) => bad.push((ms_since(paused, sent), r)),
            }
        }
        if let (Some((first, r)), Some((end, _))) = (bad.first(), bad.last()) {
            problems.push(format!(
                "{label} node {node}: {} requests refused, sent from {first} to {end} ms after \
                 etcd froze (it came back at {back_after} ms); first: {} {} {:?}",
                bad.len(),
                r.status,
                r.code,
                r.error
            ));
        }
        if is_d && degraded == 0 {
            problems.push(format!("degrade node {node}: no degraded number"));
        }
        if !is_d && degraded > 0 {
            problems.push(format!("reject node {node}: {degraded} degraded numbers"));
        }
        if !is_d && refused == 0 {
            problems.push(format!("reject node {node}: never refused"));
        }
    }
    for s in &d {
        add_unique(&mut snow_d, ids(&take(s, "SF", 1000)), "SF after");
        let mut c = s.client();
        let nums = wait_for(
            FEW_SECONDS,
            || format!("no sequence number after etcd returned\n{}", tail(s)),
            || draw(&mut c, "SQ", 20).ok(),
        );
        add_unique(&mut seq, ids(&nums), "SQ after");
    }
    for s in &r {
        add_unique(&mut snow_r, ids(&take(s, "SF", 1000)), "SF after");
    }
    for (nodes_of, label) in [(&d, "degrade"), (&r, "reject")] {
        let w = listed_workers(&nodes_of[0]);
        assert_eq!(w.len(), 2, "{label}: {w:?}");
        assert_ne!(w[0], w[1], "{label}: {w:?}");
    }
    if !problems.is_empty() {
        let logs: Vec<String> = all()
            .map(|s| format!("--- {} ---\n{}", s.addr(), tail(s)))
            .collect();
        panic!("{}\n{}", problems.join("\n"), logs.join("\n"));
    }
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
    let leaving = &mut four[2];
    let last = *ids(&take(leaving, "SF", 2000))
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
    let nums = ids(&take(&fifth, "SF", 1000));
    assert!(nums.iter().all(|&id| worker_of(id, 2) == 2), "{nums:?}");
    assert!(
        nums[0] > last,
        "{} not above the old owner's {last}",
        nums[0]
    );
    assert_eq!(decode(&fifth, nums[0])["worker"], 2);
}

/// A degrade-policy node keeps issuing through an etcd outage that starts at the worst
/// moment: right after a lease renewal (seen as the heartbeat put that follows it), when
/// the fence comes furthest from the last reservation renewal. The reservation is kept
/// the lease TTL plus the fence margin ahead, so at the fence there is still room for
/// degraded numbers. etcd is frozen for 2.8 s (past the fence, short of the TTL, so the
/// same lease carries on) while a number is drawn every 20 ms; none may be refused.
#[test]
fn degraded_numbers_keep_coming_when_the_fence_comes_after_the_reservation() {
    let Some(etcd) = Etcd::start() else { return };
    let c = Cluster::new(&etcd, "repro", SHORT_TTL_S);
    let (s, _) = c.start_ready(&[]);
    register(&s, "SF", "snowflake");
    take(&s, "SF", 1);
    let worker_key = c.key("workers/0/0");
    let hwm_key = c.key("hwm/0/0");
    let deadline = Instant::now() + Duration::from_secs(60);
    for attempt in 1..=2 {
        wait_ready(&s, FEW_SECONDS);
        // Poll the worker key; a new revision is a heartbeat, right after a renewal.
        let moment = block_on(async {
            let mut etcd_c = etcd_client(&c.endpoint).await;
            let mut last_rev = 0;
            while Instant::now() < deadline {
                let r = etcd_c.get(worker_key.as_str(), None).await.expect("get");
                let rev = r.kvs().first().map_or(0, |kv| kv.mod_revision());
                if rev != last_rev && last_rev != 0 {
                    let h = etcd_c.get(hwm_key.as_str(), None).await.expect("get");
                    let reserved: u64 = h
                        .kvs()
                        .first()
                        .and_then(|kv| kv.value_str().ok()?.parse().ok())
                        .expect("hwm");
                    let now = now_ms();
                    etcd.pause();
                    return Some((now, reserved));
                }
                last_rev = rev;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            None
        });
        let (paused_at, reserved) = moment.expect("no heartbeat seen within a minute");
        let mut client = s.client();
        let mut refused = Vec::new();
        let mut degraded = 0;
        while now_ms() < paused_at + 2800 {
            let at = now_ms() - paused_at;
            match draw(&mut client, "SF", 1) {
                Ok(n) => degraded += usize::from(n[0].degraded),
                Err(r) => refused.push((at, Refusal::of(&r))),
            }
            thread::sleep(Duration::from_millis(20));
        }
        etcd.resume();
        assert!(
            degraded > 0,
            "no degraded numbers while fenced\n{}",
            tail(&s)
        );
        println!(
            "attempt {attempt}: etcd frozen after a renewal, reservation {} ms ahead: \
             {degraded} degraded, {} refused",
            reserved - paused_at,
            refused.len()
        );
        if let (Some(first), Some(last)) = (refused.first(), refused.last()) {
            panic!(
                "{} numbers refused with etcd frozen under on_lease_loss=degrade ({degraded} \
                 degraded numbers issued), from {} to {} ms after the freeze (reservation {} \
                 ms ahead); first: {:?}\n{}",
                refused.len(),
                first.0,
                last.0,
                reserved - paused_at,
                first.1,
                tail(&s)
            );
        }
    }
}

/// A node's worker-ID source on `endpoint`, under `root` (datacenter 0, workers 0 to 3), and
/// a plain client to look at what it writes. Call it inside the `block_on` that uses both:
/// their connections live on that runtime.
async fn worker_source(
    endpoint: &str,
    root: &str,
    node: &str,
) -> (EtcdCluster, etcd_client::Client) {
    let client = etcd_client(endpoint).await;
    let settings = ClusterSettings {
        root: root.to_string(),
        dc: 0,
        max_worker: 3,
        node_id: node.to_string(),
        addr: "127.0.0.1:9".to_string(),
        lease_ttl_s: TTL_S,
        timeout: Duration::from_secs(5),
    };
    (
        EtcdCluster::new(client.clone(), settings, Arc::new(SystemClock)),
        client,
    )
}

fn source_root(name: &str) -> String {
    format!("/numgen-test/{name}-{}", &random_token()[..8])
}

/// The value at `key`, as text.
async fn value_at(client: &mut etcd_client::Client, key: &str) -> Option<String> {
    let resp = client.get(key, None).await.expect("etcd get");
    resp.kvs()
        .first()
        .map(|kv| kv.value_str().expect("UTF-8 value").to_string())
}

#[test]
fn a_late_lower_reservation_leaves_the_high_timestamp_where_it_was() {
    let Some(etcd) = Etcd::start() else { return };
    let root = source_root("monotone");
    let hwm_key = format!("{root}/hwm/0/0");
    block_on(async {
        let (node, mut kv) = worker_source(&etcd.endpoint(), &root, "a").await;
        let claim = node.acquire().await.expect("claim");
        assert_eq!((claim.worker, claim.hwm_ms), (0, None));
        let t2 = now_ms() + 60_000;
        let t1 = t2 - 10_000;
        node.reserve(&claim, t2).await.expect("reserve T2");
        // A renewal to T1 that timed out on the node's side and commits at etcd only now,
        // after the renewal to T2: the node may already have issued numbers up to T2.
        node.reserve(&claim, t1).await.expect("reserve T1");
        assert_eq!(
            value_at(&mut kv, &hwm_key).await,
            Some(t2.to_string()),
            "a reservation to T1 after one to T2 lowered the mark"
        );
        node.reserve(&claim, t2 + 1)
            .await
            .expect("reserve above T2");
        let t2 = t2 + 1;
        assert_eq!(value_at(&mut kv, &hwm_key).await, Some(t2.to_string()));

        // The node dies; once its lease is gone it can reserve nothing, high or low.
        kv.lease_revoke(claim.lease).await.expect("revoke");
        for ms in [t1, t2 + 1] {
            let r = node.reserve(&claim, ms).await;
            assert_eq!(
                r,
                Err(WorkerError::NotHeld(0)),
                "reserve {ms} after the lease"
            );
        }
        // The next owner of the ID starts above T2, not T1.
        let (next, _) = worker_source(&etcd.endpoint(), &root, "b").await;
        let taken = next.acquire().await.expect("claim again");
        assert_eq!((taken.worker, taken.hwm_ms), (0, Some(t2)));
    });
}

#[test]
fn a_graceful_release_still_lowers_the_high_timestamp() {
    let Some(etcd) = Etcd::start() else { return };
    let root = source_root("release");
    let hwm_key = format!("{root}/hwm/0/0");
    block_on(async {
        let (node, mut kv) = worker_source(&etcd.endpoint(), &root, "a").await;
        let claim = node.acquire().await.expect("claim");
        assert_eq!(claim.worker, 0);
        let reserved = now_ms() + 60_000;
        node.reserve(&claim, reserved).await.expect("reserve");
        node.reserve(&claim, reserved - 10_000)
            .await
            .expect("lower reserve");
        assert_eq!(
            value_at(&mut kv, &hwm_key).await,
            Some(reserved.to_string()),
            "a lower reservation lowered the mark"
        );
        // At a graceful stop the node persists the highest timestamp it really used,
        // below its reservation, and gives the ID up.
        let used = now_ms();
        node.release(&claim, used).await.expect("release");
        assert_eq!(value_at(&mut kv, &hwm_key).await, Some(used.to_string()));
        assert_eq!(
            value_at(&mut kv, &format!("{root}/workers/0/0")).await,
            None,
            "the worker key outlived the release"
        );
        let (next, _) = worker_source(&etcd.endpoint(), &root, "b").await;
        let taken = next.acquire().await.expect("claim again");
        assert_eq!((taken.worker, taken.hwm_ms), (0, Some(used)));
    });
}

#[test]
fn an_unreadable_high_timestamp_refuses_the_claim() {
    let Some(etcd) = Etcd::start() else { return };
    let root = source_root("corrupt");
    let hwm_key = format!("{root}/hwm/0/0");
    block_on(async {
        let (node, mut kv) = worker_source(&etcd.endpoint(), &root, "a").await;
        kv.put(hwm_key.as_str(), "garbage", None)
            .await
            .expect("etcd put");
        // Worker 0's floor is unknown: the node must not issue with it (nor quietly take
        // another ID and leave the damage unnoticed); it says what is wrong and where.
        match node.acquire().await {
            Err(WorkerError::Store(StoreError::Corrupt { key, detail })) => {
                assert_eq!(key, hwm_key);
                assert!(detail.contains("garbage"), "{detail}");
            }
            other => panic!("acquire with a corrupt mark: {other:?}"),
        }
        // The lease granted for the attempt is revoked, so the worker key is free again.
        assert_eq!(
            value_at(&mut kv, &format!("{root}/workers/0/0")).await,
            None,
            "the refused claim left its worker key behind"
        );
        let leases = kv.leases().await.expect("etcd leases");
        assert!(
            leases.leases().is_empty(),
            "leases left after the refused claim: {:?}",
            leases.leases().iter().map(|l| l.id()).collect::<Vec<_>>()
        );
        // Once the value is repaired the ID is claimed, above it.
        let mark = now_ms() + 5_000;
        kv.put(hwm_key.as_str(), mark.to_string(), None)
            .await
            .expect("etcd put");
        let claim = node.acquire().await.expect("claim after the repair");
        assert_eq!((claim.worker, claim.hwm_ms), (0, Some(mark)));
    });
}
