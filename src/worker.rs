//! Where a node's worker ID comes from, and how its timestamps stay reserved ahead of use.
//!
//! A [`WorkerSource`] hands out a worker ID with the highest timestamp it may have used
//! before (standalone: the configured ID and the embedded store; cluster: an etcd lease,
//! see `cluster`). [`acquire`] installs it in the [`Node`] with a floor above everything
//! that ID or the previous grant used, after persisting a reservation window ahead of the
//! clock; [`keep_reserved`] renews that reservation before the clock reaches it, so a
//! restart (even with the clock set back) or another node taking the ID over starts above
//! every timestamp ever issued with it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::node::Node;
use crate::store::{Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("all {0} worker IDs of datacenter {1} are taken")]
    AllTaken(u64, u64),
    #[error("worker ID {0} is no longer held by this node")]
    NotHeld(u64),
}

/// A worker ID as handed out by a [`WorkerSource`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerClaim {
    pub dc: u64,
    pub worker: u64,
    /// The highest timestamp (Unix ms) that may have been used with this ID.
    pub hwm_ms: Option<u64>,
    /// The backend's handle on the claim (the etcd lease ID; 0 standalone).
    pub lease: i64,
}

#[async_trait]
pub trait WorkerSource: Send + Sync + 'static {
    /// Takes a worker ID.
    async fn acquire(&self) -> Result<WorkerClaim, WorkerError>;
    /// Persists `unix_ms` as the ID's reserved high timestamp, while the claim still holds.
    async fn reserve(&self, claim: &WorkerClaim, unix_ms: u64) -> Result<(), WorkerError>;
    /// Persists the final high timestamp and gives the ID up (graceful stop).
    async fn release(&self, claim: &WorkerClaim, unix_ms: u64) -> Result<(), WorkerError>;
}

/// Standalone: a fixed worker ID whose high timestamp lives in the store.
pub struct StaticWorker {
    store: Arc<dyn Store>,
    dc: u64,
    worker: u64,
}

impl StaticWorker {
    pub fn new(store: Arc<dyn Store>, dc: u64, worker: u64) -> StaticWorker {
        StaticWorker { store, dc, worker }
    }
}

#[async_trait]
impl WorkerSource for StaticWorker {
    async fn acquire(&self) -> Result<WorkerClaim, WorkerError> {
        let hwm_ms = self.store.load_hwm(self.dc, self.worker).await?;
        Ok(WorkerClaim {
            dc: self.dc,
            worker: self.worker,
            hwm_ms,
            lease: 0,
        })
    }

    async fn reserve(&self, claim: &WorkerClaim, unix_ms: u64) -> Result<(), WorkerError> {
        Ok(self
            .store
            .store_hwm(claim.dc, claim.worker, unix_ms)
            .await?)
    }

    async fn release(&self, claim: &WorkerClaim, unix_ms: u64) -> Result<(), WorkerError> {
        Ok(self
            .store
            .store_hwm(claim.dc, claim.worker, unix_ms)
            .await?)
    }
}

/// Takes a worker ID from `source` and installs it in `node`: the floor is above both the
/// ID's persisted high timestamp and the previous grant's reservation, and a window ahead
/// of the clock is persisted before any number uses it.
pub async fn acquire(node: &Node, source: &dyn WorkerSource) -> Result<WorkerClaim, WorkerError> {
    let claim = source.acquire().await?;
    let layout = node.layout();
    let persisted = claim.hwm_ms.map_or(0, |ms| layout.units_at(ms));
    let previous = node.grant().map_or(0, |g| g.ceiling);
    let floor = persisted.max(previous);
    let ceiling = node.now_units().max(floor) + node.window_units();
    source.reserve(&claim, layout.unix_ms_at(ceiling)).await?;
    node.install_grant(claim.dc, claim.worker, floor, ceiling);
    tracing::info!(
        dc = claim.dc,
        worker = claim.worker,
        floor_unix_ms = layout.unix_ms_at(floor),
        "worker ID acquired"
    );
    Ok(claim)
}

/// How long before the reservation runs out it is renewed: one second, or half the window.
fn renew_margin_units(node: &Node) -> u64 {
    let second = node.layout().units_for_ms(1000);
    node.window_units()
        .saturating_sub(second.min(node.window_units() / 2))
}

