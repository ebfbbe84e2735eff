//! Issuing numbers. [`Service::begin`] does what needs no wait — the common case, a
//! snowflake prefix in memory — without an await, so that the HTTP layer can answer inside
//! hyper's `service_fn` call; what is left (a lookup in the store, a sequence block, a wait
//! for the clock or the reservation) comes back as an opaque [`Pending`] for
//! [`Service::resume`].

use std::sync::Arc;
use std::time::Duration;

use crate::format::{RenderCtx, Template};
use crate::id::LastIssued;
use crate::node::Blocked;
use crate::prefix::Mode;
use crate::sequence::{SeqAllocator, SeqError};
use crate::store::StoreError;

use super::Service;
use super::registry::{Entry, Kind};

use crate::timing::{RESERVATION_POLL, RESERVATION_WAIT};

/// How many times a request tries a prefix whose config keeps being replaced under it
/// before it answers `NOT_READY`.
pub const CONFIG_TRIES: u32 = 4;

/// Receives issued numbers in order; the HTTP layer writes them into the response body.
pub trait Sink {
    /// One number: `render` writes its text, `id` is the ID or counter value.
    fn push(&mut self, template: &Template, ctx: &RenderCtx<'_>, id: u64, degraded: bool);
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    #[error("Prefix '{0}' not registered")]
    NotRegistered(String),
    #[error("not ready: {reason}")]
    NotReady {
        reason: &'static str,
        retry_after: Duration,
    },
    #[error("sequence of prefix '{0}' is exhausted (passed 18446744073709551615)")]
    Overflow(String),
    #[error(transparent)]
    Storage(StoreError),
    /// The prefix's config was replaced while the request used it, [`CONFIG_TRIES`] times
    /// in a row.
    #[error("the config of prefix '{0}' changed while issuing; retry")]
    ConfigChanged(String),
}

/// The rest of a request that [`Service::begin`] could not finish without waiting; the
/// numbers it owes go to the same sink, after those already pushed. Finish it with
/// [`Service::resume`].
pub struct Pending(Rest);

enum Rest {
    /// Not a snowflake prefix in memory: nothing issued yet.
    Lookup { key: Box<str>, count: u64 },
    /// A snowflake prefix that issued part of the request and must wait for the rest.
    Wait {
        entry: Arc<Entry>,
        last: Arc<LastIssued>,
        left: u64,
        blocked: Blocked,
    },
}

impl Service {
    /// Issues `count` numbers of prefix `key` into `sink`, in order.
    pub async fn issue(
        &self,
        key: &str,
        count: u64,
        sink: &mut impl Sink,
    ) -> Result<(), IssueError> {
        match self.begin(key, count, sink)? {
            None => Ok(()),
            Some(pending) => self.resume(pending, sink).await,
        }
    }

    /// Issues what can be issued without an await: all of a snowflake prefix in memory
    /// whose numbers need no wait (`None`). Otherwise says what is left to do. Runs on the
    /// registry map as loaded, without touching the entry's reference count.
    #[inline]
    pub fn begin(
        &self,
        key: &str,
        count: u64,
        sink: &mut impl Sink,
    ) -> Result<Option<Pending>, IssueError> {
        self.registry().with_map(|map| {
            let snowflake = map.get(key).and_then(|entry| match &entry.kind {
                Kind::Snowflake(last) => Some((entry, last)),
                Kind::Sequence(_) => None,
            });
            let Some((entry, last)) = snowflake else {
                let key = key.into();
                return Ok(Some(Pending(Rest::Lookup { key, count })));
            };
            let mut left = count;
            Ok(self
                .issue_now(entry, last, &mut left, sink)?
                .map(|blocked| {
                    Pending(Rest::Wait {
                        entry: entry.clone(),
                        last: last.clone(),
                        left,
                        blocked,
                    })
                }))
        })
    }

    /// Finishes what [`Service::begin`] left.
    pub async fn resume(&self, pending: Pending, sink: &mut impl Sink) -> Result<(), IssueError> {
        match pending.0 {
            // Boxed: rare for snowflake prefixes, and it keeps the request future small.
            Rest::Lookup { key, count } => Box::pin(self.issue_looked_up(&key, count, sink)).await,
            Rest::Wait {
                entry,
                last,
                left,
                blocked,
            } => {
                self.issue_after_wait(&entry, &last, left, blocked, sink)
                    .await
            }
        }
    }

    /// The mode of prefix `key` (looked up like [`Service::issue`] does, also in the store
    /// in cluster mode).
    pub async fn mode_of(&self, key: &str) -> Result<Mode, IssueError> {
        Ok(self.lookup(key).await?.config.mode)
    }

