//! The embedded store for standalone mode: one redb file in the data dir. Writes go to one
//! writer thread, which commits every write waiting at that moment in one durable (fsync'd)
//! transaction — group commit: a thousand sequence prefixes prefetching at once cost one
//! fsync, not a thousand queued ones. A write's caller hears back only after the commit.
//! Reads run on tokio's blocking pool and see the last commit. Every call is bounded by the
//! store deadline, so a slow disk never stalls a runtime thread. A write whose caller gave
//! up (its deadline passed while the write waited in the queue) is skipped, not run late;
//! one already running when the deadline passed ends with its transaction, and
//! [`Store::settle_prefix`] waits behind it in the same queue to learn how it ended.
//!
//! Prefix configs carry revisions (SPEC 3.1): a counter, bumped in the transaction of every
//! config write or delete, and kept per key beside the config.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

mod history;
mod records;
mod writer;

use history::{append_audit, next_revision, observed_in, record_revision, stored_u64};
use records::{Guard, guard_allows, highest_seq, legacy_reset, stored_record};
use writer::{TypedJob, Writer, write_loop};

use super::record::{PrefixRecord, SeqGuard, Stored, plan_write};
use super::{
    AuditMeta, AuditRecord, DEFAULT_TIMEOUT, Observed, Revision, SeqBlock, Snapshot, Store,
    StoreError, Written, bounded, clash_rules, next_block,
};
use crate::format::NodeWidths;
use crate::prefix::PrefixConfig;

const PREFIXES: TableDefinition<&str, &str> = TableDefinition::new("prefixes");
const SEQ: TableDefinition<&str, u64> = TableDefinition::new("seq");
const HWM: TableDefinition<&str, u64> = TableDefinition::new("hwm");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// The reset a sequence prefix's counters are bound to, as data written before
/// `prefix_records` has it (read only).
const SEQ_RESET: TableDefinition<&str, &str> = TableDefinition::new("seq_reset");
/// Audit records: (prefix key, number of the record within the key) to the record's JSON.
const AUDIT: TableDefinition<(&str, u64), &str> = TableDefinition::new("audit");
/// The revision each config was written at, by prefix key.
const PREFIX_REV: TableDefinition<&str, u64> = TableDefinition::new("prefix_rev");
/// The config revision counter, under [`REVISION_KEY`]: the revision of the last config
/// write or delete.
const REVISION: TableDefinition<&str, u64> = TableDefinition::new("revision");
const REVISION_KEY: &str = "prefixes";
/// Each key's [`PrefixRecord`] as JSON (kept after DELETE).
const RECORDS: TableDefinition<&str, &str> = TableDefinition::new("prefix_records");

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn decode(key: &str, json: &str) -> Result<PrefixConfig, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        key: format!("prefixes/{key}"),
        detail: e.to_string(),
    })
}

fn encode(config: &PrefixConfig) -> Result<String, StoreError> {
    serde_json::to_string(config).map_err(unavailable)
}

/// A redb database file.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    writer: Arc<Writer>,
    timeout: Duration,
    /// The layout's `{dc}`/`{worker}` widths, for the format clash check.
    nodes: NodeWidths,
}

impl EmbeddedStore {
    /// Opens (or creates) the database file at `path`.
    pub fn open(path: &Path) -> Result<EmbeddedStore, StoreError> {
        let db = Database::create(path).map_err(unavailable)?;
        let txn = db.begin_write().map_err(unavailable)?;
        {
            txn.open_table(PREFIXES).map_err(unavailable)?;
            txn.open_table(SEQ).map_err(unavailable)?;
            txn.open_table(HWM).map_err(unavailable)?;
            txn.open_table(META).map_err(unavailable)?;
            txn.open_table(SEQ_RESET).map_err(unavailable)?;
            txn.open_table(AUDIT).map_err(unavailable)?;
            txn.open_table(PREFIX_REV).map_err(unavailable)?;
            txn.open_table(REVISION).map_err(unavailable)?;
            txn.open_table(RECORDS).map_err(unavailable)?;
        }
        txn.commit().map_err(unavailable)?;
        let db = Arc::new(db);
        let (sender, jobs) = std::sync::mpsc::channel();
        let for_writer = db.clone();
        // The thread ends when the last clone of the store (its sender) is dropped.
        let thread = std::thread::Builder::new()
            .name("numgen-redb-writer".into())
            .spawn(move || write_loop(for_writer, jobs))
            .map_err(unavailable)?;
        Ok(EmbeddedStore {
            db,
            writer: Arc::new(Writer {
                jobs: Some(sender),
                thread: Some(thread),
            }),
            timeout: DEFAULT_TIMEOUT,
            nodes: NodeWidths::default(),
        })
    }

