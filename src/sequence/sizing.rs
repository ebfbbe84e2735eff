//! How many numbers a sequence block holds, from the prefix's rate and the measured round
//! trip of its reservations (pure: no clock, no I/O; the allocator feeds it samples).
//!
//! The next block is reserved in the background once half of the current one is used, so
//! a request never waits on the store as long as that half lasts longer than a
//! reservation takes. The block is therefore
//!
//! ```text
//! size = clamp(max(min(rate × 1 s, RATE_BLOCK), 2 × RTT_SAFETY × rate × rtt), BASE_BLOCK, MAX_BLOCK)
//! ```
//!
//! The first term is the old rule (a block lasts about a second, at most 16,000: a few
//! store round trips per second on a LAN); the second makes the half left when the
//! prefetch starts cover `RTT_SAFETY` reservation round trips at the current rate, which
//! is what a WAN between the node and the store needs. A crash wastes at most the block in
//! use and the one prefetched, so at most `2 × MAX_BLOCK` numbers.

/// Block size when a counter starts, and the smallest block (SPEC: 1000).
pub const BASE_BLOCK: u64 = 1000;
/// Largest block the rate term alone grows to (a block lasting about a second).
pub const RATE_BLOCK: u64 = 16_000;
/// Largest block at all: bounds the gap a crash leaves (two blocks).
pub const MAX_BLOCK: u64 = 262_144;
/// Round trips at the current rate that the half block left at prefetch time must cover.
pub const RTT_SAFETY: f64 = 4.0;
/// Weight of a new round-trip sample in the moving average.
const RTT_WEIGHT: f64 = 0.25;

/// The block to reserve for `rate` numbers per second when a reservation takes `rtt_s`
/// seconds (see the module docs for the formula).
pub fn block_size(rate: f64, rtt_s: f64) -> u64 {
    let rate = finite_or_zero(rate);
    let rtt_s = finite_or_zero(rtt_s);
    let by_rate = rate.min(RATE_BLOCK as f64);
    let by_rtt = 2.0 * RTT_SAFETY * rate * rtt_s;
    // `as` saturates: anything above u64::MAX becomes u64::MAX, then the clamp.
    (by_rate.max(by_rtt).ceil() as u64).clamp(BASE_BLOCK, MAX_BLOCK)
}

/// The rate estimate after a new sample (numbers per second since the last reservation):
/// up at once, so a prefix getting busier gets big blocks before it waits; down by half the
/// difference, so one quiet moment does not shrink the next block to nothing.
pub fn next_rate(prev: f64, sample: f64) -> f64 {
    let (prev, sample) = (finite_or_zero(prev), finite_or_zero(sample));
    if sample >= prev {
        sample
    } else {
        (prev + sample) / 2.0
    }
}

/// The round-trip estimate (seconds) after a reservation that took `sample` seconds: an
/// exponentially weighted moving average; the first sample is taken as it is.
pub fn next_rtt(prev: Option<f64>, sample: f64) -> f64 {
    let sample = finite_or_zero(sample);
    match prev {
        Some(p) => finite_or_zero(p) * (1.0 - RTT_WEIGHT) + sample * RTT_WEIGHT,
        None => sample,
    }
}

fn finite_or_zero(x: f64) -> f64 {
    if x.is_finite() && x > 0.0 { x } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_size_table() {
        const LAN: f64 = 1.0 / 512.0;
        // (rate per s, round trip s, block)
        let cases: &[(f64, f64, u64)] = &[
            // Idle or unknown: the SPEC's 1000.
            (0.0, 0.0, BASE_BLOCK),
            (10.0, 0.001, BASE_BLOCK),
            (f64::NAN, f64::INFINITY, BASE_BLOCK),
            (-5.0, -1.0, BASE_BLOCK),
            // LAN (a reservation about 2 ms, 1/512 s here to keep the table exact): a
            // second of numbers, up to 16,000, as before.
            (5_000.0, LAN, 5_000),
            (16_000.0, LAN, 16_000),
            (250_000.0, LAN, 16_000),
            // Faster than the rate term: the round trip term takes over.
            (1_000_000.0, LAN, 16_000),
            (2_000_000.0, LAN, 31_250),
            // WAN (50 ms added, a reservation about 125 ms): the half block covers 4 round
            // trips, 80,000/s × 0.125 s × 4 = 40,000 numbers.
            (80_000.0, 0.125, 80_000),
            (1_000.0, 0.125, BASE_BLOCK),
            (20_000.0, 0.125, 20_000),
            // Capped: a crash wastes at most two blocks.
            (3_000_000.0, 0.125, MAX_BLOCK),
            (f64::MAX, 1.0, MAX_BLOCK),
        ];
        for &(rate, rtt, want) in cases {
            assert_eq!(block_size(rate, rtt), want, "rate {rate}, rtt {rtt}");
        }
    }

    #[test]
    fn half_a_block_covers_the_round_trips_below_the_cap() {
        for rate in [1_000.0, 30_000.0, 80_000.0, 250_000.0] {
            for rtt in [0.0005, 0.002, 0.05, 0.11, 0.3] {
                let size = block_size(rate, rtt);
                if size < MAX_BLOCK {
                    assert!(
                        size as f64 / 2.0 >= RTT_SAFETY * rate * rtt - 1.0,
                        "rate {rate}, rtt {rtt}: {size}"
                    );
                }
            }
        }
    }

    #[test]
    fn rate_goes_up_at_once_and_down_by_halves() {
        let cases: &[(f64, f64, f64)] = &[
            (0.0, 1000.0, 1000.0),
            (1000.0, 80_000.0, 80_000.0),
            (80_000.0, 0.0, 40_000.0),
            (80_000.0, 40_000.0, 60_000.0),
            (1000.0, f64::NAN, 500.0),
        ];
        for &(prev, sample, want) in cases {
            assert_eq!(next_rate(prev, sample), want, "{prev} then {sample}");
        }
    }

    #[test]
    fn rtt_is_a_moving_average() {
        assert_eq!(next_rtt(None, 0.1), 0.1);
        assert_eq!(next_rtt(Some(0.0), 0.5), 0.125);
        assert_eq!(next_rtt(Some(0.125), 0.125), 0.125);
        assert_eq!(next_rtt(Some(0.5), f64::NAN), 0.375);
    }
}
