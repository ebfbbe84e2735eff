//! Snowflake IDs: the bit [`layout`] and the per-prefix [`generator`]. Pure: no I/O, no clock.

pub mod generator;
pub mod layout;

pub use generator::{Batch, Bounds, DegradeReason, Generator, NextError, Policy, PrefixClock};
pub use layout::{IdParts, Layout, LayoutError, LayoutSettings};

/// The fields of `id` as `/ids/{id}` and `numgen decode` show them; `None` when the sign
/// bit is set.
pub fn describe(layout: &Layout, id: u64) -> Option<serde_json::Value> {
    let p = layout.decompose(id)?;
    let ms = layout.unix_ms_at(p.timestamp);
    let time = chrono::DateTime::from_timestamp_millis(ms as i64)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    Some(serde_json::json!({
        "id": id.to_string(),
        "timestamp_ms": ms,
        "time": time,
        "datacenter": p.datacenter,
        "worker": p.worker,
        "sequence": p.sequence,
        "degraded": p.degraded,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_shows_every_field() {
        let l = Layout::from_widths(LayoutSettings::default()).unwrap();
        let id = l.compose(IdParts {
            timestamp: 1000,
            degraded: true,
            datacenter: 2,
            worker: 9,
            sequence: 77,
        });
        let v = describe(&l, id).unwrap();
        assert_eq!(v["id"], id.to_string());
        assert_eq!(v["timestamp_ms"], layout::DEFAULT_EPOCH_MS + 1000);
        assert_eq!(v["time"], "2024-01-01T00:00:01.000Z");
        assert_eq!(
            (v["datacenter"].as_u64(), v["worker"].as_u64()),
            (Some(2), Some(9))
        );
        assert_eq!(
            (v["sequence"].as_u64(), v["degraded"].as_bool()),
            (Some(77), Some(true))
        );
        assert!(describe(&l, u64::MAX).is_none());
    }
}
