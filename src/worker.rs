//! Where a node's worker ID comes from, and how its timestamps stay reserved ahead of use.
//!
//! A [`WorkerSource`] hands out a worker ID with the highest timestamp it may have used
//! before, and keeps that high-water mark (standalone: [`StaticWorker`], the configured ID
//! and its mark in the embedded store; cluster: `cluster::EtcdCluster`, an etcd lease and a
//! mark written under it). [`acquire`] installs the ID in the [`Node`] with a floor above
//! everything that ID or the previous grant used, after persisting a reservation window
//! ahead of the clock; [`handle_start_gap`] holds the node back while its clock is behind
//! that floor; [`keep_reserved`] renews the reservation before the clock reaches it, so a
//! restart (even with the clock set back) or another node taking the ID over starts above
//! every timestamp ever issued with it. The same worker-source cases run against both
//! sources in `tests/store_conformance.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::node::Node;
use crate::store::StoreError;
use crate::store::embedded::EmbeddedStore;
use crate::timing;

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
    /// When the node must count the claim as lost unless it was renewed by then (cluster
    /// mode: the lease's grant, taken before the grant request was sent, plus the fence
    /// time); `None`: never (standalone).
    pub fence_at: Option<Instant>,
    /// The id of the node's grant installed for this claim ([`acquire`]; 0 before).
    pub grant: u64,
}

#[async_trait]
pub trait WorkerSource: Send + Sync + 'static {
    /// Takes a worker ID, with the highest timestamp it may have been used with. `now_ms`
    /// is the node's time: a source with a choice skips an ID whose mark is implausibly far
    /// ahead of it ([`timing::IMPLAUSIBLE_MARK_AHEAD`]).
    async fn acquire(&self, now_ms: u64) -> Result<WorkerClaim, WorkerError>;
    /// Raises the ID's persisted high timestamp to `unix_ms`, while the claim still holds.
    /// Never lowers it: a late call below an earlier one leaves the mark where it was.
    async fn reserve(&self, claim: &WorkerClaim, unix_ms: u64) -> Result<(), WorkerError>;
    /// Persists `unix_ms`, the highest timestamp really used (it may be below the
    /// reservation), and gives the ID up (graceful stop).
    async fn release(&self, claim: &WorkerClaim, unix_ms: u64) -> Result<(), WorkerError>;
}

/// Standalone: a fixed worker ID whose high timestamp lives in the embedded store (its own
/// table, outside the `Store` trait).
pub struct StaticWorker {
    store: EmbeddedStore,
    dc: u64,
    worker: u64,
}

impl StaticWorker {
    pub fn new(store: EmbeddedStore, dc: u64, worker: u64) -> StaticWorker {
        StaticWorker { store, dc, worker }
    }
}

#[async_trait]
impl WorkerSource for StaticWorker {
    /// The configured ID, whatever its mark: there is no other to take.
    async fn acquire(&self, _now_ms: u64) -> Result<WorkerClaim, WorkerError> {
        let hwm_ms = self.store.load_hwm(self.dc, self.worker).await?;
        Ok(WorkerClaim {
            dc: self.dc,
            worker: self.worker,
            hwm_ms,
            lease: 0,
            fence_at: None,
            grant: 0,
        })
    }

    async fn reserve(&self, claim: &WorkerClaim, unix_ms: u64) -> Result<(), WorkerError> {
        Ok(self
            .store
            .raise_hwm(claim.dc, claim.worker, unix_ms)
            .await?)
    }

    async fn release(&self, claim: &WorkerClaim, unix_ms: u64) -> Result<(), WorkerError> {
        Ok(self.store.set_hwm(claim.dc, claim.worker, unix_ms).await?)
    }
}

