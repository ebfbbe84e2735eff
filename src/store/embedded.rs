//! The embedded store for standalone mode: one redb file in the data dir. Writes go to one
//! writer thread, which commits every write waiting at that moment in one durable (fsync'd)
//! transaction — group commit: a thousand sequence prefixes prefetching at once cost one
//! fsync, not a thousand queued ones. A write's caller hears back only after the commit.
//! Reads run on tokio's blocking pool and see the last commit. Every call is bounded by the
//! store deadline, so a slow disk never stalls a runtime thread.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

mod records;

use records::{Guard, guard_allows, highest_seq, legacy_reset, stored_record};

use super::record::{PrefixRecord, SeqGuard, Stored, plan_write};
use super::{
    DEFAULT_TIMEOUT, SeqBlock, Store, StoreError, Written, bounded, clash_rules, next_block,
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

/// How many waiting writes one transaction takes at most.
const MAX_GROUP: usize = 256;

/// What a write tells its caller once the commit's outcome is known.
type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// A write for the writer thread.
trait WriteJob: Send {
    /// Runs inside the shared transaction. `true` in the second place when the write failed
    /// half-way, so the transaction must not be committed.
    fn run(self: Box<Self>, txn: &redb::WriteTransaction) -> (Completion, bool);
    /// Answers the caller when no transaction could be started.
    fn fail(self: Box<Self>, e: StoreError);
}

struct TypedJob<T, F> {
    f: F,
    reply: tokio::sync::oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> WriteJob for TypedJob<T, F>
where
    T: Send + 'static,
    F: FnOnce(&redb::WriteTransaction) -> Result<T, StoreError> + Send,
{
    fn run(self: Box<Self>, txn: &redb::WriteTransaction) -> (Completion, bool) {
        let out = (self.f)(txn);
        // Logical refusals (overflow, mode change, layout) write nothing; an I/O error may
        // have written half.
        let poisoned = matches!(out, Err(StoreError::Unavailable(_)));
        let reply = self.reply;
        let done: Completion = Box::new(move |commit: Result<(), StoreError>| {
            let _ = reply.send(commit.and(out));
        });
        (done, poisoned)
    }

    fn fail(self: Box<Self>, e: StoreError) {
        let _ = self.reply.send(Err(e));
    }
}

/// The writer thread: takes every waiting write into one transaction, commits, answers.
fn write_loop(db: Arc<Database>, jobs: std::sync::mpsc::Receiver<Box<dyn WriteJob>>) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        let txn = match db.begin_write() {
            Ok(t) => t,
            Err(e) => {
                let e = unavailable(e);
                group.into_iter().for_each(|j| j.fail(e.clone()));
                continue;
            }
        };
        let mut done = Vec::with_capacity(group.len());
        let mut poisoned = false;
        for job in group {
            let (d, p) = job.run(&txn);
            done.push(d);
            poisoned |= p;
        }
        let outcome = if poisoned {
            drop(txn);
            Err(StoreError::Unavailable(
                "a write in the same transaction failed; nothing was written".into(),
            ))
        } else {
            txn.commit().map_err(unavailable)
        };
        for d in done {
            d(outcome.clone());
        }
    }
}

/// The queue to the writer thread. Dropped with the last clone of the store: it closes the
/// queue and waits for the thread, so that once the store is gone the file is closed and
/// its lock free (a server run again in the same process can open it at once).
struct Writer {
    jobs: Option<std::sync::mpsc::Sender<Box<dyn WriteJob>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn send(&self, job: Box<dyn WriteJob>) -> Result<(), StoreError> {
        self.jobs
            .as_ref()
            .and_then(|jobs| jobs.send(job).ok())
            .ok_or_else(|| StoreError::Unavailable("the store's writer has stopped".into()))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take()
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
    }
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
    async fn list_prefixes(&self) -> Result<Vec<(String, PrefixConfig)>, StoreError> {
        self.run(|db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let table = txn.open_table(PREFIXES).map_err(unavailable)?;
            let mut out = Vec::new();
            for row in table.iter().map_err(unavailable)? {
                let (k, v) = row.map_err(unavailable)?;
                out.push((k.value().to_string(), decode(k.value(), v.value())?));
            }
            Ok(out)
        })
        .await
    }

    async fn get_prefix(&self, key: &str) -> Result<Option<PrefixConfig>, StoreError> {
        let key = key.to_string();
        self.run(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let table = txn.open_table(PREFIXES).map_err(unavailable)?;
            let got = table.get(key.as_str()).map_err(unavailable)?;
            got.map(|v| decode(&key, v.value())).transpose()
        })
        .await
    }

    /// `create_prefix` (`create_only`) and `replace_prefix`: decided by [`plan_write`] from
    /// the config, the key's record and its counters, and written in one transaction.
    async fn write_prefix(
        &self,
        key: &str,
        config: &PrefixConfig,
        create_only: bool,
    ) -> Result<Written, StoreError> {
        let (key, json, config) = (key.to_string(), encode(config)?, config.clone());
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
            if let (true, Some(record)) = (plan.written.wrote(), &plan.record) {
                table
                    .insert(key.as_str(), json.as_str())
                    .map_err(unavailable)?;
                records
                    .insert(key.as_str(), record.encode()?.as_str())
                    .map_err(unavailable)?;
            }
            Ok(plan.written)
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

    async fn delete_prefix(&self, key: &str) -> Result<bool, StoreError> {
        let key = key.to_string();
        self.write(move |txn| {
            let mut table = txn.open_table(PREFIXES).map_err(unavailable)?;
            let removed = table.remove(key.as_str()).map_err(unavailable)?.is_some();
            Ok(removed)
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
}
