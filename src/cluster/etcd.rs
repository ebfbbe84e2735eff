//! Cluster mode on etcd (SPEC sections 3.3, 4 and 5): worker-ID leases, the node registry,
//! prefix configs shared by watch, and the peer clock-skew monitor.
//!
//! A node grants a lease and claims the lowest free `workers/{dc}/{worker}` key with one
//! transaction (`create_revision == 0` → put with the lease), reading that ID's
//! `hwm/{dc}/{worker}` in the same transaction; a value there that is not a number stops
//! the claim, as the ID's floor is then unknown. Every write of the high timestamp is
//! guarded on the worker key still carrying our lease, so a node that lost its ID can never
//! move its successor's floor; reservations only ever raise it (a late renewal must not
//! undo a later one), and only the final write of a graceful stop lowers it. The
//! keep-alive loop renews with a deadline; after `lease_ttl_s` minus a safety margin
//! without a confirmed renewal the node is fenced (numbers degraded within the persisted
//! reservation, or rejected), and when etcd answers that the lease is gone it claims an ID
//! again, above everything the old one reserved.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, LeaseKeepAliveStream, LeaseKeeper,
    PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::watch;

use super::skew;
use super::{ClusterView, NodeInfo};
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::prefix::PrefixConfig;
use crate::service::Service;
use crate::store::etcd::parse_u64;
use crate::store::{StoreError, bounded};
use crate::worker::{self, WorkerClaim, WorkerError, WorkerSource};

