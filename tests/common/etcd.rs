//! A real etcd process for tests: single member, loopback ports picked at random, data in a
//! temp dir, output in `etcd.log` next to it. Without an `etcd` binary the tests that need
//! one skip, except on CI (`CI=true`), where a missing tool is a failure.
//!
//! The methods block (they spawn, signal and poll the process); they are quick, but a test
//! that must keep other tasks running meanwhile can call them from `spawn_blocking`. Only
//! the process started here is ever signalled, by its PID.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a fresh etcd may take to report healthy.
const HEALTHY_WITHIN: Duration = Duration::from_secs(15);
/// New port pairs to try when etcd cannot bind the ones picked (another process took them
/// between our probe and etcd's bind).
const PORT_ATTEMPTS: usize = 5;

pub struct Etcd {
    binary: PathBuf,
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl Etcd {
    /// Starts a fresh etcd and waits until it is healthy; `None` (after saying so) when etcd
    /// is not installed and this is not CI.
    pub fn start() -> Option<Etcd> {
        let Some(binary) = find_etcd() else {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("etcd is not installed (looked in PATH and /usr/bin/etcd); CI needs it");
            }
            println!("skipping: etcd not installed");
            return None;
        };
        // On tmpfs when there is one: etcd fsyncs its WAL on every write, and on a busy
        // machine a slow disk turns short test leases into spurious expiries.
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .expect("temp dir for etcd");
        let mut etcd = Etcd {
            binary,
            dir,
            client_port: 0,
            peer_port: 0,
            child: None,
        };
        for attempt in 1..=PORT_ATTEMPTS {
            (etcd.client_port, etcd.peer_port) = free_ports();
            match etcd.launch() {
                Ok(()) => return Some(etcd),
                Err(Exited) if attempt < PORT_ATTEMPTS => continue,
                Err(Exited) => break,
            }
        }
        panic!(
            "etcd exited at start {PORT_ATTEMPTS} times; log tail:\n{}",
            etcd.log_tail()
        );
    }

    /// `http://127.0.0.1:PORT`, the client URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The PID of the running etcd (0 when stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Freezes etcd (SIGSTOP): connections stay open but nothing is answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused etcd run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Kills etcd (SIGKILL) and reaps it. Its data dir stays, for [`Etcd::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL also ends a stopped process, so this works after `pause` too.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills etcd and starts it again on the same ports and data dir, waiting until healthy.
    pub fn restart(&mut self) {
        self.kill();
        // The ports were ours a moment ago; a bind failure here is a brief race with the
        // kernel releasing them, so retry on the same ports.
        for attempt in 1..=PORT_ATTEMPTS {
            match self.launch() {
                Ok(()) => return,
                Err(Exited) if attempt < PORT_ATTEMPTS => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(Exited) => break,
            }
        }
        panic!("etcd did not restart; log tail:\n{}", self.log_tail());
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// Spawns etcd on the chosen ports and waits until healthy. `Err(Exited)` when it quit
    /// during start-up (typically: a port was taken); panics when it runs but never turns
    /// healthy.
    fn launch(&mut self) -> Result<(), Exited> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("etcd log file");
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let data = self.dir.path().join("data");
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--name")
            .arg("t")
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log file"))
            .stderr(log);
        if std::env::consts::ARCH == "aarch64" {
            // etcd 3.4 refuses to run on arm64 unless told that this is fine.
            cmd.env("ETCD_UNSUPPORTED_ARCH", "arm64");
        }
        let child = cmd.spawn().expect("spawn etcd");
        self.child = Some(child);
        self.wait_healthy()
    }

    fn wait_healthy(&mut self) -> Result<(), Exited> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.client_port));
        let deadline = Instant::now() + HEALTHY_WITHIN;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                self.child = None;
                return Err(Exited);
            }
            if healthy(addr) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let tail = self.log_tail();
        self.kill();
        panic!(
            "etcd was not healthy within {HEALTHY_WITHIN:?} at {}; log tail:\n{tail}",
            self.endpoint()
        );
    }

    fn signal(&self, sig: &str) {
        let Some(child) = &self.child else {
            panic!("etcd is not running");
        };
        let status = Command::new("kill")
            .arg(sig)
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} {} failed", child.id());
    }

    /// The last lines of etcd's output, for failure messages.
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(self.log_path()) {
            let _ = f.read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// etcd quit during start-up.
struct Exited;

fn find_etcd() -> Option<PathBuf> {
    let in_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("etcd"))
            .find(|p| is_executable(p))
    });
    in_path.or_else(|| {
        let usr = PathBuf::from("/usr/bin/etcd");
        is_executable(&usr).then_some(usr)
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Two distinct free loopback ports: both bound at once (so they differ), then released
/// for etcd to take.
fn free_ports() -> (u16, u16) {
    let a = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let b = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let ports = (
        a.local_addr().expect("port").port(),
        b.local_addr().expect("port").port(),
    );
    drop((a, b));
    ports
}

/// `GET /health` answers 200 with `"health":"true"`.
fn healthy(addr: SocketAddr) -> bool {
    let Ok(mut conn) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(1)));
    if conn
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut reply = String::new();
    let _ = conn.read_to_string(&mut reply);
    let ok = reply.starts_with("HTTP/1.1 200") || reply.starts_with("HTTP/1.0 200");
    ok && reply.contains("\"health\":\"true\"")
}
