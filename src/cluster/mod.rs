//! Cluster membership as `/cluster/nodes` shows it. Standalone, the node lists itself; in
//! cluster mode ([`etcd`]) the registry of live nodes lives in etcd, next to the worker-ID
//! leases.

pub mod etcd;
pub mod skew;

use std::sync::Arc;

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
}
