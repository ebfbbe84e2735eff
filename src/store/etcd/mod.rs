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
mod records;

pub use keys::Keys;

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, GetOptions, KeyValue, KvClient, Txn, TxnOp, TxnOpResponse,
};

use super::{
    DEFAULT_TIMEOUT, PrefixRecord, SeqBlock, SeqGuard, Store, StoreError, Written, bounded,
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

/// The etcd backend. Cheap to clone: the etcd-client `Client` is a handle on one shared
/// connection pool.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    keys: Keys,
    timeout: Duration,
    /// The layout's `{dc}`/`{worker}` widths, for the format clash check.
    nodes: NodeWidths,
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
            nodes: NodeWidths::default(),
        }
    }

    /// Sets the deadline of every call.
    pub fn with_timeout(mut self, timeout: Duration) -> EtcdStore {
        self.timeout = timeout;
        self
    }

    /// Sets the layout's `{dc}`/`{worker}` widths (default: the default layout's).
    pub fn with_node_widths(mut self, nodes: NodeWidths) -> EtcdStore {
        self.nodes = nodes;
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
    async fn list_prefixes(&self) -> Result<Vec<(String, PrefixConfig)>, StoreError> {
        let dir = self.keys.prefixes();
        bounded(self.timeout, async {
            let resp = self
                .kv()
                .get(dir.as_str(), Some(GetOptions::new().with_prefix()))
                .await
                .map_err(unavailable)?;
            let mut out = Vec::with_capacity(resp.kvs().len());
            for kv in resp.kvs() {
                let full = kv.key_str().map_err(|e| corrupt(&dir, e))?;
                // Only direct children are configs; anything deeper is not ours to read.
                if let Some(name) = self.keys.prefix_name(full) {
                    out.push((name.to_string(), decode(full, kv.value())?));
                }
            }
            // etcd returns a range sorted by key, like the embedded store's table.
            Ok(out)
        })
        .await
    }

    async fn get_prefix(&self, key: &str) -> Result<Option<PrefixConfig>, StoreError> {
        self.get_parsed(&self.keys.prefix(key), decode).await
    }

    /// `create_prefix` (`create_only`) and `replace_prefix`: the config, the key's record
    /// and its counters are read together, decided by `plan_write`, and written by one
    /// transaction guarded on all of them being as read (see `records`).
    async fn write_prefix(
        &self,
        key: &str,
        config: &PrefixConfig,
        create_only: bool,
    ) -> Result<Written, StoreError> {
        records::write_prefix(self, key, config, create_only).await
    }

    async fn prefix_record(&self, key: &str) -> Result<Option<PrefixRecord>, StoreError> {
        records::prefix_record(self, key).await
    }

    async fn delete_prefix(&self, key: &str) -> Result<bool, StoreError> {
        let key = self.keys.prefix(key);
        bounded(self.timeout, async {
            let resp = self
                .kv()
                .delete(key.as_str(), None)
                .await
                .map_err(unavailable)?;
            Ok(resp.deleted() > 0)
        })
        .await
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
