//! Prefix configs shared by watch (SPEC section 3.1: a config written on one node is used by
//! every node within a second). [`watch_prefixes`] keeps a [`ConfigSink`] (the service's
//! prefix registry) equal to etcd's `prefixes/`: a full read, then a watch from the next
//! revision; any break in the watch means a full read again. Keys come from the store's
//! [`Keys`], so the watch listens exactly where the store writes.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, KeyValue, WatchOptions, WatchStream};
use tokio::sync::watch;

use super::sleep_or_stop;
use crate::prefix::PrefixConfig;
use crate::store::etcd::{Keys, unavailable};
use crate::store::{Revision, Snapshot, StoreError, bounded};
use crate::timing;

/// Why a config from the store was not taken.
pub type Refused = Box<dyn std::error::Error + Send + Sync>;

/// Where the configs read from etcd go, each with its etcd revision (SPEC 3.1: the sink
/// takes nothing older than what it holds).
pub trait ConfigSink: Send + Sync + 'static {
    /// `key` was written with `config` at `revision` (its `mod_revision`).
    fn apply(&self, key: &str, config: PrefixConfig, revision: Revision) -> Result<(), Refused>;
    /// `key` was deleted at `revision`.
    fn forget(&self, key: &str, revision: Revision);
    /// `all` is every config there is as of its revision (a full read): anything else was
    /// gone then.
    fn sync(&self, all: Snapshot);
}

/// Keeps `sink` equal to the configs under `keys`' `prefixes/` until `stop` turns true.
/// Each read and the start of each watch run under `timeout`.
pub async fn watch_prefixes(
    client: Client,
    keys: Keys,
    sink: Arc<dyn ConfigSink>,
    timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let revision = match read_all(&client, &keys, sink.as_ref(), timeout).await {
            Ok(revision) => revision,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read prefix configs; retrying");
                if sleep_or_stop(timing::WATCH_RETRY, &mut stop).await {
                    return;
                }
                continue;
            }
        };
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut c = client.clone();
        let started = tokio::time::timeout(timeout, c.watch(keys.prefixes(), Some(opts))).await;
        let Ok(Ok(stream)) = started else {
            if sleep_or_stop(timing::WATCH_RETRY, &mut stop).await {
                return;
            }
            continue;
        };
        if follow(stream, &keys, sink.as_ref(), &mut stop).await {
            return;
        }
        tracing::debug!("prefix watch ended; reading all configs again");
    }
}

/// Hands every config to `sink` in one [`ConfigSink::sync`]; returns the revision read at.
async fn read_all(
    client: &Client,
    keys: &Keys,
    sink: &dyn ConfigSink,
    timeout: Duration,
) -> Result<i64, StoreError> {
    let mut c = client.clone();
    let opts = GetOptions::new().with_prefix();
    let resp = bounded(timeout, async {
        c.get(keys.prefixes(), Some(opts))
            .await
            .map_err(unavailable)
    })
    .await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let mut all = Snapshot {
        revision: revision.max(0) as Revision,
        configs: Vec::with_capacity(resp.kvs().len()),
    };
    for kv in resp.kvs() {
        let Some((key, config)) = config_at(keys, kv) else {
            continue;
        };
        match config {
            Ok(cfg) => all.configs.push((key.to_string(), cfg, mod_revision(kv))),
            Err(e) => {
                tracing::error!(prefix = key, error = %e, "unreadable config in etcd; skipped")
            }
        }
    }
    sink.sync(all);
    Ok(revision)
}

/// The revision `kv` was written (or, in a delete event, deleted) at.
fn mod_revision(kv: &KeyValue) -> Revision {
    kv.mod_revision().max(0) as Revision
}

/// Passes each change on `stream` to `sink` until the watch breaks (`false`) or `stop`
/// changes (`true`).
async fn follow(
    mut stream: WatchStream,
    keys: &Keys,
    sink: &dyn ConfigSink,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    loop {
        let msg = tokio::select! {
            msg = stream.message() => msg,
            _ = stop.changed() => return true,
        };
        let resp = match msg {
            Ok(Some(resp)) if !resp.canceled() => resp,
            _ => return false,
        };
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let Some((key, config)) = config_at(keys, kv) else {
                continue;
            };
            let revision = mod_revision(kv);
            match (ev.event_type(), config) {
                (EventType::Delete, _) => sink.forget(key, revision),
                (EventType::Put, Ok(cfg)) => {
                    if let Err(e) = sink.apply(key, cfg, revision) {
                        tracing::error!(prefix = key, error = %e, "config from etcd is invalid");
                    }
                }
                (EventType::Put, Err(e)) => {
                    tracing::error!(prefix = key, error = %e, "unreadable config in etcd")
                }
            }
        }
    }
}

/// The prefix key of `kv` and its config; `None` when `kv` is not a config's key.
fn config_at<'a>(
    keys: &Keys,
    kv: &'a KeyValue,
) -> Option<(&'a str, Result<PrefixConfig, serde_json::Error>)> {
    let key = keys.prefix_name(kv.key_str().ok()?)?;
    Some((key, serde_json::from_slice(kv.value())))
}
