//! The etcd store for cluster mode: the same [`Store`] contract as the embedded store, kept in
//! etcd so that every node sees the same prefix configs and sequence counters. Every key
//! comes from [`Keys`] (the whole scheme, SPEC section 5); the connection and its security
//! are made in `connect` and `tls`, and every call goes through [`Members`], which makes it
//! on a member that answers.
//!
//! Every read-modify-write is one etcd transaction guarded on what was read (its
//! `mod_revision`, or `create_revision == 0` for a key not yet written), retried when another
//! node wrote in between. That makes each call atomic across the cluster, like one redb write
//! transaction is on one node, and makes it safe to send again to another member when the
//! first one does not answer (see `members`). Every call runs under the store deadline, so a
//! stopped or partitioned etcd shows up as [`StoreError::Timeout`] rather than a hung request.
//!
//! The worker IDs' high timestamps are not the store's: the worker-ID source writes them,
//! guarded on its lease (`cluster::lease`).

mod connect;
mod keys;
mod members;
mod records;
mod tls;

pub use connect::{ConnectError, connect};
pub use keys::Keys;
pub use members::{Failure, Members, member_trouble};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, GetOptions, KeyValue, KvClient, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse,
};

use super::{
    AUDIT_KEEP, AuditMeta, AuditRecord, Chained, DEFAULT_TIMEOUT, Observed, PrefixRecord, Revision,
    SeqBlock, SeqGuard, Snapshot, Store, StoreError, Written,
};
use crate::config::EtcdConfig;
use crate::format::NodeWidths;
use crate::prefix::PrefixConfig;

pub(crate) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("etcd: {e}"))
}

fn corrupt(key: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        key: key.to_string(),
        detail: detail.to_string(),
    }
}

pub(crate) fn parse_u64(key: &str, value: &[u8]) -> Result<u64, StoreError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.parse::<u64>().ok())
        .ok_or_else(|| {
            corrupt(
                key,
                format!(
                    "expected a decimal u64, found {:?}",
                    String::from_utf8_lossy(value)
                ),
            )
        })
}

fn decode(key: &str, value: &[u8]) -> Result<PrefixConfig, StoreError> {
    serde_json::from_slice(value).map_err(|e| corrupt(key, e))
}

fn encode(config: &PrefixConfig) -> Result<String, StoreError> {
    serde_json::to_string(config).map_err(|e| StoreError::Unavailable(e.to_string()))
}

/// The revision an answer of etcd was made at (its header's; etcd revisions are positive).
fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Revision {
    header.map_or(0, |h| h.revision().max(0) as Revision)
}

/// A key as last seen: its value, and the revision a conditional write is guarded on.
#[derive(Clone, Debug)]
struct Seen {
    value: Option<Vec<u8>>,
    /// The key's `mod_revision`; 0 when it does not exist.
    revision: i64,
}

impl Seen {
    fn from_kvs(kvs: &[KeyValue]) -> Seen {
        match kvs.first() {
            Some(kv) => Seen {
                value: Some(kv.value().to_vec()),
                revision: kv.mod_revision(),
            },
            None => Seen {
                value: None,
                revision: 0,
            },
        }
    }
}

/// The condition "`key` is still as seen". An absent key is guarded on `create_revision == 0`,
/// which holds only while nobody has created it.
fn unchanged(key: &str, revision: i64) -> Compare {
    if revision == 0 {
        Compare::create_revision(key, CompareOp::Equal, 0)
    } else {
        Compare::mod_revision(key, CompareOp::Equal, revision)
    }
}

async fn read(kv: &mut KvClient, key: &str) -> Result<Seen, Failure> {
    let resp = kv.get(key, None).await?;
    Ok(Seen::from_kvs(resp.kvs()))
}

/// The key read by the first get among `responses` (a read, or the `or_else` branch of a
/// failed transaction); absent when there is none.
fn seen_in(responses: &[TxnOpResponse]) -> Seen {
    match responses.first() {
        Some(TxnOpResponse::Get(get)) => Seen::from_kvs(get.kvs()),
        _ => Seen {
            value: None,
            revision: 0,
        },
    }
}

