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
//! - [`an_answer_held_back_never_rolls_the_registry_back`]: no node goes back to an older
//!   config (SPEC 3.1), white-box: two services on one real etcd, one of whose store
//!   answers is held until the other's newer version reached it by watch — for a `PUT`, a
//!   read-through lookup (against a delete) and a `DELETE` (against a re-registration).
//! - [`racing_puts_on_two_nodes_leave_every_node_on_the_last_version`]: the same, black-box:
//!   two nodes race `PUT`s on one key; afterwards each node's `GET` shows etcd's last one.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::etcd::Etcd;
use common::server::{Server, assert_error};
use numgen::cluster::watch::{ConfigSink, Refused, watch_prefixes};
use numgen::config::EtcdConfig;
use numgen::prefix::{Mode, PrefixConfig, Reset, UtcOffset};
use numgen::store::etcd::{EtcdStore, Keys};
use numgen::store::{AuditMeta, Revision, Snapshot, Store};

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
/// It also checks that every key's revisions only go up, deletes included (a delete event
/// carries the revision of the delete).
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<String>>,
    revisions: Mutex<HashMap<String, u64>>,
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

impl Recorder {
    fn revision(&self, key: &str, revision: u64) {
        let mut seen = self.revisions.lock().unwrap();
        let before = seen.insert(key.to_string(), revision).unwrap_or(0);
        assert!(
            revision > before,
            "{key}: revision {revision} after {before}"
        );
    }
}

impl ConfigSink for Recorder {
    fn apply(&self, key: &str, config: PrefixConfig, revision: Revision) -> Result<(), Refused> {
        self.revision(key, revision);
        if config.format.starts_with("BAD") {
            return Err(format!("{key}: refused").into());
        }
        self.push(format!("apply {key} {}", config.format));
        Ok(())
    }

    fn forget(&self, key: &str, revision: Revision) {
        self.revision(key, revision);
        self.push(format!("forget {key}"));
    }

