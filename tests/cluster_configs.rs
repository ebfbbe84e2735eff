//! Prefix configs across the nodes of a cluster (SPEC sections 3.1 and 5): a config written
//! on one node is used by every node, also after a change or a delete, whatever the etcd
//! root. Real etcd and real `numgen` binaries on loopback; each test has its own etcd.
//!
//! - [`configs_reach_every_node_with_the_etcd_root_at_the_top`]: `--etcd-root /`, where
//!   the key scheme once differed between the store (`/prefixes/`) and the watch
//!   (`//prefixes/`), so changes stopped reaching other nodes; and no key numgen writes
//!   starts with `//`.
//! - [`the_watch_hands_every_change_to_its_sink`]: the watch alone (`cluster::watch`) on a
//!   real etcd, into a recording [`ConfigSink`]: the full read, puts, deletes, what it
//!   skips, a restart of etcd, and its stop.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::*;
use common::etcd::Etcd;
use common::server::{Server, assert_error};
use numgen::cluster::watch::{ConfigSink, Refused, watch_prefixes};
use numgen::config::EtcdConfig;
use numgen::prefix::{Mode, PrefixConfig, Reset, UtcOffset};
use numgen::store::Store;
use numgen::store::etcd::{EtcdStore, Keys};

/// The `number` `s` issues for `key` now (200), or the refusal.
fn number(s: &Server, key: &str) -> Result<String, common::server::Resp> {
    let r = s.get(&format!("/numbers/{key}"));
    if r.status == 200 {
        Ok(r.json()["number"].as_str().unwrap_or_default().to_string())
    } else {
        Err(r)
    }
}

/// Every key in `endpoint`'s etcd.
fn all_keys(endpoint: &str) -> Vec<String> {
    block_on(async {
        let mut c = etcd_client(endpoint).await;
        let opts = etcd_client::GetOptions::new()
            .with_all_keys()
            .with_keys_only();
        let resp = c.get("", Some(opts)).await.expect("etcd get all");
        resp.kvs()
            .iter()
            .map(|kv| kv.key_str().expect("UTF-8 key").to_string())
            .collect()
    })
}

#[test]
fn configs_reach_every_node_with_the_etcd_root_at_the_top() {
    let Some(etcd) = Etcd::start() else { return };
    let c = Cluster::with_root(&etcd, "/", TTL_S);
    let (a, _) = c.start_ready(&[]);
    let (b, _) = c.start_ready(&[]);
    for s in [&a, &b] {
        assert_eq!(listed_workers(s), vec![0, 1], "{}", tail(s));
    }

    // Registered on A, used on B.
    a.register("INV", r#"{"format":"INV-{SEQ:4}","mode":"sequence"}"#);
    let first = number(&b, "INV").unwrap_or_else(|r| panic!("B: {}", r.text()));
    assert!(first.starts_with("INV-"), "{first}");

    // Replaced on A: B follows without being asked (the watch, not a read on a miss).
    let put = a.admin(
        "PUT",
        "/prefix-configs/INV",
        r#"{"format":"BILL-{SEQ:4}","mode":"sequence"}"#,
    );
    assert_eq!(put.status, 200, "{}", put.text());
    let last = std::cell::RefCell::new(first);
    wait_for(
        FEW_SECONDS,
        || {
            format!(
                "B still issues {} with the old format\n{}",
                last.borrow(),
                tail(&b)
            )
        },
        || {
            let n = number(&b, "INV").unwrap_or_else(|r| panic!("B: {}", r.text()));
            let new = n.starts_with("BILL-");
            *last.borrow_mut() = n;
            new.then_some(())
        },
    );

    // Deleted on A: B stops issuing it.
    let del = a.admin("DELETE", "/prefix-configs/INV", "");
    assert_eq!(del.status, 200, "{}", del.text());
    let refused = wait_for(
        FEW_SECONDS,
        || format!("B still issues a deleted prefix\n{}", tail(&b)),
        || number(&b, "INV").err(),
    );
    assert_error(&refused, 400, "PREFIX_NOT_REGISTERED");

    // Every key numgen wrote sits right under `/`.
    let keys = all_keys(&c.endpoint);
    let doubled: Vec<&String> = keys
        .iter()
        .filter(|k| !k.starts_with('/') || k.starts_with("//"))
        .collect();
    assert!(
        doubled.is_empty(),
        "keys outside the root: {doubled:?} of {keys:?}"
    );
    for want in [
        "/workers/0/0",
        "/workers/0/1",
        "/hwm/0/0",
        "/hwm/0/1",
        "/layout",
        "/seq/INV",
    ] {
        assert!(
            keys.iter().any(|k| k == want),
            "{want} missing from {keys:?}"
        );
    }
}

/// A [`ConfigSink`] that writes down what it is told; it refuses formats starting `BAD`.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<String>>,
}

