//! The cluster harness shared by the `cluster_*` tests: a [`Cluster`] (one etcd, a root of
//! its own, an admin token, a lease TTL) that starts real `numgen` nodes, and the helpers
//! those tests read nodes with: readiness, metrics, `/cluster/nodes`, drawing and checking
//! numbers, and a few direct etcd reads and writes.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::etcd::Etcd;
use super::history::{History, Number, Recorder, Report};
use super::server::{Client, Resp, Server, ServerOpts, random_token};

/// The lease TTL of the tests that wait for a lease to expire or a node to be fenced (the
/// minimum the config accepts, to keep them short).
pub const SHORT_TTL_S: u64 = 3;
/// The lease TTL of the tests whose outcome does not depend on it (the default): a loaded
/// machine can stall etcd for seconds, and a lease lost by accident there would only make
/// those tests fail for a reason they do not test.
pub const TTL_S: u64 = 10;
/// Generous bound for anything the contract says happens "within a few seconds".
pub const FEW_SECONDS: Duration = Duration::from_secs(15);

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the nodes of one cluster share: etcd, a root of their own, the admin token and
/// the lease TTL.
pub struct Cluster {
    pub endpoint: String,
    pub root: String,
    pub token: String,
    pub ttl_s: u64,
}

impl Cluster {
    /// A cluster under a root of its own, `/numgen-test/{name}-{random}`, so that tests
    /// sharing an etcd never meet.
    pub fn new(etcd: &Etcd, name: &str, ttl_s: u64) -> Cluster {
        let root = format!("/numgen-test/{name}-{}", &random_token()[..8]);
        Cluster::with_root(etcd, &root, ttl_s)
    }

    /// A cluster under `root`, exactly as given to `--etcd-root`.
    pub fn with_root(etcd: &Etcd, root: &str, ttl_s: u64) -> Cluster {
        Cluster {
            endpoint: etcd.endpoint(),
            root: root.to_string(),
            token: random_token(),
            ttl_s,
        }
    }

    pub fn opts(&self, extra: &[&str]) -> ServerOpts {
        let mut opts = ServerOpts::default()
            .admin_token(self.token.clone())
            .arg("--etcd-endpoints")
            .arg(self.endpoint.clone())
            .arg("--etcd-root")
            .arg(self.root.clone())
            .arg("--lease-ttl-s")
            .arg(self.ttl_s.to_string());
        for a in extra {
            opts = opts.arg(*a);
        }
        opts
    }

    /// Starts a node (it listens; it may not hold a worker ID yet).
    pub fn start(&self, extra: &[&str]) -> Server {
        Server::start(self.opts(extra))
    }

    /// Starts a node and waits for its first 200 on `/ready`; also returns the time from
    /// spawning the process to that 200.
    pub fn start_ready(&self, extra: &[&str]) -> (Server, Duration) {
        let t0 = Instant::now();
        let s = self.start(extra);
        wait_ready(&s, FEW_SECONDS);
        (s, t0.elapsed())
    }

    /// An etcd key under this cluster's root, spelled out here rather than taken from
    /// numgen, so that a test can tell where numgen really writes (root `/`: `/rel`).
    pub fn key(&self, rel: &str) -> String {
        format!("{}/{rel}", self.root.trim_end_matches('/'))
    }
}

/// The last lines of a server's log, for failure messages.
pub fn tail(s: &Server) -> String {
    let logs = s.logs();
    let lines: Vec<&str> = logs.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Polls `f` every 20 ms until it gives a value; panics with `what()` after `timeout`.
pub fn wait_for<T>(
    timeout: Duration,
    what: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{}", what());
        thread::sleep(Duration::from_millis(20));
    }
}

/// `GET /ready`: status and body.
pub fn ready(s: &Server) -> (u16, Value) {
    let r = s.get("/ready");
    (r.status, r.json())
}

/// Waits until `/ready` is 200; returns how long that took.
pub fn wait_ready(s: &Server, timeout: Duration) -> Duration {
    let t0 = Instant::now();
    wait_for(
        timeout,
        || format!("{} not ready within {timeout:?}\n{}", s.addr(), tail(s)),
        || (ready(s).0 == 200).then_some(()),
    );
    t0.elapsed()
}

/// The value of one series in `/metrics` (`name` with its labels, as printed).
pub fn metric(s: &Server, series: &str) -> Option<f64> {
    let text = s.get("/metrics").text();
    text.lines()
        .filter_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .find_map(|v| v.trim().parse().ok())
}

