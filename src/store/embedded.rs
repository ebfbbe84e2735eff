//! The embedded store for standalone mode: one redb file in the data dir. Every write is a
//! durable (fsync'd) transaction; reads see the last commit. Calls run on tokio's blocking
//! pool under the store deadline, so a slow disk never stalls a runtime thread.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{DEFAULT_TIMEOUT, Replaced, SeqBlock, Store, StoreError, bounded, next_block};
use crate::prefix::PrefixConfig;

const PREFIXES: TableDefinition<&str, &str> = TableDefinition::new("prefixes");
const SEQ: TableDefinition<&str, u64> = TableDefinition::new("seq");
const HWM: TableDefinition<&str, u64> = TableDefinition::new("hwm");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");

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
    timeout: Duration,
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
        }
        txn.commit().map_err(unavailable)?;
        Ok(EmbeddedStore {
            db: Arc::new(db),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Sets the deadline of every call.
    pub fn with_timeout(mut self, timeout: Duration) -> EmbeddedStore {
        self.timeout = timeout;
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

    /// Runs `f` in one write transaction and commits it durably.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&redb::WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        self.run(move |db| {
            let txn = db.begin_write().map_err(unavailable)?;
            let out = f(&txn)?;
            txn.commit().map_err(unavailable)?;
            Ok(out)
        })
        .await
    }
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

    async fn create_prefix(&self, key: &str, config: &PrefixConfig) -> Result<bool, StoreError> {
        let (key, json) = (key.to_string(), encode(config)?);
        self.write(move |txn| {
            let mut table = txn.open_table(PREFIXES).map_err(unavailable)?;
            if table.get(key.as_str()).map_err(unavailable)?.is_some() {
                return Ok(false);
            }
            table
                .insert(key.as_str(), json.as_str())
                .map_err(unavailable)?;
            Ok(true)
        })
        .await
    }

    async fn replace_prefix(
        &self,
        key: &str,
        config: &PrefixConfig,
    ) -> Result<Replaced, StoreError> {
        let (key, json, mode) = (key.to_string(), encode(config)?, config.mode);
        self.write(move |txn| {
            let mut table = txn.open_table(PREFIXES).map_err(unavailable)?;
            let existing = table
                .get(key.as_str())
                .map_err(unavailable)?
                .map(|v| decode(&key, v.value()))
                .transpose()?;
            let outcome = match existing {
                Some(old) if old.mode != mode => return Ok(Replaced::ModeChange(old.mode)),
                Some(_) => Replaced::Replaced,
                None => Replaced::Created,
            };
            table
                .insert(key.as_str(), json.as_str())
                .map_err(unavailable)?;
            Ok(outcome)
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

    async fn reserve_seq(
        &self,
        counter: &str,
        size: u64,
        initial: u64,
    ) -> Result<SeqBlock, StoreError> {
        let counter = counter.to_string();
        self.write(move |txn| {
            let mut table = txn.open_table(SEQ).map_err(unavailable)?;
            let stored = table
                .get(counter.as_str())
                .map_err(unavailable)?
                .map(|v| v.value());
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

    async fn release_seq(
        &self,
        counter: &str,
        block_end: u64,
        back_to: u64,
    ) -> Result<bool, StoreError> {
        let counter = counter.to_string();
        self.write(move |txn| {
            let mut table = txn.open_table(SEQ).map_err(unavailable)?;
            let stored = table
                .get(counter.as_str())
                .map_err(unavailable)?
                .map(|v| v.value());
            if stored != Some(block_end) || back_to > block_end {
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

    async fn load_hwm(&self, dc: u64, worker: u64) -> Result<Option<u64>, StoreError> {
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

    async fn store_hwm(&self, dc: u64, worker: u64, unix_ms: u64) -> Result<(), StoreError> {
        self.write(move |txn| {
            let mut table = txn.open_table(HWM).map_err(unavailable)?;
            table
                .insert(hwm_key(dc, worker).as_str(), unix_ms)
                .map_err(unavailable)?;
            Ok(())
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
