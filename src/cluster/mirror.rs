//! The local tier's mirror of the prefix configs (SPEC 5, two etcd tiers). The configs
//! live in the global etcd; each datacenter's etcd keeps a copy under `mirror/prefixes/`,
//! so that a node that starts while its datacenter is cut off from the global tier still
//! knows its prefixes (and its snowflake numbers stay normal).
//!
//! Every node keeps the mirror current from its global config watch: [`Mirrored`] wraps the
//! watch's sink and notes each change; [`Mirror::run`] writes the notes to the local tier.
//! Each mirrored value carries the global revision of its config (`null` config: deleted
//! at that revision, kept as a tombstone), and a write is one transaction guarded on the
//! mirror key being as read, made only when the note is newer than what is stored: nodes
//! that replay the same changes write nothing twice, and a node lagging behind never puts
//! an older config back.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use tokio::sync::{Notify, watch};

use super::sleep_or_stop;
use super::watch::{ConfigSink, Refused};
use crate::prefix::PrefixConfig;
use crate::store::etcd::{Keys, Members};
use crate::store::{Revision, Snapshot, StoreError};
use crate::timing;

/// One mirrored config: the global revision it was written (or deleted) at.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Entry {
    revision: Revision,
    config: Option<PrefixConfig>,
}

/// What is still to be written to the mirror.
#[derive(Default)]
struct Pending {
    /// The newest known state of each key.
    keys: BTreeMap<String, Entry>,
    /// A full read of the global configs at this revision listed these keys: mirrored keys
    /// missing from it were deleted by then.
    full: Option<(Revision, BTreeSet<String>)>,
}

/// The mirror of the prefix configs in this datacenter's etcd.
pub struct Mirror {
    members: Members,
    keys: Keys,
    timeout: Duration,
    pending: Mutex<Pending>,
    noted: Notify,
}

