//! Worker IDs in cluster mode (SPEC sections 1.1, 4 and 5): the lease, the claim, the high
//! timestamp and the keep-alive that fences the node when renewals stop.
//!
//! A node grants a lease and claims the lowest free `workers/{dc}/{worker}` key with one
//! transaction (`create_revision == 0` → put with the lease), reading that ID's
//! `hwm/{dc}/{worker}` in the same transaction; a value there that is not a number stops
//! the claim, as the ID's floor is then unknown. Every write of the high timestamp is
//! guarded on the worker key still carrying our lease, so a node that lost its ID can never
//! move its successor's floor; reservations only ever raise it (a late renewal must not
//! undo a later one), and only the final write of a graceful stop lowers it. The
//! keep-alive loop ([`run_lease`]) renews with a deadline; after `lease_ttl_s` minus a
//! safety margin without a confirmed renewal the node is fenced (numbers degraded within
//! the persisted reservation, or rejected), and when etcd answers that the lease is gone it
//! claims an ID again, above everything the old one reserved. Every period and deadline is
//! in [`timing`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn,
    TxnOp, TxnOpResponse,
};
use tokio::sync::watch;

use super::registry::{Identity, NodeRegistry};
use super::sleep_or_stop;
use crate::clock::Clock;
use crate::node::Node;
use crate::store::etcd::{Keys, parse_u64, unavailable};
use crate::store::{StoreError, bounded};
use crate::timing;
use crate::worker::{self, WorkerClaim, WorkerError, WorkerSource};

/// What a node needs to take part in a cluster.
pub struct ClusterSettings {
    /// The etcd root, as configured (normalised by [`Keys`]).
    pub root: String,
    pub dc: u64,
    pub max_worker: u64,
    pub node_id: String,
    pub addr: String,
    pub lease_ttl_s: u64,
    /// The deadline of each etcd call.
    pub timeout: Duration,
}

/// This node's worker-ID source in etcd: its lease, its claim and the claimed ID's high
/// timestamp. Its entry in the node registry ([`NodeRegistry`]) is the worker key's value.
pub struct EtcdCluster {
    client: Client,
    keys: Keys,
    dc: u64,
    max_worker: u64,
    lease_ttl_s: u64,
    timeout: Duration,
    registry: Arc<NodeRegistry>,
}

