//! etcd trouble in cluster mode (SPEC section 4): real etcd frozen under real `numgen`
//! binaries on loopback.
//!
//! - [`an_etcd_outage_degrades_or_rejects_and_every_node_recovers`]: etcd frozen past the
//!   lease TTL, `degrade` and `reject` side by side; re-acquire time is printed.
//! - [`degraded_numbers_keep_coming_when_the_fence_comes_after_the_reservation`]
//!   (etcd frozen right after a lease renewal): the reservation still has room at the fence.
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
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::etcd::Etcd;
use common::server::{Client, Server, assert_error};
use serde_json::Value;

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
