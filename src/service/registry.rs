//! The prefix registry: every registered prefix, built into an [`Entry`] ready to issue,
//! served from memory.
//!
//! The map is immutable behind an `ArcSwap`, cached per thread and checked by a generation
//! number: a request reads it without a lock, a reference count or contention; a config
//! change copies the map (configs change rarely). Each snowflake prefix's [`LastIssued`] is
//! kept for the life of the process, also across a delete, so a prefix registered again
//! never goes back in time.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use prometheus::IntCounter;

use crate::format::Template;
use crate::id::{Generator, LastIssued, Layout};
use crate::metrics::Metrics;
use crate::node::Node;
use crate::prefix::{Mode, PrefixConfig, PrefixError};
use crate::sequence::SeqAllocator;
use crate::store::Store;

pub(super) type Map = HashMap<Arc<str>, Arc<Entry>, foldhash::fast::RandomState>;

/// The snowflake prefixes' last numbers by key.
type LastByKey = HashMap<Arc<str>, Arc<LastIssued>>;

/// A registered prefix, ready to issue.
pub struct Entry {
    pub key: Arc<str>,
    pub config: PrefixConfig,
    pub(super) template: Template,
    pub(super) kind: Kind,
    /// `numgen_numbers_issued_total{prefix,mode}`, looked up once.
    pub(super) issued: IntCounter,
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
    /// Snowflake states by key, never dropped; also serialises writers of `map`.
    last_issued: Mutex<LastByKey>,
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
            last_issued: Mutex::new(HashMap::new()),
            store,
            metrics,
            layout,
        }
    }

    fn writers(&self) -> MutexGuard<'_, LastByKey> {
        self.last_issued.lock().unwrap_or_else(|e| e.into_inner())
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
            .values()
            .map(|c| c.seal(node.generator()))
            .max()
            .unwrap_or(0)
    }

    /// Builds the entry for `config`, reusing the snowflake state of `key` from `states`.
    fn build(
        &self,
        states: &mut LastByKey,
        key: &str,
        config: PrefixConfig,
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
            issued,
        })
    }

    /// See [`super::Service::apply`].
    pub(super) fn apply(&self, key: &str, config: PrefixConfig) -> Result<Arc<Entry>, PrefixError> {
        let (entry, old) = {
            let mut states = self.writers();
            let current = self.map.load();
            if let Some(e) = current.get(key).filter(|e| e.config == config) {
                return Ok(e.clone());
            }
            let entry = Arc::new(self.build(&mut states, key, config)?);
            let mut map = Map::clone(&current);
            let old = map.insert(entry.key.clone(), entry.clone());
            self.publish(map);
            (entry, old)
        };
        close_later(old);
        Ok(entry)
    }

    /// See [`super::Service::forget`].
    pub(super) fn forget(&self, key: &str) {
        let old = {
            let _writers = self.writers();
            let mut map = Map::clone(&self.map.load());
            let old = map.remove(key);
            self.publish(map);
            old
        };
        close_later(old);
    }

    /// See [`super::Service::sync`].
    pub(super) fn sync(&self, all: HashMap<String, PrefixConfig>) {
        let mut replaced = Vec::new();
        {
            let mut states = self.writers();
            let current = self.map.load();
            let mut map = Map::with_capacity_and_hasher(all.len(), Default::default());
            for (key, config) in all {
                let entry = match current.get(key.as_str()) {
                    Some(e) if e.config == config => e.clone(),
                    _ => match self.build(&mut states, &key, config) {
                        Ok(e) => Arc::new(e),
                        Err(e) => {
                            tracing::error!(prefix = %key, error = %e, "stored config is invalid; skipped");
                            continue;
                        }
                    },
                };
                map.insert(entry.key.clone(), entry);
            }
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
    use super::super::test_support::{T0, service};
    use crate::clock::ManualClock;
    use crate::prefix::PrefixConfig;
    use std::collections::HashMap;
    use std::sync::Arc;

    #[tokio::test]
    async fn sync_applies_adds_and_forgets() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(&dir, Arc::new(ManualClock::new(T0)));
        let (a, _) = PrefixConfig::from_request(br#"{"format":"A{SEQ:19}"}"#).unwrap();
        let (b, _) = PrefixConfig::from_request(br#"{"format":"B{SEQ:19}"}"#).unwrap();
        s.sync(HashMap::from([
            ("A".into(), a.clone()),
            ("B".into(), b.clone()),
        ]));
        assert_eq!(s.registry().len(), 2);
        let kept = s.registry().get("A").unwrap();
        s.sync(HashMap::from([("A".into(), a)]));
        assert_eq!(s.registry().len(), 1);
        assert!(Arc::ptr_eq(&kept, &s.registry().get("A").unwrap()));
        assert!(!s.registry().is_empty());
        s.forget("A");
        assert!(s.registry().is_empty());
    }
}
