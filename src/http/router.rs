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

use super::error::ApiError;
use super::numbers::{self, Begun};
use super::request::{declared_too_large, read_body, shown};
use super::{HttpResponse, admin, ops};
use crate::cluster::ClusterView;
use crate::service::Service;

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

impl RouteId {
    /// Every route, in declaration order: `ALL[r as usize] == r`.
    const ALL: [RouteId; 9] = [
        RouteId::Numbers,
        RouteId::PrefixConfig,
        RouteId::PrefixConfigs,
        RouteId::Ids,
        RouteId::Health,
        RouteId::Ready,
        RouteId::Metrics,
        RouteId::ClusterNodes,
        RouteId::Unmatched,
    ];

    /// The route's pattern: its `route` label in the metrics, never a raw path.
    fn label(self) -> &'static str {
        match self {
            RouteId::Numbers => "/numbers/{key}",
            RouteId::PrefixConfig => "/prefix-configs/{key}",
            RouteId::PrefixConfigs => "/prefix-configs",
            RouteId::Ids => "/ids/{id}",
            RouteId::Health => "/health",
            RouteId::Ready => "/ready",
            RouteId::Metrics => "/metrics",
            RouteId::ClusterNodes => "/cluster/nodes",
            RouteId::Unmatched => "unmatched",
        }
    }

    /// The `Allow` header of a 405 on this route.
    fn allowed(self) -> &'static str {
        match self {
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

    /// True when the route answers `method` (HEAD wherever GET is, but on numbers).
    fn allows(self, method: &Method) -> bool {
        let read_only = *method == Method::GET || *method == Method::HEAD;
        match self {
            RouteId::Numbers => *method == Method::GET || *method == Method::POST,
            RouteId::PrefixConfig => {
                read_only || [Method::POST, Method::PUT, Method::DELETE].contains(method)
            }
            RouteId::Unmatched => true,
            _ => read_only,
        }
    }
}

/// Splits `path` (with or without `/api`) into a route and its parameter.
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

/// Statuses whose counter handles are cached after first use; others are looked up each time.
const COMMON_STATUSES: [u16; 8] = [200, 400, 401, 404, 405, 409, 413, 503];

struct RouteMetrics {
    duration: Histogram,
    /// Created on first use, so that only statuses that happened are exported.
    by_status: [OnceLock<IntCounter>; COMMON_STATUSES.len()],
}

/// Everything the handlers need.
pub struct HttpState {
    service: Arc<Service>,
    admin_token: String,
    cluster: Arc<dyn ClusterView>,
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
            admin_token,
            cluster,
            routes,
        }
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
                e.into_response()
            }
        };
        self.record(route, resp.status(), started);
        resp
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
            let token = &state.admin_token;
            Box::pin(admin::handle(service, token, peer, parts, body, param)).await
        }
        RouteId::Ids => ops::decode(service.node().layout(), param.unwrap_or_default()),
        RouteId::Health => Ok(ops::health(service.node())),
        RouteId::Ready => Ok(ops::ready(service.node())),
        RouteId::Metrics => Box::pin(ops::metrics(service.metrics())).await,
        RouteId::ClusterNodes => Box::pin(ops::cluster_nodes(state.cluster.as_ref())).await,
        RouteId::Unmatched => Err(ApiError::NotFound(format!(
            "no route for {} {}",
            shown(parts.method.as_str()),
            shown(parts.uri.path())
        ))),
    }
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
                    || (*m == Method::HEAD && r.allowed().contains("GET") && r != RouteId::Numbers)
                    || r == RouteId::Unmatched;
                assert_eq!(r.allows(m), listed, "{r:?} {m}");
            }
        }
    }
}