fn unavailable(e: etcd_client::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// What a node needs to take part in a cluster.
pub struct ClusterSettings {
    pub root: String,
    pub dc: u64,
    pub max_worker: u64,
    pub node_id: String,
    pub addr: String,
    pub lease_ttl_s: u64,
    pub timeout: Duration,
}

/// This node's membership: its worker-ID claims and its view of the others.
pub struct EtcdCluster {
    client: Client,
    s: ClusterSettings,
    clock: Arc<dyn Clock>,
    /// This node's clock offset from the peers' median (f64 bits), as published.
    offset_ms: AtomicU64,
}

impl EtcdCluster {
    pub fn new(client: Client, settings: ClusterSettings, clock: Arc<dyn Clock>) -> EtcdCluster {
        EtcdCluster {
            client,
            s: settings,
            clock,
            offset_ms: AtomicU64::new(0f64.to_bits()),
        }
    }

    fn key(&self, rel: &str) -> String {
        format!("{}/{rel}", self.s.root)
    }

    fn worker_key(&self, dc: u64, worker: u64) -> String {
        self.key(&format!("workers/{dc}/{worker}"))
    }

    fn hwm_key(&self, dc: u64, worker: u64) -> String {
        self.key(&format!("hwm/{dc}/{worker}"))
    }

    pub fn node_id(&self) -> &str {
        &self.s.node_id
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub fn root(&self) -> &str {
        &self.s.root
    }

    fn offset(&self) -> f64 {
        f64::from_bits(self.offset_ms.load(Ordering::Relaxed))
    }

    fn info(&self, worker: u64) -> String {
        let info = NodeInfo {
            node_id: self.s.node_id.clone(),
            dc_id: self.s.dc,
            worker_id: Some(worker),
            addr: self.s.addr.clone(),
            heartbeat_ms: self.clock.now_ms(),
            clock_offset_ms: self.offset(),
        };
        serde_json::to_string(&info).unwrap_or_default()
    }

    /// Puts `value` at `key` only while our lease still holds the worker key.
    async fn guarded_put(
        &self,
        claim: &WorkerClaim,
        key: String,
        value: String,
        lease: Option<i64>,
    ) -> Result<(), WorkerError> {
        let wk = self.worker_key(claim.dc, claim.worker);
        let put = PutOptions::new();
        let put = match lease {
            Some(l) => put.with_lease(l),
            None => put,
        };
        let txn = Txn::new()
            .when([Compare::lease(wk, CompareOp::Equal, claim.lease)])
            .and_then([TxnOp::put(key, value, Some(put))]);
        let mut client = self.client.clone();
        let resp = bounded(self.s.timeout, async {
            client.txn(txn).await.map_err(unavailable)
        })
        .await?;
        if resp.succeeded() {
            Ok(())
        } else {
            Err(WorkerError::NotHeld(claim.worker))
        }
    }

    /// Refreshes this node's registry entry (heartbeat and clock offset).
    async fn heartbeat(&self, claim: &WorkerClaim) -> Result<(), WorkerError> {
        let key = self.worker_key(claim.dc, claim.worker);
        self.guarded_put(claim, key, self.info(claim.worker), Some(claim.lease))
            .await
    }

    async fn revoke(&self, lease: i64) {
        let mut client = self.client.clone();
        let r = bounded(self.s.timeout, async {
            client.lease_revoke(lease).await.map_err(unavailable)
        })
        .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not revoke the lease; it expires on its own");
        }
    }
}

/// The high timestamp in a get of `key`: `None` when the key is absent, an error when it
/// holds anything but a decimal u64 (then the ID's floor is unknown, and nothing may be
/// issued with it).
fn parse_hwm(key: &str, resp: Option<&TxnOpResponse>) -> Result<Option<u64>, StoreError> {
    Ok(stored_hwm(key, resp)?.map(|(ms, _)| ms))
}

/// The high timestamp in a get of `key` and the `mod_revision` it was read at; `None` when
/// the key is absent.
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
    async fn acquire(&self) -> Result<WorkerClaim, WorkerError> {
        let mut client = self.client.clone();
        let ttl = self.s.lease_ttl_s as i64;
        let lease = bounded(self.s.timeout, async {
            client.lease_grant(ttl, None).await.map_err(unavailable)
        })
        .await?
        .id();
        let claimed = bounded(self.s.timeout, async {
            let prefix = self.key(&format!("workers/{}/", self.s.dc));
            let taken: HashSet<u64> = client
                .get(
                    prefix.clone(),
                    Some(GetOptions::new().with_prefix().with_keys_only()),
                )
                .await
                .map_err(unavailable)?
                .kvs()
                .iter()
                .filter_map(|kv| kv.key_str().ok()?.strip_prefix(&prefix)?.parse().ok())
                .collect();
            for w in (0..=self.s.max_worker).filter(|w| !taken.contains(w)) {
                let wk = self.worker_key(self.s.dc, w);
                let txn = Txn::new()
                    .when([Compare::create_revision(wk.clone(), CompareOp::Equal, 0)])
                    .and_then([
                        TxnOp::put(wk, self.info(w), Some(PutOptions::new().with_lease(lease))),
                        TxnOp::get(self.hwm_key(self.s.dc, w), None),
                    ]);
                let resp = client.txn(txn).await.map_err(unavailable)?;
                if resp.succeeded() {
                    // An unreadable mark leaves this ID's floor unknown: refuse it (the
                    // caller revokes the lease, which frees the key again).
                    let hwm_key = self.hwm_key(self.s.dc, w);
                    let hwm_ms = parse_hwm(&hwm_key, resp.op_responses().get(1))?;
                    return Ok(Some(WorkerClaim {
                        dc: self.s.dc,
                        worker: w,
                        hwm_ms,
                        lease,
                    }));
                }
            }
            Ok(None)
        })
        .await;
        match claimed {
            Ok(Some(claim)) => Ok(claim),
            Ok(None) => {
                self.revoke(lease).await;
                Err(WorkerError::AllTaken(self.s.max_worker + 1, self.s.dc))
            }
            Err(e) => {
                self.revoke(lease).await;
                Err(e.into())
            }
        }
    }

    /// Raises the ID's high timestamp to `unix_ms`, never lowers it: a renewal that timed
    /// out here may still commit at etcd after a later, higher one, and must not pull the
    /// mark back below timestamps already issued. Each write is guarded on the mark being as
    /// read and on our lease still holding the worker key.
    async fn reserve(&self, claim: &WorkerClaim, unix_ms: u64) -> Result<(), WorkerError> {
        let wk = self.worker_key(claim.dc, claim.worker);
        let hk = self.hwm_key(claim.dc, claim.worker);
        let held = || Compare::lease(wk.as_str(), CompareOp::Equal, claim.lease);
        let mut client = self.client.clone();
        // Ok(false): the lease compare failed, the claim is gone.
        let holds = bounded(self.s.timeout, async {
            // Read the mark only while the claim holds: a mark already high enough may have
            // been written by the ID's next owner, and is no reservation of ours.
            let read = Txn::new()
                .when([held()])
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
                        held(),
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
        .await?;
        if holds {
            Ok(())
        } else {
            Err(WorkerError::NotHeld(claim.worker))
        }
    }

    /// Persists the highest timestamp really used and gives the ID up. Unlike `reserve`
    /// this may lower the mark (to below the reservation): at a graceful stop the node
    /// knows nothing above it was issued, so the next owner need not wait for it.
    async fn release(&self, claim: &WorkerClaim, unix_ms: u64) -> Result<(), WorkerError> {
        let key = self.hwm_key(claim.dc, claim.worker);
        let result = self
            .guarded_put(claim, key, unix_ms.to_string(), None)
            .await;
        self.revoke(claim.lease).await;
        result
    }
}

#[async_trait]
impl ClusterView for EtcdCluster {
    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let mut client = self.client.clone();
        let prefix = self.key("workers/");
        let resp = bounded(self.s.timeout, async {
            client
                .get(prefix, Some(GetOptions::new().with_prefix()))
                .await
                .map_err(unavailable)
        })
        .await?;
        let mut nodes: Vec<NodeInfo> = resp
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect();
        nodes.sort_by_key(|n: &NodeInfo| (n.dc_id, n.worker_id));
        Ok(nodes)
    }
}

/// How long before the lease TTL runs out, counted from the last confirmed renewal, a node
/// fences itself: max(1 s, TTL / 5), room for etcd and this node disagreeing on time.
pub fn fence_margin(lease_ttl_s: u64) -> Duration {
    (Duration::from_secs(lease_ttl_s) / 5).max(Duration::from_secs(1))
}

/// How far ahead a cluster node reserves timestamps: the lease TTL plus the fence margin.
/// At the fence the reservation then still reaches about `2 * margin - 1.35 s` past the
/// frozen time (renewal granularity 1 s, ticks 250 ms and 100 ms), room for degraded
/// numbers, while a node taking the worker ID over after the lease expires waits at most
/// about the margin for its clock to pass it.
pub fn reserve_window(lease_ttl_s: u64) -> Duration {
    Duration::from_secs(lease_ttl_s) + fence_margin(lease_ttl_s)
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
    metrics: Metrics,
    claim_tx: watch::Sender<Option<WorkerClaim>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut all_taken_logged = false;
    loop {
        if *stop.borrow() {
            return;
        }
        let claim = match worker::acquire(&node, cluster.as_ref()).await {
            Ok(c) => c,
            Err(e) => {
                let wait = match &e {
                    WorkerError::AllTaken(..) => {
                        if !all_taken_logged {
                            tracing::warn!(error = %e, "no worker ID free: this node is not ready and issues no snowflake numbers");
                            all_taken_logged = true;
                        }
                        Duration::from_millis(cluster.s.lease_ttl_s * 500)
                    }
                    _ => {
                        tracing::warn!(error = %e, "could not claim a worker ID; retrying");
                        Duration::from_secs(1)
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        all_taken_logged = false;
        let _ = claim_tx.send(Some(claim.clone()));
        node.set_lease_lost(false);
        metrics.lease_healthy.set(1);
        crate::app::handle_start_gap(
            &node,
            reserve_window(cluster.s.lease_ttl_s).as_millis() as u64,
        );
        match keep_alive(&cluster, &node, &metrics, &claim, &mut stop).await {
            Ended::Stopped => return,
            Ended::Expired => {
                node.set_lease_lost(true);
                metrics.lease_healthy.set(0);
                tracing::warn!(
                    worker = claim.worker,
                    "worker lease expired; claiming a worker ID again"
                );
            }
        }
    }
}

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

async fn keep_alive(
    cluster: &EtcdCluster,
    node: &Node,
    metrics: &Metrics,
    claim: &WorkerClaim,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    let ttl = Duration::from_secs(cluster.s.lease_ttl_s);
    let every = (ttl / 3).clamp(Duration::from_millis(500), Duration::from_secs(5));
    let fence_after = ttl.saturating_sub(fence_margin(cluster.s.lease_ttl_s));
    let deadline = every.min(Duration::from_secs(2));
    let mut last_ok = Instant::now();
    let mut last_try: Option<Instant> = None;
    let mut session = None;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return Ended::Stopped,
        }
        if *stop.borrow() {
            return Ended::Stopped;
        }
        if last_ok.elapsed() > fence_after && !node.lease_lost() {
            node.set_lease_lost(true);
            metrics.lease_healthy.set(0);
        }
        let due = match last_try {
            None => true,
            Some(t) if node.lease_lost() => t.elapsed() >= Duration::from_millis(500),
            Some(t) => t.elapsed() >= every,
        };
        if !due {
            continue;
        }
        let sent = Instant::now();
        last_try = Some(sent);
        match tokio::time::timeout(deadline, renew(cluster, &mut session, claim.lease)).await {
            Ok(Ok(left)) if left > 0 => {
                last_ok = sent;
                if node.lease_lost() {
                    tracing::info!("worker lease renewed again");
                    node.set_lease_lost(false);
                    metrics.lease_healthy.set(1);
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

/// Keeps the in-memory prefix registry equal to etcd's `prefixes/`: a full read, then a
/// watch from the next revision; any break in the watch means a full read again.
pub async fn watch_prefixes(
    client: Client,
    root: String,
    service: Arc<Service>,
    timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let prefix = format!("{root}/prefixes/");
    loop {
        let mut c = client.clone();
        let read = bounded(timeout, async {
            c.get(prefix.clone(), Some(GetOptions::new().with_prefix()))
                .await
                .map_err(unavailable)
        })
        .await;
        let revision = match read {
            Ok(resp) => {
                let mut all = HashMap::new();
                for kv in resp.kvs() {
                    let Some(key) = kv.key_str().ok().and_then(|k| k.strip_prefix(&prefix)) else {
                        continue;
                    };
                    match serde_json::from_slice::<PrefixConfig>(kv.value()) {
                        Ok(cfg) => {
                            all.insert(key.to_string(), cfg);
                        }
                        Err(e) => {
                            tracing::error!(prefix = key, error = %e, "unreadable config in etcd; skipped")
                        }
                    }
                }
                service.sync(all);
                resp.header().map_or(0, |h| h.revision())
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot read prefix configs; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let watched = tokio::time::timeout(timeout, c.watch(prefix.clone(), Some(opts))).await;
        let Ok(Ok(mut stream)) = watched else {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                _ = stop.changed() => return,
            }
        };
        loop {
            tokio::select! {
                msg = stream.message() => match msg {
                    Ok(Some(resp)) => {
                        if resp.canceled() {
                            break;
                        }
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            let Some(key) = kv.key_str().ok().and_then(|k| k.strip_prefix(&prefix)) else {
                                continue;
                            };
                            match ev.event_type() {
                                EventType::Put => match serde_json::from_slice::<PrefixConfig>(kv.value()) {
                                    Ok(cfg) => {
                                        if let Err(e) = service.apply(key, cfg) {
                                            tracing::error!(prefix = key, error = %e, "config from etcd is invalid");
                                        }
                                    }
                                    Err(e) => tracing::error!(prefix = key, error = %e, "unreadable config in etcd"),
                                },
                                EventType::Delete => service.forget(key),
                            }
                        }
                    }
                    _ => break,
                },
                _ = stop.changed() => return,
            }
        }
        tracing::debug!("prefix watch ended; reading all configs again");
    }
}

/// Measures this node's clock against its peers every `every`, publishes the offset, and
/// marks the node skewed beyond `max_skew_ms`.
pub async fn watch_skew(
    cluster: Arc<EtcdCluster>,
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
        let Ok(nodes) = cluster.nodes().await else {
            continue;
        };
        let mut probes = tokio::task::JoinSet::new();
        for peer in nodes.into_iter().filter(|n| n.node_id != cluster.s.node_id) {
            let clock = cluster.clock.clone();
            probes.spawn(async move {
                skew::probe(&peer.addr, clock.as_ref(), 3, Duration::from_secs(1)).await
            });
        }
        let mut offsets = Vec::new();
        while let Some(r) = probes.join_next().await {
            if let Ok(Some(sample)) = r {
                offsets.push(sample.offset_ms);
            }
        }
        // Fewer than two peers answered: no judgement, keep what was measured last.
        let Some(offset) = skew::node_offset(&offsets) else {
            continue;
        };
        cluster.offset_ms.store(offset.to_bits(), Ordering::Relaxed);
        metrics.clock_offset_ms.set(offset);
        node.set_clock_skew(offset.abs() > max_skew_ms as f64, offset);
    }
}
