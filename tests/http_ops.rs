//! Black-box tests of the routes for operators (SPEC 3.3) and of the `/api` aliases,
//! against the real `numgen` binary: `/ids/{id}`, `/cluster/nodes`, `/health`, `/ready` and
//! `/metrics` (SPEC names, route patterns as labels, never raw paths).

mod common;

use common::api::{U64_MAX, batch_of, next, now_ms, number_of};
use common::server::{Server, ServerOpts, assert_error};
use serde_json::json;

#[test]
fn every_route_also_under_api() {
    let s = Server::start(ServerOpts::default());
    let r = s.admin(
        "POST",
        "/api/prefix-configs/API",
        r#"{"format":"API-{SEQ:3}","mode":"sequence"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(
        (v["status"].as_str(), v["prefix_key"].as_str()),
        (Some("registered"), Some("API"))
    );
    assert_eq!(v["config"]["format"], "API-{SEQ:3}");
    assert_eq!(v["config"]["seq_length"], 3);
    assert_eq!(v["config"]["mode"], "sequence");

    let got = s.admin("GET", "/api/prefix-configs/API", "").json();
    assert_eq!(got["prefix_key"], "API");
    assert_eq!(got["config"], v["config"]);
    let all = s.admin("GET", "/api/prefix-configs", "").json();
    assert_eq!(all["prefixes"][0]["prefix_key"], "API");
    assert_eq!(all, s.admin("GET", "/prefix-configs", "").json());

    assert_eq!(next(&s, "API").0, "API-001");
    assert_eq!(number_of(&s.get("/api/numbers/API")).0, "API-002");
    assert_eq!(number_of(&s.get("/api/numbers?prefixKey=API")).0, "API-003");
    assert_eq!(number_of(&s.get("/numbers?prefixKey=API")).0, "API-004");
    let r = s.request("POST", "/api/numbers?count=2&prefixKey=API", &[], b"");
    assert_eq!(batch_of(&r).iter().map(|b| b.1).collect::<Vec<_>>(), [5, 6]);
    assert_eq!(
        number_of(&s.get("/api/numbers?prefixKey=AP%49")).0,
        "API-007"
    );

    for path in ["/health", "/ready", "/metrics", "/cluster/nodes", "/ids/1"] {
        let plain = s.get(path);
        let api = s.get(&format!("/api{path}"));
        assert_eq!((plain.status, api.status), (200, 200), "{path}");
        assert_eq!(
            plain.header("content-type"),
            api.header("content-type"),
            "{path}"
        );
    }
    let put = s.admin(
        "PUT",
        "/api/prefix-configs/API",
        r#"{"format":"API2-{SEQ:3}","mode":"sequence"}"#,
    );
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(put.json()["status"], "registered");
    let del = s.admin("DELETE", "/api/prefix-configs/API", "");
    assert_eq!(del.status, 200);
    assert_eq!(del.json(), json!({"status": "deleted"}));
    assert_error(&s.get("/api/numbers/API"), 400, "PREFIX_NOT_REGISTERED");
}

/// A node with worker ID 5 in datacenter 2, prefix `DEC` registered, and the time before
/// its first number.
fn node_5_in_dc_2() -> (Server, u64) {
    let s = Server::start(ServerOpts::default().arg("--worker-id=5").arg("--dc-id=2"));
    s.register(
        "DEC",
        r#"{"format":"DEC-{SEQ:3}-{worker}-{dc}{flag}","mode":"snowflake"}"#,
    );
    (s, now_ms())
}

#[test]
fn ids_decode_every_field_of_this_layout() {
    let (s, before) = node_5_in_dc_2();
    let (number, id) = next(&s, "DEC");
    // The worker in two digits (6 worker bits), the datacenter in one (3 bits).
    assert_eq!(number, format!("DEC-{id}-05-2"));
    for path in [format!("/ids/{id}"), format!("/api/ids/{id}")] {
        let v = s.get(&path).json();
        assert_eq!(v["id"], id.to_string());
        assert_eq!(
            (v["worker"].as_u64(), v["datacenter"].as_u64()),
            (Some(5), Some(2))
        );
        assert_eq!(v["degraded"], false);
        assert!(v["sequence"].is_u64(), "{v}");
        let ts = v["timestamp_ms"].as_u64().expect("timestamp_ms");
        assert!(
            ts + 5_000 >= before && ts <= now_ms() + 5_000,
            "{ts} vs {before}"
        );
        let time = chrono::DateTime::parse_from_rfc3339(v["time"].as_str().unwrap_or(""))
            .unwrap_or_else(|e| panic!("time {v}: {e}"));
        assert_eq!(time.timestamp_millis() as u64, ts);
    }
    // The default layout: 41 timestamp, 1 degraded, 3 dc, 6 worker, 12 sequence bits.
    let v = s
        .get(&format!(
            "/ids/{}",
            (1u64 << 22) | (3 << 18) | (7 << 12) | 9
        ))
        .json();
    assert_eq!(
        (
            &v["timestamp_ms"],
            &v["degraded"],
            &v["datacenter"],
            &v["worker"],
            &v["sequence"]
        ),
        (
            &json!(1_704_067_200_001u64),
            &json!(false),
            &json!(3),
            &json!(7),
            &json!(9)
        )
    );
    assert_eq!(v["time"], "2024-01-01T00:00:00.001Z");
    assert_eq!(
        s.get(&format!("/ids/{}", 1u64 << 21)).json()["degraded"],
        true
    );
    for bad in ["abc", "-1", "9223372036854775808", U64_MAX, "1.5", "%20"] {
        let r = s.get(&format!("/ids/{bad}"));
        assert_eq!(r.status, 400, "/ids/{bad}: {}", r.text());
        assert_error(&r, 400, r.json()["code"].as_str().unwrap_or("?"));
    }
}