/// A read of every audit record key of a prefix key, oldest first (keys only).
fn audit_keys(dir: &str) -> TxnOp {
    let options = GetOptions::new()
        .with_prefix()
        .with_keys_only()
        .with_sort(SortTarget::Create, SortOrder::Ascend);
    TxnOp::get(dir, Some(options))
}

/// The keys of the records read by [`audit_keys`] in `response`.
fn keys_in(response: Option<&TxnOpResponse>) -> Vec<Vec<u8>> {
    match response {
        Some(TxnOpResponse::Get(get)) => get.kvs().iter().map(|kv| kv.key().to_vec()).collect(),
        _ => Vec::new(),
    }
}

/// The writes that append `record` to a key's audit records, whose keys are `existing`
/// (oldest first): a put under a new key, guarded on that key being new, and the deletes
/// of the oldest records beyond [`AUDIT_KEEP`]. Its place among the records is its create
/// revision, so the key only has to be unique.
fn append_audit(
    keys: &Keys,
    prefix_key: &str,
    existing: &[Vec<u8>],
    record: &AuditRecord,
) -> Result<(Compare, Vec<TxnOp>), StoreError> {
    use std::hash::BuildHasher;
    let noise = std::collections::hash_map::RandomState::new().hash_one(existing.len());
    let id = format!("{:013}-{noise:016x}", record.meta.time_ms);
    let at = keys.audit_record(prefix_key, &id);
    let mut ops = vec![TxnOp::put(at.as_str(), record.encode()?, None)];
    let excess = (existing.len() + 1).saturating_sub(AUDIT_KEEP);
    ops.extend(
        existing[..excess]
            .iter()
            .map(|k| TxnOp::delete(k.clone(), None)),
    );
    Ok((unchanged(&at, 0), ops))
}

/// How many sequence counters' last known state [`EtcdStore`] keeps before it starts over
/// (each is a key and two numbers; counters of old periods are not used again).
const KNOWN_COUNTERS: usize = 4096;
/// Strict reservations of one counter in flight at once. The allocator paces them (a few
/// per round trip); this bound only keeps a round-trip estimate that lags behind (a WAN
/// that just got slower) from making the room, not the round trip, what requests wait on.
const STRICT_DEPTH: usize = 16;

/// The etcd backend. Cheap to clone: the members' clients are handles on shared
/// connections, and the counters' last known state is shared.
#[derive(Clone)]
pub struct EtcdStore {
    members: Members,
    keys: Keys,
    timeout: Duration,
    /// Each sequence counter as this store last wrote or saw it, so that the next
    /// reservation is one guarded transaction (no read first) when nobody else wrote.
    counters: Arc<Mutex<HashMap<String, Seen>>>,
    /// The layout's `{dc}`/`{worker}` widths, for the format clash check.
    nodes: NodeWidths,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("root", &self.keys.root())
            .field("timeout", &self.timeout)
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects to the configured endpoints (see [`connect`]).
    pub async fn connect(cfg: &EtcdConfig) -> Result<EtcdStore, StoreError> {
        Ok(EtcdStore::new(connect(cfg).await?, &cfg.root))
    }

    /// A store on `members`, with its keys under `root`.
    pub fn new(members: Members, root: &str) -> EtcdStore {
        EtcdStore {
            members,
            keys: Keys::new(root),
            timeout: DEFAULT_TIMEOUT,
            counters: Arc::default(),
            nodes: NodeWidths::default(),
        }
    }

    /// A store on an existing client (one member), with its keys under `root`.
    pub fn from_client(client: Client, root: &str) -> EtcdStore {
        EtcdStore::new(Members::from(client), root)
    }

    /// Sets the deadline of every call.
    pub fn with_timeout(mut self, timeout: Duration) -> EtcdStore {
        self.timeout = timeout;
        self
    }

    /// The members every call goes to, for the parts of cluster mode that need more than
    /// the store (leases, worker registration, the config watch).
    pub fn members(&self) -> &Members {
        &self.members
    }

