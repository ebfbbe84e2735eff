//! Wiring and shutdown order. [`run`] chooses the backend (standalone or etcd) from a
//! checked [`Config`], builds the node and the service on it, spawns the background tasks,
//! serves HTTP until the shutdown future resolves, then stops in order: drain in-flight
//! requests, stop and await every background task, give sequence tails back, persist the
//! real high timestamp and give the worker ID up.
//!
//! Every background task is tracked ([`Tasks`]). They all run until told to stop, so one
//! that ends sooner — a panic above all — is logged at ERROR, stops the server as a
//! shutdown signal would, and makes `run` return an error (the process exits non-zero).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::clock::{Clock, ForwardJumps, SystemClock};
use crate::cluster::{ClusterSettings, ClusterView, EtcdCluster, Standalone};
use crate::config::{Config, ConfigError, EtcdConfig, Secret};
use crate::format::NodeWidths;
use crate::http::{self, HttpState};
use crate::metrics::Metrics;
use crate::node::{Node, NodeSettings};
use crate::service::Service;
use crate::standalone::{DataDir, Local, StandaloneError, random_hex};
use crate::store::etcd::{ConnectError, EtcdStore};
use crate::store::{Store, StoreError};
use crate::timing::{self, SKEW_CHECK_EVERY, STANDALONE_WINDOW_MS};
use crate::worker::{self, WorkerClaim, WorkerError, WorkerSource};

mod tasks;
mod tiers;

