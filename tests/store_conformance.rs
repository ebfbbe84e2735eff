//! One conformance suite for every [`Store`] backend, and one for every worker-ID source.
//!
//! The cases in [`suite`] take a fresh, empty store and know nothing of the backend; the
//! `conformance!` macro runs each of them against the embedded store (redb in a temp dir)
//! and against the etcd store on a real etcd process (one per test, so tests stay
//! independent and run in parallel).
//!
//! The cases in [`worker_suite`] do the same for the worker-ID sources, which keep each
//! worker ID's high timestamp: `StaticWorker` on redb (standalone) and `EtcdCluster` on a
//! real etcd (the lease-guarded code cluster mode runs). A claim is taken, its mark raised
//! and never lowered by a late reservation, lowered only by a release, and the next owner
//! (a restarted node) starts above everything the last one could have issued.
//!
//! A few etcd-only tests follow: the key layout of SPEC section 5, corrupt values,
//! authentication, what a frozen, dead or restarted etcd does to calls, and what a lost
//! lease or an unreadable mark does to a claim.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use etcd_client::{Client, GetOptions};
use numgen::clock::SystemClock;
use numgen::cluster::{ClusterSettings, EtcdCluster};
use numgen::config::EtcdConfig;
use numgen::prefix::{Mode, PrefixConfig, Reset, UtcOffset};
use numgen::store::embedded::EmbeddedStore;
use numgen::store::etcd::EtcdStore;
use numgen::store::{Store, StoreError};
use numgen::worker::{StaticWorker, WorkerClaim, WorkerError, WorkerSource};

use common::etcd::Etcd;

/// The root the suite's etcd stores use: not the default, so that nothing works by accident
/// of `/numgen`.
const ROOT: &str = "/conformance/numgen";

/// A config of `format` (its width from `{SEQ:N}`) in `mode`.
fn config(format: &str, mode: Mode) -> PrefixConfig {
    let template = numgen::format::Template::parse(format, None).expect("a {SEQ:N} template");
    PrefixConfig {
        format: format.to_string(),
        seq_length: template.seq_width(),
        initial_seq: 0,
        mode,
        reset: Reset::Never,
        utc_offset: UtcOffset::default(),
        strict: false,
    }
}

fn etcd_config(endpoint: String, root: &str) -> EtcdConfig {
    EtcdConfig {
        endpoints: vec![endpoint],
        root: root.to_string(),
        username: None,
        password: None,
        ca_file: None,
        cert_file: None,
        key_file: None,
    }
}

/// A fresh embedded store; it lives as long as the returned temp dir.
fn embedded_store() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("numgen.redb")).unwrap();
    (Arc::new(store), dir)
}

/// A fresh etcd (`None`: not installed, test skipped) and a store connected to it.
async fn etcd_store() -> Option<(Arc<dyn Store>, Etcd)> {
    let etcd = start_etcd().await?;
    let store = EtcdStore::connect(&etcd_config(etcd.endpoint(), ROOT))
        .await
        .unwrap();
    Some((Arc::new(store), etcd))
}

/// Starts etcd off the runtime's threads: the harness blocks while it waits for health.
async fn start_etcd() -> Option<Etcd> {
    tokio::task::spawn_blocking(Etcd::start).await.unwrap()
}

/// The behaviour every backend must have.
mod suite {
    use std::collections::HashSet;
    use std::sync::Arc;

    use numgen::prefix::{Mode, Reset, UtcOffset};
    use numgen::store::{
        AUDIT_KEEP, AuditAction, AuditMeta, Chained, PrefixRecord, SeqBlock, SeqGuard, Store,
        StoreError, Written, counter_name,
    };

    use super::config;

    fn block(start: u64, end: u64) -> SeqBlock {
        SeqBlock { start, end }
    }

    pub async fn create_twice(s: Arc<dyn Store>) {
        let first = config("INV-{SEQ:6}", Mode::Sequence);
        let second = config("OTHER-{SEQ:6}", Mode::Sequence);
        assert_eq!(s.get_prefix("INV").await.unwrap(), None);
        assert_eq!(
            s.create_prefix("INV", &first).await.unwrap(),
            Written::Created
        );
        assert_eq!(
            s.create_prefix("INV", &second).await.unwrap(),
            Written::Exists
        );
        // The loser changed nothing.
        assert_eq!(s.get_prefix("INV").await.unwrap(), Some(first));
    }

    pub async fn replace(s: Arc<dyn Store>) {
        let first = config("ORDER-{SEQ:6}", Mode::Snowflake);
        assert_eq!(
            s.replace_prefix("ORDER", &first).await.unwrap(),
            Written::Created
        );
        assert_eq!(s.get_prefix("ORDER").await.unwrap(), Some(first));

        // Every field survives the round trip.
        let second = super::PrefixConfig {
            format: "ORD-{year}-{SEQ:8}".into(),
            seq_length: 8,
            initial_seq: 1000,
            mode: Mode::Snowflake,
            reset: Reset::Monthly,
            utc_offset: UtcOffset::parse("+08:00").unwrap(),
            strict: true,
        };
        assert_eq!(
            s.replace_prefix("ORDER", &second).await.unwrap(),
            Written::Replaced
        );
        assert_eq!(s.get_prefix("ORDER").await.unwrap(), Some(second.clone()));

        // A change of mode is refused and writes nothing.
        let other_mode = config("ORD-{SEQ:8}", Mode::Sequence);
        assert_eq!(
            s.replace_prefix("ORDER", &other_mode).await.unwrap(),
            Written::ModeChange(Mode::Snowflake)
        );
        assert_eq!(s.get_prefix("ORDER").await.unwrap(), Some(second));

        // Once deleted, the key still keeps its mode (SPEC 1.3).
        assert!(s.delete_prefix("ORDER").await.unwrap());
        assert_eq!(
            s.replace_prefix("ORDER", &other_mode).await.unwrap(),
            Written::ModeChange(Mode::Snowflake)
        );
        assert_eq!(s.get_prefix("ORDER").await.unwrap(), None);
        let back = config("ORD-{SEQ:8}", Mode::Snowflake);
        assert_eq!(
            s.replace_prefix("ORDER", &back).await.unwrap(),
            Written::Created
        );
    }

    pub async fn delete_keeps_counters(s: Arc<dyn Store>) {
        let period = counter_name("INV", Some("2025"));
        assert!(!s.delete_prefix("INV").await.unwrap());
        assert_eq!(
            s.create_prefix("INV", &config("INV-{SEQ:6}", Mode::Sequence))
                .await
                .unwrap(),
            Written::Created
        );
        assert_eq!(s.reserve_seq("INV", 10, 0).await.unwrap(), block(1, 10));
        assert_eq!(s.reserve_seq(&period, 5, 0).await.unwrap(), block(1, 5));

        assert!(s.delete_prefix("INV").await.unwrap());
        assert_eq!(s.get_prefix("INV").await.unwrap(), None);
        assert!(!s.delete_prefix("INV").await.unwrap());

        // Counters outlive their config, so registering the key again repeats nothing.
        assert_eq!(s.get_seq("INV").await.unwrap(), Some(10));
        assert_eq!(s.get_seq(&period).await.unwrap(), Some(5));
        assert_eq!(
            s.create_prefix("INV", &config("INV-{SEQ:6}", Mode::Sequence))
                .await
                .unwrap(),
            Written::Created
        );
        assert_eq!(s.reserve_seq("INV", 10, 0).await.unwrap(), block(11, 20));
    }

