//! Two etcd tiers (SPEC 5): what a node does with the global tier besides the store and
//! the config watch. [`watch_global`] tells the node whether the global tier answers (for
//! `/ready`'s reason); [`register_globally`] keeps this node's leased entry in the global
//! tier's `nodes/`, so that `/cluster/nodes` lists every datacenter. That lease is not the
//! worker ID's: losing it (a WAN partition) fences nothing, the entry is written again
//! under a new lease once the tier answers.

use std::sync::Arc;

use etcd_client::PutOptions;
use tokio::sync::watch;

use super::registry::NodeRegistry;
use super::sleep_or_stop;
use crate::node::Node;
use crate::store::StoreError;
use crate::store::etcd::Members;
use crate::timing;
use crate::worker::WorkerClaim;

/// True while some member of `members` answers, as its health probes last found.
pub fn reachable(members: &Members) -> bool {
    (0..members.len()).any(|i| members.answers(i))
}

/// Marks the node while no member of the global tier answers, until `stop` changes.
pub async fn watch_global(global: Members, node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    loop {
        let cut_off = !reachable(&global);
        if node.set_global_unreachable(cut_off) {
            if cut_off {
                tracing::warn!(
                    "the global etcd tier does not answer: snowflake numbers go on; sequence prefixes serve the blocks they hold, admin writes fail"
                );
            } else {
                tracing::info!("the global etcd tier answers again");
            }
        }
        if sleep_or_stop(timing::TIER_CHECK_EVERY, &mut stop).await {
            return;
        }
    }
}

/// Keeps this node's entry in the global tier's registry under a lease of `ttl_s`,
/// refreshed every [`timing::keep_alive_every`], until `stop`; revoked at the end.
pub async fn register_globally(
    global: Members,
    registry: Arc<NodeRegistry>,
    ttl_s: u64,
    claim: watch::Receiver<Option<WorkerClaim>>,
    mut stop: watch::Receiver<bool>,
) {
    let key = registry.keys().dc_node(registry.dc(), registry.node_id());
    let mut lease: Option<i64> = None;
    loop {
        let worker = claim.borrow().as_ref().map(|c| c.worker);
        let entry = registry.entry_of(worker);
        match refresh(&global, &key, &entry, ttl_s, lease).await {
            Ok(l) => lease = Some(l),
            Err(e) => {
                tracing::debug!(error = %e, "cannot refresh this node's entry in the global tier");
                lease = None;
            }
        }
        let wait = match lease {
            Some(_) => timing::keep_alive_every(ttl_s),
            None => timing::TIER_CHECK_EVERY * 5,
        };
        if sleep_or_stop(wait, &mut stop).await {
            break;
        }
    }
    if let Some(lease) = lease {
        let limit = timing::PROBE_TIMEOUT;
        let _ = global
            .call(limit, |mut c, _| async move {
                c.lease_revoke(lease).await?;
                Ok(())
            })
            .await;
    }
}

/// Renews `lease` (a new one when there is none or it is gone) and puts `entry` at `key`
/// with it; returns the lease.
async fn refresh(
    global: &Members,
    key: &str,
    entry: &str,
    ttl_s: u64,
    lease: Option<i64>,
) -> Result<i64, StoreError> {
    let limit = timing::renewal_deadline(ttl_s);
    let alive = match lease {
        Some(l) => super::lease_loop::renew(global, l, limit)
            .await?
            .then_some(l),
        None => None,
    };
    let lease = match alive {
        Some(l) => l,
        None => {
            let ttl = ttl_s as i64;
            global
                .call(limit, |mut c, _| async move {
                    Ok(c.lease_grant(ttl, None).await?.id())
                })
                .await?
        }
    };
    global
        .call(limit, |mut c, _| async move {
            let opts = PutOptions::new().with_lease(lease);
            c.put(key, entry, Some(opts)).await?;
            Ok(())
        })
        .await?;
    Ok(lease)
}
