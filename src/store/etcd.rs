//! The etcd store for cluster mode: the same [`Store`] contract as the embedded store, kept in
//! etcd so that every node sees the same prefix configs, sequence counters and worker high
//! timestamps. Keys live under the configured root (SPEC section 5):
//!
//! ```text
//! {root}/prefixes/{key}        PrefixConfig as JSON
//! {root}/seq/{key}[/{period}]  sequence high-water mark, decimal u64 text
//! {root}/hwm/{dc}/{worker}     reserved high timestamp, decimal Unix ms text
//! {root}/layout                the ID layout the data was written with
//! ```
//!
//! Every read-modify-write is one etcd transaction guarded on what was read (its
//! `mod_revision`, or `create_revision == 0` for a key not yet written), retried when another
//! node wrote in between. That makes each call atomic across the cluster, like one redb write
//! transaction is on one node. Every call runs under the store deadline, so a stopped or
//! partitioned etcd shows up as [`StoreError::Timeout`] rather than a hung request.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KeyValue,
    KvClient, TlsOptions, Txn, TxnOp, TxnOpResponse,
};

use super::{
    DEFAULT_TIMEOUT, SeqBlock, Store, StoreError, Written, bounded, next_block, parse_bound_reset,
    plan_write, reset_to_bind,
};
use crate::config::EtcdConfig;
use crate::prefix::PrefixConfig;

/// How long one TCP (and TLS) connection attempt to an endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The whole of [`EtcdStore::connect`], authentication included.
const CONNECT_DEADLINE: Duration = Duration::from_secs(5);
/// HTTP/2 pings on a connection with requests in flight. etcd answers pings more often than
/// every 5 s (its `--grpc-keepalive-min-time`) with GOAWAY "too_many_pings", so stay above it;
/// pings are sent only while streams are open for the same reason (etcd does not permit
/// pings without streams).
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// A ping unanswered for this long drops the connection, so the next call reconnects.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// The kernel's keep-alive on idle connections, so a half-open TCP connection is noticed.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);

