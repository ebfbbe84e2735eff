//! Durable state behind one small async trait, [`Store`]: prefix configs, sequence
//! high-water marks, and the layout the data was written with. Backends: [`embedded`]
//! (redb, standalone) and [`etcd`] (cluster mode). The same conformance suite
//! (`tests/store_conformance.rs`) runs against both.
//!
//! Each worker ID's reserved high timestamp is not part of the trait: it belongs to the
//! worker-ID source (`worker::StaticWorker` keeps it in redb, the etcd source under its
//! lease), and the conformance suite runs the same worker-source cases on both.
//!
//! Every call is bounded: a backend answers within its timeout or returns
//! [`StoreError::Timeout`], which the HTTP layer turns into `STORAGE_UNAVAILABLE`.

pub mod audit;
pub mod embedded;
pub mod etcd;
pub mod record;

pub use audit::{AUDIT_KEEP, AuditAction, AuditMeta, AuditRecord};

use std::time::Duration;

use async_trait::async_trait;

use crate::format::NodeWidths;
use crate::prefix::{Mode, PrefixConfig, Reset};

pub use record::{ClashRules, FormatClash, PrefixRecord, SeqGuard};

/// How long a store call may take before it counts as failed (SPEC 3.4: 2 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("the store did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("stored value at {key} is unreadable: {detail}")]
    Corrupt { key: String, detail: String },
    #[error("counter {0} has reached 18446744073709551615")]
    Overflow(String),
    #[error("this data was written with another layout ({stored}); refusing to use it with {ours}")]
    LayoutMismatch { stored: String, ours: String },
    /// A sequence reservation (or release) for a format that is no longer the prefix's
    /// current one: refused, so that a node still on an old config cannot issue old-format
    /// numbers past the values recorded when the format was replaced.
    #[error("the format of prefix '{0}' was replaced; its old format reserves nothing more")]
    FormatReplaced(String),
}

/// A reserved run of sequence numbers, both ends included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqBlock {
    pub start: u64,
    pub end: u64,
}

impl SeqBlock {
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// What [`Store::reserve_seq_from`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chained {
    /// The counter stood at this value (one of those offered): the numbers above it up to
    /// the end asked for are reserved.
    Reserved(u64),
    /// Nothing reserved; the counter's value when the store saw it.
    Missed(Option<u64>),
}

/// A position in the store's history of prefix configs (SPEC 3.1: configs carry the store's
/// revision): etcd's revision, or the embedded store's count of config writes. Every write
/// or delete of a config gets a higher one than everything before it, so of two versions of
/// a key the one with the higher revision is the newer.
pub type Revision = u64;

/// What the store holds under one key, and as of which revision that is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub config: Option<PrefixConfig>,
    /// With a config: the revision it was written at. Without: the store's revision at the
    /// read (the key was absent then, so anything written later has a higher one).
    pub revision: Revision,
}

/// Every prefix config with the revision it was written at, read as of one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub revision: Revision,
    pub configs: Vec<(String, PrefixConfig, Revision)>,
}

/// What a config write did (`create_prefix`, `replace_prefix`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Written {
    Created,
    Replaced,
    /// Nothing written: `create_prefix` found a config.
    Exists,
    /// Nothing written: the stored config has this other mode.
    ModeChange(Mode),
    /// Nothing written: the prefix's sequence counters were made under this other `reset`.
    /// Their names depend on it (`seq/{key}` or `seq/{key}/{period}`), so a change would
    /// start a fresh counter and repeat numbers; the binding outlives DELETE.
    ResetChange(Reset),
    /// Nothing written: the new format could render a string an earlier format of the
    /// prefix rendered (SPEC 1.3, `FORMAT_CLASH`).
    FormatClash(FormatClash),
}

impl Written {
    /// True when the config was written.
    pub fn wrote(&self) -> bool {
        matches!(self, Written::Created | Written::Replaced)
    }
}

/// A stored reset binding (at `key`, for the error), as both stores keep it: the reset's name.
pub fn parse_bound_reset(key: &str, value: &[u8]) -> Result<Reset, StoreError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(Reset::parse)
        .ok_or_else(|| StoreError::Corrupt {
            key: key.to_string(),
            detail: format!("unknown reset {:?}", String::from_utf8_lossy(value)),
        })
}

/// A counter's name in the store: the prefix key, plus `/period` when it resets.
pub fn counter_name(key: &str, period: Option<&str>) -> String {
    match period {
        Some(p) => format!("{key}/{p}"),
        None => key.to_string(),
    }
}

