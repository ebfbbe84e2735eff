//! A one-shot GET of a peer's JSON route over HTTP/1.1: the status page asks every node in
//! the registry for its `/ready`, since readiness is not in the registry entry (a node that
//! lost etcd could not publish it).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The largest body read from a peer.
const MAX_BODY: usize = 64 * 1024;

/// `GET path` on the peer at `addr` (`host:port`): its status and JSON body, or `None` when
/// it does not answer with JSON within `timeout`.
pub async fn get_json(
    addr: &str,
    path: &str,
    timeout: Duration,
) -> Option<(u16, serde_json::Value)> {
    let work = async {
        let stream = TcpStream::connect(addr).await.ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        let driver = tokio::spawn(conn);
        let req = http::Request::get(path)
            .header(http::header::HOST, addr)
            .body(Empty::<Bytes>::new())
            .ok()?;
        let got = async {
            let resp = sender.send_request(req).await.ok()?;
            let status = resp.status().as_u16();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .ok()?
                .to_bytes();
            Some((status, serde_json::from_slice(&body).ok()?))
        }
        .await;
        driver.abort();
        got
    };
    tokio::time::timeout(timeout, work).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    /// A server answering every request with `status` and `body`, once per connection.
    async fn serve_once(status: u16, body: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let svc = service_fn(move |_req| async move {
                    let mut resp = http::Response::new(Full::new(Bytes::from(body)));
                    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                    Ok::<_, std::convert::Infallible>(resp)
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc),
                );
            }
        });
        addr
    }

    #[tokio::test]
    async fn reads_status_and_json_and_gives_up_on_anything_else() {
        let t = Duration::from_secs(5);
        let addr = serve_once(503, r#"{"status":"degraded","reasons":["clock_skew"]}"#).await;
        let (status, v) = get_json(&addr, "/ready", t).await.unwrap();
        assert_eq!(
            (status, v["reasons"][0].as_str()),
            (503, Some("clock_skew"))
        );
        let addr = serve_once(200, "not json").await;
        assert_eq!(get_json(&addr, "/ready", t).await, None);
        // A port nobody listens on.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        assert_eq!(get_json(&closed, "/ready", t).await, None);
    }
}