    /// Sets the layout's `{dc}`/`{worker}` widths (default: the default layout's).
    pub fn with_node_widths(mut self, nodes: NodeWidths) -> EtcdStore {
        self.nodes = nodes;
        self
    }

    /// The preferred member's client, for tests and tools (calls on it stay on it).
    pub fn client(&self) -> Client {
        self.members.client()
    }

    /// Where every key lives.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The value at `key` read by `parse` (which names `key` in its error); `None` when
    /// the key is absent.
    async fn get_parsed<T>(
        &self,
        key: &str,
        parse: impl Fn(&str, &[u8]) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let seen = self
            .members
            .call(self.timeout, |c, _| async move {
                read(&mut c.kv_client(), key).await
            })
            .await?;
        seen.value.map(|v| parse(key, &v)).transpose()
    }

    /// What this store last knew of counter `key`.
    fn known(&self, key: &str) -> Option<Seen> {
        let known = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        known.get(key).cloned()
    }

    fn learn(&self, key: &str, seen: Seen) {
        let mut known = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() >= KNOWN_COUNTERS && !known.contains_key(key) {
            known.clear();
        }
        // Revisions only grow: of two answers that arrive out of order, the newer stays.
        match known.get_mut(key) {
            Some(old) if old.revision > seen.revision && seen.revision != 0 => {}
            Some(old) => *old = seen,
            None => {
                known.insert(key.to_string(), seen);
            }
        }
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn snapshot_prefixes(&self) -> Result<Snapshot, StoreError> {
        let dir = self.keys.prefixes();
        let resp = self
            .members
            .call(self.timeout, |mut c, _| {
                let dir = dir.as_str();
                async move { Ok(c.get(dir, Some(GetOptions::new().with_prefix())).await?) }
            })
            .await?;
        let mut configs = Vec::with_capacity(resp.kvs().len());
        for kv in resp.kvs() {
            let full = kv.key_str().map_err(|e| corrupt(&dir, e))?;
            // Only direct children are configs; anything deeper is not ours to read.
            if let Some(name) = self.keys.prefix_name(full) {
                let revision = kv.mod_revision() as Revision;
                configs.push((name.to_string(), decode(full, kv.value())?, revision));
            }
        }
        // etcd returns a range sorted by key, like the embedded store's table.
        Ok(Snapshot {
            revision: header_revision(resp.header()),
            configs,
        })
    }

    async fn observe_prefix(&self, key: &str) -> Result<Observed, StoreError> {
        let key = self.keys.prefix(key);
        let at = key.as_str();
        let resp = self
            .members
            .call(self.timeout, |mut c, _| async move {
                Ok(c.get(at, None).await?)
            })
            .await?;
        Ok(match resp.kvs().first() {
            Some(kv) => Observed {
                config: Some(decode(&key, kv.value())?),
                revision: kv.mod_revision() as Revision,
            },
            None => Observed {
                config: None,
                revision: header_revision(resp.header()),
            },
        })
    }

    /// `create_prefix` (`create_only`) and `replace_prefix`: the config, the key's record,
    /// its counters and its audit keys are read together, decided by `plan_write`, and
    /// written by one transaction guarded on all of them being as read (see `records`).
    async fn write_prefix(
        &self,
        prefix_key: &str,
        config: &PrefixConfig,
        create_only: bool,
        audit: &AuditMeta,
    ) -> Result<(Written, Revision), StoreError> {
        records::write_prefix(self, prefix_key, config, create_only, audit).await
    }

    async fn prefix_record(&self, key: &str) -> Result<Option<PrefixRecord>, StoreError> {
        records::prefix_record(self, key).await
    }

    /// Reads the config and the audit record keys together, then deletes the config and
    /// appends the record in one transaction guarded on the config being as read, so that
    /// a delete sent to a member that did not answer cannot run later over a config
    /// registered since. A retry that finds the key gone after an earlier attempt saw it
    /// reports it deleted (that attempt committed, its audit record with it).
    async fn remove_prefix(
        &self,
        prefix_key: &str,
        audit: &AuditMeta,
    ) -> Result<Option<Revision>, StoreError> {
        let key = self.keys.prefix(prefix_key);
        let key = key.as_str();
        let audit_dir = self.keys.audit(prefix_key);
        let audit_dir = audit_dir.as_str();
        let saw = std::sync::atomic::AtomicBool::new(false);
        let saw = &saw;
        self.members
            .call(self.timeout, |c, _| async move {
                let mut kv = c.kv_client();
                loop {
                    let read = Txn::new().and_then([TxnOp::get(key, None), audit_keys(audit_dir)]);
                    let resp = kv.txn(read).await?;
                    let ops = resp.op_responses();
                    let stored = seen_in(&ops);
                    let Some(value) = stored.value else {
                        let seen_before = saw.load(std::sync::atomic::Ordering::Relaxed);
                        return Ok(seen_before.then(|| header_revision(resp.header())));
                    };
                    saw.store(true, std::sync::atomic::Ordering::Relaxed);
                    let before = decode(key, &value).ok();
                    let record = AuditRecord::of_delete(audit, before);
                    let audited = keys_in(ops.get(1));
                    let (new, mut writes) =
                        append_audit(&self.keys, prefix_key, &audited, &record)?;
                    writes.insert(0, TxnOp::delete(key, None));
                    let txn = Txn::new()
                        .when([unchanged(key, stored.revision), new])
                        .and_then(writes);
                    let resp = kv.txn(txn).await?;
                    if resp.succeeded() {
                        return Ok(Some(header_revision(resp.header())));
                    }
                }
            })
            .await
    }

    async fn prefix_history(&self, prefix_key: &str) -> Result<Vec<AuditRecord>, StoreError> {
        let dir = self.keys.audit(prefix_key);
        let dir = dir.as_str();
        let resp = self
            .members
            .call(self.timeout, |mut c, _| async move {
                let options = GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Create, SortOrder::Descend)
                    .with_limit(AUDIT_KEEP as i64);
                Ok(c.get(dir, Some(options)).await?)
            })
            .await?;
        resp.kvs()
            .iter()
            .map(|kv| AuditRecord::decode(&String::from_utf8_lossy(kv.key()), kv.value()))
            .collect()
    }

