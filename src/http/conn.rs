//! One connection's life under the limits of SPEC 7: the service hyper calls ([`Limited`],
//! which admits each request against the connection's byte budget, [`super::budget`]),
//! and the task that drives the connection ([`drive`]) with its watchdog:
//! - a connection with no request in flight and nothing to send for [`IDLE_TIMEOUT`]
//!   (10 s, the header-read timeout) is closed gracefully: a TCP connection that never
//!   sends a byte, an HTTP/2 connection idle after its preface or between requests, an
//!   HTTP/1.1 keep-alive connection between requests (hyper's header-read timeout closes
//!   those too);
//! - a connection holding a response that its client takes no byte of for
//!   [`STALL_TIMEOUT`] is closed at once (an HTTP/2 window kept at zero, a client that
//!   stopped reading), and with it everything it holds;
//! - a connection still open [`GRACE`] after a graceful close is closed at once.
//!
//! HTTP/2 peers are also pinged (hyper's keep-alive), and a peer that does not answer is
//! dropped by hyper.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, watch};

use super::budget::{ConnState, ResponseBody, SMALL_RESPONSE, Snapshot, Ticket, hold};
use super::error::ApiError;
use super::numbers::body_capacity;
use super::request::{decimal, query_param};
use super::router::{self, HttpState, Reply};

/// How long a connection may have nothing in flight before it is closed.
pub const IDLE_TIMEOUT: Duration = super::HEADER_READ_TIMEOUT;
/// How long a response may wait for its client to take a byte.
pub const STALL_TIMEOUT: Duration = super::HEADER_READ_TIMEOUT;
/// How long a connection gets to finish after a graceful close.
pub const GRACE: Duration = super::HEADER_READ_TIMEOUT;
/// How often the watchdog looks.
const TICK: Duration = Duration::from_secs(1);

/// The service of one connection: each request is admitted against the connection's
/// budget, then answered by [`router::call`].
#[derive(Clone)]
pub struct Limited {
    state: Arc<HttpState>,
    conn: Arc<ConnState>,
    peer: SocketAddr,
}

impl Limited {
    pub fn new(state: Arc<HttpState>, conn: Arc<ConnState>, peer: SocketAddr) -> Limited {
        Limited { state, conn, peer }
    }
}

/// What a request reserves of its connection's budget: a batch its `count` numbers, any
/// other request a small response.
fn estimate(req: &Request<Incoming>) -> usize {
    match query_param(req.uri().query(), "count") {
        Some(Some(n)) => decimal(&n).map_or(SMALL_RESPONSE, body_capacity),
        _ => SMALL_RESPONSE,
    }
}

impl hyper::service::Service<Request<Incoming>> for Limited {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Call;

    fn call(&self, req: Request<Incoming>) -> Call {
        let bytes = estimate(&req);
        match self.conn.try_admit(bytes) {
            Some(ticket) => Call::Now {
                reply: router::call(&self.state, req, self.peer),
                ticket: Some(ticket),
            },
            None => {
                let me = self.clone();
                Call::Waiting(Box::pin(async move {
                    let Some(ticket) = me.conn.admit(bytes).await else {
                        // The connection is gone; nobody reads this.
                        let gone = ApiError::Internal("the connection was closed".into());
                        return Ok(hold(gone.into_response(), None));
                    };
                    let resp = router::call(&me.state, req, me.peer).await?;
                    Ok(hold(resp, Some(ticket)))
                }))
            }
        }
    }
}

type WaitingCall = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Infallible>> + Send>>;

/// The future of one request: answered at once when admitted (the common case, without a
/// box), or after waiting for room in the budget.
pub enum Call {
    Now {
        reply: Reply,
        ticket: Option<Ticket>,
    },
    Waiting(WaitingCall),
}

impl Future for Call {
    type Output = Result<Response<ResponseBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Call::Now { reply, ticket } => {
                let resp = ready!(Pin::new(reply).poll(cx))?;
                Poll::Ready(Ok(hold(resp, ticket.take())))
            }
            Call::Waiting(fut) => fut.as_mut().poll(cx),
        }
    }
}

/// What the watchdog decides about a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Stop taking requests, finish what is in flight (HTTP/2 GOAWAY), then close.
    Graceful,
    /// Close now, dropping whatever the connection holds.
    Close(&'static str),
}

/// Decides, from a connection's counters read once a tick, when it is idle or stalled.
/// Pure: the caller passes the time.
#[derive(Debug)]
pub struct Watchdog {
    last_progress: u64,
    last_change: Instant,
    graceful_since: Option<Instant>,
}

impl Watchdog {
    pub fn new(now: Instant) -> Watchdog {
        Watchdog {
            last_progress: 0,
            last_change: now,
            graceful_since: None,
        }
    }

    /// The verdict at `now`, given the connection's counters.
    pub fn check(&mut self, now: Instant, s: Snapshot) -> Verdict {
        if s.progress != self.last_progress {
            self.last_progress = s.progress;
            self.last_change = now;
        }
        let quiet = now.saturating_duration_since(self.last_change);
        if let Some(since) = self.graceful_since
            && now.saturating_duration_since(since) >= GRACE
        {
            return Verdict::Close("still open after a graceful close");
        }
        if s.held > 0 && quiet >= STALL_TIMEOUT {
            return Verdict::Close("its client took no response data");
        }
        if s.requests == 0 && quiet >= IDLE_TIMEOUT && self.graceful_since.is_none() {
            self.graceful_since = Some(now);
            return Verdict::Graceful;
        }
        Verdict::Keep
    }

