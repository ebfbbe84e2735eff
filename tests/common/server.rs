//! The real numgen binary for tests: [`Server`] starts `numgen serve` on `127.0.0.1:0`
//! with a temp data dir, JSON logs on stderr (collected in a buffer) and an admin token,
//! and learns its address from the `listening` log line. [`Client`] is a small blocking
//! HTTP/1.1 client with keep-alive over a plain `TcpStream`, so that tests need no HTTP
//! crate and can also send bytes no proper client would.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a server gets to log `listening`.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a server gets to exit after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a dropped server gets to exit after SIGTERM before it is killed.
pub const DROP_GRACE: Duration = Duration::from_secs(3);
/// Read and write timeout of [`Client`] sockets.
pub const IO_TIMEOUT: Duration = Duration::from_secs(15);

/// How to start a server.
#[derive(Clone, Debug, Default)]
pub struct ServerOpts {
    /// Extra arguments after the harness's own (`--listen`, `--data-dir`, `--admin-token`).
    pub args: Vec<String>,
    /// Extra environment variables (they may override `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// Use this data dir (it is kept) instead of a fresh temp dir.
    pub data_dir: Option<PathBuf>,
    /// The admin token; `None`: a random one.
    pub admin_token: Option<String>,
    /// Start without `--admin-token`, so that the server generates one into its data dir.
    pub no_admin_token: bool,
    /// Run under this file-descriptor limit (`prlimit --nofile`), to run it out of them.
    pub nofile: Option<u64>,
}

impl ServerOpts {
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    pub fn admin_token(mut self, token: impl Into<String>) -> Self {
        self.admin_token = Some(token.into());
        self
    }

    pub fn no_admin_token(mut self) -> Self {
        self.no_admin_token = true;
        self
    }

    pub fn nofile(mut self, limit: u64) -> Self {
        self.nofile = Some(limit);
        self
    }
}

/// Why a server did not come up.
#[derive(Debug)]
pub struct StartError {
    pub message: String,
    /// The exit status, when the process ended.
    pub status: Option<ExitStatus>,
    pub logs: String,
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (exit status: {:?})\n--- logs ---\n{}",
            self.message, self.status, self.logs
        )
    }
}

/// The stderr of every process a [`Server`] started, in order.
#[derive(Default)]
struct LogBuf {
    text: Mutex<String>,
    grew: Condvar,
}

impl LogBuf {
    fn push_line(&self, line: &str) {
        let mut t = self.text.lock().unwrap_or_else(|e| e.into_inner());
        t.push_str(line);
        if !line.ends_with('\n') {
            t.push('\n');
        }
        self.grew.notify_all();
    }

