//! The etcd store for cluster mode: the same [`Store`] contract as the embedded store, kept in
//! etcd so that every node sees the same prefix configs and sequence counters. Every key
//! comes from [`Keys`] (the whole scheme, SPEC section 5); the connection and its security
//! are made in `connect`.
//!
//! Every read-modify-write is one etcd transaction guarded on what was read (its
//! `mod_revision`, or `create_revision == 0` for a key not yet written), retried when another
//! node wrote in between. That makes each call atomic across the cluster, like one redb write
//! transaction is on one node. Every call runs under the store deadline, so a stopped or
//! partitioned etcd shows up as [`StoreError::Timeout`] rather than a hung request.
//!
//! The worker IDs' high timestamps are not the store's: the worker-ID source writes them,
//! guarded on its lease (`cluster::lease`).

mod connect;
mod keys;

pub use keys::Keys;

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, GetOptions, KeyValue, KvClient, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse,
};

use super::{
    AUDIT_KEEP, AuditMeta, AuditRecord, DEFAULT_TIMEOUT, Observed, Revision, SeqBlock, Snapshot,
    Store, StoreError, Written, bounded, next_block, parse_bound_reset, plan_write, reset_to_bind,
};
use crate::config::EtcdConfig;
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

async fn read(kv: &mut KvClient, key: &str) -> Result<Seen, StoreError> {
    let resp = kv.get(key, None).await.map_err(unavailable)?;
    Ok(Seen::from_kvs(resp.kvs()))
}