    /// Records a graceful close started elsewhere (server shutdown).
    pub fn closing(&mut self, now: Instant) {
        self.graceful_since.get_or_insert(now);
    }
}

/// A served connection, as hyper-util builds it.
pub type Connection = auto::Connection<'static, TokioIo<TcpStream>, Limited, TokioExecutor>;

/// Drives `conn` to its end under the watchdog; a graceful close when `stop` turns true.
/// `slot` is the connection's place under `max_connections`, given back when it ends.
pub async fn drive(
    conn: Connection,
    state: Arc<ConnState>,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
    slot: OwnedSemaphorePermit,
) {
    tokio::pin!(conn);
    let mut watchdog = Watchdog::new(Instant::now());
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + TICK, TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = *stop.borrow();
    if stopping {
        conn.as_mut().graceful_shutdown();
        watchdog.closing(Instant::now());
    }
    // One future for the whole life of the connection: made once, not at every wake-up.
    let stopped = async move {
        let _ = stop.changed().await;
    };
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            biased;
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                break;
            }
            () = &mut stopped, if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
                watchdog.closing(Instant::now());
            }
            _ = tick.tick() => match watchdog.check(Instant::now(), state.snapshot()) {
                Verdict::Keep => {}
                Verdict::Graceful => conn.as_mut().graceful_shutdown(),
                Verdict::Close(why) => {
                    tracing::debug!(%peer, why, "connection closed");
                    break;
                }
            },
        }
    }
    state.close();
    drop(slot);
}

/// A WARN that repeats at most once per `every`, saying how many it held back.
#[derive(Debug)]
pub struct Throttled {
    every: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl Throttled {
    pub fn new(every: Duration) -> Throttled {
        Throttled {
            every,
            last: None,
            held_back: 0,
        }
    }

    /// `Some(n)` when the event should be logged now (`n` events were held back since
    /// the last line); `None` when it is held back.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.every => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(progress: u64, requests: usize, held: usize) -> Snapshot {
        Snapshot {
            progress,
            requests,
            held,
        }
    }

    #[test]
    fn a_silent_connection_is_closed_gracefully_after_the_idle_timeout_then_for_good() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(t0);
        assert_eq!(
            w.check(t0 + Duration::from_secs(9), snap(0, 0, 0)),
            Verdict::Keep
        );
        assert_eq!(w.check(t0 + IDLE_TIMEOUT, snap(0, 0, 0)), Verdict::Graceful);
        // Once.
        let later = t0 + IDLE_TIMEOUT + Duration::from_secs(1);
        assert_eq!(w.check(later, snap(0, 0, 0)), Verdict::Keep);
        assert!(matches!(
            w.check(t0 + IDLE_TIMEOUT + GRACE, snap(0, 0, 0)),
            Verdict::Close(_)
        ));
    }

    #[test]
    fn requests_in_flight_keep_a_connection_that_holds_nothing() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(t0);
        // A request waiting on the store, or reading a slow body (which has its own
        // timeout): no response held, so no stall.
        assert_eq!(
            w.check(t0 + Duration::from_secs(60), snap(1, 1, 0)),
            Verdict::Keep
        );
    }

    #[test]
    fn a_response_nobody_reads_closes_the_connection() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(t0);
        assert_eq!(w.check(t0, snap(2, 1, 800_000)), Verdict::Keep);
        assert_eq!(
            w.check(t0 + Duration::from_secs(9), snap(2, 1, 800_000)),
            Verdict::Keep
        );
        assert!(matches!(
            w.check(t0 + STALL_TIMEOUT, snap(2, 1, 800_000)),
            Verdict::Close(_)
        ));
    }

    #[test]
    fn progress_resets_the_clock() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(t0);
        let mut now = t0;
        for p in 1..30 {
            now += Duration::from_secs(5);
            assert_eq!(w.check(now, snap(p, 1, 800_000)), Verdict::Keep);
        }
        // Idle after the last request: graceful, counted from the last progress.
        assert_eq!(
            w.check(now + Duration::from_secs(5), snap(40, 0, 0)),
            Verdict::Keep
        );
        assert_eq!(
            w.check(now + Duration::from_secs(15), snap(40, 0, 0)),
            Verdict::Graceful
        );
    }

    #[test]
    fn a_server_shutdown_counts_as_a_graceful_close() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(t0);
        w.closing(t0);
        assert!(matches!(
            w.check(t0 + GRACE, snap(1, 1, 0)),
            Verdict::Close(_)
        ));
    }

    #[test]
    fn throttled_warnings_count_what_they_held_back() {
        let t0 = Instant::now();
        let mut t = Throttled::new(Duration::from_secs(10));
        assert_eq!(t.admit(t0), Some(0));
        for ms in 1..500 {
            assert_eq!(t.admit(t0 + Duration::from_millis(ms * 20)), None);
        }
        assert_eq!(t.admit(t0 + Duration::from_secs(10)), Some(499));
        assert_eq!(t.admit(t0 + Duration::from_secs(11)), None);
    }
}
