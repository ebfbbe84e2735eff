//! Every metric numgen exports (SPEC section 6), in one registry. Handles are created once
//! and cloned into the parts that update them, so the hot path touches atomics only.

use std::collections::HashMap;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::id::DegradeReason;

/// Latency buckets in seconds, fine at the low end where numgen lives.
const DURATION_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
];

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `numgen_numbers_issued_total{prefix,mode}`
    pub issued: IntCounterVec,
    /// `numgen_degraded_total{reason}`
    pub degraded: IntCounterVec,
    /// `numgen_clock_offset_seconds`: this node's clock minus the peers' median.
    pub clock_offset: Gauge,
    /// `numgen_clock_forward_jumps_total`
    pub clock_forward_jumps: IntCounter,
    /// `numgen_worker_id`: -1 when none is held.
    pub worker_id: IntGauge,
    /// `numgen_lease_healthy`: 1 while the worker lease is renewed on time.
    pub lease_healthy: IntGauge,
    /// `numgen_sequence_blocks_reserved_total{prefix}`
    pub blocks_reserved: IntCounterVec,
    /// `numgen_http_requests_total{route,status}`
    pub http_requests: IntCounterVec,
    /// `numgen_http_request_duration_seconds{route}`
    pub http_duration: HistogramVec,
    /// `numgen_prefixes`: registered prefix configs.
    pub prefixes: IntGauge,
    /// `numgen_numbers_degraded_total{prefix}`: degraded numbers by prefix (the cause is in
    /// `numgen_degraded_total`). A prefix's series appears with its first degraded number.
    pub degraded_by_prefix: IntCounterVec,
    /// `numgen_layout_seconds_left`: until the timestamp field runs out; set at each scrape.
    pub layout_seconds_left: Gauge,
    /// `numgen_ready`: 1 when `/ready` would answer 200; set at each scrape.
    pub ready: IntGauge,
    /// `numgen_http_errors_total{route,code}`: error responses by SPEC 3.5 code, so that
    /// a store failure (`STORAGE_UNAVAILABLE`) tells apart from a node that is not ready.
    pub http_errors: IntCounterVec,
    /// `numgen_http_connections`: open HTTP connections.
    pub connections: IntGauge,
    /// `numgen_http_connections_accepted_total`
    pub connections_accepted: IntCounter,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let issued = IntCounterVec::new(
            Opts::new("numgen_numbers_issued_total", "Numbers issued"),
            &["prefix", "mode"],
        )?;
        let degraded = IntCounterVec::new(
            Opts::new(
                "numgen_degraded_total",
                "Numbers issued with the degraded bit, by cause",
            ),
            &["reason"],
        )?;
        let clock_offset = Gauge::new(
            "numgen_clock_offset_seconds",
            "This node's clock minus the median of its peers' clocks",
        )?;
        let clock_forward_jumps = IntCounter::new(
            "numgen_clock_forward_jumps_total",
            "Forward steps of the wall clock larger than max_skew_ms",
        )?;
        let worker_id = IntGauge::new("numgen_worker_id", "Worker ID held (-1: none)")?;
        let lease_healthy = IntGauge::new(
            "numgen_lease_healthy",
            "1 while the worker ID is held and its lease renewed on time",
        )?;
        let blocks_reserved = IntCounterVec::new(
            Opts::new(
                "numgen_sequence_blocks_reserved_total",
                "Sequence blocks reserved from the store",
            ),
            &["prefix"],
        )?;
        let http_requests = IntCounterVec::new(
            Opts::new("numgen_http_requests_total", "HTTP requests answered"),
            &["route", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "numgen_http_request_duration_seconds",
                "Time from request to response, by route",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["route"],
        )?;
        let prefixes = IntGauge::new("numgen_prefixes", "Registered prefix configs")?;
        let degraded_by_prefix = IntCounterVec::new(
            Opts::new(
                "numgen_numbers_degraded_total",
                "Numbers issued with the degraded bit, by prefix",
            ),
            &["prefix"],
        )?;
        let layout_seconds_left = Gauge::new(
            "numgen_layout_seconds_left",
            "Time until the ID layout's timestamp field runs out",
        )?;
        let ready = IntGauge::new(
            "numgen_ready",
            "1 when normal numbers can be issued (GET /ready answers 200)",
        )?;
        let http_errors = IntCounterVec::new(
            Opts::new(
                "numgen_http_errors_total",
                "HTTP error responses, by route and error code",
            ),
            &["route", "code"],
        )?;
        let connections = IntGauge::new("numgen_http_connections", "Open HTTP connections")?;
        let connections_accepted = IntCounter::new(
            "numgen_http_connections_accepted_total",
            "HTTP connections accepted",
        )?;
        registry.register(Box::new(issued.clone()))?;
        registry.register(Box::new(degraded.clone()))?;
        registry.register(Box::new(clock_offset.clone()))?;
        registry.register(Box::new(clock_forward_jumps.clone()))?;
        registry.register(Box::new(worker_id.clone()))?;
        registry.register(Box::new(lease_healthy.clone()))?;
        registry.register(Box::new(blocks_reserved.clone()))?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        registry.register(Box::new(prefixes.clone()))?;
        registry.register(Box::new(degraded_by_prefix.clone()))?;
        registry.register(Box::new(layout_seconds_left.clone()))?;
        registry.register(Box::new(ready.clone()))?;
        registry.register(Box::new(http_errors.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(connections_accepted.clone()))?;
        worker_id.set(-1);
        for reason in DegradeReason::ALL {
            degraded.with_label_values(&[reason.as_str()]);
        }
        Ok(Metrics {
            registry,
            issued,
            degraded,
            clock_offset,
            clock_forward_jumps,
            worker_id,
            lease_healthy,
            blocks_reserved,
            http_requests,
            http_duration,
            prefixes,
            degraded_by_prefix,
            layout_seconds_left,
            ready,
            http_errors,
            connections,
            connections_accepted,
        })
    }

    /// The degraded counter of each reason, in [`DegradeReason::ALL`] order.
    pub fn degraded_counters(&self) -> [IntCounter; 3] {
        DegradeReason::ALL.map(|r| self.degraded.with_label_values(&[r.as_str()]))
    }

    /// The value of each `prefix` label's series of `vec` (summed over other labels),
    /// read without creating a series.
    pub fn by_prefix(vec: &IntCounterVec) -> HashMap<String, u64> {
        let mut out = HashMap::new();
        for family in vec.collect() {
            for m in family.get_metric() {
                let prefix = m.get_label().iter().find(|l| l.name() == "prefix");
                if let Some(p) = prefix {
                    *out.entry(p.value().to_string()).or_default() +=
                        m.get_counter().get_value() as u64;
                }
            }
        }
        out
    }

    /// Prometheus text exposition of every metric. Writing into a `Vec` cannot fail on
    /// I/O; an error is a malformed family, and the half-written text is not served.
    pub fn encode(&self) -> Result<Vec<u8>, prometheus::Error> {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spec_metric_is_exported() {
        let m = Metrics::new().unwrap();
        m.issued.with_label_values(&["ORDERS", "snowflake"]).inc();
        m.blocks_reserved.with_label_values(&["INV"]).inc();
        m.http_requests.with_label_values(&["/health", "200"]).inc();
        m.http_duration
            .with_label_values(&["/health"])
            .observe(0.001);
        let text = String::from_utf8(m.encode().unwrap()).unwrap();
        for name in [
            "numgen_numbers_issued_total{mode=\"snowflake\",prefix=\"ORDERS\"} 1",
            "numgen_degraded_total{reason=\"clock_backward\"} 0",
            "numgen_degraded_total{reason=\"lease_lost\"} 0",
            "numgen_clock_offset_seconds 0",
            "numgen_layout_seconds_left 0",
            "numgen_ready 0",
            "numgen_http_connections 0",
            "numgen_http_connections_accepted_total 0",
            "numgen_worker_id -1",
            "numgen_lease_healthy 0",
            "numgen_sequence_blocks_reserved_total{prefix=\"INV\"} 1",
            "numgen_http_requests_total{route=\"/health\",status=\"200\"} 1",
            "numgen_http_request_duration_seconds_bucket{route=\"/health\",le=\"0.001\"} 1",
        ] {
            assert!(text.contains(name), "missing {name}");
        }
    }

    #[test]
    fn counts_by_prefix_sum_the_other_labels_and_create_nothing() {
        let m = Metrics::new().unwrap();
        m.issued.with_label_values(&["A", "snowflake"]).inc_by(3);
        m.issued.with_label_values(&["B", "sequence"]).inc_by(5);
        m.degraded_by_prefix.with_label_values(&["A"]).inc_by(2);
        let issued = Metrics::by_prefix(&m.issued);
        assert_eq!((issued["A"], issued["B"]), (3, 5));
        let degraded = Metrics::by_prefix(&m.degraded_by_prefix);
        assert_eq!((degraded.get("A"), degraded.get("B")), (Some(&2), None));
        let text = String::from_utf8(m.encode().unwrap()).unwrap();
        assert!(!text.contains(r#"numgen_numbers_degraded_total{prefix="B"}"#));
    }
}