    pub async fn reset_binding(s: Arc<dyn Store>) {
        let never = config("INV-{SEQ:6}", Mode::Sequence);
        let yearly = super::PrefixConfig {
            reset: Reset::Yearly,
            ..never.clone()
        };
        let wider = super::PrefixConfig {
            format: "INV-{SEQ:8}".into(),
            seq_length: 8,
            ..never.clone()
        };
        assert_eq!(
            s.create_prefix("INV", &never).await.unwrap(),
            Written::Created
        );
        // Another format keeps the counters; another reset would start new ones: refused,
        // and nothing is written.
        assert_eq!(
            s.replace_prefix("INV", &wider).await.unwrap(),
            Written::Replaced
        );
        assert_eq!(
            s.replace_prefix("INV", &yearly).await.unwrap(),
            Written::ResetChange(Reset::Never)
        );
        assert_eq!(s.get_prefix("INV").await.unwrap(), Some(wider));

        // The binding outlives DELETE; so does the mode.
        assert!(s.delete_prefix("INV").await.unwrap());
        assert_eq!(
            s.create_prefix("INV", &yearly).await.unwrap(),
            Written::ResetChange(Reset::Never)
        );
        assert_eq!(
            s.replace_prefix("INV", &yearly).await.unwrap(),
            Written::ResetChange(Reset::Never)
        );
        assert_eq!(s.get_prefix("INV").await.unwrap(), None);
        let snow = config("INV-{SEQ:6}", Mode::Snowflake);
        assert_eq!(
            s.create_prefix("INV", &snow).await.unwrap(),
            Written::ModeChange(Mode::Sequence)
        );
        assert_eq!(
            s.create_prefix("INV", &never).await.unwrap(),
            Written::Created
        );

        // Snowflake prefixes bind no reset; the first sequence config does, through PUT too.
        assert_eq!(
            s.create_prefix("SNOW", &snow).await.unwrap(),
            Written::Created
        );
        assert!(s.delete_prefix("SNOW").await.unwrap());
        let daily = super::PrefixConfig {
            format: "INV-{date}-{SEQ:6}".into(),
            reset: Reset::Daily,
            ..never.clone()
        };
        assert_eq!(
            s.replace_prefix("DAY", &daily).await.unwrap(),
            Written::Created
        );
        assert!(s.delete_prefix("DAY").await.unwrap());
        assert_eq!(
            s.create_prefix("DAY", &never).await.unwrap(),
            Written::ResetChange(Reset::Daily)
        );
        let record = s.prefix_record("SNOW").await.unwrap().unwrap();
        assert_eq!((record.mode, record.reset), (Mode::Snowflake, None));
    }

