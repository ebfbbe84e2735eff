//! The numbers service: the prefix registry (configs served from memory) and the two
//! operations everything else is built on, issuing numbers and managing prefix configs.
//! The HTTP layer calls these and only maps their errors to status codes.
//!
//! The registry is an immutable map behind an `ArcSwap`, cached per thread and checked by
//! a generation number: a request reads it without a lock, a reference count or contention;
//! a config change copies the map (configs change rarely). Each
//! snowflake prefix's [`PrefixClock`] is kept for the life of the process, also across a
//! delete, so a prefix registered again never goes back in time.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::IntCounter;

use crate::format::{RenderCtx, Template};
use crate::id::PrefixClock;
use crate::metrics::Metrics;
use crate::node::{Blocked, Node};
use crate::prefix::{ConfigError, Mode, PrefixConfig};
use crate::sequence::{SeqAllocator, SeqError};
use crate::store::{Store, StoreError, Written};

type Map = HashMap<Arc<str>, Arc<Entry>, foldhash::fast::RandomState>;

/// How long a request may wait for the reservation of timestamps to be extended.
const RESERVATION_WAIT: Duration = Duration::from_secs(2);

/// A registered prefix, ready to issue.
pub struct Entry {
    pub key: Arc<str>,
    pub config: PrefixConfig,
    pub template: Template,
    pub kind: Kind,
    issued: IntCounter,
}

pub enum Kind {
    Snowflake(Arc<PrefixClock>),
    Sequence(Arc<SeqAllocator>),
}

/// How [`Service::issue_fast`] left a request.
pub enum Fast {
    /// Every number was issued.
    Done,
    /// Not a snowflake prefix in memory: nothing issued; use [`Service::issue`].
    Slow,
    /// Some numbers issued, the rest must wait: [`Service::issue_rest`].
    Continue(Arc<Entry>, u64, Blocked),
}

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
    /// The prefix's config was replaced while the request used it, twice in a row.
    #[error("the config of prefix '{0}' changed while issuing; retry")]
    ConfigChanged(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("Prefix already exists")]
    Exists,
    #[error("mode cannot change from '{from}' to '{to}'; register a new prefix instead")]
    ModeChange {
        from: &'static str,
        to: &'static str,
    },
    #[error(
        "reset cannot change from '{from}' to '{to}': this prefix's counters were made under '{from}' (also if it was deleted since) and a new reset would start them again; register a new prefix instead"
    )]
    ResetChange {
        from: &'static str,
        to: &'static str,
    },
    #[error("Prefix '{0}' not found")]
    NotFound(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Storage(#[from] StoreError),
}

/// The admin error of a config write the store refused.
fn refused(written: Written, config: &PrefixConfig) -> Result<(), AdminError> {
    match written {
        Written::Created | Written::Replaced => Ok(()),
        Written::Exists => Err(AdminError::Exists),
        Written::ModeChange(from) => Err(AdminError::ModeChange {
            from: from.as_str(),
            to: config.mode.as_str(),
        }),
        Written::ResetChange(from) => Err(AdminError::ResetChange {
            from: from.as_str(),
            to: config.reset.as_str(),
        }),
    }
}

pub struct Registry {
    map: ArcSwap<Map>,
    /// Bumped after every store of `map`: tells a thread its cached map is stale.
    generation: AtomicU64,
    /// Tells registries apart in the per-thread cache.
    id: u64,
    /// Snowflake states by key, never dropped; also serialises writers of `map`.
    clocks: Mutex<HashMap<Arc<str>, Arc<PrefixClock>>>,
}

/// Gives each registry its own id for the per-thread cache.
static NEXT_REGISTRY_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// Per thread, the registry map last read: (registry id, generation, map). Reading it
    /// costs one load of the generation, where an `ArcSwap` load costs hundreds of
    /// instructions and an `Arc` clone a reference count both workers fight over.
    static SEEN: RefCell<Option<(u64, u64, Arc<Map>)>> = const { RefCell::new(None) };
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            map: ArcSwap::from_pointee(Map::default()),
            generation: AtomicU64::new(0),
            id: NEXT_REGISTRY_ID.fetch_add(1, Ordering::Relaxed),
            clocks: Mutex::new(HashMap::new()),
        }
    }
}

