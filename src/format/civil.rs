//! Calendar fields from a Unix time, without allocation or time-zone databases: the
//! prefixes carry fixed UTC offsets, so Howard Hinnant's `civil_from_days` is all we need.

/// A calendar date and hour.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Civil {
    pub year: u32,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
}

/// The date and hour at Unix milliseconds `unix_ms` shifted by `offset_s` seconds.
/// Times before 1970 (after the shift) read as 1970-01-01T00.
pub fn civil_from_unix_ms(unix_ms: u64, offset_s: i32) -> Civil {
    let secs = (unix_ms / 1000) as i64 + i64::from(offset_s);
    let secs = secs.max(0);
    let days = secs / 86_400;
    let hour = ((secs % 86_400) / 3600) as u8;
    // civil_from_days, for days since 1970-01-01 (non-negative here).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as u32;
    Civil {
        year,
        month,
        day,
        hour,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, TimeZone, Timelike};
    use proptest::prelude::*;

    #[test]
    fn known_dates() {
        assert_eq!(
            civil_from_unix_ms(0, 0),
            Civil {
                year: 1970,
                month: 1,
                day: 1,
                hour: 0
            }
        );
        // 2024-02-29T23:59:59Z, then +08:00 is March 1st, 07h.
        let leap = 1_709_251_199_000;
        assert_eq!(
            civil_from_unix_ms(leap, 0),
            Civil {
                year: 2024,
                month: 2,
                day: 29,
                hour: 23
            }
        );
        assert_eq!(
            civil_from_unix_ms(leap, 8 * 3600),
            Civil {
                year: 2024,
                month: 3,
                day: 1,
                hour: 7
            }
        );
        assert_eq!(civil_from_unix_ms(1000, -7200).year, 1970);
    }

    proptest! {
        #[test]
        fn matches_chrono(ms in 0u64..8_000_000_000_000, offset in -50_400i32..=50_400) {
            let c = civil_from_unix_ms(ms, offset);
            let tz = chrono::FixedOffset::east_opt(offset).unwrap();
            let t = tz.timestamp_millis_opt(ms as i64).unwrap();
            prop_assume!(t.naive_local().and_utc().timestamp() >= 0);
            prop_assert_eq!((c.year as i32, c.month as u32, c.day as u32, c.hour as u32),
                (t.year(), t.month(), t.day(), t.hour()));
        }
    }
}