    /// The entry of `key`: from memory, or (cluster mode) read from the store. What the
    /// store answered is taken only if it is newer than what the registry holds by then
    /// (the watch may have brought a newer version, or a delete, meanwhile); the entry live
    /// after that is the one used.
    async fn lookup(&self, key: &str) -> Result<Arc<Entry>, IssueError> {
        if let Some(e) = self.registry().get(key) {
            return Ok(e);
        }
        if !self.read_through {
            return Err(IssueError::NotRegistered(key.to_string()));
        }
        self.read_from_store(key).await
    }

    /// The entry of `key` after its sequence allocator was closed: replaced here, or its
    /// format replaced by another node (cluster mode), which this node may not have seen
    /// yet; so in cluster mode the config is read from the store again.
    async fn refresh(&self, key: &str) -> Result<Arc<Entry>, IssueError> {
        if !self.read_through {
            return self.lookup(key).await;
        }
        self.read_from_store(key).await
    }

    /// Reads `key` from the store and hands it to the registry (taken only if newer than
    /// what it holds); the entry live afterwards.
    async fn read_from_store(&self, key: &str) -> Result<Arc<Entry>, IssueError> {
        let seen = self
            .store()
            .observe_prefix(key)
            .await
            .map_err(IssueError::Storage)?;
        self.registry
            .observe(key, seen)
            .ok()
            .flatten()
            .ok_or_else(|| IssueError::NotRegistered(key.to_string()))
    }

    /// Issues after looking `key` up (also in the store, in cluster mode): sequence
    /// prefixes, and snowflake prefixes not yet in memory.
    async fn issue_looked_up(
        &self,
        key: &str,
        count: u64,
        sink: &mut impl Sink,
    ) -> Result<(), IssueError> {
        let mut entry = self.lookup(key).await?;
        let mut tries = 1;
        loop {
            let result = match &entry.kind {
                Kind::Snowflake(last) => {
                    let mut left = count;
                    match self.issue_now(&entry, last, &mut left, sink)? {
                        None => Ok(()),
                        Some(blocked) => {
                            self.issue_after_wait(&entry, last, left, blocked, sink)
                                .await
                        }
                    }
                }
                Kind::Sequence(alloc) => self.issue_sequence(&entry, alloc, count, sink).await,
            };
            match result {
                Err(IssueError::ConfigChanged(_)) if tries < CONFIG_TRIES => {
                    // Each try found a newer config: someone is writing it, and the next
                    // try most likely gets to use the one just written.
                    tries += 1;
                    entry = self.refresh(key).await?;
                }
                other => return other,
            }
        }
    }

    /// Issues snowflake numbers until `left` is 0 (`None`) or the node asks to wait (the
    /// reason is returned, `left` says how many are still owed).
    #[inline]
    fn issue_now(
        &self,
        entry: &Entry,
        last: &LastIssued,
        left: &mut u64,
        sink: &mut impl Sink,
    ) -> Result<Option<Blocked>, IssueError> {
        let node = self.node();
        let layout = node.layout();
        let offset_s = entry.config.utc_offset.seconds();
        while *left > 0 {
            let issued = match node.try_issue(last, *left) {
                Ok(issued) => issued,
                Err(Blocked::NotReady {
                    reason,
                    retry_after,
                }) => {
                    return Err(IssueError::NotReady {
                        reason,
                        retry_after,
                    });
                }
                Err(blocked) => return Ok(Some(blocked)),
            };
            let degraded = issued.batch.degraded.is_some();
            let s = layout.sequence_bits();
            for packed in issued.batch.first..issued.batch.first + issued.batch.count {
                let id = layout.compose_packed(packed, degraded, issued.node_bits);
                let ctx = RenderCtx {
                    prefix: &entry.key,
                    value: id,
                    unix_ms: layout.unix_ms_at(packed >> s),
                    offset_s,
                    dc: issued.dc,
                    worker: issued.worker,
                    widths: self.widths,
                    degraded,
                };
                sink.push(&entry.template, &ctx, id, degraded);
            }
            entry.issued.inc_by(issued.batch.count);
            if degraded {
                self.count_degraded(entry, issued.batch.count);
            }
            *left -= issued.batch.count;
        }
        Ok(None)
    }

    /// Counts `n` degraded numbers of `entry`'s prefix (the status page shows them).
    #[cold]
    fn count_degraded(&self, entry: &Entry, n: u64) {
        entry
            .degraded
            .get_or_init(|| {
                self.metrics()
                    .degraded_by_prefix
                    .with_label_values(&[&entry.key])
            })
            .inc_by(n);
    }