impl EtcdCluster {
    pub fn new(client: Client, settings: ClusterSettings, clock: Arc<dyn Clock>) -> EtcdCluster {
        let keys = Keys::new(&settings.root);
        let me = Identity {
            node_id: settings.node_id,
            dc: settings.dc,
            addr: settings.addr,
        };
        let registry = NodeRegistry::new(client.clone(), keys.clone(), me, clock, settings.timeout);
        EtcdCluster {
            client,
            keys,
            dc: settings.dc,
            max_worker: settings.max_worker,
            lease_ttl_s: settings.lease_ttl_s,
            timeout: settings.timeout,
            registry: Arc::new(registry),
        }
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The node registry this source writes this node's entry into.
    pub fn registry(&self) -> &Arc<NodeRegistry> {
        &self.registry
    }

    /// "Our lease still holds the claim's worker key."
    fn held(&self, claim: &WorkerClaim) -> Compare {
        let key = self.keys.worker(claim.dc, claim.worker);
        Compare::lease(key, CompareOp::Equal, claim.lease)
    }

    /// Runs one etcd call under the deadline.
    async fn call<T>(
        &self,
        f: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        bounded(self.timeout, async { f.await.map_err(unavailable) }).await
    }

    /// Puts `value` at `key` only while our lease still holds the worker key.
    async fn guarded_put(
        &self,
        claim: &WorkerClaim,
        key: String,
        value: String,
        lease: Option<i64>,
    ) -> Result<(), WorkerError> {
        let put = lease.map(|l| PutOptions::new().with_lease(l));
        let txn = Txn::new()
            .when([self.held(claim)])
            .and_then([TxnOp::put(key, value, put)]);
        let mut client = self.client.clone();
        if self.call(client.txn(txn)).await?.succeeded() {
            Ok(())
        } else {
            Err(WorkerError::NotHeld(claim.worker))
        }
    }

    /// Refreshes this node's registry entry (heartbeat and clock offset).
    async fn heartbeat(&self, claim: &WorkerClaim) -> Result<(), WorkerError> {
        let key = self.keys.worker(claim.dc, claim.worker);
        let entry = self.registry.entry(claim.worker);
        self.guarded_put(claim, key, entry, Some(claim.lease)).await
    }

    async fn revoke(&self, lease: i64) {
        let mut client = self.client.clone();
        if let Err(e) = self.call(client.lease_revoke(lease)).await {
            tracing::warn!(error = %e, "could not revoke the lease; it expires on its own");
        }
    }

    /// Claims the lowest free worker ID of the datacenter with `lease`; `None` when all are
    /// taken. The claim and the read of the ID's high timestamp are one transaction. An ID
    /// whose mark is implausibly far ahead of `now_ms` is given back at once and skipped.
    async fn claim_lowest_free(
        &self,
        lease: i64,
        now_ms: u64,
    ) -> Result<Option<WorkerClaim>, StoreError> {
        let mut client = self.client.clone();
        bounded(self.timeout, async {
            let of_dc = self.keys.workers_of(self.dc);
            let opts = GetOptions::new().with_prefix().with_keys_only();
            let listed = client.get(of_dc, Some(opts)).await.map_err(unavailable)?;
            let taken: HashSet<u64> = listed
                .kvs()
                .iter()
                .filter_map(|kv| self.keys.worker_id(self.dc, kv.key_str().ok()?))
                .collect();
            for w in (0..=self.max_worker).filter(|w| !taken.contains(w)) {
                let (wk, hk) = (self.keys.worker(self.dc, w), self.keys.hwm(self.dc, w));
                let claim = PutOptions::new().with_lease(lease);
                let txn = Txn::new()
                    .when([Compare::create_revision(wk.as_str(), CompareOp::Equal, 0)])
                    .and_then([
                        TxnOp::put(wk.as_str(), self.registry.entry(w), Some(claim)),
                        TxnOp::get(hk.as_str(), None),
                    ]);
                let resp = client.txn(txn).await.map_err(unavailable)?;
                if resp.succeeded() {
                    // An unreadable mark leaves this ID's floor unknown: refuse it (the
                    // caller revokes the lease, which frees the key again).
                    let hwm_ms = stored_hwm(&hk, resp.op_responses().get(1))?.map(|(ms, _)| ms);
                    if let Some(mark) = hwm_ms.filter(|&m| implausible(m, now_ms)) {
                        tracing::warn!(
                            worker = w,
                            mark_unix_ms = mark,
                            ahead_ms = mark - now_ms,
                            "worker ID skipped: its reserved timestamp is implausibly far ahead of this node's clock (a clock that ran ahead wrote it)"
                        );
                        let give_back = Txn::new()
                            .when([Compare::lease(wk.as_str(), CompareOp::Equal, lease)])
                            .and_then([TxnOp::delete(wk.as_str(), None)]);
                        client.txn(give_back).await.map_err(unavailable)?;
                        continue;
                    }
                    return Ok(Some(WorkerClaim {
                        dc: self.dc,
                        worker: w,
                        hwm_ms,
                        lease,
                        fence_at: None,
                        grant: 0,
                    }));
                }
            }
            Ok(None)
        })
        .await
    }

    /// Raises the claim's high timestamp to `unix_ms` (see [`WorkerSource::reserve`]);
    /// `Ok(false)` when the claim is gone.
    async fn raise_hwm(&self, claim: &WorkerClaim, unix_ms: u64) -> Result<bool, StoreError> {
        let wk = self.keys.worker(claim.dc, claim.worker);
        let hk = self.keys.hwm(claim.dc, claim.worker);
        let mut client = self.client.clone();
        bounded(self.timeout, async {
            // Read the mark only while the claim holds: a mark already high enough may have
            // been written by the ID's next owner, and is no reservation of ours.
            let read = Txn::new()
                .when([self.held(claim)])
                .and_then([TxnOp::get(hk.as_str(), None)]);
            let resp = client.txn(read).await.map_err(unavailable)?;
            if !resp.succeeded() {
                return Ok(false);
            }
            let mut seen = stored_hwm(&hk, resp.op_responses().first())?;
            loop {
                let revision = match seen {
                    Some((stored, _)) if stored >= unix_ms => return Ok(true),
                    Some((_, revision)) => revision,
                    None => 0,
                };
                let txn = Txn::new()
                    .when([
                        self.held(claim),
                        Compare::mod_revision(hk.as_str(), CompareOp::Equal, revision),
                    ])
                    .and_then([TxnOp::put(hk.as_str(), unix_ms.to_string(), None)])
                    .or_else([TxnOp::get(wk.as_str(), None), TxnOp::get(hk.as_str(), None)]);
                let resp = client.txn(txn).await.map_err(unavailable)?;
                if resp.succeeded() {
                    return Ok(true);
                }
                // Both keys as of the failed compare: which of the two conditions broke?
                let ops = resp.op_responses();
                let ours = match ops.first() {
                    Some(TxnOpResponse::Get(g)) => {
                        g.kvs().first().is_some_and(|kv| kv.lease() == claim.lease)
                    }
                    _ => false,
                };
                if !ours {
                    return Ok(false);
                }
                // The mark moved since it was read: read it again (from this answer).
                seen = stored_hwm(&hk, ops.get(1))?;
            }
        })
        .await
    }
}

/// True when a worker ID's `mark` is so far ahead of a node's time `now_ms` that only a
/// clock that ran ahead can have written it ([`timing::IMPLAUSIBLE_MARK_AHEAD`]).
fn implausible(mark: u64, now_ms: u64) -> bool {
    mark.saturating_sub(now_ms) > timing::IMPLAUSIBLE_MARK_AHEAD.as_millis() as u64
}

/// The high timestamp in a get of `key` and the `mod_revision` it was read at: `None` when
/// the key is absent, an error when it holds anything but a decimal u64 (then the ID's
/// floor is unknown, and nothing may be issued with it).
fn stored_hwm(key: &str, resp: Option<&TxnOpResponse>) -> Result<Option<(u64, i64)>, StoreError> {
    let Some(TxnOpResponse::Get(get)) = resp else {
        return Err(StoreError::Unavailable(format!(
            "etcd answered a read of {key} without its result"
        )));
    };
    get.kvs()
        .first()
        .map(|kv| Ok((parse_u64(key, kv.value())?, kv.mod_revision())))
        .transpose()
}

#[async_trait]
impl WorkerSource for EtcdCluster {
    /// Grants a lease and claims the lowest free worker ID with it. The fence time counts
    /// from before the grant was asked for: etcd's TTL runs from the grant, however long
    /// the claim takes after it.
    async fn acquire(&self, now_ms: u64) -> Result<WorkerClaim, WorkerError> {
        let ttl = self.lease_ttl_s as i64;
        let mut client = self.client.clone();
        let asked = Instant::now();
        let lease = self.call(client.lease_grant(ttl, None)).await?.id();
        let refused = match self.claim_lowest_free(lease, now_ms).await {
            Ok(Some(claim)) => {
                let fence_at = Some(asked + timing::fence_after(self.lease_ttl_s));
                return Ok(WorkerClaim { fence_at, ..claim });
            }
            Ok(None) => WorkerError::AllTaken(self.max_worker + 1, self.dc),
            Err(e) => e.into(),
        };
        // The lease holds nothing: give it back at once rather than let it expire.
        self.revoke(lease).await;
        Err(refused)
    }

