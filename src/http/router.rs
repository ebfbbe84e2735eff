//! Routing and handlers. A route is found by `(method, path)` after stripping an optional
//! `/api` prefix; handlers check input, call the [`Service`], and write the response. The
//! numbers route renders straight into the response buffer: no per-number allocation.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use prometheus::{Histogram, IntCounter};

use super::error::ApiError;
use crate::cluster::ClusterView;
use crate::format::{RenderCtx, Template};
use crate::node::Blocked;
use crate::prefix::{PrefixConfig, valid_key};
use crate::service::{Entry, Fast, Service, Sink};

/// Largest request body accepted (SPEC 3.4).
pub const MAX_BODY: usize = 16 * 1024;
/// Largest `count` of a batch.
pub const MAX_COUNT: u64 = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RouteId {
    Numbers,
    PrefixConfig,
    PrefixConfigs,
    Ids,
    Health,
    Ready,
    Metrics,
    ClusterNodes,
    Unmatched,
}

const ROUTES: [(RouteId, &str); 9] = [
    (RouteId::Numbers, "/numbers/{key}"),
    (RouteId::PrefixConfig, "/prefix-configs/{key}"),
    (RouteId::PrefixConfigs, "/prefix-configs"),
    (RouteId::Ids, "/ids/{id}"),
    (RouteId::Health, "/health"),
    (RouteId::Ready, "/ready"),
    (RouteId::Metrics, "/metrics"),
    (RouteId::ClusterNodes, "/cluster/nodes"),
    (RouteId::Unmatched, "unmatched"),
];

/// Statuses whose counter handles are cached after first use; others are looked up each time.
const COMMON_STATUSES: [u16; 8] = [200, 400, 401, 404, 405, 409, 413, 503];

struct RouteMetrics {
    label: &'static str,
    duration: Histogram,
    /// Created on first use, so that only statuses that happened are exported.
    by_status: [OnceLock<IntCounter>; COMMON_STATUSES.len()],
}

/// Everything the handlers need.
pub struct HttpState {
    service: Arc<Service>,
    admin_token: String,
    cluster: Arc<dyn ClusterView>,
    routes: Vec<RouteMetrics>,
}

impl HttpState {
    pub fn new(
        service: Arc<Service>,
        admin_token: String,
        cluster: Arc<dyn ClusterView>,
    ) -> HttpState {
        let m = service.metrics();
        let routes = ROUTES
            .iter()
            .map(|(_, label)| RouteMetrics {
                label,
                duration: m.http_duration.with_label_values(&[label]),
                by_status: Default::default(),
            })
            .collect();
        HttpState {
            service,
            admin_token,
            cluster,
            routes,
        }
    }

    /// The response for `result`, counted in the route's metrics.
    fn finish(
        &self,
        route: RouteId,
        result: Result<Response<Full<Bytes>>, ApiError>,
        started: Instant,
    ) -> Response<Full<Bytes>> {
        let resp = result.unwrap_or_else(ApiError::into_response);
        self.record(route, resp.status(), started.elapsed());
        resp
    }

    fn record(&self, route: RouteId, status: StatusCode, elapsed: Duration) {
        let Some(r) = self.routes.get(route as usize) else {
            return;
        };
        r.duration.observe(elapsed.as_secs_f64());
        let counter = || {
            self.service
                .metrics()
                .http_requests
                .with_label_values(&[r.label, status.as_str()])
        };
        match COMMON_STATUSES.iter().position(|&s| s == status.as_u16()) {
            Some(i) => r.by_status[i].get_or_init(counter).inc(),
            None => counter().inc(),
        }
    }
}

/// The future of one response: ready at once for the common numbers request, boxed for
/// everything else. hyper keeps (and moves) this future per request, so it is small.
pub enum Reply {
    Ready(Option<Response<Full<Bytes>>>),
    Later(Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>),
}

impl Future for Reply {
    type Output = Result<Response<Full<Bytes>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Reply::Ready(resp) => Poll::Ready(Ok(resp.take().unwrap_or_else(|| {
                ApiError::NotFound("response already taken".into()).into_response()
            }))),
            Reply::Later(fut) => fut.as_mut().poll(cx).map(Ok),
        }
    }
}

