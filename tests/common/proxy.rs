//! A TCP proxy the test controls, for putting a network between numgen and etcd (or
//! between two datacenters): pass traffic through, add latency each way, cut it off like a
//! partition, or reset every connection. It listens on `127.0.0.1:0` and forwards to one
//! upstream address; plain threads, no async runtime.
//!
//! A **cut** is a black hole, the way a WAN partition looks to TCP: connections stay open
//! (new ones are even accepted, as the kernel completes the handshake) but no byte crosses
//! in either direction until [`Proxy::restore`]. Bytes already read are held, not dropped,
//! so a connection that outlives the cut carries on intact, as a real one would after
//! retransmission. A client that gives up on a silent connection closes it; the proxy
//! closes the other side when traffic flows again. [`Proxy::reset`] closes every open
//! connection at once (a crashed middlebox, a refused connection). [`Proxy::hold_replies`]
//! cuts one direction only: requests reach the upstream, its answers are held until
//! [`Proxy::restore`] (a request that takes effect while its answer is lost).

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How often a blocked pump looks at the proxy's state (a read times out this often).
const POLL: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Pass,
    Cut,
}

struct State {
    mode: Mode,
    /// Added to each direction, so the round trip grows by twice this.
    delay: Duration,
    /// Bumped by `reset`: pumps of an older generation close their connection.
    generation: u64,
    /// Upstream-to-client bytes are held (requests still pass).
    replies_held: bool,
    /// Added to upstream-to-client bytes only, on top of `delay`.
    reply_delay: Duration,
}

impl State {
    /// True when bytes going this way (`to_client`: from the upstream) may pass.
    fn open(&self, to_client: bool) -> bool {
        self.mode == Mode::Pass && !(to_client && self.replies_held)
    }
}

