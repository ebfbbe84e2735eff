//! Routing. A route is found by its path after stripping an optional `/api` prefix, then
//! checked against the methods it allows; the handlers live in [`super::numbers`],
//! [`super::admin`] and [`super::ops`]. Every answer, success or error, leaves through
//! [`HttpState::finish`]: the one place where errors become responses, are logged, and
//! requests are counted in the route's metrics.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use http::request::Parts;
use http::{Method, Request, StatusCode};
use hyper::body::{Body, Incoming};
use prometheus::{Histogram, IntCounter};

use super::admin::AdminAuth;
use super::error::ApiError;
use super::numbers::{self, Begun};
use super::rate_limit::RateLimiter;
use super::request::{declared_too_large, read_body, shown};
use super::{HttpResponse, admin, leaf, openapi, ops, status};
use crate::cluster::ClusterView;
use crate::prefix::Mode;
use crate::service::Service;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RouteId {
    Numbers,
    PrefixConfig,
    PrefixConfigs,
    Ids,
    Health,
    Ready,
    Metrics,
    ClusterNodes,
    Status,
    PrefixHistory,
    OpenApi,
    LeafSegment,
    LeafSnowflake,
    Unmatched,
}

/// Every path pattern the router serves (each also under `/api`), with its route; a
/// route's first pattern is its metrics label. The table that `GET /openapi.json` is
/// checked against (`openapi::tests`), and [`route_of`] too
/// (`tests::route_of_serves_exactly_the_table`).
pub(super) const ROUTES: [(&str, RouteId); 14] = [
    ("/", RouteId::Status),
    ("/numbers/{key}", RouteId::Numbers),
    ("/numbers", RouteId::Numbers),
    ("/prefix-configs/{key}", RouteId::PrefixConfig),
    ("/prefix-configs", RouteId::PrefixConfigs),
    ("/prefix-configs/{key}/history", RouteId::PrefixHistory),
    ("/ids/{id}", RouteId::Ids),
    ("/health", RouteId::Health),
    ("/ready", RouteId::Ready),
    ("/metrics", RouteId::Metrics),
    ("/cluster/nodes", RouteId::ClusterNodes),
    ("/openapi.json", RouteId::OpenApi),
    ("/segment/get/{key}", RouteId::LeafSegment),
    ("/snowflake/get/{key}", RouteId::LeafSnowflake),
];

impl RouteId {
    /// Every route, in declaration order: `ALL[r as usize] == r`.
    const ALL: [RouteId; 14] = [
        RouteId::Numbers,
        RouteId::PrefixConfig,
        RouteId::PrefixConfigs,
        RouteId::Ids,
        RouteId::Health,
        RouteId::Ready,
        RouteId::Metrics,
        RouteId::ClusterNodes,
        RouteId::Status,
        RouteId::PrefixHistory,
        RouteId::OpenApi,
        RouteId::LeafSegment,
        RouteId::LeafSnowflake,
        RouteId::Unmatched,
    ];

    /// The route's pattern: its `route` label in the metrics, never a raw path. The first
    /// of its patterns in [`ROUTES`].
    fn label(self) -> &'static str {
        ROUTES
            .iter()
            .find(|(_, r)| *r == self)
            .map_or("unmatched", |(pattern, _)| pattern)
    }

    /// True for the routes that issue numbers (one number or many, as JSON, text or the
    /// Leaf-compatible bare ID): GET and POST, no HEAD.
    fn issues(self) -> bool {
        matches!(
            self,
            RouteId::Numbers | RouteId::LeafSegment | RouteId::LeafSnowflake
        )
    }

    /// The `Allow` header of a 405 on this route.
    fn allowed(self) -> &'static str {
        match self {
            r if r.issues() => "GET, POST",
            RouteId::PrefixConfig => "GET, POST, PUT, DELETE",
            RouteId::Unmatched => "",
            _ => "GET, HEAD",
        }
    }

    /// True when the route answers `method` (HEAD wherever GET is, but on numbers).
    fn allows(self, method: &Method) -> bool {
        let read_only = *method == Method::GET || *method == Method::HEAD;
        match self {
            r if r.issues() => *method == Method::GET || *method == Method::POST,
            RouteId::PrefixConfig => {
                read_only || [Method::POST, Method::PUT, Method::DELETE].contains(method)
            }
            RouteId::Unmatched => true,
            _ => read_only,
        }
    }

    /// False for what monitoring and peers ask (liveness, readiness, metrics): a rate limit
    /// must not fail a probe or a scrape (SPEC 7 limits clients, not the platform).
    fn rate_limited(self) -> bool {
        !matches!(self, RouteId::Health | RouteId::Ready | RouteId::Metrics)
    }
}