#[test]
fn date_fields_come_from_the_ids_own_timestamp() {
    let s = Server::start(ServerOpts::default());
    // Date fields come from the number's own timestamp, in the prefix's offset.
    for (key, offset) in [("EAST", "+14:00"), ("WEST", "-12:00"), ("ODD", "+05:45")] {
        s.register(
            key,
            &json!({"format": "{date}T{hour}.{yy}.{year}{month}{day}-{SEQ:1}", "utc_offset": offset, "mode": "snowflake"})
                .to_string(),
        );
        let (number, id) = next(&s, key);
        let v = s.get(&format!("/ids/{id}")).json();
        let ts = v["timestamp_ms"].as_i64().expect("timestamp_ms");
        let secs = chrono::FixedOffset::east_opt(
            chrono::DateTime::parse_from_rfc3339(&format!("2000-01-01T00:00:00{offset}"))
                .expect("offset")
                .offset()
                .local_minus_utc(),
        )
        .expect("offset");
        let local = chrono::DateTime::from_timestamp_millis(ts)
            .expect("time")
            .with_timezone(&secs);
        let want = format!("{}-{id}", local.format("%Y%m%dT%H.%y.%Y%m%d"));
        assert_eq!(number, want, "{key} {offset}");
    }
}

#[test]
fn cluster_nodes_health_and_ready() {
    let (s, before) = node_5_in_dc_2();
    let nodes = s.get("/cluster/nodes").json();
    let list = nodes["nodes"].as_array().expect("nodes");
    assert_eq!(list.len(), 1, "{nodes}");
    let me = &list[0];
    assert_eq!(me["addr"], s.addr().to_string());
    assert_eq!(
        (me["worker_id"].as_u64(), me["dc_id"].as_u64()),
        (Some(5), Some(2))
    );
    assert!(
        me["node_id"].as_str().is_some_and(|n| !n.is_empty()),
        "{me}"
    );
    assert!(
        me["heartbeat_ms"]
            .as_u64()
            .is_some_and(|h| h + 60_000 > before),
        "{me}"
    );
    assert!(me["clock_offset_ms"].is_number(), "{me}");

    let h = s.get("/health");
    assert_eq!(h.status, 200);
    let v = h.json();
    assert_eq!(v["status"], "ok");
    let n = v["now_ms"].as_u64().expect("now_ms");
    assert!(n + 5_000 > now_ms() && n < now_ms() + 5_000, "now_ms {n}");
    let head = s.request("HEAD", "/health", &[], b"");
    assert_eq!(head.status, 200);
    let r = s.get("/ready");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "ok");
}

#[test]
fn metrics_have_the_spec_names_and_route_patterns_as_labels() {
    let (s, _) = node_5_in_dc_2();
    next(&s, "DEC");
    s.register("MSEQ", r#"{"format":"Q{SEQ:3}","mode":"sequence"}"#);
    next(&s, "MSEQ");
    s.get("/numbers/RAWKEYNOTREGISTERED");
    s.get("/no/such/RAWPATH");
    s.get("/ids/424242");
    let m = s.get("/metrics");
    assert_eq!(m.status, 200);
    assert!(
        m.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain"))
    );
    let text = m.text();
    for want in [
        "numgen_numbers_issued_total{",
        "prefix=\"DEC\"",
        "mode=\"snowflake\"",
        "mode=\"sequence\"",
        "numgen_degraded_total{reason=\"clock_backward\"} 0",
        "numgen_degraded_total{reason=\"clock_skew\"} 0",
        "numgen_degraded_total{reason=\"lease_lost\"} 0",
        "numgen_clock_offset_seconds ",
        "numgen_layout_seconds_left ",
        "numgen_ready 1",
        "numgen_http_connections ",
        "numgen_worker_id 5",
        "numgen_lease_healthy 1",
        "numgen_sequence_blocks_reserved_total{prefix=\"MSEQ\"} ",
        "numgen_http_requests_total{route=\"/numbers/{key}\",status=\"200\"} ",
        "numgen_http_requests_total{route=\"/numbers/{key}\",status=\"400\"} ",
        "numgen_http_requests_total{route=\"/ids/{id}\",status=\"200\"} ",
        "numgen_http_requests_total{route=\"/prefix-configs/{key}\",status=\"200\"} ",
        "numgen_http_request_duration_seconds_bucket{route=\"/health\",le=",
        "numgen_http_request_duration_seconds_count{route=\"/numbers/{key}\"} ",
        "# TYPE numgen_http_request_duration_seconds histogram",
    ] {
        assert!(text.contains(want), "metrics lack {want:?}:\n{text}");
    }
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            !line.contains("RAWPATH") && !line.contains("424242") && !line.contains("RAWKEY"),
            "a raw path in a label: {line}"
        );
        if let Some(rest) = line.split("route=\"").nth(1) {
            let route = rest.split('"').next().unwrap_or("");
            let known = [
                "/numbers/{key}",
                "/prefix-configs/{key}",
                "/prefix-configs",
                "/ids/{id}",
                "/health",
                "/ready",
                "/metrics",
                "/cluster/nodes",
                "/",
                "/prefix-configs/{key}/history",
                "/openapi.json",
                "/segment/get/{key}",
                "/snowflake/get/{key}",
            ];
            assert!(
                known.contains(&route) || !route.starts_with('/'),
                "route label {route:?} is not a pattern: {line}"
            );
        }
    }
}
