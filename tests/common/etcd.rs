//! Real etcd processes for tests: [`Etcd`] (one member) or [`EtcdCluster`] (n members),
//! loopback ports picked at random, data in a temp dir, each member's output in
//! `{name}.log` next to it. Without an `etcd` binary the tests that need
//! one skip, except on CI (`CI=true`), where a missing tool is a failure.
//!
//! [`EtcdCluster::builder`] also makes the cluster production runs: client TLS with
//! client certificates (`.tls()`: a CA, server and client certificates made with the
//! `openssl` CLI in the cluster's temp dir) and authentication (`.auth(..)`: a root user,
//! and a user whose role may only read and write one key prefix, made with `etcdctl`).
//! [`EtcdCluster::client_args`] gives the `numgen serve` flags that connect as that user.
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
/// How long the threads of a member sent SIGSTOP may take to all stop.
const STOPPED_WITHIN: Duration = Duration::from_secs(5);
/// New port pairs to try when etcd cannot bind the ones picked (another process took them
/// between our probe and etcd's bind).
const PORT_ATTEMPTS: usize = 5;

/// One etcd process: a member of a cluster of one or more, with its ports, data dir and
/// log file (`{name}.log` in the cluster's temp dir).
pub struct Member {
    binary: PathBuf,
    name: String,
    base: PathBuf,
    client_port: u16,
    peer_port: u16,
    /// With TLS: certificates for the client URL, and a plain-HTTP port for `/health` and
    /// `/metrics` (the client URL speaks only TLS).
    tls: Option<TlsMember>,
    /// `--initial-cluster` (every member's peer URL); used on the first start only, etcd
    /// reads the membership from its data dir afterwards.
    initial_cluster: String,
    child: Option<Child>,
}