    fn guard<'a>(c: &'a super::PrefixConfig) -> SeqGuard<'a> {
        SeqGuard::of("K", c)
    }

    /// The key's record (mode, reset, format history) survives DELETE; a format that could
    /// render an earlier one's string is refused; blocks are reserved (and given back) for
    /// the current format only.
    pub async fn format_history(s: Arc<dyn Store>) {
        let a = config("A{SEQ:1}", Mode::Sequence);
        let a1 = config("A1{SEQ:1}", Mode::Sequence);
        assert_eq!(s.prefix_record("K").await.unwrap(), None);
        assert_eq!(s.create_prefix("K", &a).await.unwrap(), Written::Created);
        assert_eq!(
            s.reserve_seq_as("K", 5, 0, Some(&guard(&a))).await.unwrap(),
            block(1, 5)
        );
        assert_eq!(s.replace_prefix("K", &a1).await.unwrap(), Written::Replaced);
        let record = s.prefix_record("K").await.unwrap().unwrap();
        assert_eq!(
            record
                .formats
                .iter()
                .map(|f| (f.format.as_str(), f.lo, f.hi))
                .collect::<Vec<_>>(),
            [("A{SEQ:1}", 1, Some(5)), ("A1{SEQ:1}", 6, None)]
        );
        // The old format reserves and releases nothing more; the new one goes on.
        assert_eq!(
            s.reserve_seq_as("K", 5, 0, Some(&guard(&a))).await,
            Err(StoreError::FormatReplaced("K".into()))
        );
        assert!(!s.release_seq_as("K", 5, 3, Some(&guard(&a))).await.unwrap());
        assert_eq!(s.get_seq("K").await.unwrap(), Some(5));
        assert_eq!(
            s.reserve_seq_as("K", 5, 0, Some(&guard(&a1)))
                .await
                .unwrap(),
            block(6, 10)
        );
        assert!(
            s.release_seq_as("K", 10, 7, Some(&guard(&a1)))
                .await
                .unwrap()
        );
        // Back to `A{SEQ:1}` from 8: it would render A16, which `A1{SEQ:1}` rendered at 6.
        match s.replace_prefix("K", &a).await.unwrap() {
            Written::FormatClash(clash) => {
                assert_eq!(clash.earlier, "A1{SEQ:1}");
                assert_eq!(clash.values, Some((6, 7)));
                assert!(clash.example.starts_with("A1"), "{clash:?}");
            }
            other => panic!("{other:?}"),
        }
        // Refused writes change nothing; the history survives DELETE, and so does its check.
        assert!(s.delete_prefix("K").await.unwrap());
        assert_eq!(
            s.prefix_record("K").await.unwrap(),
            Some(PrefixRecord { ..record })
        );
        assert!(matches!(
            s.create_prefix("K", &a).await.unwrap(),
            Written::FormatClash(_)
        ));
        assert_eq!(s.create_prefix("K", &a1).await.unwrap(), Written::Created);
        assert_eq!(s.reserve_seq("K", 1, 0).await.unwrap(), block(8, 8));
    }

    /// A resetting prefix's mark is the highest counter of any period.
    pub async fn format_history_over_periods(s: Arc<dyn Store>) {
        let yearly = |format: &str| super::PrefixConfig {
            reset: Reset::Yearly,
            ..config(format, Mode::Sequence)
        };
        let (four, three) = (yearly("I-{year}-{SEQ:4}"), yearly("I-{year}-{SEQ:3}"));
        assert_eq!(s.create_prefix("K", &four).await.unwrap(), Written::Created);
        for (period, size) in [("2024", 40), ("2025", 999), ("2026", 3)] {
            let counter = counter_name("K", Some(period));
            s.reserve_seq_as(&counter, size, 0, Some(&guard(&four)))
                .await
                .unwrap();
        }
        // {SEQ:3} renders 1000 as 1000, as {SEQ:4} does: only if some period reached it.
        assert_eq!(
            s.replace_prefix("K", &three).await.unwrap(),
            Written::Replaced
        );
        let record = s.prefix_record("K").await.unwrap().unwrap();
        assert_eq!(record.formats[0].hi, Some(999));
        assert_eq!(record.reset, Some(Reset::Yearly));
        let counter = counter_name("K", Some("2026"));
        s.reserve_seq_as(&counter, 997, 0, Some(&guard(&three)))
            .await
            .unwrap();
        assert!(matches!(
            s.replace_prefix("K", &yearly("I-{year}-{SEQ:4}"))
                .await
                .unwrap(),
            Written::FormatClash(_)
        ));
    }

    /// Formats replaced while other callers reserve blocks: every block lies within the
    /// values recorded for the format it was reserved for, and writers racing the first
    /// registration agree on one mode.
    pub async fn concurrent_format_switches(s: Arc<dyn Store>) {
        let formats: Vec<_> = (0..4)
            .map(|i| config(&format!("F{i}-{{SEQ:1}}"), Mode::Sequence))
            .collect();
        let mut first = tokio::task::JoinSet::new();
        for mode in [
            Mode::Sequence,
            Mode::Snowflake,
            Mode::Sequence,
            Mode::Snowflake,
        ] {
            let (s, c) = (s.clone(), config("F0-{SEQ:1}", mode));
            first.spawn(async move { (mode, s.replace_prefix("K", &c).await.unwrap()) });
        }
        let mut winners = Vec::new();
        while let Some(r) = first.join_next().await {
            match r.unwrap() {
                (mode, w) if w.wrote() => winners.push(mode),
                (mode, Written::ModeChange(other)) => assert_ne!(mode, other),
                other => panic!("{other:?}"),
            }
        }
        winners.dedup();
        assert_eq!(winners.len(), 1, "{winners:?}");
        let mode = winners[0];
        if mode == Mode::Snowflake {
            assert!(s.delete_prefix("K").await.unwrap());
            return;
        }
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let (s, formats) = (s.clone(), formats.clone());
            tasks.spawn(async move {
                let mut got = Vec::new();
                while got.len() < 40 {
                    let record = s.prefix_record("K").await.unwrap().unwrap();
                    let current = record.formats.last().unwrap().format.clone();
                    let c = formats.iter().find(|c| c.format == current).unwrap();
                    match s.reserve_seq_as("K", 3, 0, Some(&guard(c))).await {
                        Ok(b) => got.push((current, b)),
                        Err(StoreError::FormatReplaced(_)) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                got
            });
        }
        for w in 0..2 {
            let (s, formats) = (s.clone(), formats.clone());
            tasks.spawn(async move {
                for i in 0..12 {
                    let c = &formats[(i * 3 + w) % formats.len()];
                    assert!(s.replace_prefix("K", c).await.unwrap().wrote());
                }
                Vec::new()
            });
        }
        let mut blocks = Vec::new();
        while let Some(r) = tasks.join_next().await {
            blocks.extend(r.unwrap());
        }
        let record = s.prefix_record("K").await.unwrap().unwrap();
        let mark = s.get_seq("K").await.unwrap().unwrap();
        for (format, b) in &blocks {
            let inside = record
                .formats
                .iter()
                .any(|f| f.format == *format && f.lo <= b.start && b.end <= f.hi.unwrap_or(mark));
            assert!(inside, "{format} {b:?} outside {:?}", record.formats);
        }
        assert_eq!(blocks.len(), 160);
    }

    fn by(peer: &str, time_ms: u64) -> AuditMeta {
        AuditMeta {
            time_ms,
            peer: peer.to_string(),
            token_fingerprint: "ba7816bf8f01cfea".to_string(),
        }
    }

    /// Every accepted change is recorded, with who, when, before and after, newest first;
    /// refused writes leave no record; records outlive DELETE; a key keeps AUDIT_KEEP.
    pub async fn audit_history(s: Arc<dyn Store>) {
        let first = config("INV-{SEQ:6}", Mode::Sequence);
        let second = config("INV2-{SEQ:6}", Mode::Sequence);
        assert_eq!(s.prefix_history("INV").await.unwrap(), vec![]);
        let wrote = |w: Written| assert!(w.wrote(), "{w:?}");
        wrote(
            s.write_prefix("INV", &first, true, &by("10.0.0.1:1000", 1))
                .await
                .unwrap()
                .0,
        );
        // Refused: exists, mode change. Nothing recorded.
        let other_mode = config("INV-{SEQ:6}", Mode::Snowflake);
        assert_eq!(
            s.write_prefix("INV", &second, true, &by("10.0.0.9:9", 2))
                .await
                .unwrap()
                .0,
            Written::Exists
        );
        assert_eq!(
            s.write_prefix("INV", &other_mode, false, &by("10.0.0.9:9", 3))
                .await
                .unwrap()
                .0,
            Written::ModeChange(Mode::Sequence)
        );
        wrote(
            s.write_prefix("INV", &second, false, &by("10.0.0.2:2000", 4))
                .await
                .unwrap()
                .0,
        );
        assert!(
            s.remove_prefix("INV", &by("10.0.0.3:3000", 5))
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            s.remove_prefix("INV", &by("10.0.0.9:9", 6))
                .await
                .unwrap()
                .is_none()
        );
        // Another key's records are its own.
        wrote(
            s.write_prefix("INV2", &first, true, &by("10.0.0.4:1", 7))
                .await
                .unwrap()
                .0,
        );

        let h = s.prefix_history("INV").await.unwrap();
        let seen: Vec<_> = h
            .iter()
            .map(|r| (r.action, r.meta.peer.as_str(), r.meta.time_ms))
            .collect();
        assert_eq!(
            seen,
            [
                (AuditAction::Delete, "10.0.0.3:3000", 5),
                (AuditAction::Replace, "10.0.0.2:2000", 4),
                (AuditAction::Register, "10.0.0.1:1000", 1),
            ]
        );
        assert_eq!((&h[0].before, &h[0].after), (&Some(second.clone()), &None));
        assert_eq!(
            (&h[1].before, &h[1].after),
            (&Some(first.clone()), &Some(second.clone()))
        );
        assert_eq!((&h[2].before, &h[2].after), (&None, &Some(first.clone())));
        assert!(
            h.iter()
                .all(|r| r.meta.token_fingerprint == "ba7816bf8f01cfea")
        );
        assert_eq!(s.prefix_history("INV2").await.unwrap().len(), 1);
        assert_eq!(s.prefix_history("IN").await.unwrap(), vec![]);

        // Registering again after DELETE (a PUT that creates) is a register, before: none.
        wrote(
            s.write_prefix("INV", &first, false, &by("10.0.0.5:5", 8))
                .await
                .unwrap()
                .0,
        );
        let h = s.prefix_history("INV").await.unwrap();
        assert_eq!((h[0].action, &h[0].before), (AuditAction::Register, &None));

        // The newest AUDIT_KEEP are kept.
        for n in 0..AUDIT_KEEP as u64 + 5 {
            let c = if n % 2 == 0 { &second } else { &first };
            wrote(
                s.write_prefix("INV", c, false, &by("10.0.0.6:6", 100 + n))
                    .await
                    .unwrap()
                    .0,
            );
        }
        let h = s.prefix_history("INV").await.unwrap();
        assert_eq!(h.len(), AUDIT_KEEP);
        let times: Vec<u64> = h.iter().map(|r| r.meta.time_ms).collect();
        let want: Vec<u64> = (0..AUDIT_KEEP as u64)
            .map(|i| 104 + AUDIT_KEEP as u64 - i)
            .collect();
        assert_eq!(times, want);
    }

    pub async fn list(s: Arc<dyn Store>) {
        assert_eq!(s.list_prefixes().await.unwrap(), vec![]);
        let mut want = vec![
            ("b".to_string(), config("B-{SEQ:6}", Mode::Sequence)),
            ("A".to_string(), config("A-{SEQ:6}", Mode::Snowflake)),
            ("c.1-x_y".to_string(), config("C-{SEQ:6}", Mode::Snowflake)),
        ];
        for (key, cfg) in &want {
            assert_eq!(s.create_prefix(key, cfg).await.unwrap(), Written::Created);
        }
        // Counters, their reset bindings and the layout are not prefixes.
        s.reserve_seq("b", 1, 0).await.unwrap();
        s.reserve_seq(&counter_name("b", Some("2025")), 1, 0)
            .await
            .unwrap();
        s.check_layout("layout").await.unwrap();

        let mut got = s.list_prefixes().await.unwrap();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        want.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(got, want);

        assert!(s.delete_prefix("b").await.unwrap());
        let mut got = s.list_prefixes().await.unwrap();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        want.retain(|(k, _)| k != "b");
        assert_eq!(got, want);
    }

    pub async fn reserve_from_initial(s: Arc<dyn Store>) {
        assert_eq!(s.get_seq("N").await.unwrap(), None);
        // A new counter starts after `initial`.
        assert_eq!(s.reserve_seq("N", 10, 0).await.unwrap(), block(1, 10));
        assert_eq!(s.get_seq("N").await.unwrap(), Some(10));
        assert_eq!(s.reserve_seq("N", 10, 0).await.unwrap(), block(11, 20));
        // A higher `initial` (the config was replaced) jumps the counter up to it...
        assert_eq!(
            s.reserve_seq("N", 5, 1000).await.unwrap(),
            block(1001, 1005)
        );
        // ...and a lower one never winds it back.
        assert_eq!(s.reserve_seq("N", 5, 3).await.unwrap(), block(1006, 1010));
        // Size 0 still reserves one number.
        assert_eq!(s.reserve_seq("N", 0, 0).await.unwrap(), block(1011, 1011));
        assert_eq!(s.get_seq("N").await.unwrap(), Some(1011));

        assert_eq!(
            s.reserve_seq("FRESH", 1, 1000).await.unwrap(),
            block(1001, 1001)
        );
        assert_eq!(
            s.reserve_seq("FRESH", 1, 1000).await.unwrap(),
            block(1002, 1002)
        );

        // Each period is its own counter.
        let jan = counter_name("N", Some("2025-01"));
        let feb = counter_name("N", Some("2025-02"));
        assert_eq!(s.reserve_seq(&jan, 3, 0).await.unwrap(), block(1, 3));
        assert_eq!(s.reserve_seq(&feb, 3, 100).await.unwrap(), block(101, 103));
        assert_eq!(s.reserve_seq(&jan, 3, 0).await.unwrap(), block(4, 6));
        assert_eq!(s.get_seq("N").await.unwrap(), Some(1011));
    }

    pub async fn overflow(s: Arc<dyn Store>) {
        // The last block is cut short at u64::MAX...
        assert_eq!(
            s.reserve_seq("BIG", 10, u64::MAX - 5).await.unwrap(),
            block(u64::MAX - 4, u64::MAX)
        );
        assert_eq!(s.get_seq("BIG").await.unwrap(), Some(u64::MAX));
        // ...and after it there is nothing left, with nothing written.
        assert_eq!(
            s.reserve_seq("BIG", 1, 0).await,
            Err(StoreError::Overflow("BIG".into()))
        );
        assert_eq!(s.get_seq("BIG").await.unwrap(), Some(u64::MAX));

        let edge = counter_name("EDGE", Some("2025"));
        assert_eq!(
            s.reserve_seq(&edge, 1000, u64::MAX - 1).await.unwrap(),
            block(u64::MAX, u64::MAX)
        );
        assert_eq!(
            s.reserve_seq(&edge, 1000, 0).await,
            Err(StoreError::Overflow(edge.clone()))
        );
        // A counter that starts at the top has nothing to give at all.
        assert_eq!(
            s.reserve_seq("TOP", 1, u64::MAX).await,
            Err(StoreError::Overflow("TOP".into()))
        );
        assert_eq!(s.get_seq("TOP").await.unwrap(), None);
    }

    pub async fn release(s: Arc<dyn Store>) {
        let first = s.reserve_seq("REL", 100, 0).await.unwrap();
        assert_eq!(first, block(1, 100));
        // Nobody reserved after us: the unused tail goes back...
        assert!(s.release_seq("REL", first.end, 40).await.unwrap());
        assert_eq!(s.get_seq("REL").await.unwrap(), Some(40));
        // ...and is handed out again.
        let mine = s.reserve_seq("REL", 100, 0).await.unwrap();
        assert_eq!(mine, block(41, 140));

        // Someone reserved after us: nothing goes back.
        let theirs = s.reserve_seq("REL", 100, 0).await.unwrap();
        assert_eq!(theirs, block(141, 240));
        assert!(!s.release_seq("REL", mine.end, 60).await.unwrap());
        assert_eq!(s.get_seq("REL").await.unwrap(), Some(240));

        // Never upward.
        assert!(
            !s.release_seq("REL", theirs.end, theirs.end + 1)
                .await
                .unwrap()
        );
        assert_eq!(s.get_seq("REL").await.unwrap(), Some(240));

        // A counter nobody reserved from has nothing to release, and is not created.
        assert!(!s.release_seq("NEVER", 10, 0).await.unwrap());
        assert_eq!(s.get_seq("NEVER").await.unwrap(), None);

        // Releasing everything (back to the start) works too.
        assert!(s.release_seq("REL", theirs.end, 140).await.unwrap());
        assert_eq!(s.reserve_seq("REL", 1, 0).await.unwrap(), block(141, 141));
    }

    pub async fn layout(s: Arc<dyn Store>) {
        let ours = "epoch=1704067200000;unit=1;ts=41;dc=3;worker=6;seq=12";
        let other = "epoch=1704067200000;unit=1;ts=40;dc=3;worker=7;seq=12";
        s.check_layout(ours).await.unwrap();
        s.check_layout(ours).await.unwrap();
        assert_eq!(
            s.check_layout(other).await,
            Err(StoreError::LayoutMismatch {
                stored: ours.into(),
                ours: other.into(),
            })
        );
        // The mismatch did not overwrite anything.
        s.check_layout(ours).await.unwrap();
    }

    /// Config writes and deletes carry revisions (SPEC 3.1): each higher than all before,
    /// refusals write none; reads say as of which revision they know a key (its write's,
    /// or for an absent key the store's at the read); settling a key reads it like that.
    pub async fn revisions(s: Arc<dyn Store>) {
        let a = config("A-{SEQ:6}", Mode::Snowflake);
        let b = config("B-{SEQ:6}", Mode::Snowflake);
        let (w1, r1) = s
            .write_prefix("A", &a, true, &AuditMeta::unattributed())
            .await
            .unwrap();
        assert_eq!(w1, Written::Created);
        assert_eq!(
            s.write_prefix("A", &b, true, &AuditMeta::unattributed())
                .await
                .unwrap(),
            (Written::Exists, 0)
        );
        let (_, r2) = s
            .write_prefix("B", &b, false, &AuditMeta::unattributed())
            .await
            .unwrap();
        let (w3, r3) = s
            .write_prefix("A", &b, false, &AuditMeta::unattributed())
            .await
            .unwrap();
        assert_eq!(w3, Written::Replaced);
        assert!(0 < r1 && r1 < r2 && r2 < r3, "{r1} {r2} {r3}");
        let seen = s.observe_prefix("A").await.unwrap();
        assert_eq!((seen.config, seen.revision), (Some(b.clone()), r3));
        assert_eq!(s.settle_prefix("A").await.unwrap().revision, r3);
        let snap = s.snapshot_prefixes().await.unwrap();
        assert!(snap.revision >= r3, "{snap:?}");
        let mut got: Vec<(String, u64)> =
            snap.configs.into_iter().map(|(k, _, r)| (k, r)).collect();
        got.sort();
        assert_eq!(got, vec![("A".to_string(), r3), ("B".to_string(), r2)]);

        let r4 = s
            .remove_prefix("A", &AuditMeta::unattributed())
            .await
            .unwrap()
            .expect("deleted");
        assert!(r4 > r3);
        assert_eq!(
            s.remove_prefix("A", &AuditMeta::unattributed())
                .await
                .unwrap(),
            None
        );
        let gone = s.observe_prefix("A").await.unwrap();
        assert_eq!(gone.config, None);
        assert!(gone.revision >= r4, "{gone:?}");
        let (_, r5) = s
            .write_prefix("A", &a, true, &AuditMeta::unattributed())
            .await
            .unwrap();
        assert!(r5 > r4);
    }

    /// Chained reservations (`reserve_seq_from`, strict group commit): the counter moves to
    /// the end asked for from whichever listed value it stands at, and only then. A store
    /// that does not chain reserves nothing through it.
    pub async fn chained(s: Arc<dyn Store>) {
        let c = config("C{SEQ:6}", Mode::Sequence);
        assert_eq!(s.create_prefix("C", &c).await.unwrap(), Written::Created);
        let g = SeqGuard::of("C", &c);
        let from = |list: &'static [u64], end: u64| {
            let (s, g) = (s.clone(), g);
            async move { s.reserve_seq_from("C", list, end, &g).await.unwrap() }
        };
        assert_eq!(
            s.reserve_seq_as("C", 5, 0, Some(&g)).await.unwrap(),
            block(1, 5)
        );
        if s.strict_depth() == 1 {
            assert_eq!(from(&[5], 10).await, Chained::Missed(None));
            assert_eq!(s.get_seq("C").await.unwrap(), Some(5));
            return;
        }
        // A link that lands before the one it follows takes that one's numbers with its
        // own; the overtaken one then misses, and sees where the counter stands.
        assert_eq!(from(&[10, 5], 20).await, Chained::Reserved(5));
        assert_eq!(from(&[5], 10).await, Chained::Missed(Some(20)));
        assert_eq!(from(&[20], 25).await, Chained::Reserved(20));
        // Another node reserved in between: the chain misses, nothing moves.
        assert_eq!(
            s.reserve_seq_as("C", 5, 0, Some(&g)).await.unwrap(),
            block(26, 30)
        );
        assert_eq!(from(&[25], 35).await, Chained::Missed(Some(30)));
        // Never downward: a starting point at or above the end is no starting point.
        assert_eq!(from(&[30], 30).await, Chained::Missed(None));
        assert_eq!(s.get_seq("C").await.unwrap(), Some(30));

        // Links sent at once, in any order of arrival, each listing the starting points of
        // those before it: the numbers they reserve are exactly 31..=30+N*4, each once,
        // and every link's own numbers are reserved by it or by one that overtook it.
        const N: u64 = 24;
        let mut tasks = Vec::new();
        for i in 0..N {
            let (s, c) = (s.clone(), c.clone());
            tasks.push(tokio::spawn(async move {
                let list: Vec<u64> = (0..=i).rev().map(|j| 30 + j * 4).collect();
                let g = SeqGuard::of("C", &c);
                s.reserve_seq_from("C", &list, 30 + (i + 1) * 4, &g)
                    .await
                    .unwrap()
            }));
        }
        let mut got = Vec::new();
        for (i, t) in tasks.into_iter().enumerate() {
            if let Chained::Reserved(v) = t.await.unwrap() {
                got.push((v, 30 + (i as u64 + 1) * 4));
            }
        }
        got.sort_unstable();
        eprintln!(
            "{} of {N} links reserved; the others were overtaken",
            got.len()
        );
        let mut next = 30;
        for &(v, end) in &got {
            assert_eq!(
                v, next,
                "reserved from {v}, not where the last one ended: {got:?}"
            );
            next = end;
        }
        assert_eq!(next, 30 + N * 4, "{got:?}");
        assert_eq!(s.get_seq("C").await.unwrap(), Some(next));

        // A replaced format: a link under the old one misses and reserves nothing.
        let c1 = config("C1{SEQ:6}", Mode::Sequence);
        assert_eq!(s.replace_prefix("C", &c1).await.unwrap(), Written::Replaced);
        assert!(matches!(
            s.reserve_seq_from("C", &[next], next + 5, &g)
                .await
                .unwrap(),
            Chained::Missed(_)
        ));
        assert_eq!(s.get_seq("C").await.unwrap(), Some(next));
    }

    /// Many callers on one counter: every number handed out once, each caller's blocks
    /// increasing, and (with nothing released) no gap either.
    pub async fn concurrent_reservations(s: Arc<dyn Store>) {
        const TASKS: u64 = 8;
        const PER_TASK: u64 = 200;
        const SIZE: u64 = 5;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..TASKS {
            let s = s.clone();
            tasks.spawn(async move {
                let mut blocks = Vec::new();
                for _ in 0..PER_TASK {
                    blocks.push(s.reserve_seq("HOT", SIZE, 0).await.unwrap());
                }
                blocks
            });
        }
        let mut seen = HashSet::new();
        while let Some(blocks) = tasks.join_next().await {
            let blocks = blocks.unwrap();
            assert_eq!(blocks.len() as u64, PER_TASK);
            for pair in blocks.windows(2) {
                assert!(pair[0].end < pair[1].start, "not increasing: {pair:?}");
            }
            for b in blocks {
                assert_eq!(b.len(), SIZE);
                for n in b.start..=b.end {
                    assert!(seen.insert(n), "{n} handed out twice");
                }
            }
        }
        let total = TASKS * PER_TASK * SIZE;
        assert_eq!(seen, (1..=total).collect::<HashSet<u64>>());
        assert_eq!(s.get_seq("HOT").await.unwrap(), Some(total));
    }
}