    /// Sets the deadline of every call.
    pub fn with_timeout(mut self, timeout: Duration) -> EmbeddedStore {
        self.timeout = timeout;
        self
    }

    /// Sets the layout's `{dc}`/`{worker}` widths (default: the default layout's).
    pub fn with_node_widths(mut self, nodes: NodeWidths) -> EmbeddedStore {
        self.nodes = nodes;
        self
    }

    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.db.clone();
        bounded(self.timeout, async move {
            tokio::task::spawn_blocking(move || f(&db))
                .await
                .map_err(unavailable)?
        })
        .await
    }

    /// Runs `f` in a write transaction (shared with other waiting writes) and answers once
    /// it is durably committed.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&redb::WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.writer.send(Box::new(TypedJob { f, reply }))?;
        bounded(self.timeout, async move {
            answer
                .await
                .map_err(|_| StoreError::Unavailable("the store's writer has stopped".into()))?
        })
        .await
    }
}

/// A worker ID's high timestamp, kept apart from the [`Store`] trait: only the standalone
/// worker-ID source (`worker::StaticWorker`) reads and writes it.
impl EmbeddedStore {
    /// The reserved high timestamp (Unix ms) of a worker ID.
    pub async fn load_hwm(&self, dc: u64, worker: u64) -> Result<Option<u64>, StoreError> {
        self.run(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let table = txn.open_table(HWM).map_err(unavailable)?;
            let got = table
                .get(hwm_key(dc, worker).as_str())
                .map_err(unavailable)?;
            Ok(got.map(|v| v.value()))
        })
        .await
    }

    /// Raises the high timestamp of a worker ID to `unix_ms`; never lowers it.
    pub async fn raise_hwm(&self, dc: u64, worker: u64, unix_ms: u64) -> Result<(), StoreError> {
        self.put_hwm(dc, worker, unix_ms, true).await
    }

    /// Sets the high timestamp of a worker ID to `unix_ms`, also below what it was.
    pub async fn set_hwm(&self, dc: u64, worker: u64, unix_ms: u64) -> Result<(), StoreError> {
        self.put_hwm(dc, worker, unix_ms, false).await
    }

    async fn put_hwm(
        &self,
        dc: u64,
        worker: u64,
        unix_ms: u64,
        raise_only: bool,
    ) -> Result<(), StoreError> {
        self.write(move |txn| {
            let mut table = txn.open_table(HWM).map_err(unavailable)?;
            let key = hwm_key(dc, worker);
            let stored = table
                .get(key.as_str())
                .map_err(unavailable)?
                .map(|v| v.value());
            if raise_only && stored.is_some_and(|s| s >= unix_ms) {
                return Ok(());
            }
            table.insert(key.as_str(), unix_ms).map_err(unavailable)?;
            Ok(())
        })
        .await
    }
}

/// The value of `counter` in the open `seq` table.
fn stored_seq(table: &redb::Table<&str, u64>, counter: &str) -> Result<Option<u64>, StoreError> {
    Ok(table.get(counter).map_err(unavailable)?.map(|v| v.value()))
}