/// Answers one request; never fails. A numbers request that needs no wait is answered
/// without an await; the rest runs as a boxed future.
pub fn call(state: &Arc<HttpState>, req: Request<Incoming>, peer: SocketAddr) -> Reply {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let (route, param) = route_of(parts.uri.path());
    let m = &parts.method;
    if route == RouteId::Numbers
        && (*m == Method::GET || *m == Method::POST)
        && content_length(&parts.headers).is_none_or(|n| n <= MAX_BODY as u64)
    {
        match numbers_begin(state, &parts, param) {
            Ok(Begun::Done(resp)) => {
                return Reply::Ready(Some(state.finish(route, Ok(resp), started)));
            }
            Err(e) => return Reply::Ready(Some(state.finish(route, Err(e), started))),
            Ok(Begun::Later(pending)) => {
                let state = state.clone();
                return Reply::Later(Box::pin(async move {
                    let result = pending.finish(&state.service).await;
                    state.finish(route, result, started)
                }));
            }
        }
    }
    let state = state.clone();
    Reply::Later(Box::pin(async move {
        let (route, result) = dispatch(&state, &parts, body, peer).await;
        state.finish(route, result, started)
    }))
}

/// Splits `path` (without `/api`) into a route and its parameter.
fn route_of(path: &str) -> (RouteId, Option<&str>) {
    let path = match path.strip_prefix("/api") {
        Some(rest) if rest.starts_with('/') => rest,
        _ => path,
    };
    match path {
        "/health" => (RouteId::Health, None),
        "/ready" => (RouteId::Ready, None),
        "/metrics" => (RouteId::Metrics, None),
        "/cluster/nodes" => (RouteId::ClusterNodes, None),
        "/prefix-configs" => (RouteId::PrefixConfigs, None),
        "/numbers" => (RouteId::Numbers, None),
        _ => {
            let param = |prefix: &str| {
                path.strip_prefix(prefix)
                    .filter(|p| !p.is_empty() && !p.contains('/'))
            };
            if let Some(k) = param("/numbers/") {
                (RouteId::Numbers, Some(k))
            } else if let Some(k) = param("/prefix-configs/") {
                (RouteId::PrefixConfig, Some(k))
            } else if let Some(id) = param("/ids/") {
                (RouteId::Ids, Some(id))
            } else {
                (RouteId::Unmatched, None)
            }
        }
    }
}

fn allowed(route: RouteId) -> &'static str {
    match route {
        RouteId::Numbers => "GET, POST",
        RouteId::PrefixConfig => "GET, POST, PUT, DELETE",
        RouteId::PrefixConfigs
        | RouteId::Ids
        | RouteId::Health
        | RouteId::Ready
        | RouteId::Metrics
        | RouteId::ClusterNodes => "GET, HEAD",
        RouteId::Unmatched => "",
    }
}

async fn dispatch(
    state: &HttpState,
    parts: &Parts,
    body: Incoming,
    peer: SocketAddr,
) -> (RouteId, Result<Response<Full<Bytes>>, ApiError>) {
    let (route, param) = route_of(parts.uri.path());
    let not_allowed = || ApiError::MethodNotAllowed {
        method: parts.method.to_string(),
        allow: allowed(route),
    };
    if content_length(&parts.headers).is_some_and(|n| n > MAX_BODY as u64) {
        return (route, Err(ApiError::BodyTooLarge));
    }
    let m = &parts.method;
    let read_only = *m == Method::GET || *m == Method::HEAD;
    let result = match route {
        // Normally answered by `call` without this detour.
        RouteId::Numbers if *m == Method::GET || *m == Method::POST => {
            match numbers_begin(state, parts, param) {
                Ok(Begun::Done(resp)) => Ok(resp),
                Ok(Begun::Later(pending)) => pending.finish(&state.service).await,
                Err(e) => Err(e),
            }
        }
        RouteId::PrefixConfig | RouteId::PrefixConfigs => {
            let allowed = route == RouteId::PrefixConfig
                && [Method::POST, Method::PUT, Method::DELETE].contains(m);
            if !(read_only || allowed) {
                Err(not_allowed())
            } else {
                // Boxed, like the other rare routes: the request future keeps the size
                // of the numbers route, which hyper moves on every request.
                Box::pin(admin(state, parts, body, peer, route, param)).await
            }
        }
        RouteId::Ids if read_only => decode(state, param.unwrap_or_default()),
        RouteId::Health if read_only => Ok(health(state)),
        RouteId::Ready if read_only => Ok(ready(state)),
        RouteId::Metrics if read_only => Box::pin(metrics(state)).await,
        RouteId::ClusterNodes if read_only => Box::pin(cluster_nodes(state)).await,
        RouteId::Unmatched => Err(ApiError::NotFound(format!(
            "no route for {} {}",
            parts.method,
            parts.uri.path()
        ))),
        _ => Err(not_allowed()),
    };
    (route, result)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Decodes `%XX` escapes (and, in a query, `+` as a space); `None` when an escape is
/// malformed or the result is not UTF-8.
fn percent_decode(s: &str, query: bool) -> Option<Cow<'_, str>> {
    if !(s.contains('%') || (query && s.contains('+'))) {
        return Some(Cow::Borrowed(s));
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if query => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// The first value of query parameter `name`, decoded.
fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<Option<Cow<'a, str>>> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| percent_decode(v, true))
}

fn checked_key(raw: &str) -> Result<Cow<'_, str>, ApiError> {
    match percent_decode(raw, false) {
        Some(k) if valid_key(&k) => Ok(k),
        Some(k) => Err(ApiError::InvalidPrefixKey(k.into_owned())),
        None => Err(ApiError::InvalidPrefixKey(raw.to_string())),
    }
}