/// Runs each named case of [`suite`] against both backends.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let (store, _dir) = super::embedded_store();
                    super::suite::$case(store).await;
                }
            )*
        }

        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let Some((store, _etcd)) = super::etcd_store().await else {
                        return;
                    };
                    super::suite::$case(store).await;
                }
            )*
        }
    };
}

conformance!(
    create_twice,
    replace,
    delete_keeps_counters,
    reset_binding,
    audit_history,
    format_history,
    format_history_over_periods,
    concurrent_format_switches,
    list,
    reserve_from_initial,
    overflow,
    release,
    layout,
    concurrent_reservations,
    revisions,
    chained,
);

/// A backend for the worker-source cases: the source of each new (or restarted) node, all
/// on the same durable state.
#[async_trait]
trait Workers: Send + Sync {
    /// The worker-ID source of a node starting now.
    async fn source(&self) -> Arc<dyn WorkerSource>;
    /// The node holding `claim` dies without a word and its claim lapses (etcd: its lease
    /// expires; standalone: the process is gone, the ID is the configured one anyway).
    async fn lapse(&self, claim: &WorkerClaim);
}

/// Standalone: worker 0 of datacenter 0, its mark in redb.
struct RedbWorkers {
    store: EmbeddedStore,
    _dir: tempfile::TempDir,
}