    /// The rest of a snowflake request that had to wait: for the clock (at most about a
    /// unit at a time) or for the reservation to be extended (bounded by the store deadline).
    async fn issue_after_wait(
        &self,
        entry: &Entry,
        last: &LastIssued,
        mut left: u64,
        mut blocked: Blocked,
        sink: &mut impl Sink,
    ) -> Result<(), IssueError> {
        let mut waited = Duration::ZERO;
        loop {
            match blocked {
                Blocked::Wait(d) => {
                    // The clock moves on its own; a clock that stands still is not ready.
                    if waited >= RESERVATION_WAIT {
                        return Err(IssueError::NotReady {
                            reason: "the clock is not advancing",
                            retry_after: Duration::from_secs(1),
                        });
                    }
                    tokio::time::sleep(d).await;
                    waited += d;
                }
                Blocked::Ceiling => {
                    if waited >= RESERVATION_WAIT {
                        return Err(IssueError::Storage(StoreError::Timeout(RESERVATION_WAIT)));
                    }
                    let _ = tokio::time::timeout(RESERVATION_POLL, self.node().reserved()).await;
                    waited += RESERVATION_POLL;
                }
                Blocked::NotReady {
                    reason,
                    retry_after,
                } => {
                    return Err(IssueError::NotReady {
                        reason,
                        retry_after,
                    });
                }
            }
            match self.issue_now(entry, last, &mut left, sink)? {
                None => return Ok(()),
                Some(b) => blocked = b,
            }
        }
    }

    async fn issue_sequence(
        &self,
        entry: &Entry,
        alloc: &Arc<SeqAllocator>,
        count: u64,
        sink: &mut impl Sink,
    ) -> Result<(), IssueError> {
        // A node without a worker ID is not ready and issues nothing, in either mode.
        let Some(grant) = self.node().grant() else {
            return Err(IssueError::NotReady {
                reason: "no worker ID is held",
                retry_after: Duration::from_secs(1),
            });
        };
        let now_ms = self.node().clock().now_ms();
        let taken = alloc.take(count, now_ms).await.map_err(|e| match e {
            SeqError::Overflow(k) => IssueError::Overflow(k),
            SeqError::Store(s) => IssueError::Storage(s),
            SeqError::Closed => IssueError::ConfigChanged(entry.key.to_string()),
        })?;
        let (dc, worker) = (grant.dc, grant.worker);
        for n in taken.iter() {
            let ctx = RenderCtx {
                prefix: &entry.key,
                value: n,
                unix_ms: now_ms,
                offset_s: entry.config.utc_offset.seconds(),
                dc,
                worker,
                widths: self.widths,
                degraded: false,
            };
            sink.push(&entry.template, &ctx, n, false);
        }
        entry.issued.inc_by(taken.count());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::IssueError;
    use crate::clock::ManualClock;
    use crate::metrics::Metrics;
    use crate::service::Service;
    use crate::service::test_support::{
        Collect, STALL, Stalled, T0, by, config, embedded, node, service, service_on, take,
    };
    use crate::store::StoreError;

    #[tokio::test(start_paused = true)]
    async fn a_batch_larger_than_the_lead_waits_for_the_clock_and_stays_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let s = Arc::new(service(&dir, clock.clone()));
        s.apply("B", config(r#"{"format":"{SEQ:1}","mode":"snowflake"}"#), 1)
            .unwrap();
        let s2 = s.clone();
        let task = tokio::spawn(async move { take(&s2, "B", 10_000).await });
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(2)).await;
            clock.advance(1);
        }
        let got = task.await.unwrap().unwrap();
        assert_eq!(got.len(), 10_000);
        assert!(got.windows(2).all(|w| w[0].1 < w[1].1));
    }

