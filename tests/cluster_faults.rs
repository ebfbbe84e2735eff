//! etcd trouble in cluster mode (SPEC section 4): real etcd frozen under real `numgen`
//! binaries on loopback.
//!
//! - [`an_etcd_outage_degrades_or_rejects_and_every_node_recovers`]: etcd frozen past the
//!   lease TTL, `degrade` and `reject` side by side; re-acquire time is printed.
//! - [`degraded_numbers_keep_coming_when_the_fence_comes_after_the_reservation`]
//!   (etcd frozen right after a lease renewal): the reservation still has room at the fence.
//! - [`a_slow_claim_leaves_less_fence_time_and_no_normal_number_outlives_the_lease`]
//!   (etcd behind a slow proxy, cut off as soon as the claim is done): the fence counts
//!   from the lease's grant, so no normal number comes after the lease can have expired.
//!
//! Every number drawn goes to the history checker (`common::history`).
//!
//! Each test starts its own etcd and uses its own etcd root, so tests stay independent and
//! may run in parallel. Tests that wait for a lease to expire or a node to be fenced use
//! 3 s leases (the minimum) to stay short; the others keep the default 10 s, so that an
//! etcd stalled for a few seconds by a loaded machine cannot fail them for a reason they
//! do not test. Timing asserts are generous bounds ("within a few seconds"), never tight.
//! Measurements are printed: run with `--nocapture` to see them.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::etcd::Etcd;
use common::proxy::Proxy;
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

    // Every number, per cluster (the two share no etcd root, so they may issue the same
    // IDs), checked at the end: nothing repeated, no node's numbers going backwards.
    let (mut hd, mut hr) = (Checked::new(), Checked::new());
    for s in &d {
        hd.take(s, "SF", 1000);
        hd.take(s, "SQ", 20);
    }
    for s in &r {
        hr.take(s, "SF", 1000);
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
                hd.add(s, "SF", &nums);
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
    hd.take(&d[1], "SQ", 5);
    let mut sq = d[0].client();
    let mut from_blocks = 0;
    let unavailable = (0..40).find_map(|_| match draw(&mut sq, "SQ", 500) {
        Ok(nums) => {
            from_blocks += nums.len();
            hd.add(&d[0], "SQ", &nums);
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
    for (k, s) in all().enumerate() {
        let h = if k < d.len() { &mut hd } else { &mut hr };
        let nums = h.take(s, "SF", 10);
        assert!(
            nums.iter().all(|n| !n.degraded),
            "{}: {nums:?}\n{}",
            s.addr(),
            tail(s)
        );
        assert_eq!(metric(s, "numgen_lease_healthy"), Some(1.0));
    }
    thread::sleep(Duration::from_millis(300));

    // Everything from before, during and after the outage goes to the history checker
    // (each collector is one ordered stream).
    let back_after = ms_since(paused, resumed);
    for (k, (is_d, col)) in collectors.into_iter().enumerate() {
        let answers = col.finish();
        let node = all().nth(k).map(Server::addr).expect("node");
        let (h, label) = if is_d {
            (&hd, "degrade")
        } else {
            (&hr, "reject")
        };
        let mut rec = h.recorder(node.to_string());
        let (mut degraded, mut refused) = (0, 0);
        let mut bad: Vec<(i128, Refusal)> = Vec::new();
        for Answer { sent, got } in answers {
            match got {
                Ok(nums) => {
                    degraded += nums.iter().filter(|n| n.degraded).count();
                    record(&mut rec, "SF", &nums);
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
        hd.take(s, "SF", 1000);
        let mut c = s.client();
        let nums = wait_for(
            FEW_SECONDS,
            || format!("no sequence number after etcd returned\n{}", tail(s)),
            || draw(&mut c, "SQ", 20).ok(),
        );
        hd.add(s, "SQ", &nums);
    }
    for s in &r {
        hr.take(s, "SF", 1000);
    }
    hd.assert_clean();
    hr.assert_clean();
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
    let mut h = Checked::new();
    h.take(&s, "SF", 1);
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
                Ok(n) => {
                    degraded += usize::from(n[0].degraded);
                    h.add(&s, "SF", &n);
                }
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
    h.take(&s, "SF", 1000);
    h.assert_clean();
}

/// Finding 8 of issue 10: the fence time counts from the lease's grant, not from the end of
/// the claim. The node reaches etcd through a proxy that holds every byte 450 ms each way,
/// so granting the lease, claiming the worker ID and reserving its timestamps take about
/// 4.5 s of a 5 s lease; as soon as the node says it holds the ID, etcd is cut off, so no
/// renewal arrives and the lease expires. The lease was granted before its worker key
/// appeared in etcd: from that moment plus the TTL on, every number must be degraded.
#[test]
fn a_slow_claim_leaves_less_fence_time_and_no_normal_number_outlives_the_lease() {
    const TTL: u64 = 5;
    let Some(etcd) = Etcd::start() else { return };
    let direct = Cluster::new(&etcd, "slow-claim", TTL);
    // A helper node (worker 0) registers the prefix; the slow node loads it at start.
    let (helper, _) = direct.start_ready(&[]);
    register(&helper, "SF", "snowflake");
    let proxy = Proxy::for_endpoint(&etcd.endpoint());
    proxy.set_delay(Duration::from_millis(200));
    let slow = Cluster {
        endpoint: proxy.endpoint(),
        root: direct.root.clone(),
        token: direct.token.clone(),
        ttl_s: TTL,
    };
    let t0 = Instant::now();
    let node = slow.start(&[]);
    let worker_key = direct.key("workers/0/1");
    // When the worker key appears (polled directly): the lease is older than that.
    let appeared = block_on(async {
        let mut c = etcd_client(&direct.endpoint).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let r = c.get(worker_key.as_str(), None).await.expect("get");
            if !r.kvs().is_empty() {
                return Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("{worker_key} never appeared\n{}", tail(&node));
    });
    node.wait_for_log(Duration::from_secs(30), |r| {
        r["message"] == "worker ID acquired"
    })
    .unwrap_or_else(|| panic!("the slow node never acquired its ID\n{}", tail(&node)));
    proxy.cut();
    let cut = Instant::now();
    let expired_by = appeared + Duration::from_secs(TTL);
    println!(
        "measure: worker key in etcd {} ms after start, claim done {} ms after that",
        (appeared - t0).as_millis(),
        (cut - appeared).as_millis()
    );
    let collector = Collector::start(node.addr());
    thread::sleep((expired_by + Duration::from_millis(1500)).saturating_duration_since(cut));
    let answers = collector.finish();

    let mut h = Checked::new();
    let mut rec = h.recorder(node.addr().to_string());
    let mut last_normal = None;
    for a in &answers {
        if let Ok(nums) = &a.got {
            record(&mut rec, "SF", nums);
            if nums.iter().any(|n| !n.degraded) {
                last_normal = Some(a.sent);
            }
        }
    }
    drop(rec);
    let normal_after: i128 = last_normal.map_or(i128::MIN, |t| ms_since(expired_by, t));
    println!(
        "measure: {} answers after the cut; last normal number sent {} ms relative to the \
         lease's latest possible expiry",
        answers.len(),
        if last_normal.is_some() {
            normal_after.to_string()
        } else {
            "never".into()
        }
    );
    assert!(
        answers.iter().any(|a| a.got.is_ok()),
        "no number at all while fenced\n{}",
        tail(&node)
    );
    assert!(
        normal_after < 0,
        "a normal number from a request sent {normal_after} ms after the lease (granted \
         before its worker key appeared) had expired\n{}",
        tail(&node)
    );
    assert_eq!(metric(&node, "numgen_lease_healthy"), Some(0.0));

    // etcd back: the node claims again and issues normal numbers.
    proxy.set_delay(Duration::ZERO);
    proxy.restore();
    wait_ready(&node, FEW_SECONDS);
    let after = h.take(&node, "SF", 1000);
    assert!(after.iter().all(|n| !n.degraded), "{}", tail(&node));
    h.take(&helper, "SF", 1000);
    h.assert_clean();
}