    fn sync(&self, all: Snapshot) {
        let mut keys: Vec<&String> = all.configs.iter().map(|(k, _, _)| k).collect();
        keys.sort();
        for (key, _, revision) in &all.configs {
            assert!(
                *revision <= all.revision,
                "{key} at {revision} in a read at {}",
                all.revision
            );
        }
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

// ---------------------------------------------------------------------------------------
// Config revisions: no node goes back to an older version (SPEC 3.1)

mod held {
    //! A store whose next answer can be held back: the call reaches etcd and is done there,
    //! and its answer waits until the test lets it go.

    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;
    use numgen::prefix::PrefixConfig;
    use numgen::store::{
        AuditMeta, AuditRecord, Observed, PrefixRecord, Revision, SeqBlock, SeqGuard, Snapshot,
        Store, StoreError, Written,
    };
    use tokio::sync::oneshot;

    /// The held call's two ends: it has arrived (its store call is done), and the release.
    pub struct Held {
        pub arrived: oneshot::Receiver<()>,
        pub release: oneshot::Sender<()>,
    }

    #[derive(Default)]
    struct Gate {
        armed: Mutex<Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>>,
    }

    pub struct HeldStore {
        inner: Arc<dyn Store>,
        gate: Gate,
    }

    impl HeldStore {
        pub fn new(inner: Arc<dyn Store>) -> HeldStore {
            HeldStore {
                inner,
                gate: Gate::default(),
            }
        }

        /// Holds the answer of the next config write, delete or read.
        pub fn hold_next(&self) -> Held {
            let (arrived_tx, arrived) = oneshot::channel();
            let (release, released) = oneshot::channel();
            *self.gate.armed.lock().unwrap() = Some((arrived_tx, released));
            Held { arrived, release }
        }

        async fn pass(&self) {
            let armed = self.gate.armed.lock().unwrap().take();
            if let Some((arrived, released)) = armed {
                let _ = arrived.send(());
                let _ = released.await;
            }
        }
    }

    #[async_trait]
    impl Store for HeldStore {
        async fn snapshot_prefixes(&self) -> Result<Snapshot, StoreError> {
            self.inner.snapshot_prefixes().await
        }
        async fn observe_prefix(&self, key: &str) -> Result<Observed, StoreError> {
            let seen = self.inner.observe_prefix(key).await;
            self.pass().await;
            seen
        }
        async fn write_prefix(
            &self,
            key: &str,
            config: &PrefixConfig,
            create_only: bool,
            audit: &AuditMeta,
        ) -> Result<(Written, Revision), StoreError> {
            let written = self
                .inner
                .write_prefix(key, config, create_only, audit)
                .await;
            self.pass().await;
            written
        }
        async fn remove_prefix(
            &self,
            key: &str,
            audit: &AuditMeta,
        ) -> Result<Option<Revision>, StoreError> {
            let removed = self.inner.remove_prefix(key, audit).await;
            self.pass().await;
            removed
        }
        async fn prefix_history(&self, key: &str) -> Result<Vec<AuditRecord>, StoreError> {
            self.inner.prefix_history(key).await
        }
        async fn prefix_record(&self, key: &str) -> Result<Option<PrefixRecord>, StoreError> {
            self.inner.prefix_record(key).await
        }
        async fn reserve_seq_as(
            &self,
            counter: &str,
            size: u64,
            initial: u64,
            guard: Option<&SeqGuard<'_>>,
        ) -> Result<SeqBlock, StoreError> {
            self.inner
                .reserve_seq_as(counter, size, initial, guard)
                .await
        }
        async fn release_seq_as(
            &self,
            c: &str,
            end: u64,
            back: u64,
            guard: Option<&SeqGuard<'_>>,
        ) -> Result<bool, StoreError> {
            self.inner.release_seq_as(c, end, back, guard).await
        }
        async fn get_seq(&self, counter: &str) -> Result<Option<u64>, StoreError> {
            self.inner.get_seq(counter).await
        }
        async fn check_layout(&self, layout: &str) -> Result<(), StoreError> {
            self.inner.check_layout(layout).await
        }
    }
}

mod services {
    //! Services as a cluster node builds them (read-through on), on a real etcd, with a
    //! watch that can be started when the test wants it.

    use std::sync::Arc;
    use std::time::Duration;

    use numgen::clock::SystemClock;
    use numgen::cluster::watch::watch_prefixes;
    use numgen::format::{RenderCtx, Template};
    use numgen::id::{Layout, LayoutSettings, Policy};
    use numgen::metrics::Metrics;
    use numgen::node::{Node, NodeSettings};
    use numgen::service::{IssueError, Service, Sink};
    use numgen::store::Store;
    use numgen::store::etcd::{EtcdStore, Keys};
    use tokio::sync::watch;

    pub fn service(store: Arc<dyn Store>, worker: u64) -> Arc<Service> {
        let metrics = Metrics::new().unwrap();
        let now = super::now_ms();
        let layout = Layout::new(LayoutSettings::default(), now).unwrap();
        let node = Arc::new(Node::new(
            layout,
            Arc::new(SystemClock),
            NodeSettings {
                max_backward_wait_ms: 5,
                on_clock_backward: Policy::Degrade,
                on_lease_loss: Policy::Degrade,
                reserve_window_ms: 2000,
            },
            metrics.clone(),
        ));
        let units = node.now_units();
        node.install_grant(0, worker, 0, units + 3_600_000);
        Arc::new(Service::new(node, store, metrics, true))
    }

    /// Starts `service`'s prefix watch on `etcd`'s root; stops when the sender is dropped.
    pub fn watch(etcd: &EtcdStore, service: &Arc<Service>) -> watch::Sender<bool> {
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(watch_prefixes(
            etcd.members().clone(),
            Keys::new(etcd.keys().root()),
            service.clone(),
            Duration::from_secs(2),
            stopped,
        ));
        stop
    }

    /// The format `key` is live with in `service`'s registry.
    pub fn live(service: &Service, key: &str) -> Option<String> {
        Some(service.registry().get(key)?.config.format.clone())
    }

    struct One(Option<String>);

    impl Sink for One {
        fn push(&mut self, t: &Template, ctx: &RenderCtx<'_>, _: u64, _: bool) {
            self.0 = Some(t.render_string(ctx));
        }
    }

    /// One number of `key`, as `service` issues it.
    pub async fn number(service: &Service, key: &str) -> Result<String, IssueError> {
        let mut one = One(None);
        service.issue(key, 1, &mut one).await?;
        Ok(one.0.unwrap_or_default())
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Waits (bounded) until `f` holds.
async fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + FEW_SECONDS;
    while !f() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn snowflake(format: &str) -> String {
    format!(r#"{{"format":"{format}","mode":"snowflake"}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_held_back_never_rolls_the_registry_back() {
    use held::HeldStore;
    use services::{live, number, service, watch};

    let Some(etcd) = tokio::task::spawn_blocking(Etcd::start).await.unwrap() else {
        return;
    };
    let cfg = EtcdConfig {
        endpoints: vec![etcd.endpoint()],
        root: format!("/revisions-{}", &common::server::random_token()[..8]),
        username: None,
        password: None,
        ca_file: None,
        cert_file: None,
        key_file: None,
    };
    let etcd_store = EtcdStore::connect(&cfg).await.unwrap();
    let held_a = Arc::new(HeldStore::new(Arc::new(etcd_store.clone())));
    let a = service(held_a.clone(), 1);
    let b = service(Arc::new(etcd_store.clone()), 2);
    let _watch_a = watch(&etcd_store, &a);

    // PUT: A's write (older) is done in etcd but its answer is held; B's (newer) reaches
    // A by watch; then A's answer arrives and must change nothing.
    b.register(
        "K",
        snowflake("KA-{SEQ:4}").as_bytes(),
        &AuditMeta::unattributed(),
    )
    .await
    .unwrap();
    until("A has K by watch", || live(&a, "K").is_some()).await;
    let held = held_a.hold_next();
    let put_a = tokio::spawn({
        let a = a.clone();
        async move {
            a.replace(
                "K",
                snowflake("KB-{SEQ:4}").as_bytes(),
                &AuditMeta::unattributed(),
            )
            .await
        }
    });
    held.arrived.await.unwrap();
    let (_, newer) = b
        .replace(
            "K",
            snowflake("KC-{SEQ:4}").as_bytes(),
            &AuditMeta::unattributed(),
        )
        .await
        .unwrap();
    until("B's version reaches A by watch", || {
        live(&a, "K").as_deref() == Some("KC-{SEQ:4}")
    })
    .await;
    held.release.send(()).unwrap();
    let (_, older) = put_a.await.unwrap().unwrap();
    assert!(older < newer, "{older} {newer}");
    assert_eq!(live(&a, "K").as_deref(), Some("KC-{SEQ:4}"), "A went back");
    assert_eq!(a.config("K").await.unwrap().1, newer);
    assert!(number(&a, "K").await.unwrap().starts_with("KC-"));

    // Lookup: C reads L from etcd and is held; B deletes L; C's watch starts (its full
    // read, and an event after it, come after the delete); C's read then arrives late and
    // must not bring L back.
    let held_c = Arc::new(HeldStore::new(Arc::new(etcd_store.clone())));
    let c = service(held_c.clone(), 3);
    b.register(
        "L",
        snowflake("LA-{SEQ:4}").as_bytes(),
        &AuditMeta::unattributed(),
    )
    .await
    .unwrap();
    let held = held_c.hold_next();
    let lookup = tokio::spawn({
        let c = c.clone();
        async move { number(&c, "L").await }
    });
    held.arrived.await.unwrap();
    b.delete("L", &AuditMeta::unattributed()).await.unwrap();
    let _watch_c = watch(&etcd_store, &c);
    b.register(
        "M",
        snowflake("MA-{SEQ:4}").as_bytes(),
        &AuditMeta::unattributed(),
    )
    .await
    .unwrap();
    until("C's watch has caught up", || live(&c, "M").is_some()).await;
    held.release.send(()).unwrap();
    let got = lookup.await.unwrap();
    assert_eq!(
        got,
        Err(numgen::service::IssueError::NotRegistered("L".into())),
        "C issued for a deleted prefix"
    );
    assert_eq!(live(&c, "L"), None, "an older read brought L back");

    // DELETE: A's delete is done but its answer held; B registers K again; A must keep it.
    let held = held_a.hold_next();
    let delete_a = tokio::spawn({
        let a = a.clone();
        async move { a.delete("K", &AuditMeta::unattributed()).await }
    });
    held.arrived.await.unwrap();
    b.register(
        "K",
        snowflake("KD-{SEQ:4}").as_bytes(),
        &AuditMeta::unattributed(),
    )
    .await
    .unwrap();
    until("B's registration reaches A by watch", || {
        live(&a, "K").as_deref() == Some("KD-{SEQ:4}")
    })
    .await;
    held.release.send(()).unwrap();
    delete_a.await.unwrap().unwrap();
    assert_eq!(live(&a, "K").as_deref(), Some("KD-{SEQ:4}"), "A forgot K");
    drop(etcd);
}

/// etcd's current value and `mod_revision` of `key`.
fn etcd_get_revision(endpoint: &str, key: &str) -> (serde_json::Value, u64) {
    block_on(async {
        let mut c = etcd_client(endpoint).await;
        let resp = c.get(key, None).await.expect("etcd get");
        let kv = resp.kvs().first().expect("the key exists");
        let value = serde_json::from_slice(kv.value()).expect("a JSON config");
        (value, kv.mod_revision() as u64)
    })
}

#[test]
fn racing_puts_on_two_nodes_leave_every_node_on_the_last_version() {
    let Some(etcd) = Etcd::start() else { return };
    let c = Cluster::new(&etcd, "race", TTL_S);
    let (a, _) = c.start_ready(&[]);
    let (b, _) = c.start_ready(&[]);
    a.register("RACE", &snowflake("RACE-{SEQ:4}"));
    const ROUNDS: usize = 25;
    // Two PUTs at once on each node; each writes a utc_offset of its own (the template has
    // no date field, so every version renders the same numbers).
    let mut slowest = Duration::ZERO;
    for round in 0..ROUNDS {
        let start = Arc::new(Barrier::new(4));
        let answers: Vec<(u16, String)> = thread::scope(|scope| {
            let puts: Vec<_> = (0..4)
                .map(|k| {
                    let (node, start) = (if k % 2 == 0 { &a } else { &b }, start.clone());
                    let sign = if k < 2 { '+' } else { '-' };
                    let n = round * 2 + k % 2 + 1;
                    let body = format!(
                        r#"{{"format":"RACE-{{SEQ:4}}","mode":"snowflake","utc_offset":"{sign}{:02}:{:02}"}}"#,
                        n / 60,
                        n % 60
                    );
                    scope.spawn(move || {
                        start.wait();
                        let r = node.admin("PUT", "/prefix-configs/RACE", &body);
                        (r.status, r.text())
                    })
                })
                .collect();
            puts.into_iter().map(|p| p.join().expect("PUT")).collect()
        });
        for (status, text) in &answers {
            assert_eq!(*status, 200, "{text}");
        }
        let (stored, revision) = etcd_get_revision(&c.endpoint, &c.key("prefixes/RACE"));
        let want = stored["utc_offset"]
            .as_str()
            .expect("utc_offset")
            .to_string();
        let t0 = Instant::now();
        for node in [&a, &b] {
            wait_for(
                FEW_SECONDS,
                || {
                    let r = node.admin("GET", "/prefix-configs/RACE", "");
                    format!(
                        "round {round}: {} shows {} while etcd holds {want} at {revision}\n{}",
                        node.addr(),
                        r.text(),
                        tail(node)
                    )
                },
                || {
                    let v = node.admin("GET", "/prefix-configs/RACE", "").json();
                    (v["revision"] == revision && v["config"]["utc_offset"] == want.as_str())
                        .then_some(())
                },
            );
        }
        slowest = slowest.max(t0.elapsed());
    }
    println!("measure: {ROUNDS} rounds of 4 racing PUTs; slowest convergence {slowest:?}");
}
