//! The HTTP boundary: an accept loop on plain hyper 1.x (HTTP/1.1 and h2c), handlers with
//! no business logic, and one error type. Connections drain on shutdown.
//!
//! - `conn`: one connection's life under SPEC 7's limits: admission against its byte
//!   budget (`budget`), the idle and stall watchdog, graceful close.
//! - [`router`]: path and method to a route, metrics per route, errors into responses.
//! - `request`: path parameters, query, percent-decoding, `Accept`, the bounded body.
//! - [`memory`]: gives freed memory back to the OS once a burst of connections is gone.
//! - `numbers`: the numbers route, rendered straight into the response buffer.
//! - `admin`: the bearer-token check, `/prefix-configs` and its audit history.
//! - [`ops`]: `/ids`, `/health`, `/ready`, `/metrics`, `/cluster/nodes`.
//! - [`status`]: `/`, the status page for operators (HTML).
//! - `leaf`: Meituan Leaf's `/api/segment/get/{key}` and `/api/snowflake/get/{key}`.
//! - [`openapi`]: `/openapi.json`, the document of the contract, checked against the router.
//! - [`rate_limit`]: the optional per-address rate limit, with bounded memory.
//! - [`error`]: [`error::ApiError`] and its one match to status and code (SPEC 3.5).

mod admin;
mod budget;
mod conn;
pub mod error;
mod leaf;
pub mod memory;
mod numbers;
pub mod openapi;
pub mod ops;
pub mod rate_limit;
pub mod request;
mod router;
pub mod status;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

pub use admin::fingerprint;
pub use router::HttpState;

/// Every response numgen sends: a complete body.
pub type HttpResponse = Response<Full<Bytes>>;

/// How long a client may take to send its request headers; also how long a connection may
/// stay silent (SPEC 7).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests get to finish at shutdown.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `max_connections`: open connections; beyond it new ones wait in the backlog.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Concurrent streams per HTTP/2 connection. Each may hold one unsent chunk in h2's
/// queue, so this times [`budget::CHUNK`] (1 MiB) bounds that part of a connection.
pub const MAX_STREAMS: u32 = 64;
/// HTTP/2 pings: sent after this much silence from the peer ...
pub const PING_INTERVAL: Duration = Duration::from_secs(10);
/// ... and the connection is closed when the answer takes longer than this.
pub const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// At most one WARN about failing `accept` calls, or about the connection cap, per this.
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(10);
/// How long the accept loop backs off after a failed `accept` (out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// The connection builder numgen serves with; the benchmark's reference server uses the
/// same one so that the two differ only in what a request does.
pub fn builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        // What h2 queues per stream beyond what the peer's window lets out: one chunk.
        .max_send_buf_size(budget::CHUNK)
        // Request bodies are at most 16 KiB: a small receive window bounds what a client
        // can make the connection buffer of bodies nobody reads.
        .initial_stream_window_size(64 * 1024)
        .initial_connection_window_size(256 * 1024)
        .keep_alive_interval(PING_INTERVAL)
        .keep_alive_timeout(PING_TIMEOUT);
    b
}

/// Serves `listener` until `shutdown` resolves, with at most `max_connections` open at
/// once (beyond that, new connections wait in the listen backlog); then stops accepting
/// and waits (bounded) for in-flight requests to finish.
pub async fn serve(
    listener: TcpListener,
    state: Arc<HttpState>,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) {
    let builder = builder();
    let max = max_connections.clamp(1, u32::MAX as usize);
    let slots = Arc::new(Semaphore::new(max));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut accept_warn = conn::Throttled::new(ACCEPT_WARN_EVERY);
    let mut full_warn = conn::Throttled::new(ACCEPT_WARN_EVERY);
    let collector = tokio::spawn(memory::watch());
    tokio::pin!(shutdown);
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if let Some(held_back) = full_warn.admit(Instant::now()) {
                    tracing::warn!(
                        max_connections = max,
                        held_back,
                        "connection limit reached; new connections wait in the backlog"
                    );
                }
                tokio::select! {
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        if let Some(held_back) = accept_warn.admit(Instant::now()) {
                            tracing::warn!(error = %e, held_back, "accept failed");
                        }
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let open = OpenConnection::new(state.connections());
                let counters = Arc::new(budget::ConnState::default());
                let svc = conn::Limited::new(state.clone(), counters.clone(), peer);
                let served = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                let stop = stop_rx.clone();
                tokio::spawn(async move {
                    let _open = open;
                    conn::drive(served, counters, peer, stop, slot).await;
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    collector.abort();
    let _ = stop_tx.send(true);
    // Every connection gives its slot back when it ends.
    let all_closed = slots.acquire_many(max as u32);
    if tokio::time::timeout(DRAIN_TIMEOUT, all_closed)
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them");
    }
}

/// One open connection in `numgen_http_connections`, for as long as it lives.
struct OpenConnection(prometheus::IntGauge);

impl OpenConnection {
    fn new((open, accepted): (prometheus::IntGauge, prometheus::IntCounter)) -> OpenConnection {
        accepted.inc();
        open.inc();
        memory::opened();
        OpenConnection(open)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
        memory::closed();
    }
}

/// The address the server should log and advertise for `listener`.
pub fn local_addr(listener: &TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}

/// A response with `status`, `content_type` and `body`.
fn respond(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> HttpResponse {
    // A boxed slice: `Bytes` takes it over without allocating a shared header, which a
    // `Vec` with spare capacity would need.
    let mut resp = Response::new(Full::new(Bytes::from(body.into_boxed_slice())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A JSON response.
fn json_response(status: StatusCode, value: &serde_json::Value) -> HttpResponse {
    respond(status, "application/json", value.to_string().into_bytes())
}
