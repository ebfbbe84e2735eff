//! What standalone mode runs on, apart from the node itself: the data directory, locked
//! so that two processes never share it, the embedded store inside it, the fixed worker
//! ID, and the admin token — configured, or generated once into `<data-dir>/admin-token`
//! (mode 0600) and read from there on later starts.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{Config, Secret};
use crate::format::NodeWidths;
use crate::store::embedded::EmbeddedStore;
use crate::store::{Store, StoreError};
use crate::worker::StaticWorker;

#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data dir {0} is in use by another numgen process")]
    DataDirInUse(PathBuf),
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StandaloneError + '_ {
    move |source| StandaloneError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The standalone data directory, locked for the life of the value.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates `path` if needed and takes its exclusive lock.
    pub fn open(path: &Path) -> Result<DataDir, StandaloneError> {
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
                Err(StandaloneError::DataDirInUse(path.to_path_buf()))
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
fn admin_token(configured: Option<&Secret>, dir: &DataDir) -> Result<Secret, StandaloneError> {
    if let Some(t) = configured {
        return Ok(t.clone());
    }
    let path = dir.path().join("admin-token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => {
            tracing::info!(path = %path.display(), "admin token read from the data dir");
            return Ok(Secret::from(t.trim()));
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
    Ok(Secret::from(token))
}

/// Standalone mode's parts, opened from the config.
pub struct Local {
    pub store: Arc<dyn Store>,
    pub workers: Arc<StaticWorker>,
    pub admin_token: Secret,
    /// Held until the node has stopped: the lock goes with it.
    pub dir: DataDir,
}

impl Local {
    /// Locks the data dir, opens the store in it and settles the admin token.
    pub fn open(config: &Config) -> Result<Local, StandaloneError> {
        let dir = DataDir::open(&config.data_dir)?;
        let embedded = EmbeddedStore::open(&dir.path().join("numgen.redb"))?
            .with_node_widths(NodeWidths::of_layout(&config.layout))
            .with_timeout(config.store_timeout);
        let store: Arc<dyn Store> = Arc::new(embedded.clone());
        let workers = Arc::new(StaticWorker::new(embedded, config.dc_id, config.worker_id));
        let admin_token = admin_token(config.admin_token.as_ref(), &dir)?;
        Ok(Local {
            store,
            workers,
            admin_token,
            dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_data_dir_is_locked_while_open() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("data");
        let first = DataDir::open(&path).unwrap();
        let err = DataDir::open(&path).unwrap_err();
        assert!(
            matches!(err, StandaloneError::DataDirInUse(ref p) if p == &path),
            "{err}"
        );
        assert!(err.to_string().contains("in use"), "{err}");
        drop(first);
        DataDir::open(&path).unwrap();
    }

    #[test]
    fn a_generated_token_is_kept_private_and_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        let made = admin_token(None, &dir).unwrap();
        assert_eq!(made.expose().len(), 48);
        let file = tmp.path().join("admin-token");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(admin_token(None, &dir).unwrap(), made);
        // A configured token wins and leaves the file alone.
        let configured = Secret::from("mine");
        assert_eq!(admin_token(Some(&configured), &dir).unwrap(), configured);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), made.expose());
        // An empty file is replaced by a new token.
        std::fs::write(&file, " \n").unwrap();
        let again = admin_token(None, &dir).unwrap();
        assert_ne!(again, made);
        assert_eq!(again.expose().len(), 48);
    }

    #[test]
    fn an_unreadable_token_file_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        // A directory where the file should be: reading it fails with something other
        // than "not found".
        std::fs::create_dir(tmp.path().join("admin-token")).unwrap();
        let err = admin_token(None, &dir).unwrap_err();
        assert!(err.to_string().contains("admin-token"), "{err}");
    }
}