pub fn worker_metric(s: &Server) -> i64 {
    metric(s, "numgen_worker_id").map_or(i64::MIN, |v| v as i64)
}

/// `GET /cluster/nodes`.
pub fn nodes(s: &Server) -> Vec<Value> {
    let r = s.get("/cluster/nodes");
    assert_eq!(r.status, 200, "/cluster/nodes: {}", r.text());
    r.json()["nodes"].as_array().cloned().unwrap_or_default()
}

/// The worker IDs `/cluster/nodes` lists, sorted.
pub fn listed_workers(s: &Server) -> Vec<u64> {
    let mut w: Vec<u64> = nodes(s)
        .iter()
        .filter_map(|n| n["worker_id"].as_u64())
        .collect();
    w.sort_unstable();
    w
}

/// `GET /ids/{id}`.
pub fn decode(s: &Server, id: u64) -> Value {
    let r = s.get(&format!("/ids/{id}"));
    assert_eq!(r.status, 200, "/ids/{id}: {}", r.text());
    r.json()
}

/// Every prefix here uses this template, so that the rendered number can be checked
/// against its ID and its degraded flag.
pub fn register(s: &Server, key: &str, mode: &str) {
    s.register(
        key,
        &format!(r#"{{"format":"{{prefix}}-{{SEQ:1}}{{flag}}","mode":"{mode}"}}"#),
    );
}

/// One issued number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Num {
    pub id: u64,
    pub degraded: bool,
    /// The rendered `number`: what a caller keeps (SPEC 1.3).
    pub number: String,
}

impl Num {
    /// As the history checker records it.
    pub fn to_number(&self) -> Number {
        Number {
            number: self.number.clone(),
            id: self.id.to_string(),
            degraded: self.degraded,
        }
    }
}

/// Records `nums` of `key`, in issue order, with `rec` (one ordered stream: one node).
pub fn record(rec: &mut Recorder, key: &str, nums: &[Num]) {
    let numbers: Vec<Number> = nums.iter().map(Num::to_number).collect();
    rec.record(key, &numbers);
}

/// The numbers a test draws from its nodes on its own thread, into one [`History`]: one
/// ordered stream per node process (by address, so a restarted node, on a new port, starts
/// a new one). Threads drawing at the same time keep recorders of their own
/// ([`Checked::recorder`]). [`Checked::assert_clean`] at the end: no `number` string or
/// id of a prefix repeated, and no node's numbers of a prefix going backwards.
pub struct Checked {
    history: Arc<History>,
    streams: HashMap<SocketAddr, Recorder>,
}

impl Default for Checked {
    fn default() -> Self {
        Checked::new()
    }
}

impl Checked {
    pub fn new() -> Checked {
        Checked {
            history: History::new(),
            streams: HashMap::new(),
        }
    }

    /// A recorder of its own, for a thread that draws from `node` at the same time.
    pub fn recorder(&self, node: impl Into<String>) -> Recorder {
        self.history.recorder(node)
    }

    /// Records `nums` of `key`, as `s` issued them.
    pub fn add(&mut self, s: &Server, key: &str, nums: &[Num]) {
        let rec = self
            .streams
            .entry(s.addr())
            .or_insert_with(|| self.history.recorder(s.addr().to_string()));
        record(rec, key, nums);
    }

    /// [`take`], recorded.
    pub fn take(&mut self, s: &Server, key: &str, count: u64) -> Vec<Num> {
        let nums = take(s, key, count);
        self.add(s, key, &nums);
        nums
    }

    /// Everything recorded so far is checked; panics with the findings.
    pub fn assert_clean(&mut self) -> Report {
        for rec in self.streams.values_mut() {
            rec.flush();
        }
        let report = self.history.assert_clean();
        println!(
            "history: {} numbers checked ({} degraded), none repeated",
            report.numbers, report.degraded
        );
        report
    }
}

/// The numbers of a 200 answer (single or batch), each checked against its rendering.
pub fn parse_numbers(key: &str, r: &Resp) -> Vec<Num> {
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let one = |n: &Value| -> Num {
        let id = n["id"]
            .as_str()
            .and_then(|i| i.parse().ok())
            .unwrap_or_else(|| panic!("id of {n}"));
        let degraded = n["degraded"]
            .as_bool()
            .unwrap_or_else(|| panic!("degraded of {n}"));
        let want = format!("{key}-{id}{}", if degraded { "D" } else { "" });
        assert_eq!(n["number"], want.as_str(), "{n}");
        Num {
            id,
            degraded,
            number: want,
        }
    };
    match v.get("numbers") {
        Some(list) => list
            .as_array()
            .expect("numbers array")
            .iter()
            .map(one)
            .collect(),
        None => vec![one(&v)],
    }
}

