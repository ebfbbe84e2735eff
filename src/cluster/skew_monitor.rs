//! The periodic peer clock check (SPEC section 4): every [`timing::SKEW_CHECK_EVERY`] the
//! node probes each peer in the registry ([`skew::probe`]), takes its own offset from the
//! peers' median ([`skew::node_offset`]), publishes it (registry entry, metric) and marks
//! itself skewed beyond `max_skew_ms` (ahead: it then runs on the peers' time). The lease
//! loop waits for the first check before it claims a worker ID. The estimate itself is
//! pure and lives in [`skew`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::registry::NodeRegistry;
use super::{ClusterView, skew};
use crate::metrics::Metrics;
use crate::node::Node;
use crate::timing;

/// Round trips per peer and check; the one with the smallest round trip counts.
const SAMPLES: usize = 3;

/// Measures this node's clock against its peers every `every`, publishes the offset, and
/// marks the node skewed beyond `max_skew_ms`. Runs until `stop` changes.
pub async fn watch_skew(
    registry: Arc<NodeRegistry>,
    node: Arc<Node>,
    metrics: Metrics,
    max_skew_ms: u64,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        // Fewer than two peers answered: no judgement, keep what was measured last. That
        // is the first look when fewer than two peers are registered (nobody to judge
        // by); when they are but did not answer (a probe timed out), the lease loop goes
        // on waiting for the next try, up to `FIRST_SKEW_CHECK_WAIT`, rather than claim
        // a worker ID on a clock nobody checked.
        let (offset, listed) = measure(&registry).await;
        let Some(offset) = offset else {
            if listed < 2 {
                node.mark_skew_checked();
            }
            continue;
        };
        registry.set_offset(offset);
        metrics.clock_offset.set(offset / 1000.0);
        node.set_clock_skew(offset.abs() > max_skew_ms as f64, offset);
        node.mark_skew_checked();
    }
}

/// This node's offset from the median of its peers' clocks, probed in parallel: the peers
/// of its own datacenter first (a WAN round trip blurs the estimate), all of them when
/// fewer than two of its own answer; `None` when the registry cannot be read or fewer than
/// two peers answer. Also how many peers the registry lists (`usize::MAX` when it cannot
/// be read: that is no sign of being alone).
async fn measure(registry: &NodeRegistry) -> (Option<f64>, usize) {
    let Ok(nodes) = registry.nodes().await else {
        return (None, usize::MAX);
    };
    let peers: Vec<_> = nodes
        .into_iter()
        .filter(|n| n.node_id != registry.node_id())
        .collect();
    let listed = peers.len();
    let mut probes = tokio::task::JoinSet::new();
    for peer in peers {
        let clock = registry.clock().clone();
        let same_dc = peer.dc_id == registry.dc();
        probes.spawn(async move {
            let sample = skew::probe(
                &peer.addr,
                clock.as_ref(),
                SAMPLES,
                timing::SKEW_PROBE_TIMEOUT,
            )
            .await;
            (same_dc, sample)
        });
    }
    let (mut own, mut all) = (Vec::new(), Vec::new());
    while let Some(r) = probes.join_next().await {
        if let Ok((same_dc, Some(sample))) = r {
            if same_dc {
                own.push(sample.offset_ms);
            }
            all.push(sample.offset_ms);
        }
    }
    (
        skew::node_offset(&own).or_else(|| skew::node_offset(&all)),
        listed,
    )
}
