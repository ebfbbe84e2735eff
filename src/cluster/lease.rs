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
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};

use super::registry::{Identity, NodeRegistry};
use crate::clock::Clock;
use crate::store::StoreError;
use crate::store::etcd::{Failure, Keys, Members, parse_u64};
use crate::timing;
use crate::worker::{WorkerClaim, WorkerError, WorkerSource};

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
    pub(super) members: Members,
    keys: Keys,
    dc: u64,
    max_worker: u64,
    pub(super) lease_ttl_s: u64,
    timeout: Duration,
    registry: Arc<NodeRegistry>,
    /// The worker ID this source claimed last ([`NO_WORKER`]: none): a claim tries it
    /// first, so that a node whose lease was lost takes its own ID again.
    last_worker: AtomicU64,
}

const NO_WORKER: u64 = u64::MAX;

impl EtcdCluster {
    /// A worker-ID source on `members` (or on one client, for tests and tools).
    pub fn new(
        members: impl Into<Members>,
        settings: ClusterSettings,
        clock: Arc<dyn Clock>,
    ) -> EtcdCluster {
        let members = members.into();
        let keys = Keys::new(&settings.root);
        let me = Identity {
            node_id: settings.node_id,
            dc: settings.dc,
            addr: settings.addr,
        };
        let registry =
            NodeRegistry::new(members.clone(), keys.clone(), me, clock, settings.timeout);
        EtcdCluster {
            members,
            keys,
            dc: settings.dc,
            max_worker: settings.max_worker,
            lease_ttl_s: settings.lease_ttl_s,
            timeout: settings.timeout,
            registry: Arc::new(registry),
            last_worker: AtomicU64::new(NO_WORKER),
        }
    }

    /// The preferred member's client (calls on it stay on it).
    pub fn client(&self) -> Client {
        self.members.client()
    }

    /// The etcd members every call of this source goes to.
    pub fn members(&self) -> &Members {
        &self.members
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
        // The same value again, guarded on the lease: sending it twice is harmless.
        let written = self
            .members
            .call(self.timeout, |mut c, _| {
                let txn = txn.clone();
                async move { Ok(c.txn(txn).await?.succeeded()) }
            })
            .await?;
        if written {
            Ok(())
        } else {
            Err(WorkerError::NotHeld(claim.worker))
        }
    }

    /// Refreshes this node's registry entry (heartbeat and clock offset).
    pub(super) async fn heartbeat(&self, claim: &WorkerClaim) -> Result<(), WorkerError> {
        let key = self.keys.worker(claim.dc, claim.worker);
        let entry = self.registry.entry(claim.worker);
        self.guarded_put(claim, key, entry, Some(claim.lease)).await
    }