/// Keeps the current grant's timestamps reserved a window ahead of the node's time, until
/// `stop` turns true. Renews early when a request hits the ceiling (a logical clock ahead of
/// the wall clock uses timestamps faster than time passes).
pub async fn keep_reserved(
    node: Arc<Node>,
    source: Arc<dyn WorkerSource>,
    claim: watch::Receiver<Option<WorkerClaim>>,
    mut stop: watch::Receiver<bool>,
) {
    let unit_ms = node.layout().time_unit_ms();
    let tick = Duration::from_millis((node.window_units() * unit_ms / 8).clamp(10, 250));
    let mut failures = 0u32;
    loop {
        let mut hit = false;
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = node.renew_wanted() => hit = true,
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
        let Some(current) = claim.borrow().clone() else {
            continue;
        };
        let Some(grant) = node.grant() else { continue };
        if node.lease_lost() {
            continue;
        }
        let now = node.now_units();
        let ceiling = grant.ceiling;
        if !hit && ceiling.saturating_sub(now) > renew_margin_units(&node) {
            continue;
        }
        let base = if hit { ceiling.max(now) } else { now };
        let target = base + node.window_units();
        match source
            .reserve(&current, node.layout().unix_ms_at(target))
            .await
        {
            Ok(()) => {
                node.extend_ceiling(target);
                if failures > 0 {
                    tracing::info!(after = failures, "timestamp reservation renewed again");
                }
                failures = 0;
            }
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(error = %e, failures, "could not renew the timestamp reservation");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::id::{LastIssued, Layout, LayoutSettings, Policy};
    use crate::metrics::Metrics;
    use crate::node::{Blocked, NodeSettings};
    use crate::store::embedded::EmbeddedStore;

    const T0: u64 = 1_763_700_000_000;

    fn node(clock: Arc<ManualClock>) -> Arc<Node> {
        let layout = Layout::new(LayoutSettings::default(), T0).unwrap();
        let settings = NodeSettings {
            max_backward_wait_ms: 5,
            on_clock_backward: Policy::Degrade,
            on_lease_loss: Policy::Degrade,
            reserve_window_ms: 2000,
        };
        Arc::new(Node::new(layout, clock, settings, Metrics::new().unwrap()))
    }

    #[tokio::test]
    async fn acquire_persists_a_window_and_restarts_start_above_it() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("db")).unwrap());
        let clock = Arc::new(ManualClock::new(T0));
        let source = StaticWorker::new(store.clone(), 1, 5);

        let first = node(clock.clone());
        let claim = acquire(&first, &source).await.unwrap();
        assert_eq!((claim.dc, claim.worker, claim.hwm_ms), (1, 5, None));
        assert_eq!(store.load_hwm(1, 5).await.unwrap(), Some(T0 + 2000));
        let p = LastIssued::new();
        let issued = first.try_issue(&p, 1).unwrap();
        let last_id = first
            .layout()
            .compose_packed(issued.batch.first, false, issued.node_bits);

        // A restart with the clock set back an hour: its floor is the reservation.
        clock.set(T0 - 3_600_000);
        let second = node(clock.clone());
        acquire(&second, &source).await.unwrap();
        let grant = second.grant().unwrap();
        assert_eq!(grant.floor, second.layout().units_at(T0 + 2000));
        second.raise_time_to(grant.floor);
        let p2 = LastIssued::new();
        let again = second.try_issue(&p2, 1).unwrap();
        let id = second
            .layout()
            .compose_packed(again.batch.first, true, again.node_bits);
        assert!(id > last_id);
    }

    #[tokio::test]
    async fn the_reservation_is_renewed_ahead_of_the_clock_and_on_demand() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("db")).unwrap());
        let clock = Arc::new(ManualClock::new(T0));
        let source: Arc<dyn WorkerSource> = Arc::new(StaticWorker::new(store.clone(), 0, 0));
        let n = node(clock.clone());
        let claim = acquire(&n, source.as_ref()).await.unwrap();
        let (_claim_tx, claim_rx) = watch::channel(Some(claim));
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(keep_reserved(n.clone(), source, claim_rx, stop_rx));

        clock.advance(1500);
        let want = n.layout().units_at(T0 + 1500 + 2000);
        for _ in 0..200 {
            if n.grant().unwrap().ceiling >= want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(n.grant().unwrap().ceiling >= want);
        assert!(store.load_hwm(0, 0).await.unwrap().unwrap() >= T0 + 3500);

        // A logical clock (the wall clock stepped back) runs into the ceiling: it is
        // extended on demand.
        clock.step_back(10_000);
        let p = LastIssued::new();
        let mut issued = 0u64;
        let mut ceilings = 0;
        while issued < 3000 * 4096 && ceilings < 500 {
            match n.try_issue(&p, 1 << 20) {
                Ok(i) => issued += i.batch.count,
                Err(Blocked::Ceiling) => {
                    ceilings += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(Blocked::Wait(_)) => clock.advance(1),
                Err(e) => panic!("{e:?}"),
            }
        }
        assert!(issued >= 3000 * 4096, "{issued} after {ceilings} ceilings");
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }
}