/// True when the client prefers `text/plain` to JSON.
fn wants_text(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let (mut text, mut json) = (0.0f32, 0.0f32);
    for item in accept.split(',') {
        let mut fields = item.split(';');
        let media = fields.next().unwrap_or("").trim();
        let q = fields
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        if media.eq_ignore_ascii_case("text/plain") {
            text = text.max(q);
        } else if media.eq_ignore_ascii_case("application/json") {
            json = json.max(q);
        }
    }
    text > json
}

/// A numbers response body, written as the numbers are issued.
struct NumbersBody {
    buf: Vec<u8>,
    first: bool,
    /// `text/plain`: one number per line.
    text: bool,
    /// `?count=N`: `{"numbers":[…]}` around the objects.
    batch: bool,
}

impl NumbersBody {
    fn new(count: Option<u64>, text: bool) -> NumbersBody {
        let n = count.unwrap_or(1) as usize;
        let mut buf = Vec::with_capacity(n * 96 + 16);
        if count.is_some() && !text {
            buf.extend_from_slice(b"{\"numbers\":[");
        }
        NumbersBody {
            buf,
            first: true,
            text,
            batch: count.is_some(),
        }
    }

    fn finish(mut self) -> Response<Full<Bytes>> {
        let content_type = if self.text {
            "text/plain; charset=utf-8"
        } else {
            if self.batch {
                self.buf.extend_from_slice(b"]}");
            }
            "application/json"
        };
        let mut resp = respond(StatusCode::OK, content_type, self.buf);
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}

impl Sink for NumbersBody {
    #[inline]
    fn push(&mut self, template: &Template, ctx: &RenderCtx<'_>, id: u64, degraded: bool) {
        if self.text {
            if !self.first {
                self.buf.push(b'\n');
            }
            self.first = false;
            template.render(&mut self.buf, ctx);
            return;
        }
        if !self.first {
            self.buf.push(b',');
        }
        self.first = false;
        // Rendered numbers and IDs are ASCII letters, digits and -_./:# only: no escaping.
        self.buf.extend_from_slice(b"{\"number\":\"");
        template.render(&mut self.buf, ctx);
        self.buf.extend_from_slice(b"\",\"id\":\"");
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
        self.buf.extend_from_slice(if degraded {
            b"\",\"degraded\":true}"
        } else {
            b"\",\"degraded\":false}"
        });
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Full<Bytes>> {
    // A boxed slice: `Bytes` takes it over without allocating a shared header, which a
    // `Vec` with spare capacity would need.
    let mut resp = Response::new(Full::new(Bytes::from(body.into_boxed_slice())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    respond(status, "application/json", value.to_string().into_bytes())
}

/// How far a numbers request got without waiting.
enum Begun {
    Done(Response<Full<Bytes>>),
    Later(PendingNumbers),
}

/// The rest of a numbers request: a lookup (sequence prefixes, keys not in memory) or a
/// snowflake batch waiting for the clock or the reservation.
struct PendingNumbers {
    body: NumbersBody,
    rest: Rest,
}

enum Rest {
    Lookup {
        key: String,
        count: u64,
    },
    Continue {
        entry: Arc<Entry>,
        left: u64,
        blocked: Blocked,
    },
}

impl PendingNumbers {
    async fn finish(mut self, service: &Service) -> Result<Response<Full<Bytes>>, ApiError> {
        match self.rest {
            Rest::Lookup { key, count } => service.issue(&key, count, &mut self.body).await?,
            Rest::Continue {
                entry,
                left,
                blocked,
            } => {
                service
                    .issue_rest(&entry, left, blocked, &mut self.body)
                    .await?
            }
        }
        Ok(self.body.finish())
    }
}

/// `GET|POST /numbers/{key}`, `GET /numbers?prefixKey=KEY`: checks the request and issues
/// what can be issued now.
fn numbers_begin(state: &HttpState, parts: &Parts, param: Option<&str>) -> Result<Begun, ApiError> {
    let query = parts.uri.query();
    let key = match param {
        Some(raw) => checked_key(raw)?,
        None => match query_param(query, "prefixKey") {
            Some(Some(k)) if valid_key(&k) => k,
            Some(Some(k)) => return Err(ApiError::InvalidPrefixKey(k.into_owned())),
            _ => {
                return Err(ApiError::InvalidPrefixKey(
                    "(missing: use /numbers/{key} or ?prefixKey=KEY)".into(),
                ));
            }
        },
    };
    let count = match query_param(query, "count") {
        None => None,
        Some(v) => Some(
            v.and_then(|v| v.parse::<u64>().ok())
                .filter(|n| (1..=MAX_COUNT).contains(n))
                .ok_or(ApiError::InvalidCount)?,
        ),
    };
    let n = count.unwrap_or(1);
    let mut body = NumbersBody::new(count, wants_text(&parts.headers));
    let rest = match state.service.issue_fast(&key, n, &mut body)? {
        Fast::Done => return Ok(Begun::Done(body.finish())),
        Fast::Slow => Rest::Lookup {
            key: key.into_owned(),
            count: n,
        },
        Fast::Continue(entry, left, blocked) => Rest::Continue {
            entry,
            left,
            blocked,
        },
    };
    Ok(Begun::Later(PendingNumbers { body, rest }))
}

/// Compares without leaking, through timing, how much of the token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorize(state: &HttpState, parts: &Parts, peer: SocketAddr) -> Result<(), ApiError> {
    let presented = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            // The scheme is case-insensitive (RFC 9110 section 11.1).
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        })
        .map(str::trim);
    match presented {
        Some(t) if constant_time_eq(t.as_bytes(), state.admin_token.as_bytes()) => Ok(()),
        _ => {
            tracing::warn!(
                %peer,
                method = %parts.method,
                path = parts.uri.path(),
                token_presented = presented.is_some(),
                "unauthorized admin request"
            );
            Err(ApiError::Unauthorized)
        }
    }
}

async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::BodyTooLarge),
        Err(e) => Err(ApiError::InvalidConfig(format!(
            "could not read the request body: {e}"
        ))),
    }
}

