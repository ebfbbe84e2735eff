//! Several datacenters on two etcd tiers (SPEC 5, "Datacenters"): real etcd processes and
//! real `numgen` binaries on loopback. Each datacenter has an etcd of its own (worker
//! leases, `hwm/`, the registry, the mirror of the configs) and reaches the global etcd
//! (configs, sequence counters, the layout) through a [`Proxy`] the test controls, which
//! cuts it off like a WAN partition.
//!
//! - [`a_partitioned_datacenter_keeps_snowflake_normal_and_catches_up_after_the_heal`]:
//!   dc 1 cut off for longer than the lease TTL while clients issue in both datacenters:
//!   dc 1 snowflake numbers stay normal (none degraded, no error), its sequence prefix
//!   serves what it holds and then answers 503, admin writes 503; a dc 1 node restarted
//!   meanwhile serves snowflake from the mirror; a config registered in dc 0 meanwhile
//!   reaches dc 1 after the heal (the time is printed, the contract is 1 s); no id or
//!   number string repeats across datacenters.
//! - [`a_node_whose_layout_differs_is_refused_also_when_the_global_tier_is_cut_off`].
//! - [`every_datacenter_is_listed_and_a_three_member_global_tier_works`].
//!
//! Timing is never asserted tightly (shared machine): waits are bounded polls, and the
//! measured times are printed (`--nocapture`).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::etcd::{Etcd, EtcdCluster};
use common::history::{History, Number};
use common::proxy::Proxy;
use common::server::{Server, ServerOpts, StartError, assert_error, random_token};
use serde_json::Value;

/// The lease TTL: short, so that a partition outlasts it quickly.
const TTL_S: u64 = 4;

/// Two datacenters, each with its own etcd and a proxy to the global etcd.
struct Dcs {
    locals: [Etcd; 2],
    links: [Proxy; 2],
    root: String,
    token: String,
}

impl Dcs {
    /// `None` when etcd is not installed (and this is not CI).
    fn start(global: String) -> Option<Dcs> {
        let locals = [Etcd::start()?, Etcd::start()?];
        let links = [Proxy::for_endpoint(&global), Proxy::for_endpoint(&global)];
        Some(Dcs {
            locals,
            links,
            root: format!("/numgen-dc-{}", &random_token()[..8]),
            token: random_token(),
        })
    }

    fn opts(&self, dc: usize, extra: &[&str]) -> ServerOpts {
        self.opts_to(dc, self.links[dc].endpoint(), extra)
    }

    /// [`Dcs::opts`] with other global endpoints.
    fn opts_to(&self, dc: usize, global: String, extra: &[&str]) -> ServerOpts {
        let mut opts = ServerOpts::default()
            .admin_token(self.token.clone())
            .arg("--etcd-endpoints")
            .arg(self.locals[dc].endpoint())
            .arg("--global-etcd-endpoints")
            .arg(global)
            .arg("--etcd-root")
            .arg(self.root.clone())
            .arg("--lease-ttl-s")
            .arg(TTL_S.to_string())
            .arg("--dc-id")
            .arg(dc.to_string());
        for a in extra {
            opts = opts.arg(*a);
        }
        opts
    }

    fn start_ready(&self, dc: usize) -> Server {
        let s = Server::start(self.opts(dc, &[]));
        wait_ready(&s, FEW_SECONDS);
        s
    }

    fn key(&self, rel: &str) -> String {
        format!("{}/{rel}", self.root)
    }
}

/// The reasons `/ready` gives, and its status code.
fn reasons(s: &Server) -> (u16, Vec<String>) {
    let (code, body) = ready(s);
    let list = body["reasons"].as_array().cloned().unwrap_or_default();
    let list = list
        .iter()
        .filter_map(|r| r.as_str().map(str::to_string))
        .collect();
    (code, list)
}

/// What a client thread saw.
#[derive(Default)]
struct Seen {
    normal: u64,
    degraded: u64,
    errors: Vec<String>,
}