impl Recorder {
    fn push(&self, e: String) {
        self.events.lock().unwrap().push(e);
    }

    fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }

    /// Waits until `event` has been recorded `times` times in all.
    async fn seen(&self, event: &str, times: usize) {
        let deadline = Instant::now() + FEW_SECONDS;
        while self.events().iter().filter(|e| *e == event).count() < times {
            assert!(
                Instant::now() < deadline,
                "{event:?} (x{times}) never came: {:?}",
                self.events()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl ConfigSink for Recorder {
    fn apply(&self, key: &str, config: PrefixConfig) -> Result<(), Refused> {
        if config.format.starts_with("BAD") {
            return Err(format!("{key}: refused").into());
        }
        self.push(format!("apply {key} {}", config.format));
        Ok(())
    }

    fn forget(&self, key: &str) {
        self.push(format!("forget {key}"));
    }

    fn sync(&self, all: HashMap<String, PrefixConfig>) {
        let mut keys: Vec<&String> = all.keys().collect();
        keys.sort();
        self.push(format!("sync {keys:?}"));
    }
}

fn config(format: &str) -> PrefixConfig {
    PrefixConfig {
        format: format.to_string(),
        seq_length: 4,
        initial_seq: 0,
        mode: Mode::Snowflake,
        reset: Reset::Never,
        utc_offset: UtcOffset::default(),
        strict: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_hands_every_change_to_its_sink() {
    let Some(mut etcd) = tokio::task::spawn_blocking(Etcd::start).await.unwrap() else {
        return;
    };
    // The store writes under `/numgen`; the watch is given the root spelled `numgen/`.
    let cfg = EtcdConfig {
        endpoints: vec![etcd.endpoint()],
        root: "/numgen".into(),
        username: None,
        password: None,
        ca_file: None,
        cert_file: None,
        key_file: None,
    };
    let store = EtcdStore::connect(&cfg).await.unwrap();
    let keys = Keys::new("numgen/");
    let mut kv = store.client();
    store
        .create_prefix("A", &config("A-{SEQ:4}"))
        .await
        .unwrap();
    // Neither an unreadable value nor a key below a config's is a config.
    kv.put(keys.prefix("BROKEN"), "{", None).await.unwrap();
    kv.put(format!("{}/deeper", keys.prefix("A")), "x", None)
        .await
        .unwrap();

    let sink = Arc::new(Recorder::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(watch_prefixes(
        store.members().clone(),
        keys.clone(),
        sink.clone(),
        Duration::from_secs(2),
        stop_rx,
    ));
    sink.seen(r#"sync ["A"]"#, 1).await;

    store
        .create_prefix("B", &config("B-{SEQ:4}"))
        .await
        .unwrap();
    sink.seen("apply B B-{SEQ:4}", 1).await;
    store
        .replace_prefix("A", &config("A2-{SEQ:4}"))
        .await
        .unwrap();
    sink.seen("apply A A2-{SEQ:4}", 1).await;
    // Skipped without a word to the sink: unreadable, deeper, refused by the sink.
    kv.put(keys.prefix("C"), "not json", None).await.unwrap();
    kv.put(format!("{}/x", keys.prefix("B")), "x", None)
        .await
        .unwrap();
    store
        .create_prefix("D", &config("BAD-{SEQ:4}"))
        .await
        .unwrap();
    store.delete_prefix("B").await.unwrap();
    sink.seen("forget B", 1).await;
    assert_eq!(
        sink.events(),
        vec![
            r#"sync ["A"]"#,
            "apply B B-{SEQ:4}",
            "apply A A2-{SEQ:4}",
            "forget B"
        ]
    );

    // etcd restarts: the watch breaks, and a full read brings the sink back in line.
    etcd = tokio::task::spawn_blocking(move || {
        etcd.restart();
        etcd
    })
    .await
    .unwrap();
    sink.seen(r#"sync ["A", "D"]"#, 1).await;

    stop_tx.send(true).unwrap();
    tokio::time::timeout(FEW_SECONDS, task)
        .await
        .expect("the watch stops when told")
        .unwrap();
    drop(etcd);
}