/// What a store checks new formats with: the layout's `{dc}`/`{worker}` widths (set by
/// the app from its layout), and today's date for the example string of a refusal.
pub(crate) fn clash_rules(nodes: NodeWidths) -> ClashRules {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    ClashRules {
        nodes,
        hint: Some(crate::format::civil_from_unix_ms(now_ms, 0)),
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Every stored prefix config.
    async fn list_prefixes(&self) -> Result<Vec<(String, PrefixConfig)>, StoreError> {
        let all = self.snapshot_prefixes().await?.configs;
        Ok(all
            .into_iter()
            .map(|(key, config, _)| (key, config))
            .collect())
    }
    /// Every stored prefix config with its revision, and the revision of the read.
    async fn snapshot_prefixes(&self) -> Result<Snapshot, StoreError>;
    async fn get_prefix(&self, key: &str) -> Result<Option<PrefixConfig>, StoreError> {
        Ok(self.observe_prefix(key).await?.config)
    }
    /// The config of `key` (if any) and the revision it is known as of.
    async fn observe_prefix(&self, key: &str) -> Result<Observed, StoreError>;
    /// [`Store::observe_prefix`] once every write the store had accepted before this call has
    /// been committed or given up, so that a caller whose write timed out learns how it ended
    /// (the embedded store's writes wait in a queue; etcd has nothing queued here, and a write
    /// that commits late reaches every node through the watch).
    async fn settle_prefix(&self, key: &str) -> Result<Observed, StoreError> {
        self.observe_prefix(key).await
    }
    /// Writes `config` under `key` as [`record::plan_write`] decides from what is stored
    /// (with `create_only`, never over an existing config), in one transaction that also
    /// writes the key's [`PrefixRecord`] (mode, reset, format history) and, when it writes,
    /// appends the audit record of the change by `audit` ([`AuditRecord::of_write`]).
    /// Returns what it did and the revision of the write (0 when nothing was written).
    async fn write_prefix(
        &self,
        key: &str,
        config: &PrefixConfig,
        create_only: bool,
        audit: &AuditMeta,
    ) -> Result<(Written, Revision), StoreError>;
    /// `POST` outside a request (tests, tools): stores `config` unless `key` exists
    /// (`Exists`), had another mode (`ModeChange`), its counters are bound to another reset
    /// (`ResetChange`) or the format could repeat an earlier one's number (`FormatClash`).
    /// Audited as [`AuditMeta::unattributed`]; the service writes with the request's
    /// [`AuditMeta`].
    async fn create_prefix(&self, key: &str, config: &PrefixConfig) -> Result<Written, StoreError> {
        let audit = AuditMeta::unattributed();
        Ok(self.write_prefix(key, config, true, &audit).await?.0)
    }
    /// `PUT` outside a request: creates or replaces, refusing a change of mode or of a
    /// sequence prefix's reset. Audited as [`AuditMeta::unattributed`].
    async fn replace_prefix(
        &self,
        key: &str,
        config: &PrefixConfig,
    ) -> Result<Written, StoreError> {
        let audit = AuditMeta::unattributed();
        Ok(self.write_prefix(key, config, false, &audit).await?.0)
    }
    /// Removes the config (counters, and the key's record, stay), appending the
    /// audit record of the deletion by `audit` in the same transaction; returns the revision
    /// of the delete (`None`, and no record, when there was no config).
    async fn remove_prefix(
        &self,
        key: &str,
        audit: &AuditMeta,
    ) -> Result<Option<Revision>, StoreError>;
    /// [`Store::remove_prefix`] outside a request, audited as [`AuditMeta::unattributed`];
    /// `false` when there was no config.
    async fn delete_prefix(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self
            .remove_prefix(key, &AuditMeta::unattributed())
            .await?
            .is_some())
    }
    /// The audit records of `key`, newest first: at most [`AUDIT_KEEP`], also after the
    /// key was deleted.
    async fn prefix_history(&self, key: &str) -> Result<Vec<AuditRecord>, StoreError>;
    /// The key's record (mode, reset, format history), also after a DELETE; for data
    /// written before records were kept, one made from its config
    /// ([`PrefixRecord::effective`]).
    async fn prefix_record(&self, key: &str) -> Result<Option<PrefixRecord>, StoreError>;

    /// Reserves the next `size` numbers of `counter` (fewer at the top of u64). A counter
    /// never written starts after `initial`; one below `initial` jumps up to it. With a
    /// `guard`, only while its format is its key's current one (else
    /// [`StoreError::FormatReplaced`]), decided in the same transaction.
    async fn reserve_seq_as(
        &self,
        counter: &str,
        size: u64,
        initial: u64,
        guard: Option<&SeqGuard<'_>>,
    ) -> Result<SeqBlock, StoreError>;
    /// How many strict reservations of one counter a node may have in flight at once
    /// (see [`Store::reserve_seq_from`]); 1 for a store that answers without a network
    /// round trip.
    fn strict_depth(&self) -> usize {
        1
    }
    /// One attempt, one round trip: when the counter stands at one of `from` (each below
    /// `end`; the likeliest first) and `guard`'s format is current, as this store last saw
    /// the key's record, sets it to `end`: reserves `v + 1 ..= end` for the `v` it stood
    /// at, and returns [`Chained::Reserved`]`(v)`. Otherwise nothing is reserved
    /// ([`Chained::Missed`], with the counter's value when the store saw it), and the
    /// caller reserves with [`Store::reserve_seq_as`], which reads what is stored now.
    ///
    /// A caller that knows where its reservations in flight will leave the counter sends
    /// the next one before they are answered, and lists their starting points too: a
    /// store may commit requests in flight in any order, and one that lands first then
    /// takes the numbers of those it overtook with its own (they then miss). The
    /// counter's value is the compare: "the counter stands at `v`" means every number
    /// above `v` is free, whoever moved it there, so whichever `v` matches, the numbers
    /// reserved were nobody's.
    async fn reserve_seq_from(
        &self,
        _counter: &str,
        _from: &[u64],
        _end: u64,
        _guard: &SeqGuard<'_>,
    ) -> Result<Chained, StoreError> {
        Ok(Chained::Missed(None))
    }
    /// [`Store::reserve_seq_as`] without a guard.
    async fn reserve_seq(
        &self,
        counter: &str,
        size: u64,
        initial: u64,
    ) -> Result<SeqBlock, StoreError> {
        self.reserve_seq_as(counter, size, initial, None).await
    }
    /// Gives numbers back: when the counter still ends at `block_end` (and, with a
    /// `guard`, its format is still current), sets it to `back_to`. `false` when not.
    async fn release_seq_as(
        &self,
        counter: &str,
        block_end: u64,
        back_to: u64,
        guard: Option<&SeqGuard<'_>>,
    ) -> Result<bool, StoreError>;
    /// [`Store::release_seq_as`] without a guard.
    async fn release_seq(
        &self,
        counter: &str,
        block_end: u64,
        back_to: u64,
    ) -> Result<bool, StoreError> {
        self.release_seq_as(counter, block_end, back_to, None).await
    }
    /// The current high-water mark of `counter`, if any.
    async fn get_seq(&self, counter: &str) -> Result<Option<u64>, StoreError>;

    /// Records `layout` on first use; afterwards fails unless it is the same.
    async fn check_layout(&self, layout: &str) -> Result<(), StoreError>;
}

