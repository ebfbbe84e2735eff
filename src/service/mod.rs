//! The numbers service: the prefix registry (configs served from memory) and the two
//! operations everything else is built on, issuing numbers and managing prefix configs.
//! The HTTP layer calls these and only maps their errors to status codes.
//!
//! - [`registry`]: the live prefixes, each built once into an entry ready to issue, read
//!   without a lock; the per-prefix [`LastIssued`](crate::id::LastIssued) states.
//! - [`issue`]: issuing, without an await when nothing needs to wait ([`Service::begin`]).
//! - [`admin`]: registering, replacing, reading and deleting prefix configs.
//! - [`revisions`]: which version of each config the registry holds; nothing older is
//!   taken (SPEC 3.1).

mod admin;
mod issue;
mod registry;
mod revisions;
/// The prefix watch (cluster mode) feeds the registry through this.
impl ConfigSink for Service {
    fn apply(&self, key: &str, config: PrefixConfig, revision: Revision) -> Result<(), Refused> {
        Service::apply(self, key, config, revision)
            .map(drop)
            .map_err(Into::into)
    }

    fn forget(&self, key: &str, revision: Revision) {
        Service::forget(self, key, revision)
    }

    fn sync(&self, all: Snapshot) {
        Service::sync(self, all)
    }
}

#[cfg(test)]
mod history_tests;
#[cfg(test)]
pub(crate) mod test_support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

pub use admin::AdminError;
pub use issue::{IssueError, Pending, Sink};
pub use registry::{Entry, Registry};

use crate::cluster::watch::{ConfigSink, Refused};
use crate::format::NodeWidths;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::prefix::{PrefixConfig, PrefixError};
use crate::store::{Revision, Snapshot, Store};

pub struct Service {
    node: Arc<Node>,
    /// Shared with the tasks that settle a timed-out admin write.
    registry: Arc<Registry>,
    store: Arc<dyn Store>,
    metrics: Metrics,
    /// Cluster mode: a key missing from memory is looked up in the store before a 400.
    read_through: bool,
    /// Keys whose timed-out write a background task is still settling.
    settling: Arc<Mutex<HashSet<String>>>,
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
            registry: Arc::new(Registry::new(store.clone(), metrics.clone(), layout)),
            node,
            store,
            metrics,
            read_through,
            settling: Arc::default(),
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

    /// Makes `config`, written at store revision `revision`, the live config of `key` —
    /// unless the registry already holds `key` as of a later revision (then nothing
    /// changes). No-op when it already is the config. The replaced entry's sequence blocks
    /// are given back. Returns the entry live for `key` afterwards.
    pub fn apply(
        &self,
        key: &str,
        config: PrefixConfig,
        revision: Revision,
    ) -> Result<Option<Arc<Entry>>, PrefixError> {
        self.registry.apply(key, config, revision)
    }

    /// Forgets `key` locally (its counters stay in the store), deleted at `revision` —
    /// unless the registry holds a later version of it.
    pub fn forget(&self, key: &str, revision: Revision) {
        self.registry.forget(key, revision);
    }

    /// Makes the registry equal to `all` (a full read of the store) in one swap, except for
    /// keys seen at a later revision than the read's: unchanged entries are kept, changed
    /// ones rebuilt, missing ones dropped.
    pub fn sync(&self, all: Snapshot) {
        self.registry.sync(all);
    }

    /// Loads every stored config into memory.
    pub async fn load(&self) -> Result<usize, AdminError> {
        let all = self.store.snapshot_prefixes().await?;
        let n = all.configs.len();
        self.sync(all);
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
