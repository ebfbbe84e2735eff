//! Black-box tests of the per-client rate limit (SPEC 7: `rate_limit_per_s`,
//! `rate_limit_burst`, off by default) against the real binary: a client past its burst
//! gets 429 `RATE_LIMITED` with `Retry-After` and nothing is issued for it; another client
//! address (127.0.0.2: the whole 127/8 is loopback) is not affected; probes and scrapes are
//! never limited; after `Retry-After` the client gets through again.
//!
//! No timing is asserted: the limit is 1 request a second with a burst of 3, so the only
//! things that depend on the machine's speed are bounded loops ("a 429 comes within 50
//! requests", true unless 50 requests take 47 s) and waits that follow the server's own
//! `Retry-After`.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::server::{Client, Resp, Server, ServerOpts, assert_error};

const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const ADMIN: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

fn limited_server() -> Server {
    Server::start(
        ServerOpts::default()
            .arg("--rate-limit-per-s")
            .arg("1")
            .arg("--rate-limit-burst")
            .arg("3"),
    )
}

fn get(c: &mut Client, path: &str) -> Resp {
    c.request("GET", path, &[], b"")
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

fn number(r: &Resp) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["number"].as_str().expect("number").to_string()
}

/// Registers `key` (a sequence prefix, `R-{SEQ:3}`) from [`ADMIN`], so that the clients
/// under test start with full buckets.
fn register_from_admin(s: &Server, key: &str) {
    let mut c = Client::connect_from(s.addr(), ADMIN).expect("connect from 127.0.0.3");
    let auth = format!("Bearer {}", s.token());
    let r = c
        .request(
            "POST",
            &format!("/prefix-configs/{key}"),
            &[("Authorization", &auth)],
            br#"{"format":"R-{SEQ:3}","mode":"sequence"}"#,
        )
        .expect("register");
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_burst_gets_429_with_retry_after_and_issues_nothing_for_it() {
    let s = limited_server();
    register_from_admin(&s, "RL");
    let mut c = s.client();
    // The burst: three at once, whatever the machine's speed.
    let mut issued: Vec<String> = (0..3)
        .map(|_| number(&get(&mut c, "/numbers/RL")))
        .collect();
    let mut refused = None;
    for _ in 0..50 {
        let r = get(&mut c, "/numbers/RL");
        if r.status == 429 {
            refused = Some(r);
            break;
        }
        issued.push(number(&r));
    }
    let r = refused.expect("a 429 within 50 requests at 1/s");
    assert_error(&r, 429, "RATE_LIMITED");
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("Retry-After in whole seconds");
    assert!((1..=3).contains(&retry), "Retry-After {retry}");

    // Another client address is not affected (its bucket is full).
    let mut other = Client::connect_from(s.addr(), OTHER).expect("connect from 127.0.0.2");
    issued.push(number(&get(&mut other, "/numbers/RL")));

    // Probes and scrapes are never limited: far more than the rate allows, all answered.
    for path in ["/health", "/ready", "/metrics", "/api/health"] {
        for _ in 0..10 {
            assert_eq!(get(&mut c, path).status, 200, "{path}");
        }
    }

    // After Retry-After the limited client gets through again (bounded: each wait is the
    // server's own Retry-After, at most 10 of them).
    let mut wait = retry;
    let mut back = None;
    for _ in 0..10 {
        std::thread::sleep(Duration::from_secs(wait));
        let r = get(&mut c, "/numbers/RL");
        if r.status == 200 {
            back = Some(r);
            break;
        }
        assert_error(&r, 429, "RATE_LIMITED");
        wait = r
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
    }
    issued.push(number(&back.expect("through again after Retry-After")));

    // Refused requests issued nothing: the numbers are consecutive from the first.
    let want: Vec<String> = (1..=issued.len()).map(|n| format!("R-{n:03}")).collect();
    assert_eq!(issued, want);
}

#[test]
fn every_limited_route_counts_admin_and_leaf_included() {
    let s = limited_server();
    register_from_admin(&s, "RL2");
    let mut c = s.client();
    let auth = format!("Bearer {}", s.token());
    let mut statuses = Vec::new();
    for _ in 0..50 {
        let r = c
            .request(
                "GET",
                "/prefix-configs/RL2",
                &[("Authorization", &auth)],
                b"",
            )
            .expect("admin GET");
        statuses.push(r.status);
        if r.status == 429 {
            assert_error(&r, 429, "RATE_LIMITED");
            break;
        }
        let r = get(&mut c, "/api/segment/get/RL2");
        statuses.push(r.status);
        if r.status == 429 {
            assert!(r.header("retry-after").is_some());
            assert_error(&r, 429, "RATE_LIMITED");
            break;
        }
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert!(statuses[..3].iter().all(|s| *s == 200), "{statuses:?}");
}

#[test]
fn off_by_default() {
    let s = Server::start(ServerOpts::default());
    s.register("FREE", r#"{"format":"F-{SEQ:3}","mode":"sequence"}"#);
    let mut c = s.client();
    for n in 1..=200 {
        assert_eq!(number(&get(&mut c, "/numbers/FREE")), format!("F-{n:03}"));
    }
}

#[test]
fn the_limit_comes_from_the_environment_too() {
    let s = Server::start(
        ServerOpts::default()
            .env("NUMGEN_RATE_LIMIT_PER_S", "1")
            .env("NUMGEN_RATE_LIMIT_BURST", "1"),
    );
    let mut c = s.client();
    let mut statuses = Vec::new();
    for _ in 0..50 {
        let r = get(&mut c, "/ids/1");
        statuses.push(r.status);
        if r.status == 429 {
            break;
        }
    }
    assert_eq!(statuses.first(), Some(&200), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
}