    fn snapshot(&self) -> String {
        self.text.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn len(&self) -> usize {
        self.text.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// A running `numgen serve`, killed on drop.
pub struct Server {
    opts: ServerOpts,
    token: Option<String>,
    data_dir: PathBuf,
    /// Owned temp dir (removed on drop) when no data dir was given.
    _temp: Option<tempfile::TempDir>,
    child: Option<Child>,
    drain: Option<JoinHandle<()>>,
    addr: SocketAddr,
    logs: Arc<LogBuf>,
}

/// 16 random bytes as hex, from the kernel.
pub fn random_token() -> String {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `listening` address in one JSON log line.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v.get("message")?.as_str()? != "listening" {
        return None;
    }
    v.get("addr")?.as_str()?.parse().ok()
}

impl Server {
    /// Starts a server; panics (with its logs) when it does not come up.
    pub fn start(opts: ServerOpts) -> Server {
        Server::try_start(opts).unwrap_or_else(|e| panic!("numgen did not start: {e}"))
    }

    /// Starts a server; the error carries the exit status and logs when it does not come up.
    pub fn try_start(opts: ServerOpts) -> Result<Server, StartError> {
        let (temp, data_dir) = match &opts.data_dir {
            Some(d) => (None, d.clone()),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("numgen-test-")
                    .tempdir()
                    .map_err(|e| StartError {
                        message: format!("cannot make a temp dir: {e}"),
                        status: None,
                        logs: String::new(),
                    })?;
                let p = t.path().join("data");
                (Some(t), p)
            }
        };
        let token = match (&opts.admin_token, opts.no_admin_token) {
            (_, true) => None,
            (Some(t), false) => Some(t.clone()),
            (None, false) => Some(random_token()),
        };
        let mut server = Server {
            opts,
            token,
            data_dir,
            _temp: temp,
            child: None,
            drain: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            logs: Arc::new(LogBuf::default()),
        };
        server.spawn()?;
        Ok(server)
    }

    /// Runs the binary and waits for its `listening` line.
    fn spawn(&mut self) -> Result<(), StartError> {
        // prlimit sets the limit and execs numgen: the child's PID stays numgen's.
        let mut cmd = match self.opts.nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}"))
                    .arg("--")
                    .arg(env!("CARGO_BIN_EXE_numgen"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_numgen")),
        };
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&self.data_dir);
        if let Some(t) = &self.token {
            cmd.arg("--admin-token").arg(t);
        }
        cmd.args(&self.opts.args)
            .env_remove("NUMGEN_ADMIN_TOKEN")
            .env_remove("NUMGEN_ETCD_ENDPOINTS")
            .env_remove("NUMGEN_CONFIG")
            .env("NUMGEN_LOG_FORMAT", "json")
            .env("RUST_LOG", "info");
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let from = self.logs.len();
        let mut child = cmd.spawn().map_err(|e| StartError {
            message: format!("cannot run {}: {e}", env!("CARGO_BIN_EXE_numgen")),
            status: None,
            logs: String::new(),
        })?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let logs = self.logs.clone();
        let drain = std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => logs.push_line(&String::from_utf8_lossy(&line)),
                }
            }
        });
        self.child = Some(child);
        self.drain = Some(drain);

        let deadline = Instant::now() + START_TIMEOUT;
        let mut text = self.logs.text.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(addr) = text[from..].lines().find_map(listening_addr) {
                self.addr = addr;
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            let now = Instant::now();
            if exited.is_some() || now >= deadline {
                drop(text);
                let status = match exited {
                    Some(s) => Some(s),
                    None => {
                        self.kill9();
                        None
                    }
                };
                // Let the drain thread pick up the last lines.
                if let Some(d) = self.drain.take() {
                    let _ = d.join();
                }
                self.child = None;
                let message = if status.is_some() {
                    "numgen exited before listening".to_string()
                } else {
                    format!("no `listening` log line within {START_TIMEOUT:?}")
                };
                return Err(StartError {
                    message,
                    status,
                    logs: self.logs.snapshot(),
                });
            }
            let wait = (deadline - now).min(Duration::from_millis(50));
            text = self
                .logs
                .grew
                .wait_timeout(text, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The token given with `--admin-token`, or else the one in `<data-dir>/admin-token`.
    pub fn token(&self) -> String {
        match &self.token {
            Some(t) => t.clone(),
            None => std::fs::read_to_string(self.data_dir.join("admin-token"))
                .map(|t| t.trim().to_string())
                .unwrap_or_default(),
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the server processes wrote to stderr so far (all restarts).
    pub fn logs(&self) -> String {
        self.logs.snapshot()
    }

    /// The log lines that parse as JSON.
    pub fn log_records(&self) -> Vec<serde_json::Value> {
        self.logs()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits up to `timeout` for a log record that `pred` accepts.
    pub fn wait_for_log(
        &self,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.log_records().into_iter().find(|r| pred(r)) {
                return Some(r);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn join_drain(&mut self) {
        if let Some(d) = self.drain.take() {
            let _ = d.join();
        }
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.join_drain();
    }

    /// SIGTERM; waits for the exit and returns its status (SIGKILL after [`STOP_TIMEOUT`],
    /// then panics).
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server is not running");
        let pid = child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "kill -TERM {pid} failed");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.join_drain();
                    return status;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    self.join_drain();
                    panic!(
                        "numgen (pid {pid}) did not exit within {STOP_TIMEOUT:?} of SIGTERM\n{}",
                        self.logs()
                    );
                }
            }
        }
    }

    /// Stops the server (SIGTERM) if it runs, and starts it again with the same data dir,
    /// arguments and token, on a new port.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            let status = self.terminate();
            assert!(status.success(), "numgen exited with {status} on SIGTERM");
        }
        self.spawn()
            .unwrap_or_else(|e| panic!("numgen did not restart: {e}"));
    }

    /// A new keep-alive connection.
    pub fn client(&self) -> Client {
        Client::connect(self.addr).expect("connect to numgen")
    }

    /// One request on a new connection.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        self.client()
            .request(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn get(&self, path: &str) -> Resp {
        self.request("GET", path, &[], b"")
    }

    /// An admin request with the right token and a JSON body (none when empty).
    pub fn admin(&self, method: &str, path: &str, body: &str) -> Resp {
        let auth = format!("Bearer {}", self.token());
        let mut headers = vec![("Authorization", auth.as_str())];
        if !body.is_empty() {
            headers.push(("Content-Type", "application/json"));
        }
        self.request(method, path, &headers, body.as_bytes())
    }

    /// Registers `key` with the JSON `config`; panics unless 200.
    pub fn register(&self, key: &str, config: &str) -> serde_json::Value {
        let r = self.admin("POST", &format!("/prefix-configs/{key}"), config);
        assert_eq!(r.status, 200, "register {key} {config}: {}", r.text());
        r.json()
    }
}

