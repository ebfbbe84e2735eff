//! Wiring and shutdown order. [`run`] builds the parts from a checked [`Config`], serves
//! HTTP until the shutdown future resolves, then stops in order: drain in-flight requests,
//! stop background tasks, give sequence tails back, persist the real high timestamp and
//! give the worker ID up.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::{Clock, ForwardJumps, SystemClock};
use crate::cluster::timing::{self, SKEW_CHECK_EVERY, STANDALONE_WINDOW_MS};
use crate::cluster::{ClusterSettings, ClusterView, EtcdCluster, Standalone};
use crate::config::{Config, EtcdConfig};
use crate::http::{self, HttpState};
use crate::metrics::Metrics;
use crate::node::{Node, NodeSettings};
use crate::service::Service;
use crate::store::embedded::EmbeddedStore;
use crate::store::etcd::EtcdStore;
use crate::store::{Store, StoreError};
use crate::worker::{self, StaticWorker, WorkerClaim, WorkerError, WorkerSource};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data dir {0} is in use by another numgen process")]
    DataDirInUse(PathBuf),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("worker ID: {0}")]
    Worker(#[from] WorkerError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("{0}")]
    Cluster(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AppError + '_ {
    move |source| AppError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The standalone data directory, locked for the life of the process.
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates `path` if needed and takes its exclusive lock.
    pub fn open(path: &Path) -> Result<DataDir, AppError> {
        std::fs::create_dir_all(path).map_err(io_err(path))?;
        let lock_path = path.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => Ok(DataDir {
                path: path.to_path_buf(),
                _lock: lock,
            }),
            Err(std::fs::TryLockError::WouldBlock) => {
                Err(AppError::DataDirInUse(path.to_path_buf()))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(io_err(&lock_path)(e)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// `n` random bytes as hex, from the kernel.
pub fn random_hex(n: usize) -> std::io::Result<String> {
    let mut bytes = vec![0u8; n];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The admin token: configured, or kept in `<data-dir>/admin-token` (0600), made on first use.
fn standalone_token(configured: Option<&str>, dir: &DataDir) -> Result<String, AppError> {
    if let Some(t) = configured {
        return Ok(t.to_string());
    }
    let path = dir.path().join("admin-token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => {
            tracing::info!(path = %path.display(), "admin token read from the data dir");
            return Ok(t.trim().to_string());
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&path)(e)),
    }
    let token = random_hex(24).map_err(io_err(Path::new("/dev/urandom")))?;
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_err(&path))?;
    f.write_all(token.as_bytes()).map_err(io_err(&path))?;
    f.sync_all().map_err(io_err(&path))?;
    tracing::info!(path = %path.display(), "admin token generated; read it from this file");
    Ok(token)
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
    admin_token: String,
    /// Cluster mode: a key missing from memory is read from etcd before a 400.
    read_through: bool,
    /// How far ahead timestamps are reserved.
    window_ms: u64,
    cluster: Option<Arc<EtcdCluster>>,
    _data_dir: Option<DataDir>,
}

fn standalone(config: &Config, node_id: &str, addr: &str) -> Result<Backend, AppError> {
    let dir = DataDir::open(&config.data_dir)?;
    let embedded = EmbeddedStore::open(&dir.path().join("numgen.redb"))?;
    let store: Arc<dyn Store> = Arc::new(embedded.clone());
    let workers = Arc::new(StaticWorker::new(embedded, config.dc_id, config.worker_id));
    let admin_token = standalone_token(config.admin_token.as_deref(), &dir)?;
    Ok(Backend {
        store,
        workers,
        view: Arc::new(Standalone {
            node_id: node_id.to_string(),
            addr: addr.to_string(),
            dc: config.dc_id,
            worker: config.worker_id,
            clock: Arc::new(SystemClock),
        }),
        admin_token,
        read_through: false,
        window_ms: STANDALONE_WINDOW_MS,
        cluster: None,
        _data_dir: Some(dir),
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
    let store = EtcdStore::connect(etcd).await?;
    let cluster = Arc::new(EtcdCluster::new(
        store.client(),
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
    tracing::info!(endpoints = ?etcd.endpoints, root = %etcd.root, dc = config.dc_id, "cluster mode");
    Ok(Backend {
        store: Arc::new(store),
        workers: cluster.clone(),
        view: cluster.registry().clone(),
        admin_token,
        read_through: true,
        window_ms: timing::reserve_window(config.lease_ttl_s).as_millis() as u64,
        cluster: Some(cluster),
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

/// Runs the server on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    let started = Instant::now();
    let metrics = Metrics::new()?;
    // Calibrating the TSC clock spins for a few milliseconds: off the runtime threads.
    let clock: Arc<dyn Clock> = tokio::task::spawn_blocking(crate::clock::system_clock)
        .await
        .unwrap_or_else(|_| Arc::new(SystemClock));
    let local = listener
        .local_addr()
        .map_err(io_err(Path::new("listener")))?;
    let addr = config
        .advertise_addr
        .clone()
        .unwrap_or_else(|| local.to_string());
    let node_id = format!(
        "numgen-{}",
        random_hex(6).map_err(io_err(Path::new("/dev/urandom")))?
    );

    let backend = match &config.etcd {
        None => standalone(&config, &node_id, &addr)?,
        Some(etcd) => clustered(&config, etcd, &node_id, &addr, clock.clone()).await?,
    };
    backend
        .store
        .check_layout(&layout_fingerprint(&config))
        .await?;
    if config.layout.expires_within_five_years(clock.now_ms()) {
        tracing::warn!(
            expires_unix_ms = config.layout.expires_at_ms(),
            "the layout runs out of timestamps in under five years"
        );
    }

    let node = Arc::new(Node::new(
        config.layout,
        clock.clone(),
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
    let prefixes = service
        .load()
        .await
        .map_err(|e| AppError::Cluster(e.to_string()))?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let (claim_tx, claim_rx) = watch::channel(None);
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    match &backend.cluster {
        None => {
            let claim = worker::acquire(&node, backend.workers.as_ref()).await?;
            let _ = claim_tx.send(Some(claim));
            worker::handle_start_gap(&node, Duration::from_millis(backend.window_ms));
        }
        Some(cluster) => {
            tasks.push(tokio::spawn(crate::cluster::lease::run_lease(
                cluster.clone(),
                node.clone(),
                claim_tx,
                stop_rx.clone(),
            )));
            tasks.push(tokio::spawn(crate::cluster::watch::watch_prefixes(
                cluster.client(),
                cluster.keys().clone(),
                service.clone(),
                crate::store::DEFAULT_TIMEOUT,
                stop_rx.clone(),
            )));
            tasks.push(tokio::spawn(crate::cluster::skew_monitor::watch_skew(
                cluster.registry().clone(),
                node.clone(),
                metrics.clone(),
                config.max_skew_ms,
                SKEW_CHECK_EVERY,
                stop_rx.clone(),
            )));
        }
    }
    tasks.push(tokio::spawn(worker::keep_reserved(
        node.clone(),
        backend.workers.clone(),
        claim_rx.clone(),
        stop_rx.clone(),
    )));
    tasks.push(tokio::spawn(watch_clock(
        node.clone(),
        metrics.clone(),
        config.max_skew_ms,
        stop_rx.clone(),
    )));
    let state = Arc::new(HttpState::new(
        service.clone(),
        backend.admin_token.clone(),
        backend.view.clone(),
    ));
    tracing::info!(
        addr = %local,
        node_id,
        prefixes,
        startup_ms = started.elapsed().as_millis() as u64,
        "listening"
    );
    http::serve(listener, state, shutdown).await;

    tracing::info!("shutting down: requests drained");
    node.set_stopping();
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    service.close_sequences().await;
    let claim = claim_rx.borrow().clone();
    if let Some(claim) = claim {
        release(&node, &service, backend.workers.as_ref(), &claim).await;
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