    #[tokio::test]
    async fn begin_issues_what_needs_no_wait_and_leaves_the_rest_pending() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(&dir, Arc::new(ManualClock::new(T0)));
        s.apply(
            "SF",
            config(r#"{"format":"S-{SEQ:2}","mode":"snowflake"}"#),
            1,
        )
        .unwrap();
        s.apply(
            "SQ",
            config(r#"{"format":"Q-{SEQ:2}","mode":"sequence"}"#),
            1,
        )
        .unwrap();
        // A snowflake prefix in memory: done at once.
        let mut sink = Collect::default();
        assert!(s.begin("SF", 3, &mut sink).unwrap().is_none());
        assert_eq!(sink.numbers.len(), 3);
        // A sequence prefix needs its block: nothing issued until resumed.
        let mut sink = Collect::default();
        let pending = s.begin("SQ", 2, &mut sink).unwrap().expect("pending");
        assert!(sink.numbers.is_empty());
        s.resume(pending, &mut sink).await.unwrap();
        let numbers: Vec<&str> = sink.numbers.iter().map(|n| n.0.as_str()).collect();
        assert_eq!(numbers, ["Q-01", "Q-02"]);
        // An unknown key is looked up, then refused.
        let pending = s.begin("NONE", 1, &mut sink).unwrap().expect("pending");
        assert_eq!(
            s.resume(pending, &mut sink).await,
            Err(IssueError::NotRegistered("NONE".into()))
        );
    }

    /// Registers snowflake prefix `C` and makes the reservation end at the node's time,
    /// which it returns.
    fn reserved_until_now(s: &Service) -> u64 {
        s.apply("C", config(r#"{"format":"{SEQ:1}","mode":"snowflake"}"#), 1)
            .unwrap();
        let now = s.node().now_units();
        s.node().install_grant(0, 1, 0, now);
        now
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_at_the_ceiling_waits_for_the_reservation_then_goes_on_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let s = Arc::new(service(&dir, clock.clone()));
        let now = reserved_until_now(&s);
        let mut sink = Collect::default();
        let pending = s.begin("C", 5000, &mut sink).unwrap().expect("pending");
        let first = sink.numbers.len();
        assert!(first > 0 && first < 5000, "{first}");
        let s2 = s.clone();
        let task =
            tokio::spawn(async move { s2.resume(pending, &mut sink).await.map(|()| sink.numbers) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        clock.advance(2);
        let id = s.node().grant().unwrap().id;
        s.node().extend_ceiling(id, now + 10);
        let got = task.await.unwrap().unwrap();
        assert_eq!(got.len(), 5000);
        assert!(got.windows(2).all(|w| w[0].1 < w[1].1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reservation_that_is_never_extended_answers_storage_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(&dir, Arc::new(ManualClock::new(T0)));
        reserved_until_now(&s);
        let err = take(&s, "C", 5000).await.unwrap_err();
        assert_eq!(
            err,
            IssueError::Storage(StoreError::Timeout(crate::timing::RESERVATION_WAIT))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_clock_that_stands_still_is_not_ready() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(&dir, Arc::new(ManualClock::new(T0)));
        s.apply("W", config(r#"{"format":"{SEQ:1}","mode":"snowflake"}"#), 1)
            .unwrap();
        // More than the lead allows within one reading of the clock.
        let err = take(&s, "W", 100_000).await.unwrap_err();
        assert!(
            matches!(err, IssueError::NotReady { reason, .. } if reason.contains("not advancing")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn without_a_worker_id_nothing_is_issued_in_either_mode() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new().unwrap();
        let node = node(Arc::new(ManualClock::new(T0)), &metrics);
        let s = Service::new(node, embedded(&dir), metrics, false);
        s.apply(
            "SF",
            config(r#"{"format":"{SEQ:1}","mode":"snowflake"}"#),
            1,
        )
        .unwrap();
        s.apply("SQ", config(r#"{"format":"{SEQ:1}","mode":"sequence"}"#), 1)
            .unwrap();
        for key in ["SF", "SQ"] {
            let err = take(&s, key, 1).await.unwrap_err();
            assert!(matches!(err, IssueError::NotReady { .. }), "{key}: {err:?}");
        }
    }

    #[tokio::test]
    async fn read_through_finds_a_prefix_another_node_registered() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let writer = service(&dir, clock.clone());
        writer
            .register("RT", br#"{"format":"R-{SEQ:2}","mode":"sequence"}"#, &by())
            .await
            .unwrap();
        let metrics = Metrics::new().unwrap();
        let n = node(clock, &metrics);
        n.install_grant(0, 2, 0, n.now_units() + 100_000);
        let reader = Service::new(n, writer.store().clone(), metrics, true);
        assert_eq!(take(&reader, "RT", 1).await.unwrap()[0].0, "R-01");
        assert!(reader.registry().get("RT").is_some());
        assert_eq!(
            take(&reader, "GONE", 1).await,
            Err(IssueError::NotRegistered("GONE".into()))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_that_times_out_answers_storage_unavailable() {
        let s = service_on(Arc::new(Stalled), Arc::new(ManualClock::new(T0)));
        s.apply(
            "INV",
            config(r#"{"format":"I-{SEQ:3}","mode":"sequence"}"#),
            1,
        )
        .unwrap();
        let err = take(&s, "INV", 1).await.unwrap_err();
        assert_eq!(err, IssueError::Storage(StoreError::Timeout(STALL)));
        let api: crate::http::error::ApiError = err.into();
        assert_eq!(
            (api.status().as_u16(), api.code()),
            (503, "STORAGE_UNAVAILABLE")
        );
    }
}
