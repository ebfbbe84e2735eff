//! The numbers service: the prefix registry (configs served from memory) and the two
//! operations everything else is built on, issuing numbers and managing prefix configs.
//! The HTTP layer calls these and only maps their errors to status codes.
//!
//! - [`registry`]: the live prefixes, each built once into an entry ready to issue, read
//!   without a lock; the per-prefix [`LastIssued`](crate::id::LastIssued) states.
//! - [`issue`]: issuing, without an await when nothing needs to wait ([`Service::begin`]).
//! - [`admin`]: registering, replacing, reading and deleting prefix configs.

mod admin;
mod issue;
mod registry;
/// The prefix watch (cluster mode) feeds the registry through this.
impl ConfigSink for Service {
    fn apply(&self, key: &str, config: PrefixConfig) -> Result<(), Refused> {
        Service::apply(self, key, config)
            .map(drop)
            .map_err(Into::into)
    }

    fn forget(&self, key: &str) {
        Service::forget(self, key)
    }

    fn sync(&self, all: HashMap<String, PrefixConfig>) {
        Service::sync(self, all)
    }
}

#[cfg(test)]
mod history_tests;
#[cfg(test)]
pub(crate) mod test_support;

use std::collections::HashMap;
use std::sync::Arc;

pub use admin::AdminError;
pub use issue::{IssueError, Pending, Sink};
pub use registry::{Entry, Registry};

use crate::cluster::watch::{ConfigSink, Refused};
use crate::format::NodeWidths;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::prefix::{PrefixConfig, PrefixError};
use crate::store::Store;

pub struct Service {
    node: Arc<Node>,
    registry: Registry,
    store: Arc<dyn Store>,
    metrics: Metrics,
    /// Cluster mode: a key missing from memory is looked up in the store before a 400.
    read_through: bool,
    /// The widths `{dc}` and `{worker}` render at, from the layout.
    widths: NodeWidths,
}

impl Service {
    pub fn new(
        node: Arc<Node>,
        store: Arc<dyn Store>,
        metrics: Metrics,
        read_through: bool,
    ) -> Service {
        let layout = *node.layout();
        Service {
            widths: NodeWidths::of_layout(&layout),
            registry: Registry::new(store.clone(), metrics.clone(), layout),
            node,
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

    /// Makes `config` the live config of `key` (no-op when it already is). The replaced
    /// entry's sequence blocks are given back.
    pub fn apply(&self, key: &str, config: PrefixConfig) -> Result<Arc<Entry>, PrefixError> {
        self.registry.apply(key, config)
    }

    /// Forgets `key` locally (its counters stay in the store).
    pub fn forget(&self, key: &str) {
        self.registry.forget(key);
    }

    /// Makes the registry equal to `all` (a full read of the store) in one swap: unchanged
    /// entries are kept, changed ones rebuilt, missing ones dropped.
    pub fn sync(&self, all: HashMap<String, PrefixConfig>) {
        self.registry.sync(all);
    }

    /// Loads every stored config into memory.
    pub async fn load(&self) -> Result<usize, AdminError> {
        let all = self.store.list_prefixes().await?;
        let n = all.len();
        self.sync(all.into_iter().collect());
        Ok(n)
    }

    /// Gives every sequence tail back (graceful stop).
    pub async fn close_sequences(&self) {
        for e in self.registry.entries() {
            if let registry::Kind::Sequence(a) = &e.kind {
                a.close().await;
            }
        }
    }
}
