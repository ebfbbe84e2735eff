//! The server run in this process: `numgen::app::run` on a listener bound here, with a
//! shutdown future the test controls (mini-redis style). For what needs no separate
//! process — start and readiness, register and issue, graceful shutdown and restart, the
//! data-dir lock, the generated token file, the layout check, cluster mode on a real etcd —
//! this is cheaper than the binary and shows `run`'s result directly. Requests still go
//! over real HTTP on 127.0.0.1.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::server::{Client, Resp, assert_error};
use numgen::app::{self, AppError};
use numgen::config::{LayoutArgs, Settings};
use numgen::standalone::StandaloneError;
use tokio::sync::oneshot;

/// How long a server gets to become ready, and to return after shutdown.
const DEADLINE: Duration = Duration::from_secs(20);
const TOKEN: &str = "in-process-token";

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Standalone settings on `dir` with the test token.
fn standalone(dir: &Path) -> Settings {
    Settings {
        data_dir: Some(dir.to_path_buf()),
        admin_token: Some(TOKEN.into()),
        ..Default::default()
    }
}

/// `app::run` on its own runtime thread, listening on a loopback port.
struct InProcess {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<(), AppError>>>,
}

impl InProcess {
    /// Starts the server; returns once it listens (not necessarily ready), or with the
    /// error `run` returned at start-up.
    fn try_start(settings: Settings) -> Result<InProcess, AppError> {
        let config = settings.validate(now_ms()).expect("valid settings");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                // A dropped sender also means stop.
                app::run(config, listener, async {
                    let _ = stopped.await;
                })
                .await
            })
        });
        let mut server = InProcess {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        };
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(result) = server.finished() {
                return Err(result.expect_err("run returned Ok before it was stopped"));
            }
            if let Ok(mut c) = Client::connect(addr)
                && c.request("GET", "/health", &[], b"")
                    .is_ok_and(|r| r.status == 200)
            {
                return Ok(server);
            }
            assert!(Instant::now() < deadline, "no /health within {DEADLINE:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn start(settings: Settings) -> InProcess {
        let s = Self::try_start(settings).unwrap_or_else(|e| panic!("run failed: {e}"));
        s.wait_ready();
        s
    }

    /// `run`'s result, if it has returned.
    fn finished(&mut self) -> Option<Result<(), AppError>> {
        if !self.thread.as_ref()?.is_finished() {
            return None;
        }
        let thread = self.thread.take()?;
        Some(thread.join().expect("the server thread panicked"))
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let r = self.get("/ready");
            if r.status == 200 {
                return;
            }
            assert!(Instant::now() < deadline, "not ready: {}", r.text());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        Client::connect(self.addr)
            .and_then(|mut c| c.request(method, path, headers, body))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    fn get(&self, path: &str) -> Resp {
        self.request("GET", path, &[], b"")
    }

    fn admin(&self, method: &str, path: &str, token: &str, body: &str) -> Resp {
        let auth = format!("Bearer {token}");
        self.request(method, path, &[("Authorization", &auth)], body.as_bytes())
    }

    fn register(&self, key: &str, config: &str) {
        let r = self.admin("POST", &format!("/prefix-configs/{key}"), TOKEN, config);
        assert_eq!(r.status, 200, "register {key}: {}", r.text());
    }

    /// `count` numbers of `key`, as (number, id) strings in issue order.
    fn issue(&self, key: &str, count: u32) -> Vec<(String, String)> {
        let r = self.get(&format!("/numbers/{key}?count={count}"));
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["numbers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                assert_eq!(n["degraded"], false, "{n}");
                (
                    n["number"].as_str().unwrap().to_string(),
                    n["id"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// Resolves the shutdown future and returns what `run` returned.
    fn stop(mut self) -> Result<(), AppError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(result) = self.finished() {
                return result;
            }
            assert!(
                Instant::now() < deadline,
                "run did not return after shutdown"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn standalone_issues_stops_cleanly_and_continues_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = InProcess::start(standalone(dir.path()));
    assert_eq!(s.get("/health").status, 200);
    s.register("INV", r#"{"format":"INV-{SEQ:4}","mode":"sequence"}"#);
    s.register("ORD", r#"{"format":"ORD-{SEQ:19}"}"#);
    let inv = s.issue("INV", 3);
    let numbers: Vec<&str> = inv.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(numbers, ["INV-0001", "INV-0002", "INV-0003"]);
    let ord = s.issue("ORD", 5);
    let last_ord = ord.last().unwrap().1.parse::<u64>().unwrap();
    s.stop().expect("a graceful stop returns Ok");

    // The lock went with the server, the tail of the block was given back, and the
    // snowflake prefix starts above everything issued before.
    let s = InProcess::start(standalone(dir.path()));
    assert_eq!(s.issue("INV", 1)[0].0, "INV-0004");
    let after = s.issue("ORD", 1)[0].1.parse::<u64>().unwrap();
    assert!(after > last_ord, "{after} <= {last_ord}");
    s.stop().unwrap();
}

#[test]
fn a_second_server_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = InProcess::start(standalone(dir.path()));
    let err = match InProcess::try_start(standalone(dir.path())) {
        Ok(_) => panic!("two servers share {}", dir.path().display()),
        Err(e) => e,
    };
    assert!(
        matches!(&err, AppError::Standalone(StandaloneError::DataDirInUse(p)) if p == dir.path()),
        "{err:?}"
    );
    assert!(err.to_string().contains("in use"), "{err}");
    // The first one is untouched.
    first.register("A", r#"{"format":"A{SEQ:3}","mode":"sequence"}"#);
    first.stop().unwrap();
}

#[test]
fn without_a_token_one_is_generated_into_a_private_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        data_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let s = InProcess::start(settings.clone());
    let file = dir.path().join("admin-token");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let token = std::fs::read_to_string(&file).unwrap();
    assert!(token.len() >= 32, "{token:?}");
    assert_error(
        &s.admin("GET", "/prefix-configs", TOKEN, ""),
        401,
        "UNAUTHORIZED",
    );
    assert_eq!(s.admin("GET", "/prefix-configs", &token, "").status, 200);
    s.stop().unwrap();

    // The same token after a restart.
    let s = InProcess::start(settings);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), token);
    assert_eq!(s.admin("GET", "/prefix-configs", &token, "").status, 200);
    s.stop().unwrap();
}

#[test]
fn the_configured_token_is_the_one_checked() {
    let dir = tempfile::tempdir().unwrap();
    let s = InProcess::start(standalone(dir.path()));
    assert_eq!(s.admin("GET", "/prefix-configs", TOKEN, "").status, 200);
    // What a Secret prints must never work as the token.
    assert_error(
        &s.admin("GET", "/prefix-configs", "****", ""),
        401,
        "UNAUTHORIZED",
    );
    assert!(!dir.path().join("admin-token").exists());
    s.stop().unwrap();
}

#[test]
fn a_data_dir_of_another_layout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    InProcess::start(standalone(dir.path())).stop().unwrap();
    let other = Settings {
        layout: LayoutArgs {
            worker_bits: Some(7),
            datacenter_bits: Some(2),
            ..Default::default()
        },
        ..standalone(dir.path())
    };
    let err = match InProcess::try_start(other) {
        Ok(_) => panic!("started on data of another layout"),
        Err(e) => e,
    };
    assert!(matches!(err, AppError::Store(_)), "{err:?}");
    assert!(err.to_string().contains("layout"), "{err}");
}

#[test]
fn the_operator_routes_answer() {
    let dir = tempfile::tempdir().unwrap();
    let s = InProcess::start(standalone(dir.path()));
    s.register("OPS", r#"{"format":"OPS-{SEQ:19}"}"#);
    let id = s.issue("OPS", 1)[0].1.clone();
    let decoded = s.get(&format!("/ids/{id}")).json();
    assert_eq!(decoded["id"], id.as_str());
    assert_eq!(decoded["worker"], 0);
    let nodes = s.get("/cluster/nodes").json();
    assert_eq!(nodes["nodes"][0]["addr"], s.addr.to_string().as_str());
    let metrics = s.get("/metrics").text();
    assert!(
        metrics.contains("numgen_numbers_issued_total{mode=\"snowflake\",prefix=\"OPS\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("numgen_lease_healthy 1"), "{metrics}");
    s.stop().unwrap();
}

#[test]
fn cluster_mode_on_a_real_etcd_starts_issues_and_stops_cleanly() {
    let Some(etcd) = Etcd::start() else { return };
    let settings = |dir: PathBuf| Settings {
        etcd_endpoints: Some(vec![etcd.endpoint()]),
        etcd_root: Some("/in-process".into()),
        admin_token: Some(TOKEN.into()),
        data_dir: Some(dir),
        lease_ttl_s: Some(3),
        ..Default::default()
    };
    let unused = tempfile::tempdir().unwrap();
    let s = InProcess::start(settings(unused.path().join("data")));
    s.register("C", r#"{"format":"C-{SEQ:5}","mode":"sequence"}"#);
    let first: Vec<String> = s.issue("C", 2).into_iter().map(|(n, _)| n).collect();
    assert_eq!(first, ["C-00001", "C-00002"]);
    let nodes = s.get("/cluster/nodes").json();
    assert_eq!(nodes["nodes"].as_array().unwrap().len(), 1, "{nodes}");
    s.stop().expect("a graceful stop returns Ok");
    // Cluster mode keeps nothing on local disk.
    assert!(!unused.path().join("data").exists());

    let s = InProcess::start(settings(unused.path().join("data")));
    assert_eq!(s.issue("C", 1)[0].0, "C-00003");
    s.stop().unwrap();
}
