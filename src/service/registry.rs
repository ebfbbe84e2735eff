//! The prefix registry: every registered prefix, built into an [`Entry`] ready to issue,
//! served from memory.
//!
//! The map is immutable behind an `ArcSwap`, cached per thread and checked by a generation
//! number: a request reads it without a lock, a reference count or contention; a config
//! change copies the map (configs change rarely). Each snowflake prefix's [`LastIssued`] is
//! kept for the life of the process, also across a delete, so a prefix registered again
//! never goes back in time. Every change comes with the store revision of the config it
//! was seen at, and is taken only when it is newer than what the registry holds for that
//! key ([`Revisions`]): whichever path brings an older version last, the registry keeps
//! the newer one.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use arc_swap::ArcSwap;
use prometheus::IntCounter;

use crate::format::Template;
use crate::id::{Generator, LastIssued, Layout};
use crate::metrics::Metrics;
use crate::node::Node;
use crate::prefix::{Mode, PrefixConfig, PrefixError};
use crate::sequence::SeqAllocator;
use crate::store::{Observed, Revision, Snapshot, Store};

use super::revisions::Revisions;

pub(super) type Map = HashMap<Arc<str>, Arc<Entry>, foldhash::fast::RandomState>;

/// The snowflake prefixes' last numbers by key.
type LastByKey = HashMap<Arc<str>, Arc<LastIssued>>;

/// What the writers of the map share, behind one lock.
#[derive(Default)]
struct Writers {
    last: LastByKey,
    revisions: Revisions,
}

/// A registered prefix, ready to issue.
pub struct Entry {
    pub key: Arc<str>,
    pub config: PrefixConfig,
    pub(super) template: Template,
    pub(super) kind: Kind,
    /// The store revision of `config` (a later write of the same config moves it up).
    revision: AtomicU64,
    /// `numgen_numbers_issued_total{prefix,mode}`, looked up once.
    pub(super) issued: IntCounter,
    /// `numgen_numbers_degraded_total{prefix}`, looked up at the first degraded number.
    pub(super) degraded: OnceLock<IntCounter>,
}

impl Entry {
    /// The store revision of the config in use.
    pub fn revision(&self) -> Revision {
        self.revision.load(Ordering::Relaxed)
    }
}

/// Where a prefix's numbers come from.
pub(super) enum Kind {
    Snowflake(Arc<LastIssued>),
    Sequence(Arc<SeqAllocator>),
}

pub struct Registry {
    map: ArcSwap<Map>,
    /// Bumped after every store of `map`: tells a thread its cached map is stale.
    generation: AtomicU64,
    /// Tells registries apart in the per-thread cache.
    id: u64,
    /// Snowflake states by key (never dropped) and the revision each key is held as of;
    /// also serialises writers of `map`.
    writers: Mutex<Writers>,
    /// Sequence allocators reserve their blocks here.
    store: Arc<dyn Store>,
    metrics: Metrics,
    /// Snowflake floors (`initial_seq`) are turned into timestamps with it.
    layout: Layout,
}

/// Gives each registry its own id for the per-thread cache.
static NEXT_REGISTRY_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// Per thread, the registry map last read: (registry id, generation, map). Reading it
    /// costs one load of the generation, where an `ArcSwap` load costs hundreds of
    /// instructions and an `Arc` clone a reference count both workers fight over.
    static SEEN: RefCell<Option<(u64, u64, Arc<Map>)>> = const { RefCell::new(None) };
}

impl Registry {
    pub(super) fn new(store: Arc<dyn Store>, metrics: Metrics, layout: Layout) -> Registry {
        Registry {
            map: ArcSwap::from_pointee(Map::default()),
            generation: AtomicU64::new(0),
            id: NEXT_REGISTRY_ID.fetch_add(1, Ordering::Relaxed),
            writers: Mutex::new(Writers::default()),
            store,
            metrics,
            layout,
        }
    }