/// Puts `value` at `key` when the key is still at `revision` (0: absent). On a lost race the
/// same transaction reads the key back, so the caller can retry without another round trip:
/// `Ok(None)` when written, `Ok(Some(now))` when not.
async fn put_if_unchanged(
    kv: &mut KvClient,
    key: &str,
    revision: i64,
    value: impl Into<Vec<u8>>,
) -> Result<Option<Seen>, StoreError> {
    let txn = Txn::new()
        .when([unchanged(key, revision)])
        .and_then([TxnOp::put(key, value, None)])
        .or_else([TxnOp::get(key, None)]);
    let resp = kv.txn(txn).await.map_err(unavailable)?;
    if resp.succeeded() {
        return Ok(None);
    }
    Ok(Some(seen_in(&resp.op_responses())))
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

/// The etcd backend. Cheap to clone: the etcd-client `Client` is a handle on one shared
/// connection pool.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    keys: Keys,
    timeout: Duration,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("root", &self.keys.root())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects to the configured endpoints (see `connect::client`).
    pub async fn connect(cfg: &EtcdConfig) -> Result<EtcdStore, StoreError> {
        Ok(EtcdStore::from_client(
            connect::client(cfg).await?,
            &cfg.root,
        ))
    }

    /// A store on an existing client, with its keys under `root`.
    pub fn from_client(client: Client, root: &str) -> EtcdStore {
        EtcdStore {
            client,
            keys: Keys::new(root),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Sets the deadline of every call.
    pub fn with_timeout(mut self, timeout: Duration) -> EtcdStore {
        self.timeout = timeout;
        self
    }

    /// The underlying client, for the parts of cluster mode that need more than the store
    /// (leases, worker registration).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Where every key lives.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    fn kv(&self) -> KvClient {
        self.client.kv_client()
    }

    /// The value at `key` read by `parse` (which names `key` in its error); `None` when
    /// the key is absent.
    async fn get_parsed<T>(
        &self,
        key: &str,
        parse: impl Fn(&str, &[u8]) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        bounded(self.timeout, async {
            let seen = read(&mut self.kv(), key).await?;
            seen.value.map(|v| parse(key, &v)).transpose()
        })
        .await
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn snapshot_prefixes(&self) -> Result<Snapshot, StoreError> {
        let dir = self.keys.prefixes();
        bounded(self.timeout, async {
            let resp = self
                .kv()
                .get(dir.as_str(), Some(GetOptions::new().with_prefix()))
                .await
                .map_err(unavailable)?;
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
        })
        .await
    }

    async fn observe_prefix(&self, key: &str) -> Result<Observed, StoreError> {
        let key = self.keys.prefix(key);
        bounded(self.timeout, async {
            let resp = self
                .kv()
                .get(key.as_str(), None)
                .await
                .map_err(unavailable)?;
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
        })
        .await
    }

    /// `create_prefix` (`create_only`) and `replace_prefix`: the config and the counters'
    /// reset binding are read together, decided by [`plan_write`], and written by one
    /// transaction guarded on both being as read, so that no concurrent write slips in
    /// between check and write.
    async fn write_prefix(
        &self,
        prefix_key: &str,
        config: &PrefixConfig,
        create_only: bool,
        audit: &AuditMeta,
    ) -> Result<(Written, Revision), StoreError> {
        let (key, bind_key, json) = (
            self.keys.prefix(prefix_key),
            self.keys.seq_reset(prefix_key),
            encode(config)?,
        );
        bounded(self.timeout, async {
            let mut kv = self.kv();
            loop {
                let both = Txn::new().and_then([
                    TxnOp::get(key.as_str(), None),
                    TxnOp::get(bind_key.as_str(), None),
                    audit_keys(&self.keys.audit(prefix_key)),
                ]);
                let resp = kv.txn(both).await.map_err(unavailable)?;
                let ops = resp.op_responses();
                let audited = keys_in(ops.get(2));
                let (stored, bound) = (seen_in(&ops), seen_in(ops.get(1..).unwrap_or_default()));
                let existing = stored
                    .value
                    .as_deref()
                    .map(|v| decode(&key, v))
                    .transpose()?;
                let bound_reset = bound
                    .value
                    .as_deref()
                    .map(|v| parse_bound_reset(&bind_key, v))
                    .transpose()?;
                let outcome = plan_write(existing.as_ref(), bound_reset, config, create_only);
                if !outcome.wrote() {
                    return Ok((outcome, 0));
                }
                let mut writes = vec![TxnOp::put(key.as_str(), json.as_str(), None)];
                if let Some(reset) = reset_to_bind(config, bound_reset) {
                    writes.push(TxnOp::put(bind_key.as_str(), reset.as_str(), None));
                }
                let mut guards = vec![
                    unchanged(&key, stored.revision),
                    unchanged(&bind_key, bound.revision),
                ];
                if let Some(record) =
                    AuditRecord::of_write(audit, &outcome, existing.as_ref(), config)
                {
                    let (new, ops) = append_audit(&self.keys, prefix_key, &audited, &record)?;
                    guards.push(new);
                    writes.extend(ops);
                }
                let txn = Txn::new().when(guards).and_then(writes);
                let resp = kv.txn(txn).await.map_err(unavailable)?;
                if resp.succeeded() {
                    return Ok((outcome, header_revision(resp.header())));
                }
            }
        })
        .await
    }

    /// Reads the config and the audit record keys together, then deletes the config and
    /// appends the record in one transaction guarded on the config being as read.
    async fn remove_prefix(
        &self,
        prefix_key: &str,
        audit: &AuditMeta,
    ) -> Result<Option<Revision>, StoreError> {
        let key = self.keys.prefix(prefix_key);
        bounded(self.timeout, async {
            let mut kv = self.kv();
            loop {
                let read = Txn::new().and_then([
                    TxnOp::get(key.as_str(), None),
                    audit_keys(&self.keys.audit(prefix_key)),
                ]);
                let resp = kv.txn(read).await.map_err(unavailable)?;
                let ops = resp.op_responses();
                let stored = seen_in(&ops);
                let Some(value) = stored.value else {
                    return Ok(None);
                };
                let before = decode(&key, &value).ok();
                let record = AuditRecord::of_delete(audit, before);
                let audited = keys_in(ops.get(1));
                let (new, mut writes) = append_audit(&self.keys, prefix_key, &audited, &record)?;
                writes.insert(0, TxnOp::delete(key.as_str(), None));
                let txn = Txn::new()
                    .when([unchanged(&key, stored.revision), new])
                    .and_then(writes);
                let resp = kv.txn(txn).await.map_err(unavailable)?;
                if resp.succeeded() {
                    return Ok(Some(header_revision(resp.header())));
                }
            }
        })
        .await
    }

    async fn prefix_history(&self, prefix_key: &str) -> Result<Vec<AuditRecord>, StoreError> {
        let dir = self.keys.audit(prefix_key);
        bounded(self.timeout, async {
            let options = GetOptions::new()
                .with_prefix()
                .with_sort(SortTarget::Create, SortOrder::Descend)
                .with_limit(AUDIT_KEEP as i64);
            let resp = self
                .kv()
                .get(dir.as_str(), Some(options))
                .await
                .map_err(unavailable)?;
            resp.kvs()
                .iter()
                .map(|kv| AuditRecord::decode(&String::from_utf8_lossy(kv.key()), kv.value()))
                .collect()
        })
        .await
    }

    async fn reserve_seq(
        &self,
        counter: &str,
        size: u64,
        initial: u64,
    ) -> Result<SeqBlock, StoreError> {
        let key = self.keys.seq(counter);
        bounded(self.timeout, async {
            let mut kv = self.kv();
            let mut seen = read(&mut kv, &key).await?;
            // Compare-and-swap: each lost race hands back the counter as it now stands, and
            // some node wins every round, so this ends (or the deadline does).
            loop {
                let stored = seen
                    .value
                    .as_deref()
                    .map(|v| parse_u64(&key, v))
                    .transpose()?;
                let current = stored.unwrap_or(initial).max(initial);
                let block = next_block(current, size)
                    .ok_or_else(|| StoreError::Overflow(counter.to_string()))?;
                match put_if_unchanged(&mut kv, &key, seen.revision, block.end.to_string()).await? {
                    None => return Ok(block),
                    Some(now) => seen = now,
                }
            }
        })
        .await
    }

    async fn release_seq(
        &self,
        counter: &str,
        block_end: u64,
        back_to: u64,
    ) -> Result<bool, StoreError> {
        if back_to > block_end {
            // Never upward: that would skip numbers nobody reserved.
            return Ok(false);
        }
        let key = self.keys.seq(counter);
        bounded(self.timeout, async {
            // Values are written only by this module, always as canonical decimal text, so
            // comparing the text is comparing the number. A missing key never compares equal.
            let txn = Txn::new()
                .when([Compare::value(
                    key.as_str(),
                    CompareOp::Equal,
                    block_end.to_string(),
                )])
                .and_then([TxnOp::put(key.as_str(), back_to.to_string(), None)]);
            let resp = self.kv().txn(txn).await.map_err(unavailable)?;
            Ok(resp.succeeded())
        })
        .await
    }

    async fn get_seq(&self, counter: &str) -> Result<Option<u64>, StoreError> {
        self.get_parsed(&self.keys.seq(counter), parse_u64).await
    }

    async fn check_layout(&self, layout: &str) -> Result<(), StoreError> {
        let key = self.keys.layout();
        bounded(self.timeout, async {
            // One transaction: record it if absent, else read what is there.
            let txn = Txn::new()
                .when([unchanged(&key, 0)])
                .and_then([TxnOp::put(key.as_str(), layout, None)])
                .or_else([TxnOp::get(key.as_str(), None)]);
            let resp = self.kv().txn(txn).await.map_err(unavailable)?;
            if resp.succeeded() {
                return Ok(());
            }
            let stored = seen_in(&resp.op_responses()).value.unwrap_or_default();
            let stored = String::from_utf8(stored).map_err(|e| corrupt(&key, e))?;
            if stored == layout {
                Ok(())
            } else {
                Err(StoreError::LayoutMismatch {
                    stored,
                    ours: layout.to_string(),
                })
            }
        })
        .await
    }
}
