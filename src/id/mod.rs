//! Snowflake IDs: the bit [`layout`] and the per-prefix [`generator`]. Pure: no I/O, no clock.

pub mod generator;
pub mod layout;

pub use generator::{Batch, Bounds, DegradeReason, Generator, LastIssued, NextError, Policy};
pub use layout::{IdParts, Layout, LayoutError, LayoutSettings};

/// An ID taken apart, with its time in Unix milliseconds: what `/ids/{id}` and
/// `numgen decode` show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub id: u64,
    /// When the ID's timestamp field says it was issued, Unix ms.
    pub unix_ms: u64,
    pub datacenter: u64,
    pub worker: u64,
    pub sequence: u64,
    pub degraded: bool,
}

/// The fields of `id` under `layout`; `None` when the sign bit is set.
pub fn describe(layout: &Layout, id: u64) -> Option<Decoded> {
    let p = layout.decompose(id)?;
    Some(Decoded {
        id,
        unix_ms: layout.unix_ms_at(p.timestamp),
        datacenter: p.datacenter,
        worker: p.worker,
        sequence: p.sequence,
        degraded: p.degraded,
    })
}

/// An ID as text (`/ids/{id}`, `numgen decode`) taken apart: decimal digits only (no sign,
/// no spaces), below 2^63; `None` otherwise.
pub fn describe_text(layout: &Layout, text: &str) -> Option<Decoded> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    describe(layout, text.parse().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_as_text_are_digits_only() {
        let l = Layout::from_widths(LayoutSettings::default()).unwrap();
        assert_eq!(describe_text(&l, "5").map(|d| d.id), Some(5));
        assert_eq!(
            describe_text(&l, "9223372036854775807").map(|d| d.id),
            Some(i64::MAX as u64)
        );
        for bad in [
            "",
            "+5",
            "-5",
            " 5",
            "5\n",
            "9223372036854775808",
            "99999999999999999999",
        ] {
            assert_eq!(describe_text(&l, bad), None, "{bad:?}");
        }
    }

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
        assert_eq!(
            describe(&l, id),
            Some(Decoded {
                id,
                unix_ms: layout::DEFAULT_EPOCH_MS + 1000,
                datacenter: 2,
                worker: 9,
                sequence: 77,
                degraded: true,
            })
        );
        assert!(describe(&l, u64::MAX).is_none());
    }
}