struct Shared {
    upstream: SocketAddr,
    state: Mutex<State>,
    changed: Condvar,
    stopped: AtomicBool,
    /// Connections accepted so far (for tests that want to see reconnects).
    accepted: AtomicU64,
    /// Every open socket, both sides, so that `reset` can shut them down.
    sockets: Mutex<Vec<(u64, TcpStream)>>,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks while the proxy is cut; `false` when this connection's generation was reset
    /// or the proxy stopped meanwhile.
    fn wait_open(&self, generation: u64, to_client: bool) -> bool {
        let mut st = self.state();
        loop {
            if self.stopped.load(Ordering::Relaxed) || st.generation != generation {
                return false;
            }
            if st.open(to_client) {
                return true;
            }
            st = self
                .changed
                .wait_timeout(st, POLL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn alive(&self, generation: u64) -> bool {
        !self.stopped.load(Ordering::Relaxed) && self.state().generation == generation
    }
}

/// A running proxy; dropping it stops it and closes every connection.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Starts a proxy on a free loopback port that forwards to `upstream`.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener =
            TcpListener::bind("127.0.0.1:0").expect("bind a loopback port for the proxy");
        let addr = listener.local_addr().expect("proxy address");
        listener
            .set_nonblocking(true)
            .expect("non-blocking proxy listener");
        let shared = Arc::new(Shared {
            upstream,
            state: Mutex::new(State {
                mode: Mode::Pass,
                delay: Duration::ZERO,
                generation: 0,
                replies_held: false,
                reply_delay: Duration::ZERO,
            }),
            changed: Condvar::new(),
            stopped: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            sockets: Mutex::new(Vec::new()),
        });
        let s = Arc::clone(&shared);
        thread::Builder::new()
            .name(format!("proxy-{}", addr.port()))
            .spawn(move || accept_loop(listener, s))
            .expect("spawn the proxy's accept thread");
        Proxy { addr, shared }
    }

    /// Starts a proxy in front of an `http://host:port` endpoint.
    pub fn for_endpoint(endpoint: &str) -> Proxy {
        let hostport = endpoint
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/');
        Proxy::start(hostport.parse().expect("endpoint is http://IP:PORT"))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for handing to a client instead of the upstream's URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Black-holes all traffic, in both directions, on open and new connections.
    pub fn cut(&self) {
        self.set(|st| st.mode = Mode::Cut);
    }

    /// Lets traffic flow again (a cut heals, held replies go; the delay stays as set).
    pub fn restore(&self) {
        self.set(|st| {
            st.mode = Mode::Pass;
            st.replies_held = false;
        });
    }

    /// Delays only what the upstream sends by `delay` (on top of [`Proxy::set_delay`]):
    /// requests arrive at once, their answers late.
    pub fn set_reply_delay(&self, delay: Duration) {
        self.set(|st| st.reply_delay = delay);
    }

    /// Holds everything the upstream sends (on open and new connections) while requests
    /// still reach it: a request takes effect, its answer does not arrive.
    pub fn hold_replies(&self) {
        self.set(|st| st.replies_held = true);
    }

    /// Adds `each_way` to every byte's trip in each direction (round trip + 2 × each_way).
    pub fn set_delay(&self, each_way: Duration) {
        self.set(|st| st.delay = each_way);
    }

    /// Closes every connection open now (new ones are served as the mode says).
    pub fn reset(&self) {
        self.set(|st| st.generation += 1);
        let sockets = std::mem::take(
            &mut *self
                .shared
                .sockets
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for (_, s) in sockets {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn set(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.shared.state());
        self.shared.changed.notify_all();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::Relaxed);
        self.reset();
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut next_id = 0u64;
    while !shared.stopped.load(Ordering::Relaxed) {
        let client = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(_) => continue,
        };
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = client.set_nonblocking(false);
        let Ok(server) = TcpStream::connect_timeout(&shared.upstream, Duration::from_secs(2))
        else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        next_id += 1;
        let generation = shared.state().generation;
        let id = next_id;
        {
            let mut sockets = shared.sockets.lock().unwrap_or_else(|e| e.into_inner());
            for s in [&client, &server] {
                if let Ok(c) = s.try_clone() {
                    sockets.push((id, c));
                }
            }
        }
        let ended = Arc::new(AtomicU64::new(0));
        for (from, to, to_client) in [(&client, &server, false), (&server, &client, true)] {
            let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
                continue;
            };
            let s = Arc::clone(&shared);
            let ended = Arc::clone(&ended);
            let _ = thread::Builder::new()
                .name(format!("proxy-pump-{id}"))
                .spawn(move || {
                    pump(from, to, &s, generation, to_client);
                    // The second pump of a connection to end drops its sockets from the list.
                    if ended.fetch_add(1, Ordering::AcqRel) == 1 {
                        forget(&s, id);
                    }
                });
        }
    }
}

/// Moves bytes from `from` to `to`: a reader that stamps each chunk with its due time, and
/// this thread writing chunks when due and while the proxy is not cut.
/// Chunks read and not yet written, each with the time it is due (`None`: end of stream).
type Chunks = VecDeque<(Instant, Option<Vec<u8>>)>;

fn pump(
    from: TcpStream,
    mut to: TcpStream,
    shared: &Arc<Shared>,
    generation: u64,
    to_client: bool,
) {
    let queue: Arc<(Mutex<Chunks>, Condvar)> =
        Arc::new((Mutex::new(VecDeque::new()), Condvar::new()));
    let reader = {
        let queue = Arc::clone(&queue);
        let shared = Arc::clone(shared);
        let _ = from.set_read_timeout(Some(POLL));
        let mut from = from.try_clone().expect("clone a proxied socket");
        thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                if !shared.alive(generation) {
                    return;
                }
                // While cut, read nothing: the sender's bytes back up in the kernel, like
                // packets that never arrive.
                if !shared.state().open(to_client) {
                    if !shared.wait_open(generation, to_client) {
                        return;
                    }
                    continue;
                }
                let chunk = match from.read(&mut buf) {
                    Ok(0) => None,
                    Ok(n) => Some(buf[..n].to_vec()),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        continue;
                    }
                    Err(_) => None,
                };
                let due = {
                    let st = shared.state();
                    Instant::now()
                        + st.delay
                        + if to_client {
                            st.reply_delay
                        } else {
                            Duration::ZERO
                        }
                };
                let end = chunk.is_none();
                let (q, cv) = &*queue;
                q.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_back((due, chunk));
                cv.notify_one();
                if end {
                    return;
                }
            }
        })
    };
    let (q, cv) = &*queue;
    loop {
        let next = {
            let mut q = q.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if !shared.alive(generation) {
                    break None;
                }
                if let Some(front) = q.front() {
                    let now = Instant::now();
                    if front.0 <= now {
                        break q.pop_front();
                    }
                    let wait = front.0 - now;
                    q = cv
                        .wait_timeout(q, wait.min(POLL))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                } else {
                    q = cv
                        .wait_timeout(q, POLL)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        };
        let Some((_, chunk)) = next else { break };
        if !shared.wait_open(generation, to_client) {
            break;
        }
        match chunk {
            Some(bytes) => {
                if to.write_all(&bytes).is_err() {
                    break;
                }
            }
            None => {
                let _ = to.shutdown(Shutdown::Write);
                let _ = reader.join();
                return;
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
    let _ = reader.join();
}

fn forget(shared: &Shared, id: u64) {
    let mut sockets = shared.sockets.lock().unwrap_or_else(|e| e.into_inner());
    sockets.retain(|(i, _)| *i != id);
}