impl Registry {
    fn writers(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<PrefixClock>>> {
        self.clocks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `map` the registry's map (the caller holds the writers' lock).
    fn publish(&self, map: Map) {
        self.map.store(Arc::new(map));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Runs `f` on the current map, from this thread's cache when it is up to date.
    #[inline]
    fn with_map<R>(&self, f: impl FnOnce(&Map) -> R) -> R {
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

    /// Seals every snowflake prefix of this node (see [`PrefixClock::seal`]) and returns
    /// the highest timestamp any of them used: nothing is issued above it afterwards, even
    /// by a request that was between its checks and its compare-and-swap.
    pub fn seal_all(&self, node: &Node) -> u64 {
        self.writers()
            .values()
            .map(|c| c.seal(node.generator()))
            .max()
            .unwrap_or(0)
    }
}

pub struct Service {
    node: Arc<Node>,
    registry: Registry,
    store: Arc<dyn Store>,
    metrics: Metrics,
    /// Cluster mode: a key missing from memory is looked up in the store before a 400.
    read_through: bool,
}

impl Service {
    pub fn new(
        node: Arc<Node>,
        store: Arc<dyn Store>,
        metrics: Metrics,
        read_through: bool,
    ) -> Service {
        Service {
            node,
            registry: Registry::default(),
            store,
            metrics,
            read_through,
        }
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Builds the entry for `config`, reusing the snowflake clock of `key` from `clocks`.
    fn build(
        &self,
        clocks: &mut HashMap<Arc<str>, Arc<PrefixClock>>,
        key: &str,
        config: PrefixConfig,
    ) -> Result<Entry, ConfigError> {
        let template = config.template()?;
        let key: Arc<str> = clocks
            .get_key_value(key)
            .map_or_else(|| Arc::from(key), |(k, _)| k.clone());
        let kind = match config.mode {
            Mode::Snowflake => Kind::Snowflake(
                clocks
                    .entry(key.clone())
                    .or_insert_with(|| Arc::new(PrefixClock::new()))
                    .clone(),
            ),
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

    /// Makes `config` the live config of `key` (no-op when it already is). The replaced
    /// entry's sequence blocks are given back.
    pub fn apply(&self, key: &str, config: PrefixConfig) -> Result<Arc<Entry>, ConfigError> {
        let (entry, old) = {
            let mut clocks = self.registry.writers();
            let current = self.registry.map.load();
            if let Some(e) = current.get(key).filter(|e| e.config == config) {
                return Ok(e.clone());
            }
            let entry = Arc::new(self.build(&mut clocks, key, config)?);
            let mut map = Map::clone(&current);
            let old = map.insert(entry.key.clone(), entry.clone());
            self.registry.publish(map);
            (entry, old)
        };
        self.metrics.prefixes.set(self.registry.len() as i64);
        close_later(old);
        Ok(entry)
    }

    /// Forgets `key` locally (its counters stay in the store).
    pub fn forget(&self, key: &str) {
        let old = {
            let _writers = self.registry.writers();
            let mut map = Map::clone(&self.registry.map.load());
            let old = map.remove(key);
            self.registry.publish(map);
            old
        };
        self.metrics.prefixes.set(self.registry.len() as i64);
        close_later(old);
    }

    /// Makes the registry equal to `all` (a full read of the store) in one swap: unchanged
    /// entries are kept, changed ones rebuilt, missing ones dropped.
    pub fn sync(&self, all: HashMap<String, PrefixConfig>) {
        let mut replaced = Vec::new();
        {
            let mut clocks = self.registry.writers();
            let current = self.registry.map.load();
            let mut map = Map::with_capacity_and_hasher(all.len(), Default::default());
            for (key, config) in all {
                let entry = match current.get(key.as_str()) {
                    Some(e) if e.config == config => e.clone(),
                    _ => match self.build(&mut clocks, &key, config) {
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
            self.registry.publish(map);
        }
        self.metrics.prefixes.set(self.registry.len() as i64);
        for old in replaced {
            close_later(Some(old));
        }
    }

    /// Loads every stored config into memory.
    pub async fn load(&self) -> Result<usize, AdminError> {
        let all = self.store.list_prefixes().await?;
        let n = all.len();
        self.sync(all.into_iter().collect());
        Ok(n)
    }

    async fn lookup(&self, key: &str) -> Result<Arc<Entry>, IssueError> {
        if let Some(e) = self.registry.get(key) {
            return Ok(e);
        }
        if self.read_through
            && let Some(config) = self
                .store
                .get_prefix(key)
                .await
                .map_err(IssueError::Storage)?
        {
            return self
                .apply(key, config)
                .map_err(|_| IssueError::NotRegistered(key.to_string()));
        }
        Err(IssueError::NotRegistered(key.to_string()))
    }

    /// Issues `count` numbers of prefix `key` into `sink`, in order.
    pub async fn issue(
        &self,
        key: &str,
        count: u64,
        sink: &mut impl Sink,
    ) -> Result<(), IssueError> {
        match self.issue_fast(key, count, sink)? {
            Fast::Done => Ok(()),
            Fast::Continue(entry, left, blocked) => {
                Box::pin(self.issue_rest(&entry, left, blocked, sink)).await
            }
            // Boxed: rare for snowflake prefixes, and it keeps the request future small.
            Fast::Slow => Box::pin(self.issue_looked_up(key, count, sink)).await,
        }
    }

    /// The common case without an await: a snowflake prefix in memory whose numbers need
    /// no wait. Runs on the registry map as loaded, without touching the entry's reference
    /// count; says how to go on when it cannot finish.
    #[inline]
    pub fn issue_fast(
        &self,
        key: &str,
        count: u64,
        sink: &mut impl Sink,
    ) -> Result<Fast, IssueError> {
        self.registry.with_map(|map| {
            let Some(entry) = map.get(key) else {
                return Ok(Fast::Slow);
            };
            let Kind::Snowflake(clock) = &entry.kind else {
                return Ok(Fast::Slow);
            };
            let mut left = count;
            Ok(match self.issue_now(entry, clock, &mut left, sink)? {
                None => Fast::Done,
                Some(blocked) => Fast::Continue(entry.clone(), left, blocked),
            })
        })
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
        let mut retried = false;
        loop {
            let result = match &entry.kind {
                Kind::Snowflake(clock) => {
                    let mut left = count;
                    match self.issue_now(&entry, clock, &mut left, sink)? {
                        None => Ok(()),
                        Some(blocked) => self.issue_rest(&entry, left, blocked, sink).await,
                    }
                }
                Kind::Sequence(alloc) => self.issue_sequence(&entry, alloc, count, sink).await,
            };
            match result {
                Err(IssueError::ConfigChanged(_)) if !retried => {
                    retried = true;
                    entry = self.lookup(key).await?;
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
        clock: &PrefixClock,
        left: &mut u64,
        sink: &mut impl Sink,
    ) -> Result<Option<Blocked>, IssueError> {
        let layout = self.node.layout();
        let offset_s = entry.config.utc_offset.seconds();
        while *left > 0 {
            let issued = match self.node.try_issue(clock, *left) {
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
                    degraded,
                };
                sink.push(&entry.template, &ctx, id, degraded);
            }
            entry.issued.inc_by(issued.batch.count);
            *left -= issued.batch.count;
        }
        Ok(None)
    }

    /// The rest of a snowflake request that had to wait: for the clock (at most about a
    /// unit at a time) or for the reservation to be extended (bounded by the store deadline).
    pub async fn issue_rest(
        &self,
        entry: &Entry,
        mut left: u64,
        mut blocked: Blocked,
        sink: &mut impl Sink,
    ) -> Result<(), IssueError> {
        let Kind::Snowflake(clock) = &entry.kind else {
            return Err(IssueError::ConfigChanged(entry.key.to_string()));
        };
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
                    let step = Duration::from_millis(20);
                    let _ = tokio::time::timeout(step, self.node.reserved()).await;
                    waited += step;
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
            match self.issue_now(entry, clock, &mut left, sink)? {
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
        let Some(grant) = self.node.grant() else {
            return Err(IssueError::NotReady {
                reason: "no worker ID is held",
                retry_after: Duration::from_secs(1),
            });
        };
        let now_ms = self.node.clock().now_ms();
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
                degraded: false,
            };
            sink.push(&entry.template, &ctx, n, false);
        }
        entry.issued.inc_by(taken.count());
        Ok(())
    }

    /// `POST /prefix-configs/{key}`
    pub async fn register(&self, key: &str, body: &[u8]) -> Result<PrefixConfig, AdminError> {
        let (config, _) = PrefixConfig::from_request(body)?;
        refused(self.store.create_prefix(key, &config).await?, &config)?;
        self.apply(key, config.clone())?;
        tracing::info!(prefix = key, config = %config.to_log_json(), "prefix registered");
        Ok(config)
    }

    /// `PUT /prefix-configs/{key}`
    pub async fn replace(&self, key: &str, body: &[u8]) -> Result<PrefixConfig, AdminError> {
        let (config, _) = PrefixConfig::from_request(body)?;
        refused(self.store.replace_prefix(key, &config).await?, &config)?;
        self.apply(key, config.clone())?;
        tracing::info!(prefix = key, config = %config.to_log_json(), "prefix config replaced");
        Ok(config)
    }

    /// `GET /prefix-configs/{key}`
    pub async fn config(&self, key: &str) -> Result<PrefixConfig, AdminError> {
        if let Some(e) = self.registry.get(key) {
            return Ok(e.config.clone());
        }
        match self.store.get_prefix(key).await? {
            Some(c) => Ok(c),
            None => Err(AdminError::NotFound(key.to_string())),
        }
    }

    /// `GET /prefix-configs`
    pub async fn configs(&self) -> Result<Vec<(String, PrefixConfig)>, AdminError> {
        let mut all = self.store.list_prefixes().await?;
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }

    /// `DELETE /prefix-configs/{key}`
    pub async fn delete(&self, key: &str) -> Result<(), AdminError> {
        if !self.store.delete_prefix(key).await? {
            return Err(AdminError::NotFound(key.to_string()));
        }
        self.forget(key);
        tracing::info!(prefix = key, "prefix deleted");
        Ok(())
    }

    /// Gives every sequence tail back (graceful stop).
    pub async fn close_sequences(&self) {
        for e in self.registry.entries() {
            if let Kind::Sequence(a) = &e.kind {
                a.close().await;
            }
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
    use super::*;
    use crate::clock::ManualClock;
    use crate::id::{Layout, LayoutSettings, Policy};
    use crate::node::NodeSettings;
    use crate::store::embedded::EmbeddedStore;
    use std::collections::HashSet;

    const T0: u64 = 1_763_700_000_000;

    /// Collects what was issued.
    #[derive(Default)]
    struct Collect {
        numbers: Vec<(String, u64, bool)>,
    }

    impl Sink for Collect {
        fn push(&mut self, template: &Template, ctx: &RenderCtx<'_>, id: u64, degraded: bool) {
            self.numbers
                .push((template.render_string(ctx), id, degraded));
        }
    }

    /// A service on `store` whose node holds worker 1 with a wide reservation.
    fn service_on(store: Arc<dyn Store>, clock: Arc<ManualClock>) -> Service {
        let layout = Layout::new(LayoutSettings::default(), T0).unwrap();
        let metrics = Metrics::new().unwrap();
        let node = Arc::new(Node::new(
            layout,
            clock,
            NodeSettings {
                max_backward_wait_ms: 5,
                on_clock_backward: Policy::Degrade,
                on_lease_loss: Policy::Degrade,
                reserve_window_ms: 2000,
            },
            metrics.clone(),
        ));
        let now = node.now_units();
        node.install_grant(0, 1, 0, now + 100_000);
        Service::new(node, store, metrics, false)
    }

    fn service(dir: &tempfile::TempDir, clock: Arc<ManualClock>) -> Service {
        let store = EmbeddedStore::open(&dir.path().join("db")).unwrap();
        service_on(Arc::new(store), clock)
    }

    async fn take(s: &Service, key: &str, n: u64) -> Result<Vec<(String, u64, bool)>, IssueError> {
        let mut c = Collect::default();
        s.issue(key, n, &mut c).await?;
        Ok(c.numbers)
    }

    #[tokio::test]
    async fn register_issue_replace_delete() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let s = service(&dir, clock.clone());
        assert_eq!(
            take(&s, "TEST", 1).await,
            Err(IssueError::NotRegistered("TEST".into()))
        );
        s.register("TEST", br#"{"format":"TEST-{SEQ:4}","mode":"sequence"}"#)
            .await
            .unwrap();
        assert_eq!(
            s.register("TEST", br#"{"format":"TEST-{SEQ:4}"}"#).await,
            Err(AdminError::Exists)
        );
        let got: Vec<String> = take(&s, "TEST", 3)
            .await
            .unwrap()
            .into_iter()
            .map(|n| n.0)
            .collect();
        assert_eq!(got, ["TEST-0001", "TEST-0002", "TEST-0003"]);
        assert!(matches!(
            s.replace("TEST", br#"{"format":"T-{SEQ:4}"}"#).await,
            Err(AdminError::ModeChange {
                from: "sequence",
                to: "snowflake"
            })
        ));
        // Replacing with a lower initial_seq never rewinds; the tail given back is reused.
        s.replace(
            "TEST",
            br#"{"format":"T-{SEQ:2}","mode":"sequence","initial_seq":0}"#,
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(take(&s, "TEST", 1).await.unwrap()[0].0, "T-04");
        assert_eq!(s.config("TEST").await.unwrap().format, "T-{SEQ:2}");
        assert_eq!(s.configs().await.unwrap().len(), 1);
        s.delete("TEST").await.unwrap();
        assert_eq!(
            s.delete("TEST").await,
            Err(AdminError::NotFound("TEST".into()))
        );
        assert!(matches!(
            s.config("TEST").await,
            Err(AdminError::NotFound(_))
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.register("TEST", br#"{"format":"T-{SEQ:2}","mode":"sequence"}"#)
            .await
            .unwrap();
        assert_eq!(take(&s, "TEST", 1).await.unwrap()[0].0, "T-05");
    }

    #[tokio::test]
    async fn a_snowflake_prefix_registered_again_never_repeats_even_with_the_clock_back() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let s = service(&dir, clock.clone());
        s.register("ORD", br#"{"format":"O-{SEQ:3}"}"#)
            .await
            .unwrap();
        let mut seen = HashSet::new();
        for (_, id, _) in take(&s, "ORD", 5000).await.unwrap() {
            assert!(seen.insert(id));
        }
        s.delete("ORD").await.unwrap();
        clock.step_back(3);
        s.register("ORD", br#"{"format":"O-{SEQ:3}"}"#)
            .await
            .unwrap();
        for (_, id, _) in take(&s, "ORD", 3000).await.unwrap() {
            assert!(seen.insert(id), "repeated {id}");
        }
    }

    #[tokio::test]
    async fn a_batch_larger_than_the_lead_waits_for_the_clock_and_stays_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let s = Arc::new(service(&dir, clock.clone()));
        s.register("B", br#"{"format":"{SEQ:1}"}"#).await.unwrap();
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

    const STALL: Duration = Duration::from_millis(20);

    /// A store that never answers: every call runs into its deadline, as a backend whose
    /// disk or etcd hangs does.
    struct Stalled;

    async fn stall<T>() -> Result<T, StoreError> {
        crate::store::bounded(STALL, std::future::pending()).await
    }

    #[async_trait::async_trait]
    impl Store for Stalled {
        async fn list_prefixes(&self) -> Result<Vec<(String, PrefixConfig)>, StoreError> {
            stall().await
        }
        async fn get_prefix(&self, _: &str) -> Result<Option<PrefixConfig>, StoreError> {
            stall().await
        }
        async fn write_prefix(
            &self,
            _: &str,
            _: &PrefixConfig,
            _: bool,
        ) -> Result<Written, StoreError> {
            stall().await
        }
        async fn delete_prefix(&self, _: &str) -> Result<bool, StoreError> {
            stall().await
        }
        async fn reserve_seq(
            &self,
            _: &str,
            _: u64,
            _: u64,
        ) -> Result<crate::store::SeqBlock, StoreError> {
            stall().await
        }
        async fn release_seq(&self, _: &str, _: u64, _: u64) -> Result<bool, StoreError> {
            stall().await
        }
        async fn get_seq(&self, _: &str) -> Result<Option<u64>, StoreError> {
            stall().await
        }
        async fn check_layout(&self, _: &str) -> Result<(), StoreError> {
            stall().await
        }
    }

    #[tokio::test]
    async fn a_store_that_times_out_answers_storage_unavailable() {
        let s = service_on(Arc::new(Stalled), Arc::new(ManualClock::new(T0)));
        let (config, _) =
            PrefixConfig::from_request(br#"{"format":"I-{SEQ:3}","mode":"sequence"}"#).unwrap();
        s.apply("INV", config).unwrap();
        let err = take(&s, "INV", 1).await.unwrap_err();
        assert_eq!(err, IssueError::Storage(StoreError::Timeout(STALL)));
        let api: crate::http::error::ApiError = err.into();
        assert_eq!(
            (api.status().as_u16(), api.code()),
            (503, "STORAGE_UNAVAILABLE")
        );
        assert!(matches!(
            s.register("X", br#"{"format":"X{SEQ:2}"}"#).await,
            Err(AdminError::Storage(StoreError::Timeout(_)))
        ));
    }

    #[tokio::test]
    async fn sync_applies_adds_and_forgets() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(&dir, Arc::new(ManualClock::new(T0)));
        let (a, _) = PrefixConfig::from_request(br#"{"format":"A{SEQ:2}"}"#).unwrap();
        let (b, _) = PrefixConfig::from_request(br#"{"format":"B{SEQ:2}"}"#).unwrap();
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