impl RedbWorkers {
    fn new() -> RedbWorkers {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("numgen.redb")).unwrap();
        RedbWorkers { store, _dir: dir }
    }
}

#[async_trait]
impl Workers for RedbWorkers {
    async fn source(&self) -> Arc<dyn WorkerSource> {
        Arc::new(StaticWorker::new(self.store.clone(), 0, 0))
    }
    async fn lapse(&self, _: &WorkerClaim) {}
}

/// Cluster mode: leases and marks in a real etcd (datacenter 0, workers 0 to 3).
struct EtcdWorkers {
    client: Client,
    _etcd: Etcd,
}

impl EtcdWorkers {
    async fn start() -> Option<EtcdWorkers> {
        let etcd = start_etcd().await?;
        let client = Client::connect([etcd.endpoint()], None).await.unwrap();
        Some(EtcdWorkers {
            client,
            _etcd: etcd,
        })
    }
}

/// An etcd worker-ID source under `root` (datacenter 0, workers 0 to 3).
fn etcd_source(client: &Client, root: &str) -> EtcdCluster {
    let settings = ClusterSettings {
        root: root.to_string(),
        dc: 0,
        max_worker: 3,
        node_id: format!("node-{}", rand_suffix()),
        addr: "127.0.0.1:9".to_string(),
        lease_ttl_s: 10,
        timeout: Duration::from_secs(5),
    };
    EtcdCluster::new(client.clone(), settings, Arc::new(SystemClock))
}