impl Member {
    /// `http://127.0.0.1:PORT` (`https://` with TLS), the client URL.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// Where `/health` and `/metrics` are served over plain HTTP.
    fn health_addr(&self) -> SocketAddr {
        let port = self
            .tls
            .as_ref()
            .map_or(self.client_port, |t| t.metrics_port);
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// True when this member says it is the leader (from its metrics).
    pub fn is_leader(&self) -> bool {
        get_text(self.health_addr(), "/metrics")
            .is_some_and(|m| m.lines().any(|l| l.trim() == "etcd_server_is_leader 1"))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The PID of the running etcd (0 when stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Freezes the member (SIGSTOP): connections stay open but nothing is answered.
    ///
    /// Returns once every thread of the process is stopped: `kill` returns when the signal
    /// is queued, and Linux stops a process's threads one after another, so on a busy
    /// machine a member could otherwise still answer a request just after `kill` returned.
    pub fn pause(&self) {
        self.signal("-STOP");
        let pid = self.pid();
        let deadline = Instant::now() + STOPPED_WITHIN;
        while !all_threads_stopped(pid) {
            assert!(
                Instant::now() < deadline,
                "etcd {} (pid {pid}) did not stop within {STOPPED_WITHIN:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Lets a paused member run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Kills the member (SIGKILL) and reaps it. Its data dir stays, for a restart.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL also ends a stopped process, so this works after `pause` too.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the member and starts it again on the same ports and data dir, waiting
    /// until it is healthy (in a cluster: until it has a leader again).
    pub fn restart(&mut self) {
        self.kill();
        // The ports were ours a moment ago; a bind failure here is a brief race with the
        // kernel releasing them, so retry on the same ports.
        for attempt in 1..=PORT_ATTEMPTS {
            let up = self.spawn().and_then(|()| self.wait_healthy());
            match up {
                Ok(()) => return,
                Err(Exited) if attempt < PORT_ATTEMPTS => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(Exited) => break,
            }
        }
        panic!(
            "etcd {} did not restart; log tail:\n{}",
            self.name,
            self.log_tail()
        );
    }

    fn log_path(&self) -> PathBuf {
        self.base.join(format!("{}.log", self.name))
    }

    /// Spawns etcd on the chosen ports without waiting for it.
    fn spawn(&mut self) -> Result<(), Exited> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("etcd log file");
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let data = self.base.join(format!("{}.data", self.name));
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", "numgen-test"]);
        if let Some(t) = &self.tls {
            let metrics = format!("http://127.0.0.1:{}", t.metrics_port);
            cmd.args(["--listen-metrics-urls", &metrics])
                .arg("--cert-file")
                .arg(&t.certs.server_cert)
                .arg("--key-file")
                .arg(&t.certs.server_key)
                .arg("--trusted-ca-file")
                .arg(&t.certs.ca)
                .arg("--client-cert-auth");
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log file"))
            .stderr(log);
        if std::env::consts::ARCH == "aarch64" {
            // etcd 3.4 refuses to run on arm64 unless told that this is fine.
            cmd.env("ETCD_UNSUPPORTED_ARCH", "arm64");
        }
        let child = cmd.spawn().map_err(|_| Exited)?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the member reports healthy. `Err(Exited)` when it quit meanwhile
    /// (typically: a port was taken); panics when it runs but never turns healthy.
    fn wait_healthy(&mut self) -> Result<(), Exited> {
        let addr = self.health_addr();
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
            "etcd {} was not healthy within {HEALTHY_WITHIN:?} at {}; log tail:\n{tail}",
            self.name,
            self.endpoint()
        );
    }

    fn signal(&self, sig: &str) {
        let Some(child) = &self.child else {
            panic!("etcd {} is not running", self.name);
        };
        let status = Command::new("kill")
            .arg(sig)
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} {} failed", child.id());
    }

    /// The last lines of the member's output, for failure messages.
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(self.log_path()) {
            let _ = f.read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// This member's view of the cluster: (its member ID, the leader's member ID), from
    /// `POST /v3/maintenance/status`; `None` when it does not answer within a second.
    pub fn status(&self) -> Option<(u64, u64)> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.client_port));
        let reply = post_json(addr, "/v3/maintenance/status", "{}")?;
        let v: serde_json::Value = serde_json::from_str(&reply).ok()?;
        let id = |x: &serde_json::Value| -> Option<u64> {
            x.as_str()
                .and_then(|s| s.parse().ok())
                .or_else(|| x.as_u64())
        };
        Some((id(&v["header"]["member_id"])?, id(&v["leader"])?))
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster of `n` etcd members on loopback, in one temp dir (on tmpfs when there is
/// one: etcd fsyncs its WAL on every write, and on a busy machine a slow disk turns short
/// test leases into spurious expiries).
pub struct EtcdCluster {
    // Members before the dir: they must be killed before their data dir goes.
    members: Vec<Member>,
    /// The certificates, with TLS.
    certs: Option<Certs>,
    /// The limited user, with authentication.
    auth: Option<Auth>,
    _dir: TempDir,
}

impl EtcdCluster {
    /// Starts `n` members and waits until every one is healthy (a leader is elected);
    /// `None` (after saying so) when etcd is not installed and this is not CI.
    pub fn start(n: usize) -> Option<EtcdCluster> {
        EtcdCluster::builder().members(n).start()
    }

    /// A cluster with TLS and authentication as asked (see [`ClusterBuilder`]).
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            members: 1,
            tls: false,
            auth: None,
        }
    }

    fn launch(n: usize, tls: bool) -> Option<EtcdCluster> {
        assert!(n >= 1, "a cluster has at least one member");
        let Some(binary) = find_etcd() else {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("etcd is not installed (looked in PATH and /usr/bin/etcd); CI needs it");
            }
            println!("skipping: etcd not installed");
            return None;
        };
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .expect("temp dir for etcd");
        let certs = tls.then(|| Certs::make(dir.path()));
        let mut last_log = String::new();
        for attempt in 1..=PORT_ATTEMPTS {
            let ports = free_ports(3 * n);
            // A fresh name per attempt, so that a failed attempt's data dir is not reused.
            let name = |i: usize| {
                if attempt == 1 {
                    format!("m{i}")
                } else {
                    format!("m{i}a{attempt}")
                }
            };
            let initial_cluster = (0..n)
                .map(|i| format!("{}=http://127.0.0.1:{}", name(i), ports[2 * i + 1]))
                .collect::<Vec<_>>()
                .join(",");
            let mut members: Vec<Member> = (0..n)
                .map(|i| Member {
                    binary: binary.clone(),
                    name: name(i),
                    base: dir.path().to_path_buf(),
                    client_port: ports[2 * i],
                    peer_port: ports[2 * i + 1],
                    tls: certs.clone().map(|certs| TlsMember {
                        certs,
                        metrics_port: ports[2 * n + i],
                    }),
                    initial_cluster: initial_cluster.clone(),
                    child: None,
                })
                .collect();
            let spawned = members.iter_mut().all(|m| m.spawn().is_ok());
            if spawned && members.iter_mut().all(|m| m.wait_healthy().is_ok()) {
                return Some(EtcdCluster {
                    members,
                    certs,
                    auth: None,
                    _dir: dir,
                });
            }
            last_log = members
                .iter()
                .map(|m| m.log_tail())
                .collect::<Vec<_>>()
                .join("\n---\n");
        }
        panic!("etcd cluster did not start in {PORT_ATTEMPTS} attempts; log tails:\n{last_log}");
    }

    /// Every member's client URL, comma-separated (as `--etcd-endpoints` takes them).
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(Member::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn member(&mut self, i: usize) -> &mut Member {
        &mut self.members[i]
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// The index of the current leader, as the running members report it; `None` when no
    /// running member names a leader that is one of us.
    pub fn leader(&self) -> Option<usize> {
        if self.certs.is_some() {
            // The client URL speaks TLS only: ask each member's metrics instead.
            return self
                .members
                .iter()
                .position(|m| m.is_running() && m.is_leader());
        }
        let ids: Vec<Option<(u64, u64)>> = self
            .members
            .iter()
            .map(|m| if m.is_running() { m.status() } else { None })
            .collect();
        let leader = ids.iter().flatten().map(|(_, l)| *l).find(|l| *l != 0)?;
        ids.iter()
            .position(|s| s.is_some_and(|(me, _)| me == leader))
    }

    /// Waits (bounded) until a leader is elected among the running members.
    pub fn wait_leader(&self, within: Duration) -> Option<usize> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self.leader() {
                return Some(l);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Freezes every member (SIGSTOP): the whole cluster stops answering.
    pub fn pause_all(&self) {
        for m in self.members.iter().filter(|m| m.is_running()) {
            m.pause();
        }
    }

    pub fn resume_all(&self) {
        for m in self.members.iter().filter(|m| m.is_running()) {
            m.resume();
        }
    }
}

/// How to start an [`EtcdCluster`]: `EtcdCluster::builder().members(3).tls().auth(..)`.
pub struct ClusterBuilder {
    members: usize,
    tls: bool,
    auth: Option<Auth>,
}

impl ClusterBuilder {
    pub fn members(mut self, n: usize) -> Self {
        self.members = n;
        self
    }

    /// Client URLs over TLS with client-certificate authentication (`--client-cert-auth`):
    /// a client needs [`EtcdCluster::ca_file`] and a certificate the CA signed.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Authentication on, with a `root` user and `user`, whose role may only read and
    /// write keys under `prefix`.
    pub fn auth(mut self, user: &str, password: &str, prefix: &str) -> Self {
        self.auth = Some(Auth {
            user: user.to_string(),
            password: password.to_string(),
            prefix: prefix.to_string(),
            root_password: "root-secret".to_string(),
        });
        self
    }

    /// Starts the cluster (see [`EtcdCluster::start`]) and sets up its users.
    pub fn start(self) -> Option<EtcdCluster> {
        let mut cluster = EtcdCluster::launch(self.members, self.tls)?;
        if let Some(auth) = self.auth {
            cluster.enable_auth(&auth);
            cluster.auth = Some(auth);
        }
        Some(cluster)
    }
}

/// The limited user of a cluster with authentication.
#[derive(Clone, Debug)]
pub struct Auth {
    pub user: String,
    pub password: String,
    /// The only keys the user's role may read and write.
    pub prefix: String,
    pub root_password: String,
}

/// The certificates of a cluster with TLS, all signed by one CA made for it; and a
/// second CA that signed nothing of the cluster's (for tests of a wrong CA).
#[derive(Clone, Debug)]
pub struct Certs {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub other_ca: PathBuf,
}

/// A member's TLS settings.
struct TlsMember {
    certs: Certs,
    metrics_port: u16,
}

/// Runs `openssl` with `args` in `dir`; panics with its output when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (needed for etcd TLS tests): {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Certs {
    /// A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate,
    /// as PEM files in `dir` (P-256 keys, valid for two days).
    fn make(dir: &Path) -> Certs {
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            let (key, pem, subj) = (
                format!("{ca}.key"),
                format!("{ca}.pem"),
                format!("/CN=numgen-test-{ca}"),
            );
            let mut args = vec![
                "req", "-x509", "-days", "2", "-keyout", &key, "-out", &pem, "-subj", &subj,
            ];
            args.extend(ec);
            args.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
            args.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
            openssl(dir, &args);
        }
        let leafs = [
            (
                "server",
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
            ),
            ("client", "extendedKeyUsage=clientAuth\n"),
        ];
        for (name, ext) in leafs {
            let (key, csr, pem, extfile) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
                format!("{name}.ext"),
            );
            std::fs::write(dir.join(&extfile), ext).expect("write an openssl extension file");
            let subj = format!("/CN=numgen-test-{name}");
            let mut args = vec!["req", "-new", "-keyout", &key, "-out", &csr, "-subj", &subj];
            args.extend(ec);
            openssl(dir, &args);
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-out",
                    &pem,
                    "-extfile",
                    &extfile,
                ],
            );
        }
        Certs {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            other_ca: dir.join("other-ca.pem"),
        }
    }
}

impl EtcdCluster {
    /// The certificates, when the cluster has TLS.
    pub fn certs(&self) -> Option<&Certs> {
        self.certs.as_ref()
    }