    /// Raises the ID's high timestamp to `unix_ms`, never lowers it: a renewal that timed
    /// out here may still commit at etcd after a later, higher one, and must not pull the
    /// mark back below timestamps already issued. Each write is guarded on the mark being as
    /// read and on our lease still holding the worker key.
    async fn reserve(&self, claim: &WorkerClaim, unix_ms: u64) -> Result<(), WorkerError> {
        if self.raise_hwm(claim, unix_ms).await? {
            Ok(())
        } else {
            Err(WorkerError::NotHeld(claim.worker))
        }
    }

    /// Persists the highest timestamp really used and gives the ID up. Unlike `reserve`
    /// this may lower the mark (to below the reservation): at a graceful stop the node
    /// knows nothing above it was issued, so the next owner need not wait for it.
    async fn release(&self, claim: &WorkerClaim, unix_ms: u64) -> Result<(), WorkerError> {
        let key = self.keys.hwm(claim.dc, claim.worker);
        let result = self
            .guarded_put(claim, key, unix_ms.to_string(), None)
            .await;
        self.revoke(claim.lease).await;
        result
    }
}

/// How a lease session ended.
enum Ended {
    Stopped,
    Expired,
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
    loop {
        if *stop.borrow() {
            return;
        }
        // Claim (and reserve) on the peers' time if they find this clock ahead.
        node.skew_checked(timing::FIRST_SKEW_CHECK_WAIT).await;
        let claim = match worker::acquire(&node, cluster.as_ref()).await {
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
                if sleep_or_stop(wait, &mut stop).await {
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
            Ended::Expired => {
                node.set_lease_lost(true);
                tracing::warn!(
                    worker = claim.worker,
                    "worker lease expired; claiming a worker ID again"
                );
            }
        }
    }
}

/// One renewal: the lease's remaining TTL (0: it has expired). Opens the keep-alive stream
/// when there is none.
async fn renew(
    cluster: &EtcdCluster,
    session: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    lease: i64,
) -> Result<i64, etcd_client::Error> {
    if session.is_none() {
        let mut client = cluster.client.clone();
        match client.lease_keep_alive(lease).await {
            Ok(s) => *session = Some(s),
            // etcd-client reports a lease with TTL 0 this way: it has expired.
            Err(etcd_client::Error::LeaseKeepAliveError(m)) if m == "lease not found" => {
                return Ok(0);
            }
            Err(e) => return Err(e),
        }
    }
    let Some((keeper, stream)) = session.as_mut() else {
        return Err(etcd_client::Error::LeaseKeepAliveError("no session".into()));
    };
    keeper.keep_alive().await?;
    match stream.message().await? {
        Some(resp) => Ok(resp.ttl()),
        None => Err(etcd_client::Error::LeaseKeepAliveError(
            "stream ended".into(),
        )),
    }
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
    let mut session = None;
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
            Some(t) if node.lease_lost() => t.elapsed() >= timing::FENCED_RENEW_EVERY,
            Some(t) => t.elapsed() >= every,
        };
        if !due {
            continue;
        }
        let sent = Instant::now();
        last_try = Some(sent);
        let renewed = renew(cluster, &mut session, claim.lease);
        match tokio::time::timeout(timing::renewal_deadline(ttl_s), renewed).await {
            Ok(Ok(left)) if left > 0 => {
                fence_at = sent + fence_after;
                if node.lease_lost() {
                    tracing::info!("worker lease renewed again");
                    node.set_lease_lost(false);
                }
                match cluster.heartbeat(claim).await {
                    Ok(()) => {}
                    Err(WorkerError::NotHeld(_)) => {
                        cluster.revoke(claim.lease).await;
                        return Ended::Expired;
                    }
                    Err(e) => tracing::debug!(error = %e, "heartbeat failed"),
                }
            }
            Ok(Ok(_)) => return Ended::Expired,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "lease renewal failed");
                session = None;
            }
            Err(_) => session = None,
        }
    }
}
