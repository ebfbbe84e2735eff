//! Every metric numgen exports (SPEC section 6), in one registry. Handles are created once
//! and cloned into the parts that update them, so the hot path touches atomics only.

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
    /// `numgen_clock_offset_ms`: this node's clock minus the peers' median.
    pub clock_offset_ms: Gauge,
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
        let clock_offset_ms = Gauge::new(
            "numgen_clock_offset_ms",
            "This node's clock minus the median of its peers' clocks, in ms",
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
        registry.register(Box::new(issued.clone()))?;
        registry.register(Box::new(degraded.clone()))?;
        registry.register(Box::new(clock_offset_ms.clone()))?;
        registry.register(Box::new(clock_forward_jumps.clone()))?;
        registry.register(Box::new(worker_id.clone()))?;
        registry.register(Box::new(lease_healthy.clone()))?;
        registry.register(Box::new(blocks_reserved.clone()))?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        registry.register(Box::new(prefixes.clone()))?;
        worker_id.set(-1);
        for reason in DegradeReason::ALL {
            degraded.with_label_values(&[reason.as_str()]);
        }
        Ok(Metrics {
            registry,
            issued,
            degraded,
            clock_offset_ms,
            clock_forward_jumps,
            worker_id,
            lease_healthy,
            blocks_reserved,
            http_requests,
            http_duration,
            prefixes,
        })
    }

    /// The degraded counter of each reason, in [`DegradeReason::ALL`] order.
    pub fn degraded_counters(&self) -> [IntCounter; 3] {
        DegradeReason::ALL.map(|r| self.degraded.with_label_values(&[r.as_str()]))
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
            "numgen_clock_offset_ms 0",
            "numgen_worker_id -1",
            "numgen_lease_healthy 0",
            "numgen_sequence_blocks_reserved_total{prefix=\"INV\"} 1",
            "numgen_http_requests_total{route=\"/health\",status=\"200\"} 1",
            "numgen_http_request_duration_seconds_bucket{route=\"/health\",le=\"0.001\"} 1",
        ] {
            assert!(text.contains(name), "missing {name}");
        }
    }
}