fn config_body(status: Option<&str>, key: &str, config: &PrefixConfig) -> serde_json::Value {
    let mut v = serde_json::json!({ "prefix_key": key, "config": config.to_json() });
    if let (Some(s), Some(obj)) = (status, v.as_object_mut()) {
        obj.insert("status".into(), s.into());
    }
    v
}

/// `/prefix-configs` and `/prefix-configs/{key}`.
async fn admin(
    state: &HttpState,
    parts: &Parts,
    body: Incoming,
    peer: SocketAddr,
    route: RouteId,
    param: Option<&str>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    authorize(state, parts, peer)?;
    let service = &state.service;
    let Some(raw) = param else {
        let all = service.configs().await?;
        let list: Vec<_> = all.iter().map(|(k, c)| config_body(None, k, c)).collect();
        return Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "prefixes": list }),
        ));
    };
    debug_assert_eq!(route, RouteId::PrefixConfig);
    let key = checked_key(raw)?;
    let m = &parts.method;
    if *m == Method::GET || *m == Method::HEAD {
        let config = service.config(&key).await?;
        Ok(json(StatusCode::OK, &config_body(None, &key, &config)))
    } else if *m == Method::DELETE {
        service.delete(&key).await?;
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "status": "deleted" }),
        ))
    } else {
        let bytes = read_body(body).await?;
        let config = if *m == Method::POST {
            service.register(&key, &bytes).await?
        } else {
            service.replace(&key, &bytes).await?
        };
        Ok(json(
            StatusCode::OK,
            &config_body(Some("registered"), &key, &config),
        ))
    }
}

