//! Prefix configs shared by watch (SPEC section 3.1: a config written on one node is used by
//! every node within a second). [`watch_prefixes`] keeps a [`ConfigSink`] (the service's
//! prefix registry) equal to etcd's `prefixes/`: a full read, then a watch from the next
//! revision; any break in the watch means a full read again. Keys come from the store's
//! [`Keys`], so the watch listens exactly where the store writes.
//!
//! A watch on a member that stops answering (frozen, its TCP connection still open) would
//! wait silently for ever: so the watch asks its member for a progress report every
//! [`timing::WATCH_PROGRESS_EVERY`] (etcd answers even when nothing changed), and a watch
//! that has heard nothing for [`timing::WATCH_SILENT_FOR`] is given up, its member marked
//! as not answering, and the configs read and watched again on another member.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, GetOptions, KeyValue, WatchOptions, WatchStream};
use tokio::sync::watch;
use tokio::time::Instant;

use super::sleep_or_stop;
use crate::prefix::PrefixConfig;
use crate::store::etcd::{Keys, Members};
use crate::store::{Revision, Snapshot, StoreError};
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
    members: Members,
    keys: Keys,
    sink: Arc<dyn ConfigSink>,
    timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let revision = match read_all(&members, &keys, sink.as_ref(), timeout).await {
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
        let dir = keys.prefixes();
        let started = members
            .call_on(timeout, |mut c, _, _| {
                let (dir, opts) = (dir.as_str(), opts.clone());
                async move { Ok(c.watch(dir, Some(opts)).await?) }
            })
            .await;
        let Ok((stream, member)) = started else {
            if sleep_or_stop(timing::WATCH_RETRY, &mut stop).await {
                return;
            }
            continue;
        };
        match follow(stream, &keys, sink.as_ref(), &mut stop).await {
            Followed::Stopped => return,
            Followed::Broken => tracing::debug!("prefix watch ended; reading all configs again"),
            Followed::Silent => {
                members.not_answering(member, &"the prefix watch heard nothing");
                tracing::warn!("prefix watch silent; reading and watching again on another member");
            }
        }
    }
}

/// Hands every config to `sink` in one [`ConfigSink::sync`]; returns the revision read at.
async fn read_all(
    members: &Members,
    keys: &Keys,
    sink: &dyn ConfigSink,
    timeout: Duration,
) -> Result<i64, StoreError> {
    let dir = keys.prefixes();
    let dir = dir.as_str();
    let resp = members
        .call(timeout, |mut c, _| async move {
            Ok(c.get(dir, Some(GetOptions::new().with_prefix())).await?)
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

/// How following a watch ended.
enum Followed {
    /// `stop` changed.
    Stopped,
    /// The watch ended or failed.
    Broken,
    /// Nothing came for [`timing::WATCH_SILENT_FOR`], progress requests included.
    Silent,
}

/// Passes each change on `stream` to `sink` until the watch breaks, falls silent, or `stop`
/// changes; asks for a progress report every [`timing::WATCH_PROGRESS_EVERY`] meanwhile.
async fn follow(
    stream: WatchStream,
    keys: &Keys,
    sink: &dyn ConfigSink,
    stop: &mut watch::Receiver<bool>,
) -> Followed {
    let (mut ask, mut stream) = stream.split();
    let mut tick = tokio::time::interval(timing::WATCH_PROGRESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = Instant::now();
    loop {
        let msg = tokio::select! {
            msg = stream.message() => msg,
            _ = tick.tick() => {
                if heard.elapsed() > timing::WATCH_SILENT_FOR {
                    return Followed::Silent;
                }
                if ask.request_progress().await.is_err() {
                    return Followed::Broken;
                }
                continue;
            }
            _ = stop.changed() => return Followed::Stopped,
        };
        heard = Instant::now();
        let resp = match msg {
            Ok(Some(resp)) if !resp.canceled() => resp,
            _ => return Followed::Broken,
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