/// Takes a worker ID from `source` and installs it in `node`: the floor is above both the
/// ID's persisted high timestamp and the previous grant's reservation, and a window ahead
/// of the clock is persisted before any number uses it. A claim that took so long that its
/// fence time has passed is installed fenced.
pub async fn acquire(node: &Node, source: &dyn WorkerSource) -> Result<WorkerClaim, WorkerError> {
    let layout = node.layout();
    let mut claim = source.acquire(node.latest_time_ms()).await?;
    let persisted = claim.hwm_ms.map_or(0, |ms| layout.units_at(ms));
    let floor = match node.grant() {
        // The worker ID this node held, taken again after its lease was lost (an etcd
        // leader back from a pause revokes leases it thinks expired), with the mark no
        // higher than this node's own reservation. Nobody else has used the ID since:
        // another owner's floor would have been that reservation, and it reserves above
        // its floor before issuing (and its release keeps what it issued), so the mark
        // would now be higher. Timestamps this node used are above its per-prefix last
        // issued numbers anyway, so it goes on from the old floor without waiting out
        // its own reservation (and without a NOT_READY pause).
        Some(g) if g.dc == claim.dc && g.worker == claim.worker && persisted <= g.ceiling => {
            g.floor
        }
        Some(g) => persisted.max(g.ceiling),
        None => persisted,
    };
    // The mark is never lowered: what it holds is reserved as well.
    let ceiling = (node.now_units().max(floor) + node.window_units()).max(persisted);
    source.reserve(&claim, layout.unix_ms_at(ceiling)).await?;
    claim.grant = if claim.fence_at.is_some_and(|t| Instant::now() >= t) {
        tracing::warn!(
            worker = claim.worker,
            "claiming the worker ID took longer than the fence allows: fenced until a renewal succeeds"
        );
        node.install_fenced_grant(claim.dc, claim.worker, floor, ceiling)
    } else {
        node.install_grant(claim.dc, claim.worker, floor, ceiling)
    };
    tracing::info!(
        dc = claim.dc,
        worker = claim.worker,
        floor_unix_ms = layout.unix_ms_at(floor),
        "worker ID acquired"
    );
    Ok(claim)
}

/// If the clock is behind the worker ID's floor: wait (not ready) when the gap is within the
/// reservation `window`, otherwise let the clock policy decide from the floor on.
pub fn handle_start_gap(node: &Arc<Node>, window: Duration) {
    let Some(grant) = node.grant() else { return };
    let layout = *node.layout();
    let wall = node.wall_units();
    if grant.floor <= wall {
        return;
    }
    let gap_ms = (grant.floor - wall) * layout.time_unit_ms();
    if gap_ms > timing::IMPLAUSIBLE_MARK_AHEAD.as_millis() as u64 {
        // Standalone has no other worker ID to take (a cluster node skips this one).
        tracing::warn!(
            worker = grant.worker,
            gap_ms,
            "this worker ID's reserved timestamp is implausibly far ahead of the clock (a clock that ran ahead wrote it); configure another worker ID to issue normal numbers"
        );
    }
    if gap_ms <= window.as_millis() as u64 {
        tracing::info!(
            gap_ms,
            "clock is behind this worker ID's reserved timestamp; waiting"
        );
        node.set_starting(true);
        let node = node.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(gap_ms + layout.time_unit_ms())).await;
            node.set_starting(false);
            tracing::info!("clock passed the reserved timestamp; ready");
        });
    } else {
        tracing::warn!(
            gap_ms,
            "clock is behind this worker ID's reserved timestamp by more than the window"
        );
        node.raise_time_to(grant.floor);
    }
}

/// The reservation is renewed when less than this is left of it: the window minus
/// [`timing::RESERVE_RENEW_AFTER`] (or minus half the window).
fn renew_margin_units(node: &Node) -> u64 {
    let after = node
        .layout()
        .units_for_ms(timing::RESERVE_RENEW_AFTER.as_millis() as u64);
    node.window_units()
        .saturating_sub(after.min(node.window_units() / 2))
}