/// Draws `count` numbers of `key` on `client` (a single request when `count` is 1):
/// the numbers, or the refusal; `Err(None)` when the connection failed.
pub fn try_draw(client: &mut Client, key: &str, count: u64) -> Result<Vec<Num>, Option<Resp>> {
    let path = if count == 1 {
        format!("/numbers/{key}")
    } else {
        format!("/numbers/{key}?count={count}")
    };
    let r = client.request("GET", &path, &[], b"").map_err(|_| None)?;
    if r.status == 200 {
        let nums = parse_numbers(key, &r);
        assert_eq!(nums.len() as u64, count, "{path}");
        Ok(nums)
    } else {
        Err(Some(r))
    }
}

/// [`try_draw`], panicking when the connection fails.
pub fn draw(client: &mut Client, key: &str, count: u64) -> Result<Vec<Num>, Resp> {
    try_draw(client, key, count)
        .map_err(|r| r.unwrap_or_else(|| panic!("GET /numbers/{key}: connection failed")))
}

/// Draws `count` numbers of `key` from `s` on a fresh connection; panics unless 200.
pub fn take(s: &Server, key: &str, count: u64) -> Vec<Num> {
    draw(&mut s.client(), key, count)
        .unwrap_or_else(|r| panic!("{key} x{count} from {}: {}", s.addr(), r.text()))
}

pub fn ids(nums: &[Num]) -> Vec<u64> {
    nums.iter().map(|n| n.id).collect()
}

/// Adds `new` to `seen`, panicking on the first number seen before.
pub fn add_unique(seen: &mut HashSet<u64>, new: impl IntoIterator<Item = u64>, what: &str) {
    for id in new {
        assert!(seen.insert(id), "{what}: {id} was issued twice");
    }
}

/// Asserts that `ids` strictly increase.
pub fn assert_increasing(ids: &[u64], what: &str) {
    if let Some(w) = ids.windows(2).find(|w| w[0] >= w[1]) {
        panic!("{what}: {} then {}", w[0], w[1]);
    }
}

/// Worker field of a snowflake ID whose layout has 12 sequence bits.
pub fn worker_of(id: u64, worker_bits: u32) -> u64 {
    (id >> 12) & ((1 << worker_bits) - 1)
}

/// Runs `f` on a small tokio runtime (for etcd-client calls from a plain test).
pub fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

pub async fn etcd_client(endpoint: &str) -> etcd_client::Client {
    etcd_client::Client::connect([endpoint], None)
        .await
        .expect("connect to etcd")
}

/// The value and lease of an etcd key.
pub fn etcd_get(endpoint: &str, key: &str) -> Option<(String, i64)> {
    block_on(async {
        let mut c = etcd_client(endpoint).await;
        let resp = c.get(key, None).await.expect("etcd get");
        resp.kvs()
            .first()
            .map(|kv| (kv.value_str().expect("UTF-8 value").to_string(), kv.lease()))
    })
}

pub fn etcd_put(endpoint: &str, key: &str, value: &str) {
    block_on(async {
        let mut c = etcd_client(endpoint).await;
        c.put(key, value, None).await.expect("etcd put");
    });
}

pub fn etcd_revoke(endpoint: &str, lease: i64) {
    block_on(async {
        let mut c = etcd_client(endpoint).await;
        c.lease_revoke(lease).await.expect("etcd lease revoke");
    });
}

/// The persisted high timestamp of worker `w` in datacenter 0.
pub fn hwm(c: &Cluster, w: u64) -> u64 {
    let (v, _) = etcd_get(&c.endpoint, &c.key(&format!("hwm/0/{w}"))).expect("hwm key");
    v.trim().parse().expect("hwm is a number")
}

/// A refused request: status, code and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: String,
    pub error: String,
}

impl Refusal {
    pub fn of(r: &Resp) -> Refusal {
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        Refusal {
            status: r.status,
            code: v["code"].as_str().unwrap_or("?").to_string(),
            error: v["error"].as_str().unwrap_or("?").to_string(),
        }
    }
}
