//! The lease loop of a cluster node ([`run_lease`]): claim a worker ID, renew its lease
//! with a deadline, fence the node after `lease_ttl_s` minus a safety margin without a
//! confirmed renewal (counted from the grant, then from each confirmed renewal), and claim
//! again when etcd answers that the lease is gone. The claim itself is [`EtcdCluster`]'s
//! ([`super::lease`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::lease::EtcdCluster;
use super::sleep_or_stop;
use crate::node::Node;
use crate::store::StoreError;
use crate::store::etcd::Members;
use crate::timing;
use crate::worker::{self, WorkerClaim, WorkerError};

/// How a lease session ended.
enum Ended {
    Stopped,
    /// The lease or the claim is gone; the node counts as fenced from `fence_at` on.
    Expired {
        fence_at: Instant,
    },
}

/// Runs `f`; when `fence_at` passes first, fences the node (lease lost) and goes on
/// waiting for `f`.
async fn fencing_at<T>(node: &Node, fence_at: Option<Instant>, f: impl Future<Output = T>) -> T {
    let mut f = std::pin::pin!(f);
    if let Some(at) = fence_at.filter(|_| !node.lease_lost()) {
        tokio::select! {
            v = &mut f => return v,
            _ = tokio::time::sleep_until(at.into()) => {
                node.set_lease_lost(true);
                tracing::warn!("no worker ID taken again within the lease's time; numbers are degraded");
            }
        }
    }
    f.await
}

/// Claims a worker ID, keeps its lease alive, fences the node when renewals stop, and
/// claims again when the lease is gone. Runs until `stop` turns true.
pub async fn run_lease(
    cluster: Arc<EtcdCluster>,
    node: Arc<Node>,
    claim_tx: watch::Sender<Option<WorkerClaim>>,
    mut stop: watch::Receiver<bool>,
) {
    let ttl_s = cluster.lease_ttl_s;
    let mut all_taken_logged = false;
    // While the node claims again after its lease was gone: when it must count as fenced.
    let mut fence_at: Option<Instant> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        // Claim (and reserve) on the peers' time if they find this clock ahead.
        fencing_at(
            &node,
            fence_at,
            node.skew_checked(timing::FIRST_SKEW_CHECK_WAIT),
        )
        .await;
        let acquired = fencing_at(&node, fence_at, worker::acquire(&node, cluster.as_ref()));
        let claim = match acquired.await {
            Ok(c) => c,
            Err(e) => {
                let wait = match &e {
                    WorkerError::AllTaken(..) => {
                        if !all_taken_logged {
                            tracing::warn!(error = %e, "no worker ID free: this node is not ready and issues no snowflake numbers");
                            all_taken_logged = true;
                        }
                        timing::all_taken_retry(ttl_s)
                    }
                    _ => {
                        tracing::warn!(error = %e, "could not claim a worker ID; retrying");
                        timing::CLAIM_RETRY
                    }
                };
                if fencing_at(&node, fence_at, sleep_or_stop(wait, &mut stop)).await {
                    return;
                }
                continue;
            }
        };
        all_taken_logged = false;
        let _ = claim_tx.send(Some(claim.clone()));
        // A claim that outlasted its fence time stays fenced until a renewal succeeds.
        node.set_lease_lost(claim.fence_at.is_some_and(|t| Instant::now() >= t));
        worker::handle_start_gap(&node, timing::reserve_window(ttl_s));
        match keep_alive(&cluster, &node, &claim, &mut stop).await {
            Ended::Stopped => return,
            Ended::Expired { fence_at: at } => {
                // SPEC 4: the node is fenced once it has not renewed for the fence time,
                // not when etcd drops the lease sooner (an etcd leader back from a pause
                // revokes every lease it thinks expired, renewed elsewhere or not:
                // etcd-io/etcd#15247, seen with 3.4.23). Until then it issues under its grant, whose
                // numbers are below the reservation any next owner starts above.
                if at <= Instant::now() {
                    node.set_lease_lost(true);
                }
                fence_at = Some(at);
                tracing::warn!(
                    worker = claim.worker,
                    "worker lease expired; claiming a worker ID again"
                );
            }
        }
    }
}

/// One renewal, on a member that answers: `true` while the lease lives, `false` once it has
/// expired. Each renewal opens a keep-alive stream of its own (etcd-client's opening of it
/// is the renewal: it sends one request and checks the answer's TTL), so a member that
/// stops answering holds a renewal for one attempt's deadline and the next attempt goes to
/// another member. A renewal sent twice is harmless.
pub(super) async fn renew(
    members: &Members,
    lease: i64,
    limit: Duration,
) -> Result<bool, StoreError> {
    members
        .call(limit, |mut c, _| async move {
            match c.lease_keep_alive(lease).await {
                Ok(_) => Ok(true),
                // etcd-client reports a lease with TTL 0 this way: it has expired.
                Err(etcd_client::Error::LeaseKeepAliveError(m)) if m == "lease not found" => {
                    Ok(false)
                }
                Err(e) => Err(e.into()),
            }
        })
        .await
}

/// Renews `claim`'s lease until `stop` or until the lease is gone; fences the node while
/// renewals fail past [`timing::fence_after`] — counted from the lease's grant, then from
/// each confirmed renewal's request — and lifts the fence when one succeeds.
async fn keep_alive(
    cluster: &EtcdCluster,
    node: &Node,
    claim: &WorkerClaim,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    let ttl_s = cluster.lease_ttl_s;
    let every = timing::keep_alive_every(ttl_s);
    let fence_after = timing::fence_after(ttl_s);
    // Counted from the lease's grant (or its last confirmed renewal), not from now.
    let mut fence_at = claim
        .fence_at
        .unwrap_or_else(|| Instant::now() + fence_after);
    let mut last_try: Option<Instant> = None;
    // After a failed renewal the next comes sooner, as when fenced: an etcd that was
    // electing a leader answers again within about a second.
    let mut failed = false;
    let mut tick = tokio::time::interval(timing::LEASE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return Ended::Stopped,
        }
        if *stop.borrow() {
            return Ended::Stopped;
        }
        if Instant::now() >= fence_at && !node.lease_lost() {
            node.set_lease_lost(true);
        }
        let due = match last_try {
            None => true,
            Some(t) if node.lease_lost() || failed => t.elapsed() >= timing::FENCED_RENEW_EVERY,
            Some(t) => t.elapsed() >= every,
        };
        if !due {
            continue;
        }
        let sent = Instant::now();
        last_try = Some(sent);
        match renew(
            &cluster.members,
            claim.lease,
            timing::renewal_deadline(ttl_s),
        )
        .await
        {
            Ok(true) => {
                fence_at = sent + fence_after;
                failed = false;
                if node.lease_lost() {
                    tracing::info!("worker lease renewed again");
                    node.set_lease_lost(false);
                }
                match cluster.heartbeat(claim).await {
                    Ok(()) => {}
                    Err(WorkerError::NotHeld(_)) => {
                        // Another owner may hold the ID: fenced at once.
                        cluster.revoke(claim.lease).await;
                        return Ended::Expired {
                            fence_at: Instant::now(),
                        };
                    }
                    Err(e) => tracing::debug!(error = %e, "heartbeat failed"),
                }
            }
            Ok(false) => {
                return Ended::Expired { fence_at };
            }
            Err(e) => {
                tracing::debug!(error = %e, "lease renewal failed");
                failed = true;
            }
        }
    }
}