fn hwm_key(dc: u64, worker: u64) -> String {
    format!("{dc}/{worker}")
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn snapshot_prefixes(&self) -> Result<Snapshot, StoreError> {
        self.run(|db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let table = txn.open_table(PREFIXES).map_err(unavailable)?;
            let revisions = txn.open_table(PREFIX_REV).map_err(unavailable)?;
            let counter = txn.open_table(REVISION).map_err(unavailable)?;
            let mut configs = Vec::new();
            for row in table.iter().map_err(unavailable)? {
                let (k, v) = row.map_err(unavailable)?;
                let revision = stored_u64(&revisions, k.value())?.unwrap_or(0);
                configs.push((
                    k.value().to_string(),
                    decode(k.value(), v.value())?,
                    revision,
                ));
            }
            Ok(Snapshot {
                revision: stored_u64(&counter, REVISION_KEY)?.unwrap_or(0),
                configs,
            })
        })
        .await
    }

    async fn observe_prefix(&self, key: &str) -> Result<Observed, StoreError> {
        let key = key.to_string();
        self.run(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            observed_in(
                &txn.open_table(PREFIXES).map_err(unavailable)?,
                &txn.open_table(PREFIX_REV).map_err(unavailable)?,
                &txn.open_table(REVISION).map_err(unavailable)?,
                &key,
            )
        })
        .await
    }

    /// A read that waits its turn in the writer's queue: it runs after every write queued
    /// before it (committed, failed, or skipped because its caller gave up), and answers
    /// once the transaction it ran in is committed.
    async fn settle_prefix(&self, key: &str) -> Result<Observed, StoreError> {
        let key = key.to_string();
        self.write(move |txn| {
            observed_in(
                &txn.open_table(PREFIXES).map_err(unavailable)?,
                &txn.open_table(PREFIX_REV).map_err(unavailable)?,
                &txn.open_table(REVISION).map_err(unavailable)?,
                &key,
            )
        })
        .await
    }

    /// `create_prefix` (`create_only`) and `replace_prefix`: decided by [`plan_write`] from
    /// the config, the key's record and its counters, and written in one transaction, with
    /// the config's revision and its audit record.
    async fn write_prefix(
        &self,
        key: &str,
        config: &PrefixConfig,
        create_only: bool,
        audit: &AuditMeta,
    ) -> Result<(Written, Revision), StoreError> {
        let (key, json, config) = (key.to_string(), encode(config)?, config.clone());
        let audit = audit.clone();
        let rules = clash_rules(self.nodes);
        self.write(move |txn| {
            let mut table = txn.open_table(PREFIXES).map_err(unavailable)?;
            let mut records = txn.open_table(RECORDS).map_err(unavailable)?;
            let existing = table
                .get(key.as_str())
                .map_err(unavailable)?
                .map(|v| decode(&key, v.value()))
                .transpose()?;
            let stored = Stored {
                config: existing.as_ref(),
                record: stored_record(&records, &key)?,
                legacy_reset: legacy_reset(&txn.open_table(SEQ_RESET).map_err(unavailable)?, &key)?,
                mark: highest_seq(&txn.open_table(SEQ).map_err(unavailable)?, &key)?,
            };
            let plan = plan_write(&key, stored, &config, create_only, rules);
            let mut revision = 0;
            if let (true, Some(record)) = (plan.written.wrote(), &plan.record) {
                table
                    .insert(key.as_str(), json.as_str())
                    .map_err(unavailable)?;
                records
                    .insert(key.as_str(), record.encode()?.as_str())
                    .map_err(unavailable)?;
                revision = record_revision(txn, &key)?;
                if let Some(record) =
                    AuditRecord::of_write(&audit, &plan.written, existing.as_ref(), &config)
                {
                    append_audit(txn, &key, &record)?;
                }
            }
            Ok((plan.written, revision))
        })
        .await
    }

    async fn prefix_record(&self, key: &str) -> Result<Option<PrefixRecord>, StoreError> {
        let key = key.to_string();
        self.run(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let config = txn
                .open_table(PREFIXES)
                .map_err(unavailable)?
                .get(key.as_str())
                .map_err(unavailable)?
                .map(|v| decode(&key, v.value()))
                .transpose()?;
            let record = stored_record(&txn.open_table(RECORDS).map_err(unavailable)?, &key)?;
            let legacy = legacy_reset(&txn.open_table(SEQ_RESET).map_err(unavailable)?, &key)?;
            Ok(PrefixRecord::effective(record, config.as_ref(), legacy))
        })
        .await
    }

    async fn remove_prefix(
        &self,
        key: &str,
        audit: &AuditMeta,
    ) -> Result<Option<Revision>, StoreError> {
        let (key, audit) = (key.to_string(), audit.clone());
        self.write(move |txn| {
            let before = {
                let mut table = txn.open_table(PREFIXES).map_err(unavailable)?;
                let removed = table.remove(key.as_str()).map_err(unavailable)?;
                match removed {
                    None => return Ok(None),
                    Some(v) => decode(&key, v.value()).ok(),
                }
            };
            let mut revisions = txn.open_table(PREFIX_REV).map_err(unavailable)?;
            revisions.remove(key.as_str()).map_err(unavailable)?;
            drop(revisions);
            append_audit(txn, &key, &AuditRecord::of_delete(&audit, before))?;
            Ok(Some(next_revision(txn)?))
        })
        .await
    }

    async fn prefix_history(&self, key: &str) -> Result<Vec<AuditRecord>, StoreError> {
        let key = key.to_string();
        self.run(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let table = txn.open_table(AUDIT).map_err(unavailable)?;
            let rows = table
                .range((key.as_str(), 0)..=(key.as_str(), u64::MAX))
                .map_err(unavailable)?;
            let mut out = Vec::new();
            for row in rows.rev() {
                let (k, v) = row.map_err(unavailable)?;
                let at = format!("audit/{key}/{}", k.value().1);
                out.push(AuditRecord::decode(&at, v.value().as_bytes())?);
            }
            Ok(out)
        })
        .await
    }

    async fn reserve_seq_as(
        &self,
        counter: &str,
        size: u64,
        initial: u64,
        guard: Option<&SeqGuard<'_>>,
    ) -> Result<SeqBlock, StoreError> {
        let (counter, guard) = (counter.to_string(), guard.map(Guard::of));
        self.write(move |txn| {
            if !guard_allows(txn, guard.as_ref())? {
                let key = guard.map(|g| g.key).unwrap_or_default();
                return Err(StoreError::FormatReplaced(key));
            }
            let mut table = txn.open_table(SEQ).map_err(unavailable)?;
            let stored = stored_seq(&table, &counter)?;
            let current = stored.unwrap_or(initial).max(initial);
            let block =
                next_block(current, size).ok_or_else(|| StoreError::Overflow(counter.clone()))?;
            table
                .insert(counter.as_str(), block.end)
                .map_err(unavailable)?;
            Ok(block)
        })
        .await
    }

    async fn release_seq_as(
        &self,
        counter: &str,
        block_end: u64,
        back_to: u64,
        guard: Option<&SeqGuard<'_>>,
    ) -> Result<bool, StoreError> {
        let (counter, guard) = (counter.to_string(), guard.map(Guard::of));
        self.write(move |txn| {
            if !guard_allows(txn, guard.as_ref())? {
                return Ok(false);
            }
            let mut table = txn.open_table(SEQ).map_err(unavailable)?;
            if stored_seq(&table, &counter)? != Some(block_end) || back_to > block_end {
                return Ok(false);
            }
            table
                .insert(counter.as_str(), back_to)
                .map_err(unavailable)?;
            Ok(true)
        })
        .await
    }

    async fn get_seq(&self, counter: &str) -> Result<Option<u64>, StoreError> {
        let counter = counter.to_string();
        self.run(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let table = txn.open_table(SEQ).map_err(unavailable)?;
            let got = table.get(counter.as_str()).map_err(unavailable)?;
            Ok(got.map(|v| v.value()))
        })
        .await
    }

    async fn check_layout(&self, layout: &str) -> Result<(), StoreError> {
        let ours = layout.to_string();
        self.write(move |txn| {
            let mut table = txn.open_table(META).map_err(unavailable)?;
            let stored = table
                .get("layout")
                .map_err(unavailable)?
                .map(|v| v.value().to_string());
            match stored {
                Some(stored) if stored != ours => Err(StoreError::LayoutMismatch { stored, ours }),
                Some(_) => Ok(()),
                None => {
                    table.insert("layout", ours.as_str()).map_err(unavailable)?;
                    Ok(())
                }
            }
        })
        .await
    }
}