    fn writers(&self) -> MutexGuard<'_, Writers> {
        self.writers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `map` the registry's map (the caller holds the writers' lock).
    fn publish(&self, map: Map) {
        self.metrics.prefixes.set(map.len() as i64);
        self.map.store(Arc::new(map));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Runs `f` on the current map, from this thread's cache when it is up to date.
    #[inline]
    pub(super) fn with_map<R>(&self, f: impl FnOnce(&Map) -> R) -> R {
        let generation = self.generation.load(Ordering::Acquire);
        SEEN.with(|seen| {
            let Ok(mut seen) = seen.try_borrow_mut() else {
                // Re-entered from inside `f`: read the map directly.
                return f(&self.map.load());
            };
            match &*seen {
                Some((id, g, map)) if *id == self.id && *g == generation => f(map),
                _ => {
                    let map = self.map.load_full();
                    let out = f(&map);
                    *seen = Some((self.id, generation, map));
                    out
                }
            }
        })
    }

    #[inline]
    pub fn get(&self, key: &str) -> Option<Arc<Entry>> {
        self.with_map(|m| m.get(key).cloned())
    }

    pub fn len(&self) -> usize {
        self.map.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn entries(&self) -> Vec<Arc<Entry>> {
        self.map.load().values().cloned().collect()
    }

    /// Seals every snowflake prefix of this node (see [`LastIssued::seal`]) and returns
    /// the highest timestamp any of them used: nothing is issued above it afterwards, even
    /// by a request that was between its checks and its compare-and-swap.
    pub fn seal_all(&self, node: &Node) -> u64 {
        self.writers()
            .last
            .values()
            .map(|c| c.seal(node.generator()))
            .max()
            .unwrap_or(0)
    }

    /// Builds the entry for `config` (written at `revision`), reusing the snowflake state of
    /// `key` from `states`.
    fn build(
        &self,
        states: &mut LastByKey,
        key: &str,
        config: PrefixConfig,
        revision: Revision,
    ) -> Result<Entry, PrefixError> {
        let template = config.template()?;
        let key: Arc<str> = states
            .get_key_value(key)
            .map_or_else(|| Arc::from(key), |(k, _)| k.clone());
        let kind = match config.mode {
            Mode::Snowflake => {
                let last = states.entry(key.clone()).or_default().clone();
                if config.initial_seq > 0 {
                    // SPEC 1.3: every ID above the floor; the state lives on across configs.
                    let above = self.layout.timestamp_above(config.initial_seq);
                    last.start_at(&Generator::new(&self.layout), above);
                }
                Kind::Snowflake(last)
            }
            Mode::Sequence => Kind::Sequence(Arc::new(SeqAllocator::new(
                key.clone(),
                &config,
                self.store.clone(),
                self.metrics.blocks_reserved.with_label_values(&[&key]),
            ))),
        };
        let issued = self
            .metrics
            .issued
            .with_label_values(&[&key, config.mode.as_str()]);
        Ok(Entry {
            key,
            config,
            template,
            kind,
            revision: AtomicU64::new(revision),
            issued,
            degraded: OnceLock::new(),
        })
    }

    /// See [`super::Service::apply`].
    pub(super) fn apply(
        &self,
        key: &str,
        config: PrefixConfig,
        revision: Revision,
    ) -> Result<Option<Arc<Entry>>, PrefixError> {
        let (entry, old) = {
            let mut w = self.writers();
            let current = self.map.load();
            if !w.revisions.is_newer(key, revision) {
                return Ok(current.get(key).cloned());
            }
            if let Some(e) = current.get(key).filter(|e| e.config == config) {
                e.revision.store(revision, Ordering::Relaxed);
                w.revisions.record(key, revision);
                return Ok(Some(e.clone()));
            }
            let entry = Arc::new(self.build(&mut w.last, key, config, revision)?);
            w.revisions.record(key, revision);
            let mut map = Map::clone(&current);
            let old = map.insert(entry.key.clone(), entry.clone());
            self.publish(map);
            (entry, old)
        };
        close_later(old);
        Ok(Some(entry))
    }

    /// See [`super::Service::forget`].
    pub(super) fn forget(&self, key: &str, revision: Revision) {
        let old = {
            let mut w = self.writers();
            if !w.revisions.is_newer(key, revision) {
                return;
            }
            w.revisions.record(key, revision);
            let current = self.map.load();
            if !current.contains_key(key) {
                return;
            }
            let mut map = Map::clone(&current);
            let old = map.remove(key);
            self.publish(map);
            old
        };
        close_later(old);
    }

    /// Takes what the store was seen to hold under `key` (if it is newer); the entry live
    /// for `key` afterwards.
    pub(super) fn observe(
        &self,
        key: &str,
        seen: Observed,
    ) -> Result<Option<Arc<Entry>>, PrefixError> {
        match seen.config {
            Some(config) => self.apply(key, config, seen.revision),
            None => {
                self.forget(key, seen.revision);
                Ok(self.get(key))
            }
        }
    }

    /// See [`super::Service::sync`].
    pub(super) fn sync(&self, all: Snapshot) {
        let mut replaced = Vec::new();
        {
            let mut w = self.writers();
            let current = self.map.load();
            let at = all.revision;
            let mut map = Map::with_capacity_and_hasher(all.configs.len(), Default::default());
            // What was seen after the read stays as it is.
            for (key, e) in current.iter() {
                if !w.revisions.snapshot_decides(key, at) {
                    map.insert(key.clone(), e.clone());
                }
            }
            for (key, config, revision) in all.configs {
                if !w.revisions.snapshot_decides(&key, at) {
                    continue;
                }
                let entry = match current.get(key.as_str()) {
                    Some(e) if e.config == config => {
                        e.revision.store(revision, Ordering::Relaxed);
                        e.clone()
                    }
                    _ => match self.build(&mut w.last, &key, config, revision) {
                        Ok(e) => Arc::new(e),
                        Err(e) => {
                            tracing::error!(prefix = %key, error = %e, "stored config is invalid; skipped");
                            continue;
                        }
                    },
                };
                map.insert(entry.key.clone(), entry);
            }
            w.revisions.synced(at);
            for (key, old) in current.iter() {
                if map.get(key).is_none_or(|e| !Arc::ptr_eq(e, old)) {
                    replaced.push(old.clone());
                }
            }
            self.publish(map);
        }
        for old in replaced {
            close_later(Some(old));
        }
    }
}

/// Gives back the sequence blocks of a replaced entry, off the caller's path.
fn close_later(old: Option<Arc<Entry>>) {
    if let Some(Kind::Sequence(a)) = old.as_ref().map(|e| &e.kind) {
        let a = a.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { a.close().await });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{T0, config, service};
    use crate::clock::ManualClock;
    use crate::store::{Observed, Snapshot};
    use std::sync::Arc;

    fn snapshot(revision: u64, configs: &[(&str, &str, u64)]) -> Snapshot {
        Snapshot {
            revision,
            configs: configs
                .iter()
                .map(|(k, body, r)| (k.to_string(), config(body), *r))
                .collect(),
        }
    }

    /// The format `key` is live with, and its revision.
    fn live(s: &super::super::Service, key: &str) -> Option<(String, u64)> {
        let e = s.registry().get(key)?;
        Some((e.config.format.clone(), e.revision()))
    }

    #[tokio::test]
    async fn sync_applies_adds_and_forgets() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(&dir, Arc::new(ManualClock::new(T0)));
        let (a, b) = (r#"{"format":"A{SEQ:19}"}"#, r#"{"format":"B{SEQ:19}"}"#);
        s.sync(snapshot(2, &[("A", a, 1), ("B", b, 2)]));
        assert_eq!(s.registry().len(), 2);
        let kept = s.registry().get("A").unwrap();
        s.sync(snapshot(3, &[("A", a, 1)]));
        assert_eq!(s.registry().len(), 1);
        assert!(Arc::ptr_eq(&kept, &s.registry().get("A").unwrap()));
        assert!(!s.registry().is_empty());
        s.forget("A", 4);
        assert!(s.registry().is_empty());
    }

    #[tokio::test]
    async fn an_older_version_never_replaces_a_newer_one_by_any_path() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(&dir, Arc::new(ManualClock::new(T0)));
        let (v5, v7) = (r#"{"format":"V5{SEQ:2}"}"#, r#"{"format":"V7{SEQ:2}"}"#);
        // The watch applied 7; the answer of the write at 5 comes late.
        s.apply("K", config(v7), 7).unwrap();
        let still = s.apply("K", config(v5), 5).unwrap().unwrap();
        assert_eq!(still.config.format, "V7{SEQ:2}");
        assert_eq!(live(&s, "K"), Some(("V7{SEQ:2}".into(), 7)));
        // The same config written again moves the revision up, without a rebuild.
        s.apply("K", config(v7), 8).unwrap();
        assert!(Arc::ptr_eq(&still, &s.registry().get("K").unwrap()));
        assert_eq!(live(&s, "K"), Some(("V7{SEQ:2}".into(), 8)));
        // A delete older than what is held is ignored; a newer one removes the key, and an
        // older put (a lookup that read before the delete) cannot bring it back.
        s.forget("K", 6);
        assert!(live(&s, "K").is_some());
        s.forget("K", 9);
        assert_eq!(live(&s, "K"), None);
        let seen = Observed {
            config: Some(config(v7)),
            revision: 8,
        };
        assert!(s.registry().observe("K", seen).unwrap().is_none());
        assert_eq!(live(&s, "K"), None);
        // A full read made before the delete does not bring it back either, nor does it
        // undo a write seen after it.
        s.apply("NEW", config(v5), 12).unwrap();
        s.sync(snapshot(8, &[("K", v7, 8)]));
        assert_eq!(live(&s, "K"), None);
        assert_eq!(live(&s, "NEW"), Some(("V5{SEQ:2}".into(), 12)));
        // A later full read decides both.
        s.sync(snapshot(13, &[("K", v5, 10)]));
        assert_eq!(live(&s, "K"), Some(("V5{SEQ:2}".into(), 10)));
        assert_eq!(live(&s, "NEW"), None);
        // Keys the read did not list are known absent as of it.
        let seen = Observed {
            config: Some(config(v7)),
            revision: 11,
        };
        assert!(s.registry().observe("OTHER", seen).unwrap().is_none());
    }
}
