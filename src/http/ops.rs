//! What operators and peers ask (SPEC 3.3): `/ids/{id}`, `/health`, `/ready`,
//! `/metrics`, `/cluster/nodes`. The status page `/` is [`super::status`].

use http::StatusCode;
use serde_json::json;

use super::error::ApiError;
use super::request::shown;
use super::{HttpResponse, json_response, respond};
use crate::cluster::ClusterView;
use crate::id::{Decoded, Layout};
use crate::metrics::Metrics;
use crate::node::Node;
use crate::service::Service;

/// The JSON form of a decoded ID, as `/ids/{id}` and `numgen decode` show it: the ID as a
/// string (JavaScript loses integers above 2^53), its time also as RFC 3339.
pub fn decoded_json(d: &Decoded) -> serde_json::Value {
    let time = i64::try_from(d.unix_ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    json!({
        "id": d.id.to_string(),
        "timestamp_ms": d.unix_ms,
        "time": time,
        "datacenter": d.datacenter,
        "worker": d.worker,
        "sequence": d.sequence,
        "degraded": d.degraded,
    })
}

/// `GET /ids/{id}`
pub fn decode(layout: &Layout, raw: &str) -> Result<HttpResponse, ApiError> {
    let decoded = crate::id::describe_text(layout, raw).ok_or_else(|| {
        ApiError::InvalidConfig(format!(
            "id '{}' must be a decimal integer from 0 to 9223372036854775807",
            shown(raw)
        ))
    })?;
    Ok(json_response(StatusCode::OK, &decoded_json(&decoded)))
}

/// `GET /health`: liveness, with this node's clock for the peers' skew estimate.
pub fn health(node: &Node) -> HttpResponse {
    let now = node.clock().now_ms();
    json_response(StatusCode::OK, &json!({ "status": "ok", "now_ms": now }))
}

/// `GET /ready`: 200 only when normal numbers can be issued.
pub fn ready(node: &Node) -> HttpResponse {
    let r = node.readiness();
    let status = if r.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, &json!({ "status": r.status, "reasons": r.reasons }))
}

/// The gauges that are read at each scrape: readiness and the layout's time left.
fn refresh_gauges(node: &Node, metrics: &Metrics) {
    metrics.ready.set(i64::from(node.readiness().is_ready()));
    let left_ms = node
        .layout()
        .expires_at_ms()
        .saturating_sub(node.clock().now_ms());
    metrics.layout_seconds_left.set(left_ms as f64 / 1000.0);
}

/// `GET /metrics`, encoded off the runtime threads: thousands of series take a while.
pub async fn metrics(service: &Service) -> Result<HttpResponse, ApiError> {
    refresh_gauges(service.node(), service.metrics());
    let m = service.metrics().clone();
    let text = tokio::task::spawn_blocking(move || m.encode())
        .await
        .map_err(|e| ApiError::Internal(format!("the metrics encoder did not finish: {e}")))?
        .map_err(|e| ApiError::Internal(format!("metrics encoding failed: {e}")))?;
    Ok(respond(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        text,
    ))
}

/// `GET /cluster/nodes`
pub async fn cluster_nodes(cluster: &dyn ClusterView) -> Result<HttpResponse, ApiError> {
    let nodes = cluster.nodes().await?;
    Ok(json_response(StatusCode::OK, &json!({ "nodes": nodes })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::LayoutSettings;

    #[test]
    fn decoded_ids_show_every_field() {
        let d = Decoded {
            id: 4_198_476_878,
            unix_ms: crate::id::layout::DEFAULT_EPOCH_MS + 1000,
            datacenter: 2,
            worker: 9,
            sequence: 77,
            degraded: true,
        };
        let v = decoded_json(&d);
        assert_eq!(v["id"], "4198476878");
        assert_eq!(v["timestamp_ms"], d.unix_ms);
        assert_eq!(v["time"], "2024-01-01T00:00:01.000Z");
        assert_eq!(
            (v["datacenter"].as_u64(), v["worker"].as_u64()),
            (Some(2), Some(9))
        );
        assert_eq!(
            (v["sequence"].as_u64(), v["degraded"].as_bool()),
            (Some(77), Some(true))
        );
    }

    #[test]
    fn ids_outside_the_layout_are_invalid_config() {
        let l = Layout::from_widths(LayoutSettings::default()).unwrap();
        for bad in ["-1", "+5", "x", "", &u64::MAX.to_string()] {
            let e = decode(&l, bad).unwrap_err();
            assert_eq!(e.code(), "INVALID_CONFIG", "{bad}");
        }
        assert_eq!(
            decode(&l, "4198476878").map(|r| r.status()),
            Ok(StatusCode::OK)
        );
    }
}