/// A writer thread held inside a job, for tests of a store that stalls.
#[cfg(test)]
pub(crate) struct Plug {
    release: std::sync::mpsc::Sender<()>,
    entered: std::sync::mpsc::Receiver<()>,
    /// Kept, so that the plug's own job is not skipped as abandoned.
    _answer: tokio::sync::oneshot::Receiver<Result<(), StoreError>>,
}

#[cfg(test)]
impl Plug {
    /// Waits until the writer thread is inside the plug (every write queued after it waits).
    pub(crate) fn entered(&self) {
        self.entered
            .recv_timeout(Duration::from_secs(10))
            .expect("the writer reached the plug");
    }

    /// Lets the writer go on (dropping the plug does too).
    pub(crate) fn release(self) {
        let _ = self.release.send(());
    }
}

#[cfg(test)]
impl EmbeddedStore {
    /// Queues a job that holds the writer thread until the plug is released: the writes
    /// queued behind it wait; those already taken into the same transaction before it have
    /// run, and their commit waits.
    pub(crate) fn plug(&self) -> Plug {
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (arrived, entered) = std::sync::mpsc::channel::<()>();
        let (reply, answer) = tokio::sync::oneshot::channel();
        let f = move |_: &redb::WriteTransaction| {
            let _ = arrived.send(());
            let _ = released.recv();
            Ok(())
        };
        self.writer
            .send(Box::new(TypedJob { f, reply }))
            .expect("the writer runs");
        Plug {
            release,
            entered,
            _answer: answer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server run again in the same process reopens its file at once: the writer thread
    /// has let go of it when the last clone of the store is dropped.
    #[tokio::test]
    async fn the_file_is_closed_when_the_last_clone_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        for n in 1..=20u64 {
            let store = EmbeddedStore::open(&path).unwrap();
            let clone = store.clone();
            assert_eq!(clone.reserve_seq("A", 1, 0).await.unwrap().start, n);
            drop(store);
            drop(clone);
        }
    }

    /// Config writes and deletes get increasing revisions, in the same transaction; reads
    /// say as of which revision they know a key; a write queued behind a stalled one whose
    /// caller gave up is never run.
    #[tokio::test]
    async fn revisions_and_writes_whose_caller_gave_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("db"))
            .unwrap()
            .with_timeout(Duration::from_millis(200));
        let config: PrefixConfig = PrefixConfig::from_request(br#"{"format":"A{SEQ:2}"}"#)
            .unwrap()
            .0;
        let absent = |revision| Observed {
            config: None,
            revision,
        };
        assert_eq!(store.observe_prefix("A").await.unwrap(), absent(0));
        assert_eq!(
            store
                .write_prefix("A", &config, true, &AuditMeta::unattributed())
                .await
                .unwrap(),
            (Written::Created, 1)
        );
        assert_eq!(
            store
                .write_prefix("A", &config, true, &AuditMeta::unattributed())
                .await
                .unwrap(),
            (Written::Exists, 0)
        );
        assert_eq!(
            store
                .write_prefix("B", &config, false, &AuditMeta::unattributed())
                .await
                .unwrap(),
            (Written::Created, 2)
        );
        let seen = store.observe_prefix("A").await.unwrap();
        assert_eq!((seen.config.as_ref(), seen.revision), (Some(&config), 1));
        assert_eq!(
            store
                .remove_prefix("A", &AuditMeta::unattributed())
                .await
                .unwrap(),
            Some(3)
        );
        assert_eq!(
            store
                .remove_prefix("A", &AuditMeta::unattributed())
                .await
                .unwrap(),
            None
        );
        assert_eq!(store.observe_prefix("A").await.unwrap(), absent(3));
        assert_eq!(store.settle_prefix("A").await.unwrap(), absent(3));
        let snap = store.snapshot_prefixes().await.unwrap();
        assert_eq!(snap.revision, 3);
        assert_eq!(snap.configs, vec![("B".to_string(), config.clone(), 2)]);

        // Stalled: the write times out in the queue and is dropped unrun.
        let plug = store.plug();
        plug.entered();
        assert_eq!(
            store
                .write_prefix("C", &config, true, &AuditMeta::unattributed())
                .await,
            Err(StoreError::Timeout(Duration::from_millis(200)))
        );
        plug.release();
        assert_eq!(store.settle_prefix("C").await.unwrap(), absent(3));
        assert_eq!(
            store
                .write_prefix("C", &config, true, &AuditMeta::unattributed())
                .await
                .unwrap(),
            (Written::Created, 4)
        );
    }
}