fn rand_suffix() -> String {
    common::server::random_token()[..8].to_string()
}

#[async_trait]
impl Workers for EtcdWorkers {
    async fn source(&self) -> Arc<dyn WorkerSource> {
        Arc::new(etcd_source(&self.client, ROOT))
    }
    async fn lapse(&self, claim: &WorkerClaim) {
        self.client.clone().lease_revoke(claim.lease).await.unwrap();
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The behaviour every worker-ID source must have.
mod worker_suite {
    use std::sync::Arc;

    use numgen::clock::ManualClock;
    use numgen::id::{Layout, LayoutSettings, Policy};
    use numgen::metrics::Metrics;
    use numgen::node::{Node, NodeSettings};
    use numgen::worker;

    use super::{Workers, now_ms};

    pub async fn reservations_only_raise_the_mark(w: &dyn Workers) {
        let a = w.source().await;
        let claim = a.acquire(now_ms()).await.unwrap();
        assert_eq!(claim.hwm_ms, None, "a fresh worker ID has no mark");
        let t2 = now_ms() + 60_000;
        let t1 = t2 - 10_000;
        a.reserve(&claim, t2).await.unwrap();
        // A renewal to T1 that timed out on the node's side and commits only now, after
        // the renewal to T2: the node may already have issued numbers up to T2.
        a.reserve(&claim, t1).await.unwrap();
        a.reserve(&claim, t2 + 1).await.unwrap();
        w.lapse(&claim).await;
        let next = w.source().await.acquire(now_ms()).await.unwrap();
        assert_eq!(
            (next.worker, next.hwm_ms),
            (claim.worker, Some(t2 + 1)),
            "the next owner must start above the highest reservation"
        );
    }

    /// Renewals racing each other (a slow one overtaken by later ones): the mark ends at
    /// the highest, whatever order they land in.
    pub async fn racing_reservations_leave_the_highest(w: &dyn Workers) {
        let a = w.source().await;
        let claim = a.acquire(now_ms()).await.unwrap();
        let base = now_ms() + 60_000;
        // 24 distinct targets in a scrambled order.
        let targets: Vec<u64> = (0..24u64).map(|i| base + (i * 7) % 24 * 100).collect();
        let mut tasks = tokio::task::JoinSet::new();
        for t in targets.iter().copied() {
            let (a, claim) = (a.clone(), claim.clone());
            tasks.spawn(async move { a.reserve(&claim, t).await });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap().unwrap();
        }
        w.lapse(&claim).await;
        let next = w.source().await.acquire(now_ms()).await.unwrap();
        assert_eq!(next.hwm_ms, targets.iter().max().copied());
    }

    pub async fn a_release_lowers_the_mark_to_what_was_used(w: &dyn Workers) {
        let a = w.source().await;
        let claim = a.acquire(now_ms()).await.unwrap();
        let reserved = now_ms() + 60_000;
        a.reserve(&claim, reserved).await.unwrap();
        // At a graceful stop the node persists the highest timestamp it really used,
        // below its reservation, and gives the ID up: the next owner need not wait.
        let used = now_ms();
        a.release(&claim, used).await.unwrap();
        let next = w.source().await.acquire(now_ms()).await.unwrap();
        assert_eq!((next.worker, next.hwm_ms), (claim.worker, Some(used)));
    }

    fn node(clock: Arc<ManualClock>, window_ms: u64) -> Node {
        let layout = Layout::new(LayoutSettings::default(), now_ms()).unwrap();
        let settings = NodeSettings {
            max_backward_wait_ms: 5,
            on_clock_backward: Policy::Degrade,
            on_lease_loss: Policy::Degrade,
            reserve_window_ms: window_ms,
        };
        Node::new(layout, clock, settings, Metrics::new().unwrap())
    }

    /// What a node runs at start (`worker::acquire`), through a crash and a restart with
    /// the clock set back ten minutes: the restarted node's floor is above every timestamp
    /// the first could have issued (its whole reservation). (A mark more than an hour ahead
    /// is another story: a cluster node skips that worker ID, see `tests/clock.rs`.)
    pub async fn a_restarted_node_starts_above_everything_reserved(w: &dyn Workers) {
        let start = now_ms();
        let clock = Arc::new(ManualClock::new(start));
        let first = node(clock.clone(), 2000);
        let claim = worker::acquire(&first, w.source().await.as_ref())
            .await
            .unwrap();
        let reserved = first.grant().unwrap().ceiling;
        assert!(first.layout().unix_ms_at(reserved) >= start + 2000);
        w.lapse(&claim).await;

        clock.set(start - 600_000);
        let second = node(clock.clone(), 2000);
        let again = worker::acquire(&second, w.source().await.as_ref())
            .await
            .unwrap();
        assert_eq!(again.worker, claim.worker);
        let grant = second.grant().unwrap();
        assert!(
            grant.floor >= reserved,
            "restarted at floor {}, below the reservation {reserved}",
            grant.floor
        );
        assert!(grant.ceiling > grant.floor);
    }
}

/// Runs each named case of [`worker_suite`] against both worker-ID sources.
macro_rules! worker_conformance {
    ($($case:ident),* $(,)?) => {
        mod static_worker {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let workers = super::RedbWorkers::new();
                    super::worker_suite::$case(&workers).await;
                }
            )*
        }

        mod etcd_worker {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(workers) = super::EtcdWorkers::start().await else {
                        return;
                    };
                    super::worker_suite::$case(&workers).await;
                }
            )*
        }
    };
}

