//! The reference server of `scripts/bench-http.sh`: what numgen's HTTP stack costs with no
//! work behind it. It serves every request with a constant body shaped and sized like a
//! `GET /numbers/{key}` answer (85 bytes, the same headers), through the same connection
//! builder ([`numgen::http::builder`]), the same tokio runtime settings as `src/main.rs`
//! and `TCP_NODELAY`, so that numgen's figures divided by this one's are the price of
//! routing, issuing, rendering and metrics alone.
//!
//! Usage: `cargo run --release --example bare_hyper -- PORT` (listens on 127.0.0.1:PORT;
//! runs until killed).

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// The size and shape of a snowflake number with the template `ORDER-{year}-{SEQ:6}`.
const BODY: &[u8] =
    br#"{"number":"ORDER-2026-382677136059662336","id":"382677136059662336","degraded":false}"#;

fn answer() -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(BODY)));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn serve(port: u16) -> std::io::Result<()> {
    let listener =
        tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?;
    eprintln!("bare_hyper: listening on {}", listener.local_addr()?);
    let builder = numgen::http::builder();
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("bare_hyper: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let svc = service_fn(|_req| async { Ok::<_, Infallible>(answer()) });
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

fn main() -> std::process::ExitCode {
    let Some(port) = std::env::args().nth(1).and_then(|p| p.parse::<u16>().ok()) else {
        eprintln!("usage: bare_hyper PORT");
        return std::process::ExitCode::from(2);
    };
    // The runtime numgen's binary builds (src/main.rs): multi-thread, default worker count.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bare_hyper: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(port)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bare_hyper: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