/// `GET /ids/{id}`
fn decode(state: &HttpState, raw: &str) -> Result<Response<Full<Bytes>>, ApiError> {
    let layout = state.service.node().layout();
    let described = raw
        .parse::<u64>()
        .ok()
        .and_then(|id| crate::id::describe(layout, id))
        .ok_or_else(|| {
            ApiError::InvalidConfig(format!(
                "id '{raw}' must be a decimal integer from 0 to 9223372036854775807"
            ))
        })?;
    Ok(json(StatusCode::OK, &described))
}

fn health(state: &HttpState) -> Response<Full<Bytes>> {
    let now = state.service.node().clock().now_ms();
    json(
        StatusCode::OK,
        &serde_json::json!({ "status": "ok", "now_ms": now }),
    )
}

fn ready(state: &HttpState) -> Response<Full<Bytes>> {
    let r = state.service.node().readiness();
    let status = if r.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(
        status,
        &serde_json::json!({ "status": r.status, "reasons": r.reasons }),
    )
}

async fn metrics(state: &HttpState) -> Result<Response<Full<Bytes>>, ApiError> {
    let m = state.service.metrics().clone();
    // Encoding thousands of series takes a while: keep it off the runtime threads.
    let text = tokio::task::spawn_blocking(move || m.encode())
        .await
        .map_err(|e| ApiError::StorageUnavailable(format!("metrics encoding failed: {e}")))?;
    Ok(respond(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        text,
    ))
}

async fn cluster_nodes(state: &HttpState) -> Result<Response<Full<Bytes>>, ApiError> {
    let nodes = state.cluster.nodes().await?;
    Ok(json(StatusCode::OK, &serde_json::json!({ "nodes": nodes })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_aliases() {
        assert_eq!(route_of("/numbers/A"), (RouteId::Numbers, Some("A")));
        assert_eq!(route_of("/api/numbers/A"), (RouteId::Numbers, Some("A")));
        assert_eq!(route_of("/api/numbers"), (RouteId::Numbers, None));
        assert_eq!(route_of("/numbers/A/B").0, RouteId::Unmatched);
        assert_eq!(route_of("/numbers/").0, RouteId::Unmatched);
        assert_eq!(route_of("/apinumbers/A").0, RouteId::Unmatched);
        assert_eq!(route_of("/api").0, RouteId::Unmatched);
        assert_eq!(
            route_of("/api/prefix-configs/X"),
            (RouteId::PrefixConfig, Some("X"))
        );
        assert_eq!(route_of("/prefix-configs").0, RouteId::PrefixConfigs);
        assert_eq!(route_of("/ids/12"), (RouteId::Ids, Some("12")));
        for p in ["/health", "/ready", "/metrics", "/cluster/nodes"] {
            assert_ne!(route_of(p).0, RouteId::Unmatched);
            assert_ne!(route_of(&format!("/api{p}")).0, RouteId::Unmatched);
        }
    }

    #[test]
    fn query_and_percent_decoding() {
        assert_eq!(
            query_param(Some("a=1&prefixKey=ORD%2D1&count=5"), "prefixKey"),
            Some(Some(Cow::Borrowed("ORD-1")))
        );
        assert_eq!(
            query_param(Some("count"), "count"),
            Some(Some(Cow::Borrowed("")))
        );
        assert_eq!(query_param(None, "count"), None);
        assert_eq!(query_param(Some("count=%zz"), "count"), Some(None));
        assert_eq!(
            percent_decode("%27%3B+DROP", true).as_deref(),
            Some("'; DROP")
        );
        assert_eq!(percent_decode("A+B", false).as_deref(), Some("A+B"));
        assert_eq!(percent_decode("%e9", false).as_deref(), None);
        assert_eq!(percent_decode("%4", false).as_deref(), None);
    }

    #[test]
    fn accept_negotiation() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
            wants_text(&m)
        };
        assert!(!wants_text(&HeaderMap::new()));
        assert!(h("text/plain"));
        assert!(h("text/plain, */*"));
        assert!(!h("*/*"));
        assert!(!h("application/json, text/plain"));
        assert!(!h("text/plain;q=0.5, application/json"));
        assert!(h("application/json;q=0.1, text/plain;q=0.9"));
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
