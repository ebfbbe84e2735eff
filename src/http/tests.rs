//! The HTTP layer in-process: [`serve`] on 127.0.0.1:0 with a service on an embedded
//! store, and one request per route and per error the router produces, each over its own
//! HTTP/1.1 connection. The black-box suites (`tests/http_*.rs`) run the real binary; this
//! checks the same paths without a process, fast, and where coverage sees them.

use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{HttpState, serve};
use crate::clock::ManualClock;
use crate::cluster::Standalone;
use crate::service::test_support::{T0, service};

const TOKEN: &str = "in-process-token";

/// A request (method, path, body) and what must come back (status, a piece of the body).
type Case<'a> = ((&'a str, &'a str, &'a [u8]), (u16, &'a str));

/// (status, content type, body) of one request over a new connection.
async fn send(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    accept: Option<&str>,
    body: Vec<u8>,
) -> (u16, String, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("authorization", format!("Bearer {TOKEN}"));
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    driver.abort();
    (
        status,
        content_type,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// A server on 127.0.0.1:0 for a service on an embedded store in `dir`; stops when the
/// sender is used or dropped.
async fn start(
    dir: &tempfile::TempDir,
) -> (std::net::SocketAddr, oneshot::Sender<()>, JoinHandle<()>) {
    let (addr, stop, server, _) = start_with_service(dir).await;
    (addr, stop, server)
}

/// [`start`], and the service it serves.
async fn start_with_service(
    dir: &tempfile::TempDir,
) -> (
    std::net::SocketAddr,
    oneshot::Sender<()>,
    JoinHandle<()>,
    Arc<crate::service::Service>,
) {
    let clock = Arc::new(ManualClock::new(T0));
    let service = Arc::new(service(dir, clock.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cluster = Arc::new(Standalone {
        node_id: "in-process".into(),
        addr: addr.to_string(),
        dc: 0,
        worker: 1,
        clock,
    });
    let state = Arc::new(HttpState::new(service.clone(), TOKEN.into(), cluster));
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state, 100, async {
        let _ = stopped.await;
    }));
    (addr, stop, server, service)
}

#[tokio::test]
async fn every_route_and_error_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, stop, server) = start(&dir).await;
    let seq: &[u8] = br#"{"format":"Q-{SEQ:3}","mode":"sequence"}"#;
    let big = vec![b' '; super::request::MAX_BODY + 1];
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        (("POST", "/prefix-configs/SQ", seq), (200, "\"registered\"")),
        (("POST", "/prefix-configs/SQ", seq), (409, "PREFIX_EXISTS")),
        (("POST", "/api/prefix-configs/SF", br#"{"format":"S-{SEQ:3}"}"#), (200, "S-{SEQ")),
        (("POST", "/prefix-configs/BAD", br#"{"format":"S"}"#), (400, "INVALID_FORMAT")),
        (("GET", "/numbers/SQ", b""), (200, r#"{"number":"Q-001","id":"1","degraded":false}"#)),
        (("GET", "/api/numbers/SF?count=2", b""), (200, r#"{"numbers":[{"number":"S-"#)),
        (("GET", "/numbers?prefixKey=-x", b""), (400, "INVALID_PREFIX_KEY")),
        (("GET", "/numbers", b""), (400, "INVALID_PREFIX_KEY")),
        (("GET", "/numbers/a%20b", b""), (400, "INVALID_PREFIX_KEY")),
        (("GET", "/numbers/SQ?count=0", b""), (400, "INVALID_COUNT")),
        (("GET", "/numbers/NOPE", b""), (400, "PREFIX_NOT_REGISTERED")),
        (("POST", "/numbers/SF", &big), (413, "BODY_TOO_LARGE")),
        (("PUT", "/prefix-configs/SQ", &big), (413, "BODY_TOO_LARGE")),
        (("PUT", "/prefix-configs/SQ", br#"{"format":"R{SEQ:3}","mode":"sequence"}"#), (200, "R{")),
        (("GET", "/prefix-configs/SQ", b""), (200, r#""prefix_key":"SQ""#)),
        (("GET", "/prefix-configs", b""), (200, r#"{"prefixes":[{"#)),
        (("DELETE", "/prefix-configs/SQ", b""), (200, r#"{"status":"deleted"}"#)),
        (("DELETE", "/prefix-configs/SQ", b""), (404, "NOT_FOUND")),
        (("GET", "/prefix-configs/-x", b""), (400, "INVALID_PREFIX_KEY")),
        (("PATCH", "/prefix-configs/SQ", b""), (405, "METHOD_NOT_ALLOWED")),
        (("GET", "/ids/4198476878", b""), (200, r#""worker":"#)),
        (("GET", "/ids/x", b""), (400, "INVALID_CONFIG")),
        (("GET", "/health", b""), (200, r#""now_ms":1763700000000"#)),
        (("GET", "/api/ready", b""), (200, r#"{"reasons":[],"status":"ok"}"#)),
        (("GET", "/cluster/nodes", b""), (200, r#""node_id":"in-process""#)),
        (("POST", "/health", b""), (405, "METHOD_NOT_ALLOWED")),
        (("HEAD", "/numbers/SF", b""), (405, "")),
        (("GET", "/nope", b""), (404, "NOT_FOUND")),
        (("GET", "/metrics", b""), (200, "numgen_worker_id 1")),
    ];
    for ((method, path, body), (status, piece)) in cases {
        let got = send(addr, method, path, None, body.to_vec()).await;
        assert_eq!(got.0, status, "{method} {path}: {got:?}");
        assert!(got.2.contains(piece), "{method} {path}: {got:?}");
        let json = got.1 == "application/json";
        assert!(
            json || got.1.starts_with("text/plain"),
            "{method} {path}: {got:?}"
        );
    }
    let text = send(
        addr,
        "POST",
        "/numbers?prefixKey=SF&count=2",
        Some("text/plain"),
        vec![],
    );
    let (status, content_type, lines) = text.await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "text/plain; charset=utf-8")
    );
    assert_eq!(
        lines.lines().filter(|l| l.starts_with("S-")).count(),
        2,
        "{lines}"
    );
    // Every request was counted under its route's pattern.
    let (_, _, metrics) = send(addr, "GET", "/metrics", None, Vec::new()).await;
    for counted in [
        r#"numgen_http_requests_total{route="/numbers/{key}",status="200"} 3"#,
        r#"numgen_http_requests_total{route="/numbers/{key}",status="413"} 1"#,
        r#"numgen_http_requests_total{route="unmatched",status="404"} 1"#,
        r#"numgen_http_requests_total{route="/metrics",status="200"} 1"#,
    ] {
        assert!(metrics.contains(counted), "no {counted}:\n{metrics}");
    }
    let _ = stop.send(());
    server.await.unwrap();
}

#[tokio::test]
async fn the_status_page_shows_prefixes_with_their_counts_and_a_degraded_node() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, stop, server, service) = start_with_service(&dir).await;
    let get = |path: &'static str| send(addr, "GET", path, None, Vec::new());
    for (key, body) in [
        ("SNOW", r#"{"format":"SN-{SEQ:19}"}"#),
        (
            "INV",
            r#"{"format":"INV-{year}-{SEQ:6}","mode":"sequence","reset":"yearly"}"#,
        ),
    ] {
        let path = format!("/prefix-configs/{key}");
        let r = send(addr, "POST", &path, None, body.as_bytes().to_vec()).await;
        assert_eq!(r.0, 200, "{r:?}");
    }
    assert_eq!(get("/numbers/SNOW?count=5").await.0, 200);
    assert_eq!(get("/numbers/INV?count=3").await.0, 200);
    let (status, content_type, html) = get("/").await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "text/html; charset=utf-8")
    );
    for piece in [
        r#"<tr data-prefix="INV"><td><code>INV</code></td><td>sequence <span class="muted">reset yearly</span></td>"#,
        r#"<td class="n" data-issued>3</td>"#,
        r#"<td class="n" data-issued>5</td>"#,
        r#"data-ready="ok">ok</span>"#,
        "1 (datacenter 0)",
        "standalone: static worker ID",
        "<code>in-process</code> (this node)",
    ] {
        assert!(html.contains(piece), "no {piece:?} in {html}");
    }
    assert!(!html.contains(" degraded\" data-degraded"), "{html}");

    // Lease lost under `degrade`: the node says so, and the prefix counts its degraded numbers.
    service.node().set_lease_lost(true);
    let (_, _, body) = get("/numbers/SNOW?count=4").await;
    assert!(body.contains(r#""degraded":true"#), "{body}");
    let (_, _, html) = get("/api/").await;
    for piece in [
        r#"data-ready="degraded">degraded: lease_lost"#,
        r#"<td class="n degraded" data-degraded>4</td>"#,
        "lease_lost 4",
    ] {
        assert!(html.contains(piece), "no {piece:?} in {html}");
    }
    let (_, _, metrics) = get("/metrics").await;
    for want in [
        r#"numgen_numbers_degraded_total{prefix="SNOW"} 4"#,
        "numgen_ready 0",
        "numgen_http_connections_accepted_total ",
        "numgen_layout_seconds_left 2",
    ] {
        assert!(metrics.contains(want), "no {want} in {metrics}");
    }
    assert!(!metrics.contains(r#"numgen_numbers_degraded_total{prefix="INV"}"#));
    let (status, _, _) = send(addr, "POST", "/", None, Vec::new()).await;
    assert_eq!(status, 405);
    let _ = stop.send(());
    server.await.unwrap();
}

#[tokio::test]
async fn error_responses_are_counted_by_route_and_code() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, stop, server) = start(&dir).await;
    send(addr, "GET", "/numbers/NOPE", None, Vec::new()).await;
    send(addr, "GET", "/numbers/NOPE", None, Vec::new()).await;
    send(addr, "GET", "/nope", None, Vec::new()).await;
    let (_, _, metrics) = send(addr, "GET", "/metrics", None, Vec::new()).await;
    for want in [
        r#"numgen_http_errors_total{code="PREFIX_NOT_REGISTERED",route="/numbers/{key}"} 2"#,
        r#"numgen_http_errors_total{code="NOT_FOUND",route="unmatched"} 1"#,
    ] {
        assert!(metrics.contains(want), "no {want} in {metrics}");
    }
    let _ = stop.send(());
    server.await.unwrap();
}
