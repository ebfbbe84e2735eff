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
use crate::cluster::{ClusterView, Standalone};
use crate::config::Config;
use crate::http::{self, HttpState};
use crate::metrics::Metrics;
use crate::node::{Node, NodeSettings};
use crate::service::Service;
use crate::store::embedded::EmbeddedStore;
use crate::store::{Store, StoreError};
use crate::worker::{self, StaticWorker, WorkerClaim, WorkerError, WorkerSource};

/// How far ahead timestamps are reserved standalone (cluster mode: the lease TTL).
pub const STANDALONE_WINDOW_MS: u64 = 2000;

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
    admin_token: String,
    read_through: bool,
    window_ms: u64,
    _data_dir: Option<DataDir>,
}

fn standalone(config: &Config) -> Result<Backend, AppError> {
    let dir = DataDir::open(&config.data_dir)?;
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("numgen.redb"))?);
    let workers = Arc::new(StaticWorker::new(
        store.clone(),
        config.dc_id,
        config.worker_id,
    ));
    let admin_token = standalone_token(config.admin_token.as_deref(), &dir)?;
    Ok(Backend {
        store,
        workers,
        admin_token,
        read_through: false,
        window_ms: STANDALONE_WINDOW_MS,
        _data_dir: Some(dir),
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
    let mut tick = tokio::time::interval(Duration::from_millis(100));
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

/// If the clock is behind the worker ID's floor: wait (not ready) when the gap is within the
/// reservation window, otherwise let the clock policy decide from the floor on.
fn handle_start_gap(node: &Arc<Node>, window_ms: u64) {
    let Some(grant) = node.grant() else { return };
    let layout = *node.layout();
    let wall = layout.units_at(node.clock().now_ms());
    if grant.floor <= wall {
        return;
    }
    let gap_ms = (grant.floor - wall) * layout.time_unit_ms();
    if gap_ms <= window_ms {
        tracing::info!(
            gap_ms,
            "clock is behind this worker ID's reserved timestamp; waiting"
        );
        node.set_starting(true);
        let node = node.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(gap_ms + layout.time_unit_ms())).await;
            node.set_starting(false);
            tracing::info!("clock passed the reserved timestamp; ready");
        });
    } else {
        tracing::warn!(
            gap_ms,
            "clock is behind this worker ID's reserved timestamp by more than the window"
        );
        node.raise_time_to(grant.floor);
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
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
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
        None => standalone(&config)?,
        Some(_) => return Err(AppError::Cluster("cluster mode is not built yet".into())),
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
    metrics.lease_healthy.set(1);
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
    let claim = worker::acquire(&node, backend.workers.as_ref()).await?;
    handle_start_gap(&node, backend.window_ms);

    let (stop_tx, stop_rx) = watch::channel(false);
    let (_claim_tx, claim_rx) = watch::channel(Some(claim.clone()));
    let tasks: Vec<JoinHandle<()>> = vec![
        tokio::spawn(worker::keep_reserved(
            node.clone(),
            backend.workers.clone(),
            claim_rx,
            stop_rx.clone(),
        )),
        tokio::spawn(watch_clock(
            node.clone(),
            metrics.clone(),
            config.max_skew_ms,
            stop_rx.clone(),
        )),
    ];
    let view: Arc<dyn ClusterView> = Arc::new(Standalone {
        node_id: node_id.clone(),
        addr: addr.clone(),
        node: node.clone(),
    });
    let state = Arc::new(HttpState::new(
        service.clone(),
        backend.admin_token.clone(),
        view,
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
    release(&node, &service, backend.workers.as_ref(), &claim).await;
    tracing::info!("stopped");
    Ok(())
}

/// Persists the real highest timestamp used and gives the worker ID up.
async fn release(node: &Node, service: &Service, workers: &dyn WorkerSource, claim: &WorkerClaim) {
    let Some(grant) = node.grant() else { return };
    let last = service.registry().max_timestamp(node).max(grant.floor);
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
