//! The HTTP boundary: an accept loop on plain hyper 1.x (HTTP/1.1 and h2c), handlers with
//! no business logic, and one error type. Connections drain on shutdown.
//!
//! - [`router`]: path and method to a route, metrics per route, errors into responses.
//! - `request`: path parameters, query, percent-decoding, `Accept`, the bounded body.
//! - `numbers`: the numbers route, rendered straight into the response buffer.
//! - `admin`: the bearer-token check, `/prefix-configs` and its audit history.
//! - [`ops`]: `/ids`, `/health`, `/ready`, `/metrics`, `/cluster/nodes`.
//! - [`status`]: `/`, the status page for operators (HTML).
//! - `leaf`: Meituan Leaf's `/api/segment/get/{key}` and `/api/snowflake/get/{key}`.
//! - [`openapi`]: `/openapi.json`, the document of the contract, checked against the router.
//! - [`rate_limit`]: the optional per-address rate limit, with bounded memory.
//! - [`error`]: [`error::ApiError`] and its one match to status and code (SPEC 3.5).

mod admin;
pub mod error;
mod leaf;
mod numbers;
pub mod openapi;
pub mod ops;
pub mod rate_limit;
mod request;
mod router;
pub mod status;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

pub use admin::fingerprint;
pub use router::HttpState;

/// Every response numgen sends: a complete body.
pub type HttpResponse = Response<Full<Bytes>>;

/// How long a client may take to send its request headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests get to finish at shutdown.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection builder numgen serves with; the benchmark's reference server uses the
/// same one so that the two differ only in what a request does.
pub fn builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    b.http2().timer(TokioTimer::new());
    b
}

/// Serves `listener` until `shutdown` resolves, then stops accepting and waits (bounded)
/// for in-flight requests to finish.
pub async fn serve(
    listener: TcpListener,
    state: Arc<HttpState>,
    shutdown: impl Future<Output = ()>,
) {
    let builder = builder();
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let open = OpenConnection::new(state.connections());
                let state = state.clone();
                let svc = service_fn(move |req| router::call(&state, req, peer));
                let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _open = open;
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
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
        OpenConnection(open)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
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