worker_conformance!(
    reservations_only_raise_the_mark,
    racing_reservations_leave_the_highest,
    a_release_lowers_the_mark_to_what_was_used,
    a_restarted_node_starts_above_everything_reserved,
);

/// Every key the etcd store writes, with its value, under `prefix`.
async fn dump(client: &mut Client, prefix: &str) -> Vec<(String, String)> {
    let resp = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    resp.kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Retries `f` until it succeeds, for at most `within`.
async fn eventually<T, F, Fut>(within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                eprintln!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("still failing after {within:?}: {e}"),
        }
    }
}

#[tokio::test]
async fn etcd_keys_follow_the_spec_layout() {
    let Some(etcd) = start_etcd().await else {
        return;
    };
    let store = EtcdStore::connect(&etcd_config(etcd.endpoint(), "/t/numgen"))
        .await
        .unwrap();
    assert_eq!(store.keys().root(), "/t/numgen");
    assert_eq!(store.keys().layout(), "/t/numgen/layout");

    let cfg = config("ORDER-{SEQ:6}", Mode::Sequence);
    assert!(store.create_prefix("ORDER", &cfg).await.unwrap().wrote());
    store.reserve_seq("ORDER", 10, 0).await.unwrap();
    store.reserve_seq("ORDER/2025", 5, 0).await.unwrap();
    store.check_layout("L1").await.unwrap();
    // The worker-ID source under the same root: its claim and mark sit beside the store's.
    let workers = etcd_source(&store.client(), "/t/numgen/");
    let claim = workers.acquire(now_ms()).await.unwrap();
    workers.reserve(&claim, 1_763_700_000_000).await.unwrap();

    let mut client = store.client();
    let json = serde_json::to_string(&cfg).unwrap();
    let mut keys = dump(&mut client, "/t/").await;
    // The worker key holds this node's registry entry.
    let (worker_key, entry) = keys.pop().unwrap();
    // The audit record of the registration: `audit/{key}/{unique id}`, a record as JSON.
    let (audit_key, record) = keys.remove(0);
    assert!(
        audit_key.starts_with("/t/numgen/audit/ORDER/"),
        "{audit_key}"
    );
    let record: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!(
        (&record["action"], &record["after"]["format"]),
        (&"register".into(), &"ORDER-{SEQ:6}".into())
    );
    assert_eq!(worker_key, "/t/numgen/workers/0/0");
    let entry: serde_json::Value = serde_json::from_str(&entry).unwrap();
    assert_eq!(
        (&entry["worker_id"], &entry["addr"]),
        (&0.into(), &"127.0.0.1:9".into())
    );
    assert_eq!(
        keys,
        vec![
            ("/t/numgen/hwm/0/0".into(), "1763700000000".into()),
            ("/t/numgen/layout".into(), "L1".into()),
            ("/t/numgen/prefixes/ORDER".into(), json),
            (
                "/t/numgen/records/ORDER".into(),
                r#"{"mode":"sequence","reset":"never","formats":[{"format":"ORDER-{SEQ:6}","seq_length":6,"lo":1}]}"#.into()
            ),
            ("/t/numgen/seq/ORDER".into(), "10".into()),
            ("/t/numgen/seq/ORDER/2025".into(), "5".into()),
        ]
    );

    // Only direct children of prefixes/ are configs; a neighbouring root sees nothing.
    client
        .put("/t/numgen/prefixes/ORDER/extra", "not a config", None)
        .await
        .unwrap();
    client
        .put("/t/numgen/prefixesX", "not a config", None)
        .await
        .unwrap();
    assert_eq!(
        store.list_prefixes().await.unwrap(),
        vec![("ORDER".to_string(), cfg)]
    );
    let neighbour = EtcdStore::from_client(store.client(), "/t/numgen2");
    assert_eq!(neighbour.list_prefixes().await.unwrap(), vec![]);
    assert_eq!(neighbour.get_seq("ORDER").await.unwrap(), None);
}

#[tokio::test]
async fn etcd_corrupt_values_are_reported() {
    let Some(etcd) = start_etcd().await else {
        return;
    };
    let store = EtcdStore::connect(&etcd_config(etcd.endpoint(), ROOT))
        .await
        .unwrap();
    let mut client = store.client();
    let keys = store.keys();
    client.put(keys.seq("BAD"), "twelve", None).await.unwrap();
    client.put(keys.prefix("BAD"), "{", None).await.unwrap();

    let corrupt = |r: Result<_, StoreError>| matches!(r, Err(StoreError::Corrupt { .. }));
    assert!(corrupt(store.get_seq("BAD").await.map(|_| ())));
    assert!(corrupt(store.reserve_seq("BAD", 1, 0).await.map(|_| ())));
    assert!(corrupt(store.get_prefix("BAD").await.map(|_| ())));
    assert!(corrupt(store.list_prefixes().await.map(|_| ())));
    let cfg = config("BAD-{SEQ:6}", Mode::Sequence);
    assert!(corrupt(store.replace_prefix("BAD", &cfg).await.map(|_| ())));
    // Nothing was overwritten on the way.
    assert_eq!(dump(&mut client, &keys.seq("BAD")).await[0].1, "twelve");
}