    /// The limited user, when the cluster has authentication.
    pub fn auth(&self) -> Option<&Auth> {
        self.auth.as_ref()
    }

    /// The `numgen serve` flags that reach this cluster: the endpoints, and the CA, client
    /// certificate and limited user when it has them.
    pub fn client_args(&self) -> Vec<String> {
        let mut args = vec!["--etcd-endpoints".to_string(), self.endpoints()];
        if let Some(c) = &self.certs {
            for (flag, path) in [
                ("--etcd-ca-file", &c.ca),
                ("--etcd-cert-file", &c.client_cert),
                ("--etcd-key-file", &c.client_key),
            ] {
                args.push(flag.to_string());
                args.push(path.display().to_string());
            }
        }
        if let Some(a) = &self.auth {
            args.extend([
                "--etcd-username".to_string(),
                a.user.clone(),
                "--etcd-password".to_string(),
                a.password.clone(),
            ]);
        }
        args
    }

    /// Runs `etcdctl` (API v3) against this cluster with `args`, as `user` (`user:password`,
    /// or none); its standard output, or its error output as the error.
    pub fn etcdctl(&self, user: Option<&str>, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.endpoints())
            .args(["--dial-timeout", "5s", "--command-timeout", "10s"]);
        if let Some(c) = &self.certs {
            cmd.arg("--cacert").arg(&c.ca);
            cmd.arg("--cert").arg(&c.client_cert);
            cmd.arg("--key").arg(&c.client_key);
        }
        if let Some(u) = user {
            cmd.arg("--user").arg(u);
        }
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run etcdctl: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The users and role of [`ClusterBuilder::auth`], then `auth enable`. The role gets
    /// `readwrite` on the prefix and nothing else: that is all numgen needs (leases need no
    /// permission of their own; revoking one needs write access to the keys it holds).
    fn enable_auth(&self, a: &Auth) {
        let root = format!("root:{}", a.root_password);
        let user = format!("{}:{}", a.user, a.password);
        let steps: [&[&str]; 7] = [
            &["user", "add", &root],
            &["user", "grant-role", "root", "root"],
            &["user", "add", &user],
            &["role", "add", &a.user],
            &[
                "role",
                "grant-permission",
                &a.user,
                "readwrite",
                &a.prefix,
                "--prefix=true",
            ],
            &["user", "grant-role", &a.user, &a.user],
            &["auth", "enable"],
        ];
        for step in steps {
            if let Err(e) = self.etcdctl(None, step) {
                panic!("etcdctl {step:?} failed: {e}");
            }
        }
    }
}

/// The body of `GET path` over plain HTTP/1.0; `None` on any failure or after a second.
fn get_text(addr: SocketAddr, path: &str) -> Option<String> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    conn.set_write_timeout(Some(Duration::from_secs(1))).ok()?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    conn.write_all(req.as_bytes()).ok()?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply).ok()?;
    let (head, body) = reply.split_once("\r\n\r\n")?;
    let ok = head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200");
    ok.then(|| body.to_owned())
}