/// Runs `f` under `limit`, mapping an elapsed deadline to [`StoreError::Timeout`].
pub async fn bounded<T>(
    limit: Duration,
    f: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Timeout(limit)),
    }
}

/// The block a reservation takes when the counter stands at `current`: `None` at u64::MAX.
pub fn next_block(current: u64, size: u64) -> Option<SeqBlock> {
    let start = current.checked_add(1)?;
    Some(SeqBlock {
        start,
        end: current.saturating_add(size.max(1)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_clamp_at_the_top_of_u64() {
        assert_eq!(
            next_block(0, 1000),
            Some(SeqBlock {
                start: 1,
                end: 1000
            })
        );
        assert_eq!(
            next_block(u64::MAX - 3, 1000),
            Some(SeqBlock {
                start: u64::MAX - 2,
                end: u64::MAX
            })
        );
        assert_eq!(next_block(u64::MAX, 1), None);
        assert_eq!(next_block(5, 0).unwrap().len(), 1);
        assert!(!next_block(5, 1).unwrap().is_empty());
    }

    #[test]
    fn counter_names() {
        assert_eq!(counter_name("INV", None), "INV");
        assert_eq!(counter_name("INV", Some("2025")), "INV/2025");
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_calls_time_out() {
        let r: Result<(), _> = bounded(Duration::from_millis(10), async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(())
        })
        .await;
        assert_eq!(r, Err(StoreError::Timeout(Duration::from_millis(10))));
    }
}
