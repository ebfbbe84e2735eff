//! What the service's unit tests share: a service on a real embedded store with a manual
//! clock, a sink that collects, and a store that never answers.

use std::sync::Arc;
use std::time::Duration;

use super::{IssueError, Service, Sink};
use crate::clock::ManualClock;
use crate::format::{RenderCtx, Template};
use crate::id::{Layout, LayoutSettings, Policy};
use crate::metrics::Metrics;
use crate::node::{Node, NodeSettings};
use crate::prefix::PrefixConfig;
use crate::store::embedded::EmbeddedStore;
use crate::store::{
    AuditMeta, AuditRecord, Observed, PrefixRecord, Revision, SeqBlock, SeqGuard, Snapshot, Store,
    StoreError, Written,
};

pub const T0: u64 = 1_763_700_000_000;

/// Collects what was issued: (number, id, degraded).
#[derive(Default)]
pub struct Collect {
    pub numbers: Vec<(String, u64, bool)>,
}

impl Sink for Collect {
    fn push(&mut self, template: &Template, ctx: &RenderCtx<'_>, id: u64, degraded: bool) {
        self.numbers
            .push((template.render_string(ctx), id, degraded));
    }
}

/// A node on `clock` with the default layout and no worker ID yet.
pub fn node(clock: Arc<ManualClock>, metrics: &Metrics) -> Arc<Node> {
    let layout = Layout::new(LayoutSettings::default(), T0).unwrap();
    Arc::new(Node::new(
        layout,
        clock,
        NodeSettings {
            max_backward_wait_ms: 5,
            on_clock_backward: Policy::Degrade,
            on_lease_loss: Policy::Degrade,
            reserve_window_ms: 2000,
        },
        metrics.clone(),
    ))
}

/// A service on `store` whose node holds worker 1 with a wide reservation.
pub fn service_on(store: Arc<dyn Store>, clock: Arc<ManualClock>) -> Service {
    node_on(store, clock, 1, false)
}

/// A service on `store` whose node holds `worker` with a wide reservation; `read_through`
/// as in cluster mode (another node's configs are read from the store).
pub fn node_on(
    store: Arc<dyn Store>,
    clock: Arc<ManualClock>,
    worker: u64,
    read_through: bool,
) -> Service {
    let metrics = Metrics::new().unwrap();
    let node = node(clock, &metrics);
    let now = node.now_units();
    node.install_grant(0, worker, 0, now + 100_000);
    Service::new(node, store, metrics, read_through)
}

pub fn embedded(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    Arc::new(EmbeddedStore::open(&dir.path().join("db")).unwrap())
}

pub fn service(dir: &tempfile::TempDir, clock: Arc<ManualClock>) -> Service {
    service_on(embedded(dir), clock)
}

pub fn config(body: &str) -> PrefixConfig {
    PrefixConfig::from_request(body.as_bytes()).unwrap().0
}

pub async fn take(s: &Service, key: &str, n: u64) -> Result<Vec<(String, u64, bool)>, IssueError> {
    let mut c = Collect::default();
    s.issue(key, n, &mut c).await?;
    Ok(c.numbers)
}

/// Who the tests' admin changes are by.
pub fn by() -> AuditMeta {
    AuditMeta {
        time_ms: T0,
        peer: "127.0.0.1:1".into(),
        token_fingerprint: "0123456789abcdef".into(),
    }
}

/// How long a call to [`Stalled`] takes to fail.
pub const STALL: Duration = Duration::from_millis(20);

/// A store that never answers: every call runs into its deadline, as a backend whose
/// disk or etcd hangs does.
pub struct Stalled;

async fn stall<T>() -> Result<T, StoreError> {
    crate::store::bounded(STALL, std::future::pending()).await
}

#[async_trait::async_trait]
impl Store for Stalled {
    async fn snapshot_prefixes(&self) -> Result<Snapshot, StoreError> {
        stall().await
    }
    async fn observe_prefix(&self, _: &str) -> Result<Observed, StoreError> {
        stall().await
    }
    async fn write_prefix(
        &self,
        _: &str,
        _: &PrefixConfig,
        _: bool,
        _: &AuditMeta,
    ) -> Result<(Written, Revision), StoreError> {
        stall().await
    }
    async fn remove_prefix(&self, _: &str, _: &AuditMeta) -> Result<Option<Revision>, StoreError> {
        stall().await
    }
    async fn prefix_history(&self, _: &str) -> Result<Vec<AuditRecord>, StoreError> {
        stall().await
    }
    async fn prefix_record(&self, _: &str) -> Result<Option<PrefixRecord>, StoreError> {
        stall().await
    }
    async fn reserve_seq_as(
        &self,
        _: &str,
        _: u64,
        _: u64,
        _: Option<&SeqGuard<'_>>,
    ) -> Result<SeqBlock, StoreError> {
        stall().await
    }
    async fn release_seq_as(
        &self,
        _: &str,
        _: u64,
        _: u64,
        _: Option<&SeqGuard<'_>>,
    ) -> Result<bool, StoreError> {
        stall().await
    }
    async fn get_seq(&self, _: &str) -> Result<Option<u64>, StoreError> {
        stall().await
    }
    async fn check_layout(&self, _: &str) -> Result<(), StoreError> {
        stall().await
    }
}
