//! The status page `GET /` (SPEC 3.4) in headless Chromium, on a 3-node cluster on a real
//! etcd: it shows each node's worker and readiness and each prefix with its counts; it
//! updates itself after numbers are issued (no reload); a node whose clock stepped back
//! 90 s (libfaketime, policy `degrade`) shows as degraded on a peer's page and on its own,
//! with its degraded numbers counted; the page loads nothing but itself; and when its node
//! stops, the page says the node does not answer.
//!
//! Screenshots and the nodes' logs are saved in `target/tmp/status-page/` (under
//! `cargo llvm-cov`: `target/llvm-cov-target/tmp/status-page/`).

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::browser::Browser;
use common::cluster::{Cluster, FEW_SECONDS, TTL_S, nodes, ready, wait_for, wait_ready};
use common::etcd::Etcd;
use common::faketime::FakeClock;
use common::server::Server;
use serde_json::Value;

/// What the test reads off the page, from its DOM.
const PAGE_STATE: &str = r#"
const q = (s, el = document) => el.querySelector(s);
const rows = (s) => [...document.querySelectorAll(s)];
return {
  loaded_once: window.__loadedOnce === true,
  made: q('#made').textContent,
  ready: q('#node [data-ready]').dataset.ready,
  node_text: q('#node').textContent,
  stale: !q('#stale').hidden,
  stale_text: q('#stale').textContent,
  nodes: rows('#nodes tr[data-node]').map(r => ({
    node: r.dataset.node,
    worker: q('[data-worker]', r).textContent,
    ready: q('[data-ready]', r).dataset.ready,
    text: r.textContent,
  })),
  prefixes: Object.fromEntries(rows('#prefixes tr[data-prefix]').map(r => [r.dataset.prefix, {
    issued: Number(q('[data-issued]', r).textContent),
    degraded: Number(q('[data-degraded]', r).textContent),
    text: r.textContent,
  }])),
  resources: performance.getEntriesByType('resource').map(e => e.name),
};"#;

/// How long the page may take to show a change: a 2 s refresh, a 1 s skew check and a
/// watch, on two busy cores.
const SHOWN: Duration = Duration::from_secs(30);

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

fn state(browser: &Browser) -> Value {
    browser.eval(PAGE_STATE)
}

/// Waits until the page's state satisfies `ok`; the last state in the failure message.
fn wait_page(browser: &Browser, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let found = catch_unwind(AssertUnwindSafe(|| {
        wait_for(
            SHOWN,
            || what.to_string(),
            || {
                let s = state(browser);
                let done = ok(&s);
                last = s.clone();
                done.then_some(s)
            },
        )
    }));
    found.unwrap_or_else(|_| panic!("the page never showed {what}; it showed {last:#}"))
}

fn node_row<'a>(s: &'a Value, node_id: &str) -> &'a Value {
    s["nodes"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["node"] == node_id))
        .unwrap_or_else(|| panic!("no row for {node_id} in {s:#}"))
}

/// The `node_id` and worker ID of each node in `/cluster/nodes`.
fn registry(s: &Server) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = nodes(s)
        .iter()
        .map(|n| {
            let id = n["node_id"].as_str().unwrap_or_default().to_string();
            (id, n["worker_id"].to_string())
        })
        .collect();
    v.sort();
    v
}

fn node_id_of(via: &Server, s: &Server) -> String {
    let addr = s.addr().to_string();
    nodes(via)
        .iter()
        .find(|n| n["addr"] == addr.as_str())
        .and_then(|n| n["node_id"].as_str().map(String::from))
        .unwrap_or_else(|| panic!("{addr} is not in the registry"))
}

#[test]
fn the_status_page_shows_the_cluster_its_counts_and_a_degraded_node() {
    let Some(etcd) = Etcd::start() else { return };
    let Some(clock) = FakeClock::new("+0") else {
        return;
    };
    let Some(browser) = Browser::start() else {
        return;
    };
    let cluster = Cluster::new(&etcd, "status-page", TTL_S);
    let (a, _) = cluster.start_ready(&[]);
    let (mut b, _) = cluster.start_ready(&[]);
    let c = Server::start(clock.apply(cluster.opts(&[])));
    wait_ready(&c, FEW_SECONDS);
    let dir = artifacts();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        scenario(&browser, &clock, (&a, &mut b, &c), &dir);
    }));
    for (name, s) in [("node-a", &a), ("node-b", &b), ("node-c", &c)] {
        let _ = std::fs::write(dir.join(format!("{name}.log")), s.logs());
    }
    println!("status page screenshots and logs: {}", dir.display());
    if let Err(panic) = outcome {
        resume_unwind(panic);
    }
}