/// Issues `key` from `s` in batches of 10 until `stop`, recording every number in `history`
/// (one stream per thread).
fn issue_until(
    s: &Server,
    key: &'static str,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<Seen> {
    let addr = s.addr();
    let mut rec = history.recorder(format!("{addr}-{key}"));
    thread::spawn(move || {
        let mut seen = Seen::default();
        let mut client = common::server::Client::connect(addr).expect("connect");
        while !stop.load(Ordering::Relaxed) {
            match try_draw(&mut client, key, 10) {
                Ok(nums) => {
                    for n in &nums {
                        if n.degraded {
                            seen.degraded += 1;
                        } else {
                            seen.normal += 1;
                        }
                    }
                    let numbers: Vec<Number> = nums.iter().map(Num::to_number).collect();
                    rec.record(key, &numbers);
                }
                Err(r) => {
                    let what = r.map_or("connection failed".to_string(), |r| r.text());
                    seen.errors.push(what);
                    client = common::server::Client::connect(addr).expect("connect");
                }
            }
            thread::sleep(Duration::from_millis(5));
        }
        rec.flush();
        seen
    })
}

/// Sequence numbers of `key` from `s`, drawn until a refusal: the numbers and the refusal.
fn drain_sequence(s: &Server, key: &str, within: Duration) -> (Vec<Num>, Refusal) {
    let mut got = Vec::new();
    let mut client = s.client();
    let deadline = Instant::now() + within;
    loop {
        assert!(
            Instant::now() < deadline,
            "{key} still served after {within:?} cut off ({} numbers)",
            got.len()
        );
        match draw(&mut client, key, 50) {
            Ok(nums) => got.extend(nums),
            Err(r) => return (got, Refusal::of(&r)),
        }
    }
}