    pub(super) async fn revoke(&self, lease: i64) {
        let revoked = self
            .members
            .call(self.timeout, |mut c, _| async move {
                match c.lease_revoke(lease).await {
                    Ok(_) => Ok(()),
                    // A retry after a revoke that committed without an answer.
                    Err(etcd_client::Error::GRpcStatus(s))
                        if s.message().contains("requested lease not found") =>
                    {
                        Ok(())
                    }
                    Err(e) => Err(e.into()),
                }
            })
            .await;
        if let Err(e) = revoked {
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
        let claim = self
            .members
            .call(self.timeout, |c, _| self.try_claim(c, lease, now_ms))
            .await?;
        if let Some(c) = &claim {
            self.last_worker.store(c.worker, Ordering::Relaxed);
        }
        Ok(claim)
    }

    /// One attempt of [`Self::claim_lowest_free`]. A key already carrying `lease` is ours,
    /// claimed by an earlier attempt whose answer was lost: it is taken as the claim (its
    /// mark read now) rather than holding a second ID with the same lease.
    async fn try_claim(
        &self,
        mut client: Client,
        lease: i64,
        now_ms: u64,
    ) -> Result<Option<WorkerClaim>, Failure> {
        let of_dc = self.keys.workers_of(self.dc);
        let opts = GetOptions::new().with_prefix().with_keys_only();
        let listed = client.get(of_dc, Some(opts)).await?;
        let mut taken = HashSet::new();
        for kv in listed.kvs() {
            let Some(w) = self
                .keys
                .worker_id(self.dc, kv.key_str().unwrap_or_default())
            else {
                continue;
            };
            if kv.lease() == lease {
                let hk = self.keys.hwm(self.dc, w);
                let mark = client.txn(Txn::new().and_then([TxnOp::get(hk.as_str(), None)]));
                let resp = mark.await?;
                let hwm_ms = stored_hwm(&hk, resp.op_responses().first())?.map(|(ms, _)| ms);
                if !self
                    .gave_back_implausible(&mut client, w, hwm_ms, lease, now_ms)
                    .await?
                {
                    return Ok(Some(self.claim_of(w, hwm_ms, lease)));
                }
            }
            taken.insert(w);
        }
        // The ID claimed last first (when free), then the lowest free one.
        let last = self.last_worker.load(Ordering::Relaxed);
        let free = (0..=self.max_worker).filter(|w| !taken.contains(w));
        let order = std::iter::once(last)
            .filter(|w| *w <= self.max_worker && !taken.contains(w))
            .chain(free.filter(|w| *w != last));
        for w in order {
            let (wk, hk) = (self.keys.worker(self.dc, w), self.keys.hwm(self.dc, w));
            let claim = PutOptions::new().with_lease(lease);
            let txn = Txn::new()
                .when([Compare::create_revision(wk.as_str(), CompareOp::Equal, 0)])
                .and_then([
                    TxnOp::put(wk, self.registry.entry(w), Some(claim)),
                    TxnOp::get(hk.as_str(), None),
                ]);
            let resp = client.txn(txn).await?;
            if resp.succeeded() {
                // An unreadable mark leaves this ID's floor unknown: refuse it (the
                // caller revokes the lease, which frees the key again).
                let hwm_ms = stored_hwm(&hk, resp.op_responses().get(1))?.map(|(ms, _)| ms);
                if self
                    .gave_back_implausible(&mut client, w, hwm_ms, lease, now_ms)
                    .await?
                {
                    continue;
                }
                return Ok(Some(self.claim_of(w, hwm_ms, lease)));
            }
        }
        Ok(None)
    }

    /// When worker ID `w`, just claimed with `lease`, has a mark implausibly far ahead of
    /// `now_ms`: gives it back (a WARN names it) and says `true`, so the claim skips it.
    async fn gave_back_implausible(
        &self,
        client: &mut Client,
        w: u64,
        hwm_ms: Option<u64>,
        lease: i64,
        now_ms: u64,
    ) -> Result<bool, Failure> {
        let Some(mark) = hwm_ms.filter(|&m| implausible(m, now_ms)) else {
            return Ok(false);
        };
        tracing::warn!(
            worker = w,
            mark_unix_ms = mark,
            ahead_ms = mark - now_ms,
            "worker ID skipped: its reserved timestamp is implausibly far ahead of this node's clock (a clock that ran ahead wrote it)"
        );
        let wk = self.keys.worker(self.dc, w);
        let give_back = Txn::new()
            .when([Compare::lease(wk.as_str(), CompareOp::Equal, lease)])
            .and_then([TxnOp::delete(wk.as_str(), None)]);
        client.txn(give_back).await?;
        Ok(true)
    }

    fn claim_of(&self, worker: u64, hwm_ms: Option<u64>, lease: i64) -> WorkerClaim {
        WorkerClaim {
            dc: self.dc,
            worker,
            hwm_ms,
            lease,
            fence_at: None,
            grant: 0,
        }
    }

    /// Raises the claim's high timestamp to `unix_ms` (see [`WorkerSource::reserve`]);
    /// `Ok(false)` when the claim is gone.
    async fn raise_hwm(&self, claim: &WorkerClaim, unix_ms: u64) -> Result<bool, StoreError> {
        let wk = self.keys.worker(claim.dc, claim.worker);
        let hk = self.keys.hwm(claim.dc, claim.worker);
        let (wk, hk) = (wk.as_str(), hk.as_str());
        // Every write is guarded on the mark as read and on the claim: sending one again to
        // another member after it may have committed cannot lower or double anything.
        self.members
            .call(self.timeout, |mut client, _| async move {
                // Read the mark only while the claim holds: a mark already high enough may have
                // been written by the ID's next owner, and is no reservation of ours.
                let read = Txn::new()
                    .when([self.held(claim)])
                    .and_then([TxnOp::get(hk, None)]);
                let resp = client.txn(read).await?;
                if !resp.succeeded() {
                    return Ok(false);
                }
                let mut seen = stored_hwm(hk, resp.op_responses().first())?;
                loop {
                    let revision = match seen {
                        Some((stored, _)) if stored >= unix_ms => return Ok(true),
                        Some((_, revision)) => revision,
                        None => 0,
                    };
                    let txn = Txn::new()
                        .when([
                            self.held(claim),
                            Compare::mod_revision(hk, CompareOp::Equal, revision),
                        ])
                        .and_then([TxnOp::put(hk, unix_ms.to_string(), None)])
                        .or_else([TxnOp::get(wk, None), TxnOp::get(hk, None)]);
                    let resp = client.txn(txn).await?;
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
                    seen = stored_hwm(hk, ops.get(1))?;
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
    /// Grants a lease and claims a worker ID with it. The fence time counts from before
    /// the grant was asked for: etcd's TTL runs from the grant, however long the claim
    /// takes after it.
    async fn acquire(&self, now_ms: u64) -> Result<WorkerClaim, WorkerError> {
        let ttl = self.lease_ttl_s as i64;
        let asked = Instant::now();
        // A grant sent twice leaves a lease holding nothing, which expires on its own.
        let lease = self
            .members
            .call(self.timeout, |mut c, _| async move {
                Ok(c.lease_grant(ttl, None).await?.id())
            })
            .await?;
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

pub use super::lease_loop::run_lease;