/// `p` when it is one non-empty path segment.
fn segment(p: &str) -> Option<&str> {
    (!p.is_empty() && !p.contains('/')).then_some(p)
}

/// Splits `path` (with or without `/api`) into a route and its parameter.
fn route_of(path: &str) -> (RouteId, Option<&str>) {
    let path = match path.strip_prefix("/api") {
        Some(rest) if rest.starts_with('/') => rest,
        _ => path,
    };
    match path {
        "/" => (RouteId::Status, None),
        "/health" => (RouteId::Health, None),
        "/ready" => (RouteId::Ready, None),
        "/metrics" => (RouteId::Metrics, None),
        "/cluster/nodes" => (RouteId::ClusterNodes, None),
        "/prefix-configs" => (RouteId::PrefixConfigs, None),
        "/numbers" => (RouteId::Numbers, None),
        "/openapi.json" => (RouteId::OpenApi, None),
        _ => {
            let param = |prefix: &str| path.strip_prefix(prefix).and_then(segment);
            if let Some(k) = param("/numbers/") {
                (RouteId::Numbers, Some(k))
            } else if let Some(k) = param("/prefix-configs/") {
                (RouteId::PrefixConfig, Some(k))
            } else if let Some(id) = param("/ids/") {
                (RouteId::Ids, Some(id))
            } else if let Some(k) = path
                .strip_prefix("/prefix-configs/")
                .and_then(|p| p.strip_suffix("/history"))
                .and_then(segment)
            {
                (RouteId::PrefixHistory, Some(k))
            } else if let Some(k) = param("/segment/get/") {
                (RouteId::LeafSegment, Some(k))
            } else if let Some(k) = param("/snowflake/get/") {
                (RouteId::LeafSnowflake, Some(k))
            } else {
                (RouteId::Unmatched, None)
            }
        }
    }
}

/// Statuses whose counter handles are cached after first use; others are looked up each time.
const COMMON_STATUSES: [u16; 9] = [200, 400, 401, 404, 405, 409, 413, 429, 503];

struct RouteMetrics {
    duration: Histogram,
    /// Created on first use, so that only statuses that happened are exported.
    by_status: [OnceLock<IntCounter>; COMMON_STATUSES.len()],
}

/// Everything the handlers need.
pub struct HttpState {
    service: Arc<Service>,
    admin: AdminAuth,
    cluster: Arc<dyn ClusterView>,
    /// `rate_limit_per_s` (SPEC 7); `None`, the default, costs one branch per request.
    limiter: Option<RateLimiter>,
    /// By route, in [`RouteId::ALL`] order.
    routes: [RouteMetrics; RouteId::ALL.len()],
}

impl HttpState {
    pub fn new(
        service: Arc<Service>,
        admin_token: String,
        cluster: Arc<dyn ClusterView>,
    ) -> HttpState {
        let m = service.metrics();
        let routes = RouteId::ALL.map(|r| RouteMetrics {
            duration: m.http_duration.with_label_values(&[r.label()]),
            by_status: Default::default(),
        });
        HttpState {
            service,
            admin: AdminAuth::new(admin_token),
            cluster,
            limiter: None,
            routes,
        }
    }

    /// Limits each client address to `per_s` requests a second, in bursts of `burst`.
    pub fn with_rate_limit(mut self, per_s: u64, burst: u64) -> HttpState {
        self.limiter = Some(RateLimiter::new(per_s, burst));
        self
    }