/// The dc 1 partition: see the module doc.
#[test]
fn a_partitioned_datacenter_keeps_snowflake_normal_and_catches_up_after_the_heal() {
    let Some(global) = Etcd::start() else { return };
    let Some(dcs) = Dcs::start(global.endpoint()) else {
        return;
    };
    let a = dcs.start_ready(0);
    let b = dcs.start_ready(1);
    let mut c = dcs.start_ready(1);
    register(&a, "SNOW", "snowflake");
    a.register("SEQ", r#"{"format":"SEQ-{SEQ:1}","mode":"sequence"}"#);
    for s in [&a, &b, &c] {
        wait_for(
            FEW_SECONDS,
            || format!("{} has SEQ", s.addr()),
            || (s.get("/numbers/SEQ").status == 200).then_some(()),
        );
    }
    let history = History::new();
    // One stream per node: each node's sequence numbers only go up.
    let (mut seq_a, mut seq_b) = (history.recorder("a-SEQ"), history.recorder("b-SEQ"));
    let seq = |nums: &[Num]| -> Vec<Number> { nums.iter().map(Num::to_number).collect() };
    // Both datacenters list each other's nodes, with their dc_id.
    let listed = wait_for(
        FEW_SECONDS,
        || format!("/cluster/nodes of dc 0: {:?}", nodes(&a)),
        || {
            let all = nodes(&a);
            let dcs: Vec<u64> = all.iter().filter_map(|n| n["dc_id"].as_u64()).collect();
            (dcs.iter().filter(|d| **d == 1).count() == 2 && dcs.contains(&0)).then_some(all)
        },
    );
    println!("dc 0 lists {} nodes", listed.len());
    assert_eq!(reasons(&b), (200, vec![]));

    // Clients in both datacenters, all through the partition.
    let stop = Arc::new(AtomicBool::new(false));
    let dc0 = issue_until(&a, "SNOW", history.clone(), stop.clone());
    let dc1 = issue_until(&b, "SNOW", history.clone(), stop.clone());
    // A sequence block fetched before the cut: the held block is what dc 1 serves.
    seq_b.record("SEQ", &seq(&take(&b, "SEQ", 5)));

    let cut_at = Instant::now();
    dcs.links[1].cut();
    wait_for(
        FEW_SECONDS,
        || format!("dc 1 /ready: {:?}", reasons(&b)),
        || {
            let (code, r) = reasons(&b);
            (code == 200 && r == ["global_etcd_unreachable"]).then_some(())
        },
    );
    // Sequence: what dc 1 holds is served, then STORAGE_UNAVAILABLE.
    let (held, refusal) = drain_sequence(&b, "SEQ", Duration::from_secs(60));
    seq_b.record("SEQ", &seq(&held));
    assert_eq!(
        (refusal.status, refusal.code.as_str()),
        (503, "STORAGE_UNAVAILABLE")
    );
    println!("dc 1 served {} held sequence numbers, then 503", held.len());
    // Admin writes too.
    let r = b.admin(
        "POST",
        "/prefix-configs/DC1NEW",
        r#"{"format":"X-{SEQ:1}"}"#,
    );
    assert_error(&r, 503, "STORAGE_UNAVAILABLE");
    // dc 0 goes on with everything, and registers a prefix dc 1 cannot see yet.
    seq_a.record("SEQ", &seq(&take(&a, "SEQ", 5)));
    let before = metric(&b, "numgen_prefixes").unwrap_or(0.0);
    // Retried: on a loaded machine a write may outlast the 2 s store deadline (a 409 then
    // means an earlier attempt committed).
    wait_for(
        FEW_SECONDS,
        || "LATE registered in dc 0".to_string(),
        || {
            let r = a.admin(
                "POST",
                "/prefix-configs/LATE",
                r#"{"format":"L-{SEQ:1}","mode":"snowflake"}"#,
            );
            matches!(r.status, 200 | 201 | 409).then_some(())
        },
    );

    // A dc 1 node restarted during the partition starts from the mirror.
    c.restart();
    wait_ready(&c, Duration::from_secs(30));
    let (code, r) = reasons(&c);
    assert_eq!(
        (code, r),
        (200, vec!["global_etcd_unreachable".to_string()])
    );
    let restarted = take(&c, "SNOW", 50);
    assert!(restarted.iter().all(|n| !n.degraded), "{restarted:?}");
    let mut rec = history.recorder(format!("{}-restarted", c.addr()));
    rec.record(
        "SNOW",
        &restarted.iter().map(Num::to_number).collect::<Vec<_>>(),
    );
    rec.flush();

    // Past the lease TTL twice over, then heal.
    while cut_at.elapsed() < Duration::from_secs(2 * TTL_S + 1) {
        thread::sleep(Duration::from_millis(100));
    }
    let healed = Instant::now();
    dcs.links[1].restore();
    let arrived = wait_for(
        FEW_SECONDS,
        || format!("LATE in dc 1: {:?}", metric(&b, "numgen_prefixes")),
        || (metric(&b, "numgen_prefixes").unwrap_or(0.0) > before).then(|| healed.elapsed()),
    );
    println!(
        "config registered during the partition arrived in dc 1 {arrived:?} after the heal (contract: 1 s)"
    );
    let mirrored = wait_for(
        FEW_SECONDS,
        || "LATE in dc 1's mirror".to_string(),
        || etcd_get(&dcs.locals[1].endpoint(), &dcs.key("mirror/prefixes/LATE")),
    );
    assert!(mirrored.0.contains("\"revision\""), "{}", mirrored.0);
    // Sequence is served again.
    let again = wait_for(
        FEW_SECONDS,
        || "SEQ served again in dc 1".to_string(),
        || draw(&mut b.client(), "SEQ", 5).ok(),
    );
    seq_b.record("SEQ", &seq(&again));
    println!(
        "sequence served again {:?} after the heal",
        healed.elapsed()
    );
    wait_for(
        FEW_SECONDS,
        || format!("dc 1 /ready: {:?}", reasons(&b)),
        || (reasons(&b) == (200, vec![])).then_some(()),
    );

    stop.store(true, Ordering::Relaxed);
    let seen0 = dc0.join().expect("dc 0 client");
    let seen1 = dc1.join().expect("dc 1 client");
    seq_a.flush();
    seq_b.flush();
    println!(
        "dc 0: {} normal, {} degraded; dc 1: {} normal, {} degraded, {} errors",
        seen0.normal,
        seen0.degraded,
        seen1.normal,
        seen1.degraded,
        seen1.errors.len()
    );
    assert!(
        seen1.errors.is_empty(),
        "dc 1 snowflake errors: {:?}",
        seen1.errors
    );
    assert_eq!(seen1.degraded, 0, "dc 1 snowflake numbers were degraded");
    assert!(seen0.errors.is_empty(), "dc 0 errors: {:?}", seen0.errors);
    assert!(seen1.normal > 0 && seen0.normal > 0);
    history.assert_clean();
}

/// A node whose layout differs from the global one does not start; nor does one whose
/// layout differs from its datacenter's while the global tier is cut off.
#[test]
fn a_node_whose_layout_differs_is_refused_also_when_the_global_tier_is_cut_off() {
    let Some(global) = Etcd::start() else { return };
    let Some(dcs) = Dcs::start(global.endpoint()) else {
        return;
    };
    let a = dcs.start_ready(0);
    let b = dcs.start_ready(1);
    let other = ["--layout-worker-bits", "5", "--layout-sequence-bits", "13"];
    let refused = |opts: ServerOpts, why: &str| {
        let failed = match Server::try_start(opts) {
            Ok(mut s) => {
                // It may listen only after its checks: wait for it to quit.
                let deadline = Instant::now() + Duration::from_secs(30);
                while s.is_running() {
                    assert!(
                        Instant::now() < deadline,
                        "{why}: still running\n{}",
                        tail(&s)
                    );
                    thread::sleep(Duration::from_millis(50));
                }
                s.logs()
            }
            Err(StartError { logs, .. }) => logs,
        };
        assert!(failed.contains("layout"), "{why}: {failed}");
    };
    refused(dcs.opts(0, &other), "global layout differs");
    refused(dcs.opts(1, &other), "global layout differs (dc 1)");
    // Cut off: checked against dc 1's own record of it.
    dcs.links[1].cut();
    refused(dcs.opts(1, &other), "dc 1 layout differs, global cut off");
    // The same layout starts (from the mirror) while cut off.
    let c = Server::start(dcs.opts(1, &[]));
    wait_ready(&c, Duration::from_secs(30));
    dcs.links[1].restore();
    drop((a, b, c));
}

/// Three global members, one datacenter node each side: configs and sequence numbers are
/// one for both datacenters, and `/cluster/nodes` lists both.
#[test]
fn every_datacenter_is_listed_and_a_three_member_global_tier_works() {
    let Some(global) = EtcdCluster::start(3) else {
        return;
    };
    let endpoints = global.endpoints();
    let first = endpoints
        .split(',')
        .next()
        .expect("an endpoint")
        .to_string();
    let Some(dcs) = Dcs::start(first) else { return };
    // The nodes reach the global tier through the proxy for the first member and directly
    // for the others.
    let rest: Vec<&str> = endpoints.split(',').skip(1).collect();
    let all = |dc: usize| format!("{},{}", dcs.links[dc].endpoint(), rest.join(","));
    let start = |dc: usize| {
        let s = Server::start(dcs.opts_to(dc, all(dc), &[]));
        wait_ready(&s, FEW_SECONDS);
        s
    };
    let a = start(0);
    let b = start(1);
    a.register("G", r#"{"format":"G-{SEQ:1}","mode":"sequence"}"#);
    let mut checked = Checked::new();
    for _ in 0..3 {
        for s in [&a, &b] {
            let nums = wait_for(
                FEW_SECONDS,
                || "G served".to_string(),
                || draw(&mut s.client(), "G", 10).ok(),
            );
            checked.add(s, "G", &nums);
        }
    }
    checked.assert_clean();
    for s in [&a, &b] {
        wait_for(
            FEW_SECONDS,
            || format!("{}: {:?}", s.addr(), nodes(s)),
            || {
                let listed: Vec<Value> = nodes(s);
                let mut dcs: Vec<u64> = listed.iter().filter_map(|n| n["dc_id"].as_u64()).collect();
                dcs.sort_unstable();
                (dcs == [0, 1]).then_some(())
            },
        );
    }
}
