//! Peer clock skew (SPEC section 4), NTP-style over HTTP: a node asks each peer for
//! `GET /health`, reads the peer's `now_ms`, and takes `offset = peer_now - (sent + rtt/2)`,
//! keeping the sample with the smallest round trip. Its own offset is its clock minus the
//! median of all clocks it knows (itself counted as 0), so one fast node among healthy
//! peers is the one flagged — and with fewer than two peers no judgement is made, since a
//! disagreement between two clocks cannot say which one is wrong.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::clock::Clock;

/// One round trip to a peer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Peer clock minus ours at the midpoint of the round trip, ms.
    pub offset_ms: f64,
    pub rtt: Duration,
}

/// The offset estimate from several samples of one peer: the one with the smallest round trip.
pub fn best_sample(samples: &[Sample]) -> Option<Sample> {
    samples.iter().copied().min_by_key(|s| s.rtt)
}

/// This node's clock minus the median of all clocks, given each peer's offset (peer minus
/// us). `None` with fewer than two peers.
pub fn node_offset(peer_offsets: &[f64]) -> Option<f64> {
    if peer_offsets.len() < 2 {
        return None;
    }
    let mut all: Vec<f64> = peer_offsets.to_vec();
    all.push(0.0);
    all.sort_by(f64::total_cmp);
    let n = all.len();
    let median = if n % 2 == 1 {
        all[n / 2]
    } else {
        (all[n / 2 - 1] + all[n / 2]) / 2.0
    };
    Some(-median)
}

/// Takes `samples` round trips to the peer at `addr` (`host:port`) over one connection.
pub async fn probe(
    addr: &str,
    clock: &dyn Clock,
    samples: usize,
    timeout: Duration,
) -> Option<Sample> {
    let work = async {
        let stream = TcpStream::connect(addr).await.ok()?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        let driver = tokio::spawn(conn);
        let mut got = Vec::with_capacity(samples);
        for _ in 0..samples {
            let req = http::Request::get("/health")
                .header(http::header::HOST, addr)
                .body(Empty::<Bytes>::new())
                .ok()?;
            let sent_wall = clock.now_ms() as f64;
            let sent = Instant::now();
            let resp = sender.send_request(req).await.ok()?;
            let body = resp.into_body().collect().await.ok()?.to_bytes();
            let rtt = sent.elapsed();
            let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
            let peer_now = v.get("now_ms")?.as_u64()? as f64;
            got.push(Sample {
                offset_ms: peer_now - (sent_wall + rtt.as_secs_f64() * 500.0),
                rtt,
            });
        }
        driver.abort();
        best_sample(&got)
    };
    tokio::time::timeout(timeout, work).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_fast_node_among_healthy_peers_is_the_one_flagged() {
        // Seen from the fast node: both peers are 5 s behind.
        assert_eq!(node_offset(&[-5000.0, -5000.0]), Some(5000.0));
        // Seen from a healthy node: one peer agrees, one is 5 s ahead.
        assert_eq!(node_offset(&[0.0, 5000.0]), Some(0.0));
        assert_eq!(node_offset(&[3.0, -2.0, 5000.0]), Some(-1.5));
    }

    #[test]
    fn fewer_than_two_peers_cannot_judge() {
        assert_eq!(node_offset(&[]), None);
        assert_eq!(node_offset(&[-5000.0]), None);
    }

    #[test]
    fn the_sample_with_the_smallest_round_trip_wins() {
        let s = |o, ms| Sample {
            offset_ms: o,
            rtt: Duration::from_millis(ms),
        };
        assert_eq!(
            best_sample(&[s(10.0, 5), s(2.0, 1), s(7.0, 3)]),
            Some(s(2.0, 1))
        );
        assert_eq!(best_sample(&[]), None);
    }

    #[tokio::test]
    async fn probing_a_real_health_endpoint_measures_a_small_offset() {
        use hyper::service::service_fn;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let svc = service_fn(|_req| async {
                        let now = crate::clock::SystemClock.now_ms() + 5000;
                        let body = format!("{{\"status\":\"ok\",\"now_ms\":{now}}}");
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(Bytes::from(body)),
                        ))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        let s = probe(&addr, &crate::clock::SystemClock, 3, Duration::from_secs(2))
            .await
            .unwrap();
        assert!((s.offset_ms - 5000.0).abs() < 50.0, "{s:?}");
        assert!(
            probe(
                "127.0.0.1:1",
                &crate::clock::SystemClock,
                1,
                Duration::from_millis(300)
            )
            .await
            .is_none()
        );
    }
}