impl Drop for Server {
    /// SIGTERM first, so that a server the test is done with exits the way it does in
    /// production (and writes its coverage profile under `cargo llvm-cov`); SIGKILL when it
    /// has not exited within [`DROP_GRACE`] (a stopped process, an etcd already gone).
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut()
            && matches!(child.try_wait(), Ok(None))
        {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + DROP_GRACE;
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.kill9();
    }
}

/// An HTTP response.
#[derive(Clone, Debug)]
pub struct Resp {
    pub status: u16,
    /// Names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// True when the server said it closes the connection.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }

    /// The ids of a 200 numbers answer (`batch`: a `count=` request), in issue order; an
    /// error naming the body when it does not parse, or when a number is degraded (no test
    /// that calls this makes clock or lease trouble) or its id is not a u64.
    pub fn ids(&self, batch: bool) -> Result<Vec<u64>, String> {
        #[derive(serde::Deserialize)]
        struct Issued {
            id: String,
            degraded: bool,
        }
        #[derive(serde::Deserialize)]
        struct Batch {
            numbers: Vec<Issued>,
        }
        let numbers = if batch {
            serde_json::from_slice::<Batch>(&self.body).map(|b| b.numbers)
        } else {
            serde_json::from_slice::<Issued>(&self.body).map(|n| vec![n])
        }
        .map_err(|e| format!("{e}: {}", self.text()))?;
        numbers
            .iter()
            .map(|n| match (n.degraded, n.id.parse()) {
                (false, Ok(id)) => Ok(id),
                (true, _) => Err(format!("number {} is degraded: {}", n.id, self.text())),
                (false, Err(e)) => {
                    Err(format!("id {:?} is not a u64 ({e}): {}", n.id, self.text()))
                }
            })
            .collect()
    }
}