impl Mirror {
    /// The mirror under `keys` on the local tier's `members`.
    pub fn new(members: Members, keys: Keys, timeout: Duration) -> Mirror {
        Mirror {
            members,
            keys,
            timeout,
            pending: Mutex::default(),
            noted: Notify::new(),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes `key` as `config` (`None`: deleted) at `revision`, unless a newer note is
    /// waiting.
    fn note(&self, key: &str, revision: Revision, config: Option<PrefixConfig>) {
        let mut p = self.pending();
        if p.keys.get(key).is_none_or(|e| e.revision < revision) {
            p.keys.insert(key.to_string(), Entry { revision, config });
        }
        drop(p);
        self.noted.notify_one();
    }

    /// Notes a full read of the global configs.
    fn note_all(&self, all: &Snapshot) {
        let mut p = self.pending();
        for (key, config, revision) in &all.configs {
            if p.keys.get(key).is_none_or(|e| e.revision < *revision) {
                let entry = Entry {
                    revision: *revision,
                    config: Some(config.clone()),
                };
                p.keys.insert(key.clone(), entry);
            }
        }
        if p.full.as_ref().is_none_or(|(r, _)| *r < all.revision) {
            let listed = all.configs.iter().map(|(k, _, _)| k.clone()).collect();
            p.full = Some((all.revision, listed));
        }
        drop(p);
        self.noted.notify_one();
    }

    /// Writes what is noted to the local tier until `stop` changes; what fails is noted
    /// again (unless something newer came meanwhile) and retried.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = self.noted.notified() => {}
                _ = stop.changed() => return,
            }
            let taken = std::mem::take(&mut *self.pending());
            if let Err(e) = self.write(&taken).await {
                tracing::debug!(error = %e, "cannot write the config mirror; retrying");
                self.give_back(taken);
                if sleep_or_stop(timing::TIER_CHECK_EVERY, &mut stop).await {
                    return;
                }
                self.noted.notify_one();
            }
        }
    }

    /// Puts notes that could not be written back, under any newer ones.
    fn give_back(&self, taken: Pending) {
        let mut p = self.pending();
        for (key, entry) in taken.keys {
            if p.keys.get(&key).is_none_or(|e| e.revision < entry.revision) {
                p.keys.insert(key, entry);
            }
        }
        if let Some((revision, listed)) = taken.full
            && p.full.as_ref().is_none_or(|(r, _)| *r < revision)
        {
            p.full = Some((revision, listed));
        }
    }

    async fn write(&self, p: &Pending) -> Result<(), StoreError> {
        let mut todo: Vec<(String, Entry)> =
            p.keys.iter().map(|(k, e)| (k.clone(), e.clone())).collect();
        if let Some((revision, listed)) = &p.full {
            // Mirrored configs the full read did not list were deleted by its revision.
            for (key, entry) in self.read_entries().await? {
                if entry.config.is_some() && !listed.contains(&key) && !p.keys.contains_key(&key) {
                    let gone = Entry {
                        revision: *revision,
                        config: None,
                    };
                    todo.push((key, gone));
                }
            }
        }
        for (key, entry) in todo {
            self.put(&key, &entry).await?;
        }
        Ok(())
    }

    /// Writes `entry` at `key`'s mirror unless the mirror holds it or something newer.
    async fn put(&self, key: &str, entry: &Entry) -> Result<(), StoreError> {
        let at = self.keys.mirror(key);
        let at = at.as_str();
        let value =
            serde_json::to_string(entry).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let value = value.as_str();
        self.members
            .call(self.timeout, |mut c, _| async move {
                loop {
                    let resp = c.get(at, None).await?;
                    let (mod_revision, stored) = match resp.kvs().first() {
                        Some(kv) => (
                            kv.mod_revision(),
                            serde_json::from_slice::<Entry>(kv.value()).ok(),
                        ),
                        None => (0, None),
                    };
                    if stored.is_some_and(|s| s.revision >= entry.revision) {
                        return Ok(());
                    }
                    let unchanged = if mod_revision == 0 {
                        Compare::create_revision(at, CompareOp::Equal, 0)
                    } else {
                        Compare::mod_revision(at, CompareOp::Equal, mod_revision)
                    };
                    let txn = Txn::new()
                        .when([unchanged])
                        .and_then([TxnOp::put(at, value, None)]);
                    if c.txn(txn).await?.succeeded() {
                        return Ok(());
                    }
                }
            })
            .await
    }

    /// Every mirrored key and its entry (tombstones included); unreadable ones skipped.
    async fn read_entries(&self) -> Result<Vec<(String, Entry)>, StoreError> {
        let dir = self.keys.mirrors();
        let dir = dir.as_str();
        let resp = self
            .members
            .call(self.timeout, |mut c, _| async move {
                Ok(c.get(dir, Some(GetOptions::new().with_prefix())).await?)
            })
            .await?;
        let mut entries = Vec::with_capacity(resp.kvs().len());
        for kv in resp.kvs() {
            let Some(key) = kv.key_str().ok().and_then(|k| self.keys.mirror_name(k)) else {
                continue;
            };
            match serde_json::from_slice::<Entry>(kv.value()) {
                Ok(entry) => entries.push((key.to_string(), entry)),
                Err(e) => {
                    tracing::error!(prefix = key, error = %e, "unreadable mirrored config; skipped")
                }
            }
        }
        Ok(entries)
    }

    /// The mirrored configs, as a full read of the global tier would give them (its
    /// revision: the newest mirrored one).
    pub async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let entries = self.read_entries().await?;
        let revision = entries.iter().map(|(_, e)| e.revision).max().unwrap_or(0);
        let configs = entries
            .into_iter()
            .filter_map(|(key, e)| Some((key, e.config?, e.revision)))
            .collect();
        Ok(Snapshot { revision, configs })
    }

    /// The layout this datacenter's data was written with (the local tier's `layout`).
    pub async fn layout(&self) -> Result<Option<String>, StoreError> {
        let key = self.keys.layout();
        let key = key.as_str();
        let resp = self
            .members
            .call(self.timeout, |mut c, _| async move {
                Ok(c.get(key, None).await?)
            })
            .await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }
}

/// The global config watch's sink, noting every change for the mirror as it passes it on.
pub struct Mirrored {
    pub inner: Arc<dyn ConfigSink>,
    pub mirror: Arc<Mirror>,
}

impl ConfigSink for Mirrored {
    fn apply(&self, key: &str, config: PrefixConfig, revision: Revision) -> Result<(), Refused> {
        self.mirror.note(key, revision, Some(config.clone()));
        self.inner.apply(key, config, revision)
    }

    fn forget(&self, key: &str, revision: Revision) {
        self.mirror.note(key, revision, None);
        self.inner.forget(key, revision)
    }

    fn sync(&self, all: Snapshot) {
        self.mirror.note_all(&all);
        self.inner.sync(all)
    }
}