    async fn reserve_seq_as(
        &self,
        counter: &str,
        size: u64,
        initial: u64,
        guard: Option<&SeqGuard<'_>>,
    ) -> Result<SeqBlock, StoreError> {
        records::reserve(self, counter, size, initial, guard).await
    }

    fn strict_depth(&self) -> usize {
        STRICT_DEPTH
    }

    async fn reserve_seq_from(
        &self,
        counter: &str,
        from: &[u64],
        end: u64,
        guard: &SeqGuard<'_>,
    ) -> Result<Chained, StoreError> {
        records::reserve_from(self, counter, from, end, guard).await
    }

    async fn release_seq_as(
        &self,
        counter: &str,
        block_end: u64,
        back_to: u64,
        guard: Option<&SeqGuard<'_>>,
    ) -> Result<bool, StoreError> {
        records::release(self, counter, block_end, back_to, guard).await
    }

    async fn get_seq(&self, counter: &str) -> Result<Option<u64>, StoreError> {
        self.get_parsed(&self.keys.seq(counter), parse_u64).await
    }

    async fn check_layout(&self, layout: &str) -> Result<(), StoreError> {
        let key = self.keys.layout();
        let key = key.as_str();
        let stored = self
            .members
            .call(self.timeout, |c, _| async move {
                // One transaction: record it if absent, else read what is there.
                let txn = Txn::new()
                    .when([unchanged(key, 0)])
                    .and_then([TxnOp::put(key, layout, None)])
                    .or_else([TxnOp::get(key, None)]);
                let resp = c.kv_client().txn(txn).await?;
                Ok((!resp.succeeded()).then(|| seen_in(&resp.op_responses()).value))
            })
            .await?;
        let Some(stored) = stored else { return Ok(()) };
        let stored = String::from_utf8(stored.unwrap_or_default()).map_err(|e| corrupt(key, e))?;
        if stored == layout {
            Ok(())
        } else {
            Err(StoreError::LayoutMismatch {
                stored,
                ours: layout.to_string(),
            })
        }
    }
}
