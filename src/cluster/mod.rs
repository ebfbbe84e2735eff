//! Cluster membership as `/cluster/nodes` shows it. Standalone, the node lists itself; in
//! cluster mode ([`etcd`]) the registry of live nodes lives in etcd, next to the worker-ID
//! leases.

use std::sync::Arc;

use async_trait::async_trait;

use crate::node::Node;
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

/// Standalone: this node alone.
pub struct Standalone {
    pub node_id: String,
    pub addr: String,
    pub node: Arc<Node>,
}

#[async_trait]
impl ClusterView for Standalone {
    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let grant = self.node.grant();
        Ok(vec![NodeInfo {
            node_id: self.node_id.clone(),
            dc_id: grant.as_ref().map_or(0, |g| g.dc),
            worker_id: grant.map(|g| g.worker),
            addr: self.addr.clone(),
            heartbeat_ms: self.node.clock().now_ms(),
            clock_offset_ms: 0.0,
        }])
    }
}