    /// The response for `result`, counted in the route's metrics; an error becomes its
    /// response here, and a 5xx is logged here, once.
    fn finish(
        &self,
        (route, method, path): (RouteId, &Method, Option<&str>),
        result: Result<HttpResponse, ApiError>,
        started: Instant,
    ) -> HttpResponse {
        let resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                e.log(route.label(), method, path);
                self.service
                    .metrics()
                    .http_errors
                    .with_label_values(&[route.label(), e.code()])
                    .inc();
                e.into_response()
            }
        };
        self.record(route, resp.status(), started);
        resp
    }

    /// `numgen_http_connections` and `numgen_http_connections_accepted_total`.
    pub(super) fn connections(&self) -> (prometheus::IntGauge, prometheus::IntCounter) {
        let m = self.service.metrics();
        (m.connections.clone(), m.connections_accepted.clone())
    }

    fn record(&self, route: RouteId, status: StatusCode, started: Instant) {
        let Some(r) = self.routes.get(route as usize) else {
            return;
        };
        r.duration.observe(started.elapsed().as_secs_f64());
        let counter = || {
            self.service
                .metrics()
                .http_requests
                .with_label_values(&[route.label(), status.as_str()])
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
    Ready(Option<HttpResponse>),
    Later(Pin<Box<dyn Future<Output = HttpResponse> + Send>>),
}

impl Future for Reply {
    type Output = Result<HttpResponse, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Reply::Ready(resp) => Poll::Ready(Ok(resp.take().unwrap_or_else(|| {
                // hyper never polls a finished future; were it to, it gets an answer.
                let e = ApiError::Internal("the response was already taken".into());
                e.log(RouteId::Unmatched.label(), &Method::GET, None);
                e.into_response()
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
    if let Some(limiter) = &state.limiter
        && route.rate_limited()
        && let Err(retry_after) = limiter.check(peer.ip())
    {
        let request = (route, &parts.method, Some(parts.uri.path()));
        let refused = Err(ApiError::RateLimited { retry_after });
        return Reply::Ready(Some(state.finish(request, refused, started)));
    }
    if route == RouteId::Numbers && route.allows(&parts.method) && body.is_end_stream() {
        let begun = numbers::begin(&state.service, &parts, param);
        let request = (route, &parts.method, Some(parts.uri.path()));
        return match begun {
            Ok(Begun::Done(resp)) => Reply::Ready(Some(state.finish(request, Ok(resp), started))),
            Err(e) => Reply::Ready(Some(state.finish(request, Err(e), started))),
            Ok(Begun::Later(pending)) => {
                // Not `parts`: its URI and headers point into the connection's read buffer,
                // and while they live hyper allocates a new buffer for the next request.
                let (state, method) = (state.clone(), parts.method.clone());
                Reply::Later(Box::pin(async move {
                    let result = pending.finish(&state.service).await;
                    state.finish((route, &method, None), result, started)
                }))
            }
        };
    }
    let state = state.clone();
    Reply::Later(Box::pin(async move {
        let (route, param) = route_of(parts.uri.path());
        let result = dispatch(&state, route, param, &parts, body, peer).await;
        let request = (route, &parts.method, Some(parts.uri.path()));
        state.finish(request, result, started)
    }))
}

/// Every request but the numbers requests [`call`] answers at once.
async fn dispatch(
    state: &HttpState,
    route: RouteId,
    param: Option<&str>,
    parts: &Parts,
    body: Incoming,
    peer: SocketAddr,
) -> Result<HttpResponse, ApiError> {
    if declared_too_large(&parts.headers) {
        return Err(ApiError::BodyTooLarge);
    }
    if !route.allows(&parts.method) {
        return Err(ApiError::MethodNotAllowed {
            method: shown(parts.method.as_str()),
            allow: route.allowed(),
        });
    }
    let service = &state.service;
    match route {
        // Normally answered by `call` without this detour; here when the request has a
        // body, which is read (bounded, its framing checked) and ignored.
        RouteId::Numbers => {
            if !body.is_end_stream() {
                read_body(body).await?;
            }
            match numbers::begin(service, parts, param)? {
                Begun::Done(resp) => Ok(resp),
                Begun::Later(pending) => pending.finish(service).await,
            }
        }
        RouteId::PrefixConfig | RouteId::PrefixConfigs => {
            // Boxed, like the other rare routes: the request future keeps the size of the
            // numbers route.
            let auth = &state.admin;
            Box::pin(admin::handle(service, auth, peer, parts, body, param)).await
        }
        RouteId::PrefixHistory => {
            let auth = &state.admin;
            Box::pin(admin::history(service, auth, peer, parts, param)).await
        }
        RouteId::OpenApi => Ok(openapi::document()),
        RouteId::LeafSegment => Box::pin(leaf::handle(service, Mode::Sequence, param)).await,
        RouteId::LeafSnowflake => Box::pin(leaf::handle(service, Mode::Snowflake, param)).await,
        RouteId::Ids => ops::decode(service.node().layout(), param.unwrap_or_default()),
        RouteId::Health => Ok(ops::health(service.node())),
        RouteId::Ready => Ok(ops::ready(service.node())),
        RouteId::Metrics => Box::pin(ops::metrics(service)).await,
        RouteId::ClusterNodes => Box::pin(ops::cluster_nodes(state.cluster.as_ref())).await,
        RouteId::Status => {
            let snapshot = Box::pin(status::gather(service, state.cluster.as_ref())).await;
            Ok(status::response(&snapshot))
        }
        RouteId::Unmatched => Err(ApiError::NotFound(format!(
            "no route for {} {}",
            shown(parts.method.as_str()),
            shown(parts.uri.path())
        ))),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The route a concrete path goes to.
    pub fn routed(path: &str) -> RouteId {
        route_of(path).0
    }

    /// The methods `route` answers, as the document lists them: upper case, sorted,
    /// without HEAD (answered wherever GET is, and implicit in OpenAPI).
    pub fn methods_of(route: RouteId) -> Vec<String> {
        let mut methods: Vec<String> = route
            .allowed()
            .split(", ")
            .filter(|m| !m.is_empty() && *m != "HEAD")
            .map(str::to_string)
            .collect();
        methods.sort();
        methods
    }

    /// True when `path` is an instance of `pattern` (`{name}`: one non-empty segment).
    fn instance_of(path: &str, pattern: &str) -> bool {
        let (p, q): (Vec<&str>, Vec<&str>) =
            (path.split('/').collect(), pattern.split('/').collect());
        p.len() == q.len()
            && p.iter()
                .zip(&q)
                .all(|(a, b)| a == b || (b.starts_with('{') && b.ends_with('}') && !a.is_empty()))
    }

    /// `route_of` serves exactly the paths of [`ROUTES`] (and their `/api` aliases): every
    /// path of up to four segments made of the table's words and a parameter is routed
    /// when, and only when, it is an instance of a pattern of the table, to that route.
    #[test]
    fn route_of_serves_exactly_the_table() {
        let mut words: Vec<&str> = ROUTES
            .iter()
            .flat_map(|(p, _)| p.split('/'))
            .filter(|w| !w.is_empty() && !w.starts_with('{'))
            .collect();
        words.extend(["K", "api", ""]);
        words.sort();
        words.dedup();
        let mut paths = vec![String::new()];
        let mut checked = 0;
        for _ in 0..4 {
            let mut longer = Vec::new();
            for p in &paths {
                for w in &words {
                    let path = format!("{p}/{w}");
                    let want = ROUTES
                        .iter()
                        .find(|(pattern, _)| {
                            instance_of(&path, pattern)
                                || instance_of(&path, &format!("/api{pattern}"))
                        })
                        .map_or(RouteId::Unmatched, |(_, r)| *r);
                    assert_eq!(routed(&path), want, "{path}");
                    checked += 1;
                    longer.push(path);
                }
            }
            paths = longer;
        }
        assert!(checked > 10_000, "{checked}");
    }

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
        assert_eq!(route_of("/"), (RouteId::Status, None));
        assert_eq!(route_of("/api/"), (RouteId::Status, None));
        assert_eq!(route_of("").0, RouteId::Unmatched);
        for p in [
            "/health",
            "/ready",
            "/metrics",
            "/cluster/nodes",
            "/openapi.json",
        ] {
            assert_ne!(route_of(p).0, RouteId::Unmatched);
            assert_ne!(route_of(&format!("/api{p}")).0, RouteId::Unmatched);
        }
        assert_eq!(
            route_of("/api/prefix-configs/X/history"),
            (RouteId::PrefixHistory, Some("X"))
        );
        assert_eq!(
            route_of("/prefix-configs/history"),
            (RouteId::PrefixConfig, Some("history"))
        );
        assert_eq!(route_of("/prefix-configs//history").0, RouteId::Unmatched);
        assert_eq!(
            route_of("/api/segment/get/leaf-segment-test"),
            (RouteId::LeafSegment, Some("leaf-segment-test"))
        );
        assert_eq!(
            route_of("/api/snowflake/get/test"),
            (RouteId::LeafSnowflake, Some("test"))
        );
        assert_eq!(route_of("/api/segment/get/").0, RouteId::Unmatched);
    }

    #[test]
    fn probes_and_scrapes_are_never_rate_limited() {
        for r in RouteId::ALL {
            let exempt = matches!(r, RouteId::Health | RouteId::Ready | RouteId::Metrics);
            assert_eq!(r.rate_limited(), !exempt, "{r:?}");
        }
    }

    #[test]
    fn every_route_has_its_place_and_its_label() {
        for (i, r) in RouteId::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
            // A matched route's label is a pattern that routes back to it.
            if *r != RouteId::Unmatched {
                let path = r.label().replace("{key}", "K").replace("{id}", "1");
                assert_eq!(route_of(&path).0, *r, "{}", r.label());
            }
        }
    }

    #[test]
    fn methods_match_the_allow_header() {
        let methods = [
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
        ];
        for r in RouteId::ALL {
            for m in &methods {
                let listed = r.allowed().split(", ").any(|a| a == m.as_str())
                    || (*m == Method::HEAD && r.allowed().contains("GET") && !r.issues())
                    || r == RouteId::Unmatched;
                assert_eq!(r.allows(m), listed, "{r:?} {m}");
            }
        }
    }
}