fn scenario(
    browser: &Browser,
    clock: &FakeClock,
    (a, b, c): (&Server, &mut Server, &Server),
    dir: &Path,
) {
    a.register("SNOW", r#"{"format":"SN-{SEQ:19}{flag}"}"#);
    a.register("INV", r#"{"format":"INV-{SEQ:6}","mode":"sequence"}"#);
    wait_for(
        FEW_SECONDS,
        || format!("three nodes in the registry: {:?}", registry(a)),
        || (registry(a).len() == 3).then_some(()),
    );
    let page = format!("{}/", a.base_url());
    browser.open(&page);
    browser.eval("window.__loadedOnce = true; return true;");

    // Each node with its worker ID and readiness; each prefix with no numbers yet.
    let want = registry(a);
    let s = wait_page(browser, "three ready nodes and both prefixes", |s| {
        s["nodes"]
            .as_array()
            .is_some_and(|n| n.len() == 3 && n.iter().all(|r| r["ready"] == "ok"))
            && s["prefixes"]["SNOW"].is_object()
            && s["prefixes"]["INV"].is_object()
    });
    let mut shown: Vec<(String, String)> = s["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["node"].as_str().unwrap_or_default().to_string(),
                r["worker"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    shown.sort();
    assert_eq!(
        shown, want,
        "nodes and workers on the page vs /cluster/nodes"
    );
    assert_eq!(s["ready"], "ok");
    assert!(
        node_row(&s, &node_id_of(a, a))["text"]
            .as_str()
            .unwrap_or_default()
            .contains("(this node)")
    );
    assert_eq!(
        (
            s["prefixes"]["SNOW"]["issued"].as_u64(),
            s["prefixes"]["INV"]["issued"].as_u64()
        ),
        (Some(0), Some(0))
    );
    assert!(
        s["prefixes"]["INV"]["text"]
            .as_str()
            .unwrap_or_default()
            .contains("sequence")
    );

    // Numbers issued on this node show up without a reload.
    let made_before = s["made"].clone();
    assert_eq!(a.get("/numbers/SNOW?count=7").status, 200);
    assert_eq!(a.get("/numbers/INV?count=3").status, 200);
    let s = wait_page(browser, "7 SNOW and 3 INV numbers issued", |s| {
        s["prefixes"]["SNOW"]["issued"] == 7 && s["prefixes"]["INV"]["issued"] == 3
    });
    assert_eq!(
        s["loaded_once"], true,
        "the page was reloaded instead of updating itself"
    );
    assert_ne!(s["made"], made_before);
    assert_eq!(s["prefixes"]["SNOW"]["degraded"], 0);
    browser.screenshot(&dir.join("1-healthy-cluster.png"));

    // Node c's clock steps back 90 s: under `degrade` its numbers are degraded.
    let c_id = node_id_of(a, c);
    clock.set("-90s");
    wait_for(
        FEW_SECONDS,
        || format!("node c degraded: {:?}", ready(c)),
        || (ready(c).1["status"] == "degraded").then_some(()),
    );
    let r = c.get("/numbers/SNOW?count=5");
    assert_eq!(r.status, 200, "{}", r.text());
    let numbers = r.json()["numbers"].as_array().cloned().unwrap_or_default();
    assert_eq!(numbers.len(), 5);
    assert!(numbers.iter().all(|n| n["degraded"] == true), "{numbers:?}");
    let s = wait_page(browser, "node c degraded on a's page", |s| {
        node_row(s, &c_id)["ready"] == "degraded"
    });
    let row = node_row(&s, &c_id)["text"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(row.contains("clock_backward"), "{row}");
    assert_eq!(s["ready"], "ok", "a itself stays ready");
    let others_ok = s["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["node"] != c_id.as_str())
        .all(|r| r["ready"] == "ok");
    assert!(others_ok, "{s:#}");
    browser.screenshot(&dir.join("2-degraded-node-seen-from-a-peer.png"));

    // c's own page: degraded, with its degraded numbers counted for the prefix.
    browser.open(&format!("{}/", c.base_url()));
    let s = wait_page(
        browser,
        "c's page: degraded with 5 degraded SNOW numbers",
        |s| s["ready"] == "degraded" && s["prefixes"]["SNOW"]["degraded"] == 5,
    );
    assert_eq!(s["prefixes"]["SNOW"]["issued"], 5);
    assert!(
        s["node_text"]
            .as_str()
            .unwrap_or_default()
            .contains("clock_backward"),
        "{s:#}"
    );
    browser.screenshot(&dir.join("3-degraded-node-own-page.png"));
    let base = c.base_url();
    for r in s["resources"].as_array().into_iter().flatten() {
        let name = r.as_str().unwrap_or_default();
        assert!(name.starts_with(&base), "the page loaded {name}");
    }

    // b's page, then b stops: the page says b does not answer.
    browser.open(&format!("{}/", b.base_url()));
    wait_page(browser, "b's page", |s| {
        s["nodes"].as_array().is_some_and(|n| n.len() == 3)
    });
    let status = b.terminate();
    assert!(status.success(), "b exited with {status}");
    let s = wait_page(browser, "the stale banner", |s| s["stale"] == true);
    assert!(
        s["stale_text"]
            .as_str()
            .unwrap_or_default()
            .contains("did not answer"),
        "{s:#}"
    );
}