/// Keeps the current grant's timestamps reserved a window ahead of the node's time, until
/// `stop` turns true. Renews early when a request hits the ceiling (a logical clock ahead of
/// the wall clock uses timestamps faster than time passes). A reservation extends only the
/// grant it was made for: when the claim changed meanwhile, it counts for nothing.
pub async fn keep_reserved(
    node: Arc<Node>,
    source: Arc<dyn WorkerSource>,
    claim: watch::Receiver<Option<WorkerClaim>>,
    mut stop: watch::Receiver<bool>,
) {
    let window_ms = node.window_units() * node.layout().time_unit_ms();
    let tick = timing::reserve_tick(Duration::from_millis(window_ms));
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
        let Some(grant) = node.grant().filter(|g| g.id == current.grant) else {
            continue;
        };
        if node.lease_lost() {
            continue;
        }
        let now = node.now_units();
        let ceiling = grant.ceiling;
        if !hit && ceiling.saturating_sub(now) > renew_margin_units(&node) {
            continue;
        }
        let base = if hit { ceiling.max(now) } else { now };
        let target = (base + node.window_units()).min(node.reservation_limit());
        if target <= ceiling {
            continue;
        }
        match source
            .reserve(&current, node.layout().unix_ms_at(target))
            .await
        {
            Ok(()) => {
                node.extend_ceiling(grant.id, target);
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
    use std::sync::Mutex;

    use super::*;
    use crate::clock::ManualClock;
    use crate::id::{LastIssued, Layout, LayoutSettings, Policy};
    use crate::metrics::Metrics;
    use crate::node::{Blocked, NodeSettings};

    const T0: u64 = 1_763_700_000_000;
    const WINDOW: Duration = timing::STANDALONE_WINDOW;

    fn node(clock: Arc<ManualClock>) -> Arc<Node> {
        let layout = Layout::new(LayoutSettings::default(), T0).unwrap();
        let settings = NodeSettings {
            max_backward_wait_ms: 5,
            on_clock_backward: Policy::Degrade,
            on_lease_loss: Policy::Degrade,
            reserve_window_ms: WINDOW.as_millis() as u64,
        };
        Arc::new(Node::new(layout, clock, settings, Metrics::new().unwrap()))
    }

    /// A worker ID whose mark lives in memory: for the timing of [`keep_reserved`] under a
    /// paused tokio clock (the real sources run in `tests/store_conformance.rs`).
    #[derive(Default)]
    struct MemoryWorker {
        mark: Mutex<Option<u64>>,
    }

    impl MemoryWorker {
        fn mark(&self) -> Option<u64> {
            *self.mark.lock().unwrap()
        }
    }

    #[async_trait]
    impl WorkerSource for MemoryWorker {
        async fn acquire(&self, _: u64) -> Result<WorkerClaim, WorkerError> {
            Ok(WorkerClaim {
                dc: 0,
                worker: 0,
                hwm_ms: self.mark(),
                lease: 0,
                fence_at: None,
                grant: 0,
            })
        }
        async fn reserve(&self, _: &WorkerClaim, unix_ms: u64) -> Result<(), WorkerError> {
            let mut mark = self.mark.lock().unwrap();
            *mark = Some(mark.map_or(unix_ms, |m| m.max(unix_ms)));
            Ok(())
        }
        async fn release(&self, _: &WorkerClaim, unix_ms: u64) -> Result<(), WorkerError> {
            *self.mark.lock().unwrap() = Some(unix_ms);
            Ok(())
        }
    }

    #[tokio::test]
    async fn acquire_persists_a_window_and_restarts_start_above_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("db")).unwrap();
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
    async fn the_same_worker_id_again_goes_on_unless_another_owner_reserved_it() {
        let clock = Arc::new(ManualClock::new(T0));
        let memory = MemoryWorker::default();
        let n = node(clock.clone());
        acquire(&n, &memory).await.unwrap();
        let first = n.grant().unwrap();
        let p = LastIssued::new();
        let before = n.try_issue(&p, 1).unwrap().batch.first;

        // The lease is lost and the ID taken again with the mark as this node left it: the
        // old floor stays, so the node does not wait out its own reservation.
        clock.advance(10);
        acquire(&n, &memory).await.unwrap();
        let again = n.grant().unwrap();
        assert_eq!(again.floor, first.floor);
        assert!(again.ceiling >= first.ceiling);
        handle_start_gap(&n, WINDOW);
        assert_eq!(n.readiness().status, "ok");
        assert!(n.try_issue(&p, 1).unwrap().batch.first > before);

        // Another owner reserved past this node's ceiling meanwhile: its mark is the floor.
        let theirs = T0 + 60_000;
        *memory.mark.lock().unwrap() = Some(theirs);
        acquire(&n, &memory).await.unwrap();
        assert_eq!(n.grant().unwrap().floor, n.layout().units_at(theirs));
    }

    #[tokio::test(start_paused = true)]
    async fn the_reservation_is_renewed_ahead_of_the_clock_and_on_demand() {
        let clock = Arc::new(ManualClock::new(T0));
        let memory = Arc::new(MemoryWorker::default());
        let source: Arc<dyn WorkerSource> = memory.clone();
        let n = node(clock.clone());
        let claim = acquire(&n, source.as_ref()).await.unwrap();
        let (_claim_tx, claim_rx) = watch::channel(Some(claim));
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(keep_reserved(n.clone(), source, claim_rx, stop_rx));

        // Nothing is renewed while the reservation is fresh.
        tokio::time::sleep(timing::reserve_tick(WINDOW) * 4).await;
        assert_eq!(memory.mark(), Some(T0 + 2000));

        // Once the clock has used a second of it, the next tick renews it.
        clock.advance(1500);
        tokio::time::sleep(timing::reserve_tick(WINDOW) * 2).await;
        let want = n.layout().units_at(T0 + 1500 + 2000);
        assert!(n.grant().unwrap().ceiling >= want);
        assert!(memory.mark().unwrap() >= T0 + 3500);

        // A logical clock (the wall clock stepped back) runs into the ceiling: it is
        // extended on demand, without waiting for a tick.
        clock.step_back(10_000);
        let p = LastIssued::new();
        let mut issued = 0u64;
        let mut ceilings = 0;
        while issued < 3000 * 4096 && ceilings < 500 {
            match n.try_issue(&p, 1 << 20) {
                Ok(i) => issued += i.batch.count,
                Err(Blocked::Ceiling) => {
                    ceilings += 1;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(Blocked::Wait(_)) => clock.advance(1),
                Err(e) => panic!("{e:?}"),
            }
        }
        assert!(issued >= 3000 * 4096, "{issued} after {ceilings} ceilings");
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }

    /// A [`MemoryWorker`] whose reservations, once `hold` is set, wait for the test.
    #[derive(Default)]
    struct HeldWorker {
        memory: MemoryWorker,
        hold: std::sync::atomic::AtomicBool,
        arrived: tokio::sync::Notify,
        release: tokio::sync::Notify,
        /// Returned by `acquire` as the claim's fence time.
        fence_at: Mutex<Option<Instant>>,
    }

    #[async_trait]
    impl WorkerSource for HeldWorker {
        async fn acquire(&self, now_ms: u64) -> Result<WorkerClaim, WorkerError> {
            let claim = self.memory.acquire(now_ms).await?;
            let fence_at = *self.fence_at.lock().unwrap();
            Ok(WorkerClaim { fence_at, ..claim })
        }
        async fn reserve(&self, c: &WorkerClaim, unix_ms: u64) -> Result<(), WorkerError> {
            if self.hold.load(std::sync::atomic::Ordering::SeqCst) {
                self.arrived.notify_one();
                self.release.notified().await;
            }
            self.memory.reserve(c, unix_ms).await
        }
        async fn release(&self, c: &WorkerClaim, unix_ms: u64) -> Result<(), WorkerError> {
            self.memory.release(c, unix_ms).await
        }
    }

    /// Finding 8: a renewal that was in flight when the node took a new grant (its lease
    /// expired, it claimed another worker ID) must not raise the new grant's ceiling: the
    /// mark it persisted belongs to the old worker ID.
    #[tokio::test(start_paused = true)]
    async fn a_reservation_extends_only_the_grant_it_was_made_for() {
        let clock = Arc::new(ManualClock::new(T0));
        let source = Arc::new(HeldWorker::default());
        let n = node(clock.clone());
        let claim = acquire(&n, source.as_ref()).await.unwrap();
        assert_eq!(claim.grant, n.grant().unwrap().id);
        let (_claim_tx, claim_rx) = watch::channel(Some(claim));
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(keep_reserved(n.clone(), source.clone(), claim_rx, stop_rx));

        source.hold.store(true, std::sync::atomic::Ordering::SeqCst);
        clock.advance(1500);
        source.arrived.notified().await;
        // Meanwhile the node holds another worker ID, reserved only a little ahead.
        let now = n.now_units();
        let other = n.install_grant(0, 7, now, now + 10);
        source.release.notify_one();
        tokio::time::sleep(timing::reserve_tick(WINDOW) * 4).await;
        let grant = n.grant().unwrap();
        assert_eq!((grant.id, grant.worker), (other, 7));
        assert_eq!(grant.ceiling, now + 10, "worker 7's ceiling moved");
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }

    /// Finding 8: a claim whose fence time passed before it was installed (the claim took
    /// longer than the lease allows) starts fenced: not one normal number is issued with it.
    #[tokio::test]
    async fn a_claim_that_outlasted_its_fence_time_starts_fenced() {
        let source = HeldWorker::default();
        *source.fence_at.lock().unwrap() = Some(Instant::now());
        let n = node(Arc::new(ManualClock::new(T0)));
        acquire(&n, &source).await.unwrap();
        assert!(n.lease_lost());
        assert_eq!(n.readiness().reasons, vec!["lease_lost"]);
        let issued = n.try_issue(&LastIssued::new(), 10).unwrap();
        assert!(issued.batch.degraded.is_some());
        // In time, it starts normal.
        *source.fence_at.lock().unwrap() = Some(Instant::now() + Duration::from_secs(60));
        let n = node(Arc::new(ManualClock::new(T0)));
        acquire(&n, &source).await.unwrap();
        assert!(!n.lease_lost());
    }

    /// A node whose worker ID's floor is `ahead_ms` ahead of its clock.
    fn floor_ahead(ahead_ms: u64) -> (Arc<ManualClock>, Arc<Node>) {
        let clock = Arc::new(ManualClock::new(T0));
        let n = node(clock.clone());
        let floor = n.layout().units_at(T0 + ahead_ms);
        n.install_grant(0, 0, floor, floor + 2000);
        (clock, n)
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_gap_within_the_window_waits_until_the_clock_passes_it() {
        let (clock, n) = floor_ahead(1500);
        handle_start_gap(&n, WINDOW);
        assert_eq!(n.readiness().reasons, vec!["starting"]);
        assert!(matches!(
            n.try_issue(&LastIssued::new(), 1),
            Err(Blocked::NotReady { .. })
        ));
        // Ready once the gap (and one unit) has passed, not before.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(n.readiness().reasons, vec!["starting"]);
        clock.advance(1501);
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(n.readiness().is_ready(), "{:?}", n.readiness());
        let i = n.try_issue(&LastIssued::new(), 1).unwrap();
        assert_eq!(i.batch.degraded, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_gap_beyond_the_window_starts_from_the_floor_under_the_clock_policy() {
        let (_clock, n) = floor_ahead(60_000);
        handle_start_gap(&n, WINDOW);
        // Not held back: the node's time is raised to the floor, a backward episode.
        assert_eq!(n.readiness().reasons, vec!["clock_backward"]);
        let floor = n.grant().unwrap().floor;
        assert!(n.now_units() >= floor);
        let i = n.try_issue(&LastIssued::new(), 1).unwrap();
        assert!(n.generator().timestamp_of(i.batch.first) > floor);
    }

    #[tokio::test(start_paused = true)]
    async fn no_gap_or_no_grant_changes_nothing() {
        let (_clock, n) = floor_ahead(0);
        handle_start_gap(&n, WINDOW);
        assert!(n.readiness().is_ready());
        let bare = node(Arc::new(ManualClock::new(T0)));
        handle_start_gap(&bare, WINDOW);
        assert_eq!(bare.readiness().reasons, vec!["no_worker_id"]);
    }
}