use tasks::Tasks;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Standalone(#[from] StandaloneError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A setting that only connecting could judge (an etcd password, CA or certificate).
    #[error(transparent)]
    Setting(#[from] ConfigError),
    #[error("worker ID: {0}")]
    Worker(#[from] WorkerError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("{0}")]
    Cluster(String),
    #[error("background task failed: {}", .0.join(", "))]
    TaskFailed(Vec<&'static str>),
}

impl From<ConnectError> for AppError {
    fn from(e: ConnectError) -> AppError {
        match e {
            ConnectError::Setting(e) => AppError::Setting(e),
            ConnectError::Store(e) => AppError::Store(e),
        }
    }
}

impl AppError {
    /// True when a setting is wrong (the process exits 2, as for a bad value at start).
    pub fn is_setting(&self) -> bool {
        matches!(self, AppError::Setting(_))
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AppError + '_ {
    move |source| AppError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The layout as recorded in the store, so that data is never read with another layout.
fn layout_fingerprint(config: &Config) -> String {
    serde_json::to_string(config.layout.settings()).unwrap_or_default()
}

/// What the chosen mode provides.
struct Backend {
    store: Arc<dyn Store>,
    workers: Arc<dyn WorkerSource>,
    view: Arc<dyn ClusterView>,
    admin_token: Secret,
    /// Cluster mode: a key missing from memory is read from etcd before a 400.
    read_through: bool,
    /// How far ahead timestamps are reserved.
    window_ms: u64,
    cluster: Option<Arc<EtcdCluster>>,
    /// Cluster mode with a global etcd tier apart from this datacenter's.
    tiers: Option<tiers::Tiers>,
    _data_dir: Option<DataDir>,
}

fn standalone(config: &Config, node_id: &str, addr: &str) -> Result<Backend, AppError> {
    let local = Local::open(config)?;
    Ok(Backend {
        store: local.store,
        workers: local.workers,
        view: Arc::new(Standalone {
            node_id: node_id.to_string(),
            addr: addr.to_string(),
            dc: config.dc_id,
            worker: config.worker_id,
            clock: Arc::new(SystemClock),
        }),
        admin_token: local.admin_token,
        read_through: false,
        window_ms: STANDALONE_WINDOW_MS,
        cluster: None,
        tiers: None,
        _data_dir: Some(local.dir),
    })
}

async fn clustered(
    config: &Config,
    etcd: &EtcdConfig,
    node_id: &str,
    addr: &str,
    clock: Arc<dyn Clock>,
) -> Result<Backend, AppError> {
    let Some(admin_token) = config.admin_token.clone() else {
        return Err(AppError::Cluster(
            "admin_token is required in cluster mode".into(),
        ));
    };
    if config.worker_id != 0 {
        tracing::warn!("worker_id is ignored in cluster mode: worker IDs are leased from etcd");
    }
    // Leases, `hwm/` and the registry on this datacenter's etcd; the store (configs,
    // counters, layout) on the global tier, which is the same etcd unless configured.
    let (local, tiers) = tiers::connect_tiers(etcd, config.global_etcd.as_ref()).await?;
    let global = tiers.as_ref().map_or(&local, |t| &t.global).clone();
    let store = EtcdStore::new(global, &etcd.root)
        .with_node_widths(NodeWidths::of_layout(&config.layout))
        .with_timeout(config.store_timeout);
    let cluster = Arc::new(EtcdCluster::new(
        local,
        ClusterSettings {
            root: etcd.root.clone(),
            dc: config.dc_id,
            max_worker: config.layout.max_worker(),
            node_id: node_id.to_string(),
            addr: addr.to_string(),
            lease_ttl_s: config.lease_ttl_s,
            timeout: crate::store::DEFAULT_TIMEOUT,
        },
        clock,
    ));
    if let Some(t) = &tiers {
        cluster.registry().set_global(t.global.clone());
    }
    tracing::info!(endpoints = ?etcd.endpoints, root = %etcd.root, dc = config.dc_id, tiers = if tiers.is_some() { 2 } else { 1 }, "cluster mode");
    Ok(Backend {
        store: Arc::new(store),
        workers: cluster.clone(),
        view: cluster.registry().clone(),
        admin_token,
        read_through: true,
        window_ms: timing::reserve_window(config.lease_ttl_s).as_millis() as u64,
        cluster: Some(cluster),
        tiers,
        _data_dir: None,
    })
}

/// Reads the clock every 100 ms: ends backward episodes without traffic, and reports
/// forward jumps.
async fn watch_clock(
    node: Arc<Node>,
    metrics: Metrics,
    max_skew_ms: u64,
    mut stop: watch::Receiver<bool>,
) {
    let start = Instant::now();
    let mut jumps = ForwardJumps::new(max_skew_ms);
    let mut tick = tokio::time::interval(timing::CLOCK_WATCH_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        node.observe();
        let wall = node.clock().now_ms();
        if let Some(jump) = jumps.check(wall, start.elapsed().as_millis() as u64) {
            metrics.clock_forward_jumps.inc();
            tracing::warn!(jump_ms = jump, "clock jumped forward; numbers stay valid");
        }
    }
}

/// A node built and ready to serve, before its background tasks start.
struct Parts {
    metrics: Metrics,
    node: Arc<Node>,
    service: Arc<Service>,
    backend: Backend,
    node_id: String,
    /// Prefix configs loaded from the store.
    prefixes: usize,
}

/// Chooses the backend from the config and builds the node and the service on it.
async fn build(config: &Config, addr: &str) -> Result<Parts, AppError> {
    let metrics = Metrics::new()?;
    // Calibrating the TSC clock spins for a few milliseconds: off the runtime threads.
    let clock: Arc<dyn Clock> = tokio::task::spawn_blocking(crate::clock::system_clock)
        .await
        .unwrap_or_else(|_| Arc::new(SystemClock));
    let node_id = format!(
        "numgen-{}",
        random_hex(6).map_err(io_err(Path::new("/dev/urandom")))?
    );
    let backend = match &config.etcd {
        None => standalone(config, &node_id, addr)?,
        Some(etcd) => clustered(config, etcd, &node_id, addr, clock.clone()).await?,
    };
    let fingerprint = layout_fingerprint(config);
    match &backend.tiers {
        None => backend.store.check_layout(&fingerprint).await?,
        Some(t) => tiers::check_layout(backend.store.as_ref(), t, &fingerprint).await?,
    }
    if config.layout.expires_within_five_years(clock.now_ms()) {
        tracing::warn!(
            expires_unix_ms = config.layout.expires_at_ms(),
            "the layout runs out of timestamps in under five years"
        );
    }
    let node = Arc::new(Node::new(
        config.layout,
        clock,
        NodeSettings {
            max_backward_wait_ms: config.max_backward_wait_ms,
            on_clock_backward: config.on_clock_backward,
            on_lease_loss: config.on_lease_loss,
            reserve_window_ms: backend.window_ms,
        },
        metrics.clone(),
    ));
    let service = Arc::new(Service::new(
        node.clone(),
        backend.store.clone(),
        metrics.clone(),
        backend.read_through,
    ));
    let prefixes = match &backend.tiers {
        None => service
            .load()
            .await
            .map_err(|e| AppError::Cluster(e.to_string()))?,
        Some(t) => tiers::load(&service, t).await?,
    };
    Ok(Parts {
        metrics,
        node,
        service,
        backend,
        node_id,
        prefixes,
    })
}

/// Takes the worker ID (standalone) or starts the lease that takes it (cluster), and
/// spawns the tasks that run until `stop`.
async fn spawn_tasks(
    config: &Config,
    parts: &Parts,
    claim_tx: watch::Sender<Option<WorkerClaim>>,
    stop: &watch::Receiver<bool>,
) -> Result<Tasks, AppError> {
    let Parts {
        metrics,
        node,
        service,
        backend,
        ..
    } = parts;
    let mut tasks = Tasks::default();
    let claim_rx = claim_tx.subscribe();
    match &backend.cluster {
        None => {
            let claim = worker::acquire(node, backend.workers.as_ref()).await?;
            let _ = claim_tx.send(Some(claim));
            worker::handle_start_gap(node, Duration::from_millis(backend.window_ms));
        }
        Some(cluster) => {
            tasks.spawn(
                "etcd health",
                cluster.members().clone().watch_health(stop.clone()),
            );
            if let Some(t) = &backend.tiers {
                let claim = claim_tx.subscribe();
                tiers::spawn(
                    &mut tasks,
                    t,
                    cluster,
                    node,
                    config.lease_ttl_s,
                    claim,
                    stop,
                );
            }
            tasks.spawn(
                "lease",
                crate::cluster::lease::run_lease(
                    cluster.clone(),
                    node.clone(),
                    claim_tx,
                    stop.clone(),
                ),
            );
            let (watched, sink) = tiers::watch_target(cluster, backend.tiers.as_ref(), service);
            tasks.spawn(
                "prefix watch",
                crate::cluster::watch::watch_prefixes(
                    watched,
                    cluster.keys().clone(),
                    sink,
                    crate::store::DEFAULT_TIMEOUT,
                    stop.clone(),
                ),
            );
            tasks.spawn(
                "skew monitor",
                crate::cluster::skew_monitor::watch_skew(
                    cluster.registry().clone(),
                    node.clone(),
                    metrics.clone(),
                    config.max_skew_ms,
                    SKEW_CHECK_EVERY,
                    stop.clone(),
                ),
            );
        }
    }
    tasks.spawn(
        "reservation",
        worker::keep_reserved(
            node.clone(),
            backend.workers.clone(),
            claim_rx,
            stop.clone(),
        ),
    );
    tasks.spawn(
        "clock watch",
        watch_clock(
            node.clone(),
            metrics.clone(),
            config.max_skew_ms,
            stop.clone(),
        ),
    );
    Ok(tasks)
}

/// Resolves on `shutdown`, or when a background task ends before it should.
async fn until(shutdown: impl Future<Output = ()>, tasks: &mut Tasks) {
    tokio::select! {
        () = shutdown => {}
        () = tasks.ended_early() => tracing::error!("shutting down: a background task failed"),
    }
}

/// Runs the server on `listener` until `shutdown` resolves; an error when it could not
/// start, or a background task failed.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    let started = Instant::now();
    let local: SocketAddr = listener
        .local_addr()
        .map_err(io_err(Path::new("listener")))?;
    let addr = config
        .advertise_addr
        .clone()
        .unwrap_or_else(|| local.to_string());
    let parts = build(&config, &addr).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (claim_tx, claim_rx) = watch::channel(None);
    let mut tasks = spawn_tasks(&config, &parts, claim_tx, &stop_rx).await?;
    let mut state = HttpState::new(
        parts.service.clone(),
        parts.backend.admin_token.expose().to_string(),
        parts.backend.view.clone(),
    );
    if let Some(limit) = config.rate_limit {
        tracing::info!(
            per_s = limit.per_s,
            burst = limit.burst,
            "rate limit per client address"
        );
        state = state.with_rate_limit(limit.per_s, limit.burst);
    }
    let state = Arc::new(state);
    tracing::info!(
        addr = %local,
        node_id = parts.node_id,
        prefixes = parts.prefixes,
        startup_ms = started.elapsed().as_millis() as u64,
        "listening"
    );
    http::serve(
        listener,
        state,
        config.max_connections,
        until(shutdown, &mut tasks),
    )
    .await;
    tracing::info!("shutting down: requests drained");
    shut_down(parts, stop_tx, tasks, claim_rx).await
}

/// Stops the node after the last request: stops and awaits the tasks, gives sequence
/// tails back, persists the high timestamp and releases the worker ID.
async fn shut_down(
    parts: Parts,
    stop: watch::Sender<bool>,
    tasks: Tasks,
    claim: watch::Receiver<Option<WorkerClaim>>,
) -> Result<(), AppError> {
    parts.node.set_stopping();
    let _ = stop.send(true);
    let failed = tasks.join_all().await;
    parts.service.close_sequences().await;
    let claim = claim.borrow().clone();
    if let Some(claim) = claim {
        release(
            &parts.node,
            &parts.service,
            parts.backend.workers.as_ref(),
            &claim,
        )
        .await;
    }
    if !failed.is_empty() {
        return Err(AppError::TaskFailed(failed));
    }
    tracing::info!("stopped");
    Ok(())
}

/// Persists the real highest timestamp used and gives the worker ID up. Called with the
/// node stopping: the prefixes are sealed first, so no number lands above what is persisted.
async fn release(node: &Node, service: &Service, workers: &dyn WorkerSource, claim: &WorkerClaim) {
    let Some(grant) = node.grant() else { return };
    let last = service.registry().seal_all(node).max(grant.floor);
    let unix_ms = node.layout().unix_ms_at(last);
    match workers.release(claim, unix_ms).await {
        Ok(()) => tracing::info!(
            hwm_unix_ms = unix_ms,
            "high timestamp persisted; worker ID released"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "could not persist the final high timestamp; the reservation stands")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task like the real ones: runs until `stop` turns true.
    async fn until_stopped(mut stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            if stop.changed().await.is_err() {
                return;
            }
        }
    }

    #[tokio::test]
    async fn tasks_that_stop_when_told_are_not_failures() {
        let (stop_tx, stop) = watch::channel(false);
        let mut tasks = Tasks::default();
        tasks.spawn("a", until_stopped(stop.clone()));
        tasks.spawn("b", until_stopped(stop));
        stop_tx.send(true).unwrap();
        assert!(tasks.join_all().await.is_empty());
    }

    #[tokio::test]
    async fn a_panicking_task_stops_the_server_and_is_reported() {
        let (stop_tx, stop) = watch::channel(false);
        let mut tasks = Tasks::default();
        tasks.spawn("steady", until_stopped(stop));
        tasks.spawn("boom", async { panic!("boom") });
        // The shutdown signal never comes: the failure alone ends the wait.
        until(std::future::pending(), &mut tasks).await;
        stop_tx.send(true).unwrap();
        assert_eq!(tasks.join_all().await, ["boom"]);
    }

    #[tokio::test]
    async fn a_task_that_returns_early_is_a_failure_too() {
        let (stop_tx, stop) = watch::channel(false);
        let mut tasks = Tasks::default();
        tasks.spawn("steady", until_stopped(stop));
        tasks.spawn("quitter", async {});
        tokio::time::timeout(Duration::from_secs(10), tasks.ended_early())
            .await
            .unwrap();
        stop_tx.send(true).unwrap();
        let failed = tasks.join_all().await;
        assert_eq!(failed, ["quitter"]);
        assert_eq!(
            AppError::TaskFailed(failed).to_string(),
            "background task failed: quitter"
        );
    }

    #[tokio::test]
    async fn a_panic_after_stop_is_still_reported() {
        let (stop_tx, mut stop) = watch::channel(false);
        let mut tasks = Tasks::default();
        tasks.spawn("late", async move {
            let _ = stop.changed().await;
            panic!("while stopping");
        });
        stop_tx.send(true).unwrap();
        assert_eq!(tasks.join_all().await, ["late"]);
    }
}