/// A single-member etcd: the common case.
pub struct Etcd {
    cluster: EtcdCluster,
}

impl Etcd {
    /// Starts a fresh etcd and waits until it is healthy; `None` (after saying so) when etcd
    /// is not installed and this is not CI.
    pub fn start() -> Option<Etcd> {
        EtcdCluster::start(1).map(|cluster| Etcd { cluster })
    }

    fn one(&self) -> &Member {
        &self.cluster.members[0]
    }

    /// `http://127.0.0.1:PORT`, the client URL.
    pub fn endpoint(&self) -> String {
        self.one().endpoint()
    }

    /// The PID of the running etcd (0 when stopped).
    pub fn pid(&self) -> u32 {
        self.one().pid()
    }

    /// Freezes etcd (SIGSTOP): connections stay open but nothing is answered.
    pub fn pause(&self) {
        self.one().pause();
    }

    /// Lets a paused etcd run again (SIGCONT).
    pub fn resume(&self) {
        self.one().resume();
    }

    /// Kills etcd (SIGKILL) and reaps it. Its data dir stays, for [`Etcd::restart`].
    pub fn kill(&mut self) {
        self.cluster.member(0).kill();
    }

    /// Kills etcd and starts it again on the same ports and data dir, waiting until healthy.
    pub fn restart(&mut self) {
        self.cluster.member(0).restart();
    }

    /// The last lines of etcd's output, for failure messages.
    pub fn log_tail(&self) -> String {
        self.one().log_tail()
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

/// `n` distinct free loopback ports: all bound at once (so they differ), then released
/// for etcd to take.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("port").port())
        .collect()
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

/// One HTTP/1.0 POST with a JSON body; the response body, or `None` on any failure or
/// after a second without an answer (a paused member).
fn post_json(addr: SocketAddr, path: &str, body: &str) -> Option<String> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    conn.set_write_timeout(Some(Duration::from_secs(1))).ok()?;
    let req = format!(
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(req.as_bytes()).ok()?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply).ok()?;
    let (head, body) = reply.split_once("\r\n\r\n")?;
    let ok = head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200");
    ok.then(|| body.to_owned())
}

/// True when every thread of process `pid` is in the stopped state (`T` in
/// `/proc/PID/task/TID/stat`). False while any thread still runs, or when `/proc` cannot
/// be read.
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut any = false;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            return false;
        };
        // `TID (comm) S ...`: the state follows the last `)`, as comm may hold one.
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].trim_start().chars().next());
        if !matches!(state, Some('T' | 't')) {
            return false;
        }
        any = true;
    }
    any
}
