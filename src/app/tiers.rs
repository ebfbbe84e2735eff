//! Wiring of the two etcd tiers (SPEC 5): connecting both, checking the layout against the
//! global one (or, when it does not answer, against this datacenter's), loading the
//! configs from the global tier or its local mirror, and the tasks that only two tiers
//! need. With one etcd (no `global_etcd_endpoints`) none of this runs.

use std::sync::Arc;

use tokio::sync::watch;

use super::{AppError, Tasks};
use crate::cluster::EtcdCluster;
use crate::cluster::mirror::{Mirror, Mirrored};
use crate::cluster::watch::ConfigSink;
use crate::config::{ConfigError, EtcdConfig};
use crate::node::Node;
use crate::service::Service;
use crate::store::etcd::{ConnectError, EtcdStore, Keys, Members, connect};
use crate::store::{DEFAULT_TIMEOUT, Store, StoreError};
use crate::worker::WorkerClaim;

/// The global tier, when it is another etcd than this datacenter's.
pub(super) struct Tiers {
    pub global: Members,
    /// This datacenter's etcd as a store, for its own `layout`.
    pub local: EtcdStore,
    pub mirror: Arc<Mirror>,
}

/// A setting of the global tier named by its own key: `global_etcd_password`, not
/// `etcd_password`.
fn global_setting(e: ConnectError) -> AppError {
    match e {
        ConnectError::Setting(e) => AppError::Setting(ConfigError {
            key: format!("global_{}", e.key),
            message: e.message.replace(" etcd_", " global_etcd_"),
        }),
        ConnectError::Store(e) => AppError::Store(e),
    }
}

/// Connects this datacenter's etcd and, when it is another cluster, the global one (at
/// the same time: a global tier that does not answer costs the start its connect deadline
/// once). Returns the local members and the global tier's.
pub(super) async fn connect_tiers(
    local: &EtcdConfig,
    global: Option<&EtcdConfig>,
) -> Result<(Members, Option<Tiers>), AppError> {
    let (members, global) = tokio::join!(connect(local), async {
        match global {
            Some(g) => Some(connect(g).await.map_err(global_setting)),
            None => None,
        }
    });
    let members = members?;
    let tiers = match global {
        None => None,
        Some(g) => {
            let global = g?;
            tracing::info!(endpoints = ?global.endpoints().collect::<Vec<_>>(), "global etcd tier");
            Some(Tiers {
                global,
                local: EtcdStore::new(members.clone(), &local.root),
                mirror: Arc::new(Mirror::new(
                    members.clone(),
                    Keys::new(&local.root),
                    DEFAULT_TIMEOUT,
                )),
            })
        }
    };
    Ok((members, tiers))
}

/// True for the failures that mean "the tier did not answer" (not a refusal or bad data).
fn unreachable(e: &StoreError) -> bool {
    matches!(e, StoreError::Timeout(_) | StoreError::Unavailable(_))
}

/// The layout must be the global tier's, and this datacenter's (its `hwm/` was written
/// with it); when the global tier does not answer, this datacenter's must do (a node
/// restarting during a partition), and a datacenter with none yet cannot start.
pub(super) async fn check_layout(
    global: &dyn Store,
    tiers: &Tiers,
    ours: &str,
) -> Result<(), AppError> {
    match global.check_layout(ours).await {
        Ok(()) => Ok(tiers.local.check_layout(ours).await?),
        Err(e) if unreachable(&e) => match tiers.mirror.layout().await? {
            Some(stored) if stored == ours => {
                tracing::warn!(error = %e, "the global etcd tier does not answer: layout checked against this datacenter's");
                Ok(())
            }
            Some(stored) => Err(StoreError::LayoutMismatch {
                stored,
                ours: ours.to_string(),
            }
            .into()),
            None => Err(AppError::Cluster(format!(
                "the global etcd tier does not answer ({e}) and this datacenter's etcd has no layout to check ours against"
            ))),
        },
        Err(e) => Err(e.into()),
    }
}

/// Loads the configs from the global tier, or from this datacenter's mirror of them when
/// it does not answer within the store deadline. Returns how many.
pub(super) async fn load(service: &Service, tiers: &Tiers) -> Result<usize, AppError> {
    let all = match service.store().snapshot_prefixes().await {
        Ok(all) => all,
        Err(e) if unreachable(&e) => {
            let all = tiers.mirror.snapshot().await?;
            tracing::warn!(error = %e, prefixes = all.configs.len(), "the global etcd tier does not answer: prefix configs loaded from this datacenter's mirror");
            all
        }
        Err(e) => return Err(AppError::Store(e)),
    };
    let n = all.configs.len();
    service.sync(all);
    Ok(n)
}

/// Where the config watch listens (the global tier, or the one etcd) and what it feeds
/// (the service, and with two tiers the mirror too).
pub(super) fn watch_target(
    cluster: &EtcdCluster,
    tiers: Option<&Tiers>,
    service: &Arc<Service>,
) -> (Members, Arc<dyn ConfigSink>) {
    match tiers {
        None => (cluster.members().clone(), service.clone()),
        Some(t) => (
            t.global.clone(),
            Arc::new(Mirrored {
                inner: service.clone(),
                mirror: t.mirror.clone(),
            }),
        ),
    }
}

/// The tasks only two tiers need: the global members' health probes, `/ready`'s view of
/// the global tier, the mirror writer and this node's entry in the global registry.
pub(super) fn spawn(
    tasks: &mut Tasks,
    tiers: &Tiers,
    cluster: &EtcdCluster,
    node: &Arc<Node>,
    lease_ttl_s: u64,
    claim: watch::Receiver<Option<WorkerClaim>>,
    stop: &watch::Receiver<bool>,
) {
    tasks.spawn(
        "global etcd health",
        tiers.global.clone().watch_health(stop.clone()),
    );
    tasks.spawn(
        "global tier",
        crate::cluster::tiers::watch_global(tiers.global.clone(), node.clone(), stop.clone()),
    );
    tasks.spawn("config mirror", tiers.mirror.clone().run(stop.clone()));
    tasks.spawn(
        "global registry",
        crate::cluster::tiers::register_globally(
            tiers.global.clone(),
            cluster.registry().clone(),
            lease_ttl_s,
            claim,
            stop.clone(),
        ),
    );
}