#[tokio::test]
async fn etcd_authentication_uses_the_configured_user() {
    let Some(etcd) = start_etcd().await else {
        return;
    };
    let mut admin = Client::connect([etcd.endpoint()], None).await.unwrap();
    admin.user_add("root", "s3cret", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();

    let mut cfg = etcd_config(etcd.endpoint(), ROOT);
    cfg.username = Some("root".into());
    cfg.password = Some("s3cret".into());
    let store = EtcdStore::connect(&cfg).await.unwrap();
    assert_eq!(store.reserve_seq("A", 1, 0).await.unwrap().start, 1);

    cfg.password = Some("wrong".into());
    let err = EtcdStore::connect(&cfg).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(!err.to_string().contains("wrong"), "{err}");

    // Without credentials, calls are refused rather than served.
    let anonymous = EtcdStore::connect(&etcd_config(etcd.endpoint(), ROOT))
        .await
        .unwrap();
    assert!(matches!(
        anonymous.get_seq("A").await,
        Err(StoreError::Unavailable(_))
    ));
}

#[tokio::test]
async fn etcd_paused_calls_time_out_and_recover_on_resume() {
    let Some(etcd) = start_etcd().await else {
        return;
    };
    let limit = Duration::from_millis(500);
    let store = EtcdStore::connect(&etcd_config(etcd.endpoint(), ROOT))
        .await
        .unwrap()
        .with_timeout(limit);
    let before = store.reserve_seq("P", 10, 0).await.unwrap();

    etcd.pause();
    let started = Instant::now();
    assert_eq!(store.get_seq("P").await, Err(StoreError::Timeout(limit)));
    assert_eq!(
        store.reserve_seq("P", 10, 0).await,
        Err(StoreError::Timeout(limit))
    );
    assert_eq!(
        store.check_layout("L").await,
        Err(StoreError::Timeout(limit))
    );
    let took = started.elapsed();
    assert!(took < limit * 3 + Duration::from_millis(500), "{took:?}");

    etcd.resume();
    let after = eventually(Duration::from_secs(5), || store.reserve_seq("P", 10, 0)).await;
    // A call that timed out may still have been applied (a gap), never a repeat.
    assert!(after.start > before.end, "{before:?} then {after:?}");
    store.check_layout("L").await.unwrap();
}

#[tokio::test]
async fn etcd_unreachable_fails_fast() {
    // A loopback port with nothing behind it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let limit = Duration::from_millis(500);
    let store = EtcdStore::connect(&etcd_config(format!("http://127.0.0.1:{port}"), ROOT))
        .await
        .unwrap()
        .with_timeout(limit);
    let started = Instant::now();
    let err = store.get_seq("X").await.unwrap_err();
    assert!(
        matches!(err, StoreError::Timeout(_) | StoreError::Unavailable(_)),
        "{err}"
    );
    assert!(started.elapsed() < limit * 2, "{:?}", started.elapsed());
}

#[tokio::test]
async fn etcd_restart_keeps_data_and_the_store_reconnects() {
    let Some(mut etcd) = start_etcd().await else {
        return;
    };
    let store = EtcdStore::connect(&etcd_config(etcd.endpoint(), ROOT))
        .await
        .unwrap()
        .with_timeout(Duration::from_millis(500));
    let before = store.reserve_seq("R", 10, 0).await.unwrap();
    let pid = etcd.pid();

    etcd = tokio::task::spawn_blocking(move || {
        etcd.restart();
        etcd
    })
    .await
    .unwrap();
    assert_ne!(etcd.pid(), pid);

    let after = eventually(Duration::from_secs(5), || store.reserve_seq("R", 10, 0)).await;
    assert_eq!(after.start, before.end + 1);
}

/// The value at `key`, as text.
async fn value_at(client: &mut Client, key: &str) -> Option<String> {
    let resp = client.get(key, None).await.unwrap();
    resp.kvs()
        .first()
        .map(|kv| kv.value_str().unwrap().to_string())
}

#[tokio::test]
async fn etcd_a_lapsed_claim_moves_the_mark_no_more() {
    let Some(w) = EtcdWorkers::start().await else {
        return;
    };
    let node = etcd_source(&w.client, ROOT);
    let claim = node.acquire(now_ms()).await.unwrap();
    let mark = now_ms() + 60_000;
    node.reserve(&claim, mark).await.unwrap();
    // The node dies; once its lease is gone it can reserve nothing, high or low, and a
    // release writes nothing either.
    w.lapse(&claim).await;
    for ms in [mark - 10_000, mark + 10_000] {
        assert_eq!(
            node.reserve(&claim, ms).await,
            Err(WorkerError::NotHeld(0)),
            "reserve {ms} after the lease"
        );
    }
    assert_eq!(
        node.release(&claim, mark - 10_000).await,
        Err(WorkerError::NotHeld(0))
    );
    let mut kv = w.client.clone();
    let keys = numgen::store::etcd::Keys::new(ROOT);
    assert_eq!(
        value_at(&mut kv, &keys.hwm(0, 0)).await,
        Some(mark.to_string())
    );
}

#[tokio::test]
async fn etcd_a_release_frees_the_worker_key_at_once() {
    let Some(w) = EtcdWorkers::start().await else {
        return;
    };
    let node = etcd_source(&w.client, ROOT);
    let claim = node.acquire(now_ms()).await.unwrap();
    let other = etcd_source(&w.client, ROOT)
        .acquire(now_ms())
        .await
        .unwrap();
    assert_eq!((claim.worker, other.worker), (0, 1), "the lowest free IDs");
    node.release(&claim, now_ms()).await.unwrap();
    let mut kv = w.client.clone();
    let keys = numgen::store::etcd::Keys::new(ROOT);
    assert_eq!(
        value_at(&mut kv, &keys.worker(0, 0)).await,
        None,
        "the worker key outlived the release"
    );
    assert!(value_at(&mut kv, &keys.worker(0, 1)).await.is_some());
    let next = etcd_source(&w.client, ROOT)
        .acquire(now_ms())
        .await
        .unwrap();
    assert_eq!(next.worker, 0);
}

/// Finding 9 of issue 10: a mark more than an hour ahead of the claimer's time was written
/// by a clock that ran ahead; the ID is given back at once and the next one claimed. A mark
/// within the hour is a floor to start above, as always.
#[tokio::test]
async fn etcd_a_mark_implausibly_far_ahead_is_skipped() {
    let Some(w) = EtcdWorkers::start().await else {
        return;
    };
    let keys = numgen::store::etcd::Keys::new(ROOT);
    let mut kv = w.client.clone();
    let year_ahead = now_ms() + 365 * 86_400_000;
    let minutes_ahead = now_ms() + 30 * 60_000;
    kv.put(keys.hwm(0, 0), year_ahead.to_string(), None)
        .await
        .unwrap();
    kv.put(keys.hwm(0, 1), minutes_ahead.to_string(), None)
        .await
        .unwrap();
    let node = etcd_source(&w.client, ROOT);
    let claim = node.acquire(now_ms()).await.unwrap();
    assert_eq!((claim.worker, claim.hwm_ms), (1, Some(minutes_ahead)));
    assert_eq!(
        value_at(&mut kv, &keys.worker(0, 0)).await,
        None,
        "not given back"
    );
    // A node whose time is a year ahead too (the one that wrote it) takes it.
    let other = etcd_source(&w.client, ROOT)
        .acquire(year_ahead)
        .await
        .unwrap();
    assert_eq!((other.worker, other.hwm_ms), (0, Some(year_ahead)));
}

#[tokio::test]
async fn etcd_an_unreadable_high_timestamp_refuses_the_claim() {
    let Some(w) = EtcdWorkers::start().await else {
        return;
    };
    let keys = numgen::store::etcd::Keys::new(ROOT);
    let hwm_key = keys.hwm(0, 0);
    let mut kv = w.client.clone();
    kv.put(hwm_key.as_str(), "garbage", None).await.unwrap();
    let node = etcd_source(&w.client, ROOT);
    // Worker 0's floor is unknown: the node must not issue with it (nor quietly take
    // another ID and leave the damage unnoticed); it says what is wrong and where.
    match node.acquire(now_ms()).await {
        Err(WorkerError::Store(StoreError::Corrupt { key, detail })) => {
            assert_eq!(key, hwm_key);
            assert!(detail.contains("garbage"), "{detail}");
        }
        other => panic!("acquire with a corrupt mark: {other:?}"),
    }
    // The lease granted for the attempt is revoked, so the worker key is free again.
    assert_eq!(
        value_at(&mut kv, &keys.worker(0, 0)).await,
        None,
        "the refused claim left its worker key behind"
    );
    let leases = kv.leases().await.unwrap();
    assert!(
        leases.leases().is_empty(),
        "leases left after the refused claim: {:?}",
        leases.leases().iter().map(|l| l.id()).collect::<Vec<_>>()
    );
    // Once the value is repaired the ID is claimed, above it.
    let mark = now_ms() + 5_000;
    kv.put(hwm_key.as_str(), mark.to_string(), None)
        .await
        .unwrap();
    let claim = node.acquire(now_ms()).await.unwrap();
    assert_eq!((claim.worker, claim.hwm_ms), (0, Some(mark)));
}
