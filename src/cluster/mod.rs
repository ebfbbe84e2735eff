//! Cluster mode on etcd, and membership as `/cluster/nodes` shows it. Standalone, the node
//! lists itself ([`Standalone`]); in cluster mode:
//!
//! - [`lease`]: the worker-ID lease and claim, the ID's high timestamp, the keep-alive and
//!   the fence ([`EtcdCluster`], [`lease::run_lease`]);
//! - [`registry`]: the node registry, each node's entry at the worker key it holds;
//! - [`watch`]: prefix configs shared by watch, into a [`watch::ConfigSink`];
//! - [`skew`] (the pure estimate) and [`skew_monitor`] (the periodic peer check);
//! - [`mirror`] and [`tiers`]: with two etcd tiers (SPEC 5), the local tier's mirror of
//!   the global prefix configs, the global tier's reachability and node registry;
//! - [`peer`]: a one-shot GET of a peer's JSON route (its `/ready` on the status page).
//!
//! Every period, deadline and retry wait comes from `crate::timing`.
//!
//! Every etcd key comes from `store::etcd::Keys`.

pub mod lease;
mod lease_loop;
pub mod mirror;
pub mod peer;
pub mod registry;
pub mod skew;
pub mod skew_monitor;
pub mod tiers;
pub mod watch;

pub use lease::{ClusterSettings, EtcdCluster};

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::clock::Clock;
use crate::store::StoreError;

/// A node as `/cluster/nodes` shows it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NodeInfo {
    pub node_id: String,
    pub dc_id: u64,
    pub worker_id: Option<u64>,
    pub addr: String,
    pub heartbeat_ms: u64,
    pub clock_offset_ms: f64,
}

#[async_trait]
pub trait ClusterView: Send + Sync + 'static {
    /// Every live node.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError>;
    /// This node's `node_id`, as [`ClusterView::nodes`] lists it.
    fn node_id(&self) -> &str;
    /// True in cluster mode (etcd), false standalone.
    fn clustered(&self) -> bool;
}

/// Standalone: this node alone, with its configured worker ID.
pub struct Standalone {
    pub node_id: String,
    pub addr: String,
    pub dc: u64,
    pub worker: u64,
    pub clock: Arc<dyn Clock>,
}

#[async_trait]
impl ClusterView for Standalone {
    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        Ok(vec![NodeInfo {
            node_id: self.node_id.clone(),
            dc_id: self.dc,
            worker_id: Some(self.worker),
            addr: self.addr.clone(),
            heartbeat_ms: self.clock.now_ms(),
            clock_offset_ms: 0.0,
        }])
    }

    fn node_id(&self) -> &str {
        &self.node_id
    }

    fn clustered(&self) -> bool {
        false
    }
}

/// Sleeps `wait`; `true` when `stop` changed (or its sender is gone) meanwhile.
pub(crate) async fn sleep_or_stop(
    wait: Duration,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(wait) => false,
        _ = stop.changed() => true,
    }
}
