//! The node registry in etcd: each node's entry is the value of the worker key it holds
//! (`workers/{dc}/{worker}`, leased, so a dead node's entry goes with its lease). The lease
//! loop writes the entry when it claims the key and refreshes it at every heartbeat; the
//! registry read back is what `/cluster/nodes` shows and whom the skew monitor probes.
//!
//! With two etcd tiers, the local tier's registry has only this datacenter's nodes; each
//! node also keeps a leased entry in the global tier (`nodes/{dc}/{node_id}`,
//! `super::tiers::register_globally`), and the list adds the other datacenters' nodes
//! from there (this datacenter's own come from the local tier, which fences; losing the
//! global entry fences nothing). Cut off from the global tier, the list is this
//! datacenter's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::GetOptions;

use super::{ClusterView, NodeInfo};
use crate::clock::Clock;
use crate::store::StoreError;
use crate::store::etcd::{Keys, Members};

/// Who this node is, as its registry entry says.
#[derive(Clone, Debug)]
pub struct Identity {
    pub node_id: String,
    pub dc: u64,
    /// The address peers and `/cluster/nodes` use.
    pub addr: String,
}

/// This node's entry and the registry as etcd holds it.
pub struct NodeRegistry {
    members: Members,
    keys: Keys,
    timeout: Duration,
    me: Identity,
    clock: Arc<dyn Clock>,
    /// This node's clock offset from the peers' median (f64 bits), as last measured.
    offset_ms: AtomicU64,
    /// The global tier, when it is another etcd than `members`.
    global: OnceLock<Members>,
}

impl NodeRegistry {
    pub fn new(
        members: Members,
        keys: Keys,
        me: Identity,
        clock: Arc<dyn Clock>,
        timeout: Duration,
    ) -> NodeRegistry {
        NodeRegistry {
            members,
            keys,
            timeout,
            me,
            clock,
            offset_ms: AtomicU64::new(0f64.to_bits()),
            global: OnceLock::new(),
        }
    }

    /// Lists the other datacenters' nodes from the global tier's `nodes/` too.
    pub fn set_global(&self, global: Members) {
        let _ = self.global.set(global);
    }

    pub fn dc(&self) -> u64 {
        self.me.dc
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Every node of `members`' entries under `prefix`, as stored.
    async fn listed(&self, members: &Members, prefix: &str) -> Result<Vec<NodeInfo>, StoreError> {
        let resp = members
            .call(self.timeout, |mut c, _| async move {
                Ok(c.get(prefix, Some(GetOptions::new().with_prefix())).await?)
            })
            .await?;
        Ok(resp
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect())
    }

    pub fn node_id(&self) -> &str {
        &self.me.node_id
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Records this node's clock offset; the next heartbeat publishes it.
    pub fn set_offset(&self, offset_ms: f64) {
        self.offset_ms.store(offset_ms.to_bits(), Ordering::Relaxed);
    }

    fn offset(&self) -> f64 {
        f64::from_bits(self.offset_ms.load(Ordering::Relaxed))
    }

    /// This node's entry while it holds `worker`, as the JSON stored at its worker key.
    pub fn entry(&self, worker: u64) -> String {
        self.entry_of(Some(worker))
    }

    /// This node's entry, holding `worker` (or none yet).
    pub fn entry_of(&self, worker: Option<u64>) -> String {
        let info = NodeInfo {
            node_id: self.me.node_id.clone(),
            dc_id: self.me.dc,
            worker_id: worker,
            addr: self.me.addr.clone(),
            heartbeat_ms: self.clock.now_ms(),
            clock_offset_ms: self.offset(),
        };
        serde_json::to_string(&info).unwrap_or_default()
    }
}

#[async_trait]
impl ClusterView for NodeRegistry {
    /// Every node holding a worker ID, of every datacenter, by datacenter and worker ID
    /// (with two tiers: the other datacenters' nodes as the global tier lists them).
    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let mut nodes = self.listed(&self.members, &self.keys.workers()).await?;
        if let Some(global) = self.global.get().filter(|g| super::tiers::reachable(g)) {
            match self.listed(global, &self.keys.dc_nodes()).await {
                Ok(all) => nodes.extend(all.into_iter().filter(|n| n.dc_id != self.me.dc)),
                Err(e) => {
                    tracing::debug!(error = %e, "global tier unreachable: listing this datacenter's nodes")
                }
            }
        }
        nodes.sort_by_key(|n: &NodeInfo| (n.dc_id, n.worker_id));
        Ok(nodes)
    }

    fn node_id(&self) -> &str {
        &self.me.node_id
    }

    fn clustered(&self) -> bool {
        true
    }
}