/// A blocking HTTP/1.1 client on one keep-alive connection.
pub struct Client {
    addr: SocketAddr,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

fn bad_data(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

impl Client {
    pub fn connect(addr: SocketAddr) -> io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            addr,
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
        })
    }

    /// Like [`Client::connect`], from the local address `source` (another loopback
    /// address, `127.0.0.2`, say, to be another client to the server).
    pub fn connect_from(addr: SocketAddr, source: std::net::IpAddr) -> io::Result<Client> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let stream = rt.block_on(async {
            let socket = match addr {
                SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            socket.bind(SocketAddr::new(source, 0))?;
            tokio::time::timeout(IO_TIMEOUT, socket.connect(addr))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
        })?;
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            addr,
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
        })
    }

    /// Sends one request and reads its response. `Host` is added, and `Content-Length`
    /// when the body is not empty or the method is POST, PUT or PATCH, unless given.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Resp> {
        let mut head = format!("{method} {path} HTTP/1.1\r\n");
        let has = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
        if !has("host") {
            head.push_str(&format!("Host: {}\r\n", self.addr));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        let wants_length = !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH");
        if wants_length && !has("content-length") && !has("transfer-encoding") {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut raw = head.into_bytes();
        raw.extend_from_slice(body);
        self.send_raw(&raw, method == "HEAD")
    }

    /// Writes `raw` as is and reads one response (`head_only`: the response has no body,
    /// as for HEAD).
    pub fn send_raw(&mut self, raw: &[u8], head_only: bool) -> io::Result<Resp> {
        self.writer.write_all(raw)?;
        self.writer.flush()?;
        self.read_response(head_only)
    }

    /// This end's address, as the server sees it as the peer.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.writer.local_addr()
    }

    /// Changes how long a read may block (default [`IO_TIMEOUT`]).
    pub fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.writer.set_read_timeout(Some(timeout))
    }

    /// Closes the sending half (the server sees EOF after the request).
    pub fn shutdown_write(&self) -> io::Result<()> {
        self.writer.shutdown(Shutdown::Write)
    }

    fn read_line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        let n = self.reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        String::from_utf8(line).map_err(|_| bad_data("response head is not UTF-8"))
    }

    pub fn read_response(&mut self, head_only: bool) -> io::Result<Resp> {
        loop {
            let resp = self.read_one(head_only)?;
            // 1xx are interim: the real response follows.
            if !(100..200).contains(&resp.status) {
                return Ok(resp);
            }
        }
    }

    fn read_one(&mut self, head_only: bool) -> io::Result<Resp> {
        let status_line = self.read_line()?;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        if !version.starts_with("HTTP/1.") {
            return Err(bad_data(format!("bad status line {status_line:?}")));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad_data(format!("bad status line {status_line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let line = self.read_line()?;
            if line.is_empty() {
                break;
            }
            let (k, v) = line
                .split_once(':')
                .ok_or_else(|| bad_data(format!("bad header line {line:?}")))?;
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
        };
        if head_only || (100..200).contains(&status) || status == 204 || status == 304 {
            return Ok(resp);
        }
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            loop {
                let size_line = self.read_line()?;
                let size_hex = size_line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size_hex, 16)
                    .map_err(|_| bad_data(format!("bad chunk size {size_line:?}")))?;
                if size == 0 {
                    // Trailers, then the empty line.
                    while !self.read_line()?.is_empty() {}
                    break;
                }
                let start = resp.body.len();
                resp.body.resize(start + size, 0);
                self.reader.read_exact(&mut resp.body[start..])?;
                self.read_line()?;
            }
        } else if let Some(len) = resp.header("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| bad_data(format!("bad content-length {len:?}")))?;
            resp.body.resize(len, 0);
            self.reader.read_exact(&mut resp.body)?;
        } else {
            self.reader.read_to_end(&mut resp.body)?;
        }
        Ok(resp)
    }
}

/// Asserts that `resp` is a SPEC 3.4 error: `status`, `code`, a message and an RFC 3339
/// timestamp. Returns the body.
pub fn assert_error(resp: &Resp, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(
        resp.status,
        status,
        "want {status} {code}, got body {}",
        resp.text()
    );
    let v = resp.json();
    assert_eq!(v["code"], code, "body: {v}");
    let msg = v["error"].as_str().unwrap_or_default();
    assert!(!msg.is_empty(), "error message missing: {v}");
    let ts = v["timestamp"].as_str().unwrap_or_default();
    assert!(
        chrono::DateTime::parse_from_rfc3339(ts).is_ok(),
        "timestamp {ts:?} is not RFC 3339: {v}"
    );
    assert!(
        resp.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "content-type of an error: {:?}",
        resp.header("content-type")
    );
    v
}