fn unavailable(e: impl std::fmt::Display) -> StoreError {
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

/// The etcd backend. Cheap to clone: the etcd-client `Client` is a handle on one shared
/// connection pool.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    /// The key prefix, as configured (`/numgen` by default).
    root: String,
    timeout: Duration,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("root", &self.root)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects to the configured endpoints. Certificate files are read here, and with a
    /// user name the client authenticates here, so a wrong password or a missing file fails
    /// at start-up. Without authentication the connection itself is made on the first call:
    /// a dead etcd then shows up as the first call's `Timeout` or `Unavailable`.
    pub async fn connect(cfg: &EtcdConfig) -> Result<EtcdStore, StoreError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT)
            .with_keep_alive_while_idle(false)
            .with_tcp_keepalive(TCP_KEEPALIVE);
        if let (Some(user), Some(password)) = (&cfg.username, &cfg.password) {
            // etcd's auth tokens expire (5 minutes by default); refresh them instead of
            // failing every call after that.
            options = options
                .with_user(user.clone(), password.expose())
                .with_auto_token_refresh(true);
        }
        let tls = wants_tls(cfg);
        if tls {
            options = options.with_tls(tls_options(cfg).await?);
        }
        tracing::info!(
            endpoints = ?cfg.endpoints,
            root = %cfg.root,
            tls,
            user = cfg.username.as_deref().unwrap_or(""),
            "connecting to etcd"
        );
        let client = bounded(CONNECT_DEADLINE, async {
            Client::connect(&cfg.endpoints, Some(options))
                .await
                .map_err(unavailable)
        })
        .await?;
        Ok(EtcdStore::from_client(client, &cfg.root))
    }

    /// A store on an existing client, with its keys under `root`.
    pub fn from_client(client: Client, root: &str) -> EtcdStore {
        EtcdStore {
            client,
            root: root.to_string(),
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

    pub fn root(&self) -> &str {
        &self.root
    }

    /// The full etcd key of `rel` under the root. A root of `/` gives `/rel`, not `//rel`.
    pub fn key(&self, rel: &str) -> String {
        format!("{}/{rel}", self.root.trim_end_matches('/'))
    }

    fn kv(&self) -> KvClient {
        self.client.kv_client()
    }

    fn seq_key(&self, counter: &str) -> String {
        self.key(&format!("seq/{counter}"))
    }

    fn prefix_key(&self, key: &str) -> String {
        self.key(&format!("prefixes/{key}"))
    }

    /// The reset a sequence prefix's counters are bound to (kept after DELETE).
    fn seq_reset_key(&self, key: &str) -> String {
        self.key(&format!("seq-reset/{key}"))
    }

    fn hwm_key(&self, dc: u64, worker: u64) -> String {
        self.key(&format!("hwm/{dc}/{worker}"))
    }
}

/// TLS when an endpoint says `https://`, or when certificates are configured and no
/// endpoint says `http://` (a bare `host:port` then means https). Mixing the two schemes is
/// refused by the client.
fn wants_tls(cfg: &EtcdConfig) -> bool {
    let https = cfg.endpoints.iter().any(|e| e.starts_with("https://"));
    let http = cfg.endpoints.iter().any(|e| e.starts_with("http://"));
    https || (!http && (cfg.ca_file.is_some() || cfg.cert_file.is_some()))
}

async fn read_pem(setting: &str, path: &Path) -> Result<Vec<u8>, StoreError> {
    tokio::fs::read(path).await.map_err(|e| {
        StoreError::Unavailable(format!("cannot read {setting} {}: {e}", path.display()))
    })
}

async fn tls_options(cfg: &EtcdConfig) -> Result<TlsOptions, StoreError> {
    // This build carries no system CA roots (etcd-client's `tls` feature does not enable
    // them), and etcd clusters are normally signed by a private CA anyway: without a CA
    // file no server certificate could be verified, so say so now rather than fail every
    // call with a handshake error.
    let Some(ca_file) = &cfg.ca_file else {
        return Err(StoreError::Unavailable(
            "https etcd endpoints need etcd_ca_file (the CA that signed the etcd certificates)"
                .into(),
        ));
    };
    let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(
        read_pem("etcd_ca_file", ca_file).await?,
    ));
    if let (Some(cert), Some(key)) = (&cfg.cert_file, &cfg.key_file) {
        let cert = read_pem("etcd_cert_file", cert).await?;
        let key = read_pem("etcd_key_file", key).await?;
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Ok(tls)
}

#[async_trait]
impl Store for EtcdStore {
    async fn list_prefixes(&self) -> Result<Vec<(String, PrefixConfig)>, StoreError> {
        let dir = self.key("prefixes/");
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
                match full.strip_prefix(dir.as_str()) {
                    Some(name) if !name.is_empty() && !name.contains('/') => {
                        out.push((name.to_string(), decode(full, kv.value())?));
                    }
                    _ => {}
                }
            }
            // etcd returns a range sorted by key, like the embedded store's table.
            Ok(out)
        })
        .await
    }

    async fn get_prefix(&self, key: &str) -> Result<Option<PrefixConfig>, StoreError> {
        let key = self.prefix_key(key);
        bounded(self.timeout, async {
            let seen = read(&mut self.kv(), &key).await?;
            seen.value.map(|v| decode(&key, &v)).transpose()
        })
        .await
    }

    /// `create_prefix` (`create_only`) and `replace_prefix`: the config and the counters'
    /// reset binding are read together, decided by [`plan_write`], and written by one
    /// transaction guarded on both being as read, so that no concurrent write slips in
    /// between check and write.
    async fn write_prefix(
        &self,
        key: &str,
        config: &PrefixConfig,
        create_only: bool,
    ) -> Result<Written, StoreError> {
        let (key, bind_key, json) = (
            self.prefix_key(key),
            self.seq_reset_key(key),
            encode(config)?,
        );
        bounded(self.timeout, async {
            let mut kv = self.kv();
            loop {
                let both = Txn::new().and_then([
                    TxnOp::get(key.as_str(), None),
                    TxnOp::get(bind_key.as_str(), None),
                ]);
                let resp = kv.txn(both).await.map_err(unavailable)?;
                let ops = resp.op_responses();
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
                    return Ok(outcome);
                }
                let mut writes = vec![TxnOp::put(key.as_str(), json.as_str(), None)];
                if let Some(reset) = reset_to_bind(config, bound_reset) {
                    writes.push(TxnOp::put(bind_key.as_str(), reset.as_str(), None));
                }
                let txn = Txn::new()
                    .when([
                        unchanged(&key, stored.revision),
                        unchanged(&bind_key, bound.revision),
                    ])
                    .and_then(writes);
                if kv.txn(txn).await.map_err(unavailable)?.succeeded() {
                    return Ok(outcome);
                }
            }
        })
        .await
    }

    async fn delete_prefix(&self, key: &str) -> Result<bool, StoreError> {
        let key = self.prefix_key(key);
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

    async fn reserve_seq(
        &self,
        counter: &str,
        size: u64,
        initial: u64,
    ) -> Result<SeqBlock, StoreError> {
        let key = self.seq_key(counter);
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
        let key = self.seq_key(counter);
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
        let key = self.seq_key(counter);
        bounded(self.timeout, async {
            let seen = read(&mut self.kv(), &key).await?;
            seen.value.map(|v| parse_u64(&key, &v)).transpose()
        })
        .await
    }

    async fn load_hwm(&self, dc: u64, worker: u64) -> Result<Option<u64>, StoreError> {
        let key = self.hwm_key(dc, worker);
        bounded(self.timeout, async {
            let seen = read(&mut self.kv(), &key).await?;
            seen.value.map(|v| parse_u64(&key, &v)).transpose()
        })
        .await
    }

    async fn store_hwm(&self, dc: u64, worker: u64, unix_ms: u64) -> Result<(), StoreError> {
        let key = self.hwm_key(dc, worker);
        bounded(self.timeout, async {
            // A plain put, as in the embedded store: only the worker ID's current holder
            // writes its high timestamp.
            self.kv()
                .put(key.as_str(), unix_ms.to_string(), None)
                .await
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn check_layout(&self, layout: &str) -> Result<(), StoreError> {
        let key = self.key("layout");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(endpoints: &[&str]) -> EtcdConfig {
        EtcdConfig {
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            root: "/numgen".into(),
            username: None,
            password: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }

    #[test]
    fn tls_follows_the_endpoints() {
        assert!(!wants_tls(&cfg(&["http://a:2379"])));
        assert!(wants_tls(&cfg(&["https://a:2379"])));
        assert!(!wants_tls(&cfg(&["a:2379"])));
        let mut with_ca = cfg(&["a:2379"]);
        with_ca.ca_file = Some("ca.pem".into());
        assert!(wants_tls(&with_ca));
        with_ca.endpoints = vec!["http://a:2379".into()];
        assert!(!wants_tls(&with_ca));
    }

    #[tokio::test]
    async fn https_without_a_ca_file_is_refused_at_connect() {
        let err = EtcdStore::connect(&cfg(&["https://127.0.0.1:1"]))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("etcd_ca_file"), "{err}");
        let mut missing = cfg(&["https://127.0.0.1:1"]);
        missing.ca_file = Some("/nonexistent/ca.pem".into());
        let err = EtcdStore::connect(&missing).await.unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn keys_sit_under_the_root() {
        let c = cfg(&["http://127.0.0.1:1"]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = rt.block_on(EtcdStore::connect(&c)).unwrap();
        assert_eq!(store.key("layout"), "/numgen/layout");
        assert_eq!(store.seq_key("INV/2025"), "/numgen/seq/INV/2025");
        assert_eq!(store.prefix_key("ORDER"), "/numgen/prefixes/ORDER");
        assert_eq!(store.hwm_key(1, 7), "/numgen/hwm/1/7");
        let top = EtcdStore::from_client(store.client(), "/");
        assert_eq!(top.key("layout"), "/layout");
        assert_eq!(top.root(), "/");
    }
}
