//! The snowflake step: per-prefix state in one `AtomicU64`, and a pure function that says
//! which numbers come next, or why none can.
//!
//! A prefix's state is the last packed value it issued (`timestamp << sequence_bits |
//! sequence`) plus, in bit 63, whether that number was degraded. The next number is the
//! smallest packed value above the last one that is not behind the clock and not at or below
//! the grant's floor; the sequence carries into the timestamp when a unit runs out, so a
//! prefix may run at most [`LEAD_UNITS`] ahead of the clock before the caller must wait.
//! IDs order by (timestamp, degraded, sequence), so a degraded number may follow a normal
//! one in the same unit, but a normal number after a degraded one moves to the next unit:
//! the per-prefix order stays strictly increasing whatever the node's state does.
//!
//! Nothing here reads a clock or sleeps: the caller passes the time in [`Bounds`] and
//! decides what to do with [`NextError::Wait`].

use std::sync::atomic::{AtomicU64, Ordering};

use super::layout::Layout;

/// How many units a prefix may run ahead of the clock when a unit's sequence runs out.
pub const LEAD_UNITS: u64 = 1;

const DEGRADED_FLAG: u64 = 1 << 63;

/// Why a number carries the degraded bit (SPEC section 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DegradeReason {
    ClockBackward,
    ClockSkew,
    LeaseLost,
}

impl DegradeReason {
    pub const ALL: [DegradeReason; 3] = [
        DegradeReason::ClockBackward,
        DegradeReason::ClockSkew,
        DegradeReason::LeaseLost,
    ];

    /// True when numbers of this kind come from a logical clock that does not follow the
    /// wall clock (it stands still, or is behind): they may use the reservation up to its
    /// ceiling rather than one unit of lead.
    pub fn logical_clock(self) -> bool {
        matches!(
            self,
            DegradeReason::ClockBackward | DegradeReason::LeaseLost
        )
    }

    /// The `reason` label of `numgen_degraded_total` and the word in `/ready`.
    pub fn as_str(self) -> &'static str {
        match self {
            DegradeReason::ClockBackward => "clock_backward",
            DegradeReason::ClockSkew => "clock_skew",
            DegradeReason::LeaseLost => "lease_lost",
        }
    }
}

/// What to do when normal numbers cannot be issued (`on_clock_backward`, `on_lease_loss`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Keep issuing from a logical clock, with the degraded bit set.
    Degrade,
    /// Answer 503 `NOT_READY` until the trouble is over.
    Reject,
}

/// What the node knows at the moment of issuing. All times are layout units.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// The node's time: never behind the highest clock reading it has seen.
    pub now: u64,
    /// Timestamps up to `floor` may have been used under this worker ID: issue above it.
    pub floor: u64,
    /// The highest timestamp persisted as reserved: never issue above it.
    pub ceiling: u64,
    /// Set when every number must carry the degraded bit.
    pub degraded: Option<DegradeReason>,
    /// How far (beyond the lead and one unit) a prefix may be ahead of `now` for the caller
    /// to wait rather than degrade.
    pub max_wait: u64,
    pub on_ahead: Policy,
    /// `now` is not the node's own clock (it runs on its peers' time, which they judge
    /// behind it): a prefix that issued ahead of it before goes on from its last number up
    /// to the ceiling, like a logical clock, rather than wait for `now` to catch up.
    pub logical: bool,
}

/// A run of consecutive packed values: `first`, `first + 1`, …, `first + count - 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch {
    pub first: u64,
    pub count: u64,
    pub degraded: Option<DegradeReason>,
}

/// Why no number can be issued now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextError {
    /// The prefix is slightly ahead of the clock: retry once `now` reaches `until`.
    Wait { until: u64 },
    /// The prefix is ahead of the clock beyond `max_wait` and the policy rejects.
    Behind { until: u64 },
    /// The persisted reservation is used up: extend it, then retry.
    Ceiling,
    /// The timestamp field is full: the layout has run out of time.
    Exhausted,
}

/// The last number a prefix issued on this node.
#[derive(Debug, Default)]
pub struct LastIssued {
    state: AtomicU64,
}

impl LastIssued {
    pub fn new() -> LastIssued {
        LastIssued::default()
    }

    /// The timestamp of the last number issued (0 when none).
    pub fn last_timestamp(&self, generator: &Generator) -> u64 {
        (self.state.load(Ordering::Acquire) & !DEGRADED_FLAG) >> generator.sequence_bits
    }

    /// Closes the prefix for good and returns the timestamp of the last number it issued
    /// (0 when none; the layout's last timestamp when it was sealed already). A caller that
    /// loaded the state before this fails its compare-and-swap, so nothing is issued after
    /// the value returned here: its retry finds the state at [`SEALED`], far ahead of its
    /// clock reading, so it reads its bounds again (which refuse when the node is
    /// stopping); with any bounds, no number lies above [`SEALED`].
    pub fn seal(&self, generator: &Generator) -> u64 {
        let old = self.state.swap(SEALED, Ordering::AcqRel);
        ((old & !DEGRADED_FLAG) >> generator.sequence_bits).min(generator.max_timestamp)
    }
}

impl LastIssued {
    /// Makes every later number's timestamp at least `timestamp`: the state moves up to
    /// the last value of the unit before, never down. A snowflake prefix's floor
    /// (`initial_seq`, SPEC 1.3) starts its numbers in the unit after the floor's.
    pub fn start_at(&self, generator: &Generator, timestamp: u64) {
        let target = (timestamp << generator.sequence_bits).saturating_sub(1);
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                ((old & !DEGRADED_FLAG) < target).then_some(target)
            });
    }
}

/// The state of a sealed prefix: the highest packed value, past every layout's timestamps.
const SEALED: u64 = !DEGRADED_FLAG;

/// Layout-derived constants for [`Generator::next`].
#[derive(Clone, Copy, Debug)]
pub struct Generator {
    sequence_bits: u32,
    max_timestamp: u64,
}

impl Generator {
    pub fn new(layout: &Layout) -> Generator {
        Generator {
            sequence_bits: layout.sequence_bits(),
            max_timestamp: layout.max_timestamp(),
        }
    }

    /// The timestamp of a packed value.
    pub fn timestamp_of(&self, packed: u64) -> u64 {
        packed >> self.sequence_bits
    }

    /// Issues up to `want` numbers (at least one) after `last`, the prefix's last number.
    /// A batch may come back short when the lead or the ceiling is reached; ask again for
    /// the rest.
    #[inline]
    pub fn next(&self, last: &LastIssued, want: u64, b: &Bounds) -> Result<Batch, NextError> {
        match self.next_with(last, want, || Ok::<_, std::convert::Infallible>(*b)) {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }

    /// Like [`Generator::next`], with the bounds computed by `bounds` (which reads the clock)
    /// *after* the prefix state is loaded, again on every retry. A state loaded first only
    /// holds timestamps from clock readings taken before, so a thread paused between its
    /// clock reading and the state load cannot see other threads' later numbers as a prefix
    /// far ahead of the clock.
    #[inline]
    pub fn next_with<E>(
        &self,
        last: &LastIssued,
        want: u64,
        mut bounds: impl FnMut() -> Result<Bounds, E>,
    ) -> Result<Result<Batch, NextError>, E> {
        let mut b: Option<Bounds> = None;
        loop {
            let old = last.state.load(Ordering::Acquire);
            // Read the clock after the load; on a retry only when the state moved past what
            // the earlier reading allows (another thread issued with a later reading).
            let stale =
                b.is_none_or(|b| self.timestamp_of(old & !DEGRADED_FLAG) > b.now + LEAD_UNITS);
            if stale {
                b = Some(bounds()?);
            }
            let Some(b) = b else { continue };
            let (new, batch) = match self.plan(old, want, &b) {
                Ok(p) => p,
                Err(e) => return Ok(Err(e)),
            };
            if last
                .state
                .compare_exchange(old, new, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Ok(Ok(batch));
            }
        }
    }

    /// The pure step: from the prefix state `old`, the state after issuing and the batch.
    pub fn plan(&self, old: u64, want: u64, b: &Bounds) -> Result<(u64, Batch), NextError> {
        let s = self.sequence_bits;
        let now = b.now.min(self.max_timestamp);
        let old_degraded = old & DEGRADED_FLAG != 0;
        let old_packed = old & !DEGRADED_FLAG;
        let floor_packed = b.floor.saturating_add(1).saturating_mul(1 << s);
        let lowest = (old_packed + 1).max(now << s).max(floor_packed);

        let mut degraded = b.degraded;
        let mut start = lowest;
        if degraded.is_none() {
            if old_degraded {
                // Back to normal: a degraded number may share this unit, so move past it.
                start = start.max(((old_packed >> s) + 1) << s);
            }
            let start_ts = start >> s;
            if start_ts > now + LEAD_UNITS {
                let until = start_ts - LEAD_UNITS;
                // One unit past the lead is a unit's sequence running out: always a wait.
                if start_ts - now <= LEAD_UNITS + 1 + b.max_wait {
                    return Err(NextError::Wait { until });
                }
                match b.on_ahead {
                    Policy::Reject => return Err(NextError::Behind { until }),
                    Policy::Degrade => {
                        degraded = Some(DegradeReason::ClockBackward);
                        start = lowest;
                    }
                }
            }
        }

        let limit_ts = match degraded {
            Some(r) if r.logical_clock() => b.ceiling,
            _ if b.logical => b.ceiling,
            _ => b.ceiling.min(now + LEAD_UNITS),
        }
        .min(self.max_timestamp);
        let limit = (limit_ts << s) | ((1 << s) - 1);
        if start > limit {
            return Err(if (start >> s) > self.max_timestamp {
                NextError::Exhausted
            } else if limit_ts == b.ceiling.min(self.max_timestamp) {
                NextError::Ceiling
            } else {
                NextError::Wait {
                    until: (start >> s) - LEAD_UNITS,
                }
            });
        }
        let count = want.max(1).min(limit - start + 1);
        let last = start + count - 1;
        let flag = if degraded.is_some() { DEGRADED_FLAG } else { 0 };
        Ok((
            last | flag,
            Batch {
                first: start,
                count,
                degraded,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::layout::LayoutSettings;
    use std::collections::HashSet;
    use std::sync::Arc;

    fn generator() -> (Layout, Generator) {
        let layout = Layout::from_widths(LayoutSettings::default()).unwrap();
        (layout, Generator::new(&layout))
    }

    fn bounds(now: u64) -> Bounds {
        Bounds {
            now,
            floor: 0,
            ceiling: u64::MAX >> 23,
            degraded: None,
            max_wait: 5,
            on_ahead: Policy::Degrade,
            logical: false,
        }
    }

    /// Issues one number and returns its ID.
    fn one(g: &Generator, l: &Layout, c: &LastIssued, b: &Bounds) -> Result<u64, NextError> {
        let batch = g.next(c, 1, b)?;
        assert_eq!(batch.count, 1);
        Ok(l.compose_packed(batch.first, batch.degraded.is_some(), l.node_bits(1, 2)))
    }

    #[test]
    fn numbers_in_one_unit_count_up_then_move_to_the_next_unit() {
        let (l, g) = generator();
        let c = LastIssued::new();
        let b = bounds(100);
        let first = g.next(&c, 1, &b).unwrap();
        assert_eq!(first.first, 100 << 12);
        assert_eq!(g.next(&c, 1, &b).unwrap().first, (100 << 12) + 1);
        // The rest of unit 100 and all of 101 (one unit of lead), then wait.
        let rest = g.next(&c, 100_000, &b).unwrap();
        assert_eq!(rest.first, (100 << 12) + 2);
        assert_eq!(rest.first + rest.count - 1, (101 << 12) | 4095);
        assert_eq!(g.next(&c, 1, &b), Err(NextError::Wait { until: 101 }));
        // The clock moves: issuing resumes in unit 102.
        let later = g.next(&c, 1, &bounds(101)).unwrap();
        assert_eq!(later.first, 102 << 12);
        assert_eq!(c.last_timestamp(&g), 102);
        assert!(one(&g, &l, &c, &bounds(500)).unwrap() > l.compose_packed(102 << 12, false, 0));
    }

    #[test]
    fn a_floor_starts_numbers_in_the_unit_after_it() {
        let (l, g) = generator();
        let c = LastIssued::new();
        c.start_at(&g, 150);
        // The clock is behind the floor: the numbers wait for it (or, further, degrade).
        assert_eq!(
            g.next(&c, 1, &bounds(100)).unwrap().degraded,
            Some(DegradeReason::ClockBackward)
        );
        let c = LastIssued::new();
        c.start_at(&g, 150);
        assert_eq!(g.next(&c, 1, &bounds(149)).unwrap().first, 150 << 12);
        // Never down.
        c.start_at(&g, 10);
        assert_eq!(g.next(&c, 1, &bounds(149)).unwrap().first, (150 << 12) + 1);
        let id = one(&g, &l, &c, &bounds(200)).unwrap();
        assert_eq!(l.decompose(id).unwrap().timestamp, 200);
        // A sealed prefix stays sealed.
        c.seal(&g);
        c.start_at(&g, 1000);
        assert_eq!(c.last_timestamp(&g), SEALED >> 12);
    }

    #[test]
    fn a_new_unit_restarts_the_sequence() {
        let (_, g) = generator();
        let c = LastIssued::new();
        g.next(&c, 10, &bounds(100)).unwrap();
        assert_eq!(g.next(&c, 1, &bounds(200)).unwrap().first, 200 << 12);
    }

    #[test]
    fn issuing_starts_above_the_floor_and_stops_at_the_ceiling() {
        let (_, g) = generator();
        let c = LastIssued::new();
        let b = Bounds {
            floor: 100,
            ceiling: 101,
            ..bounds(100)
        };
        assert_eq!(g.next(&c, 1, &b).unwrap().first, 101 << 12);
        let rest = g.next(&c, 10_000, &b).unwrap();
        assert_eq!(rest.count, 4095);
        // Unit 102 is beyond the lead: wait for the clock, then the ceiling stops it.
        assert_eq!(g.next(&c, 1, &b), Err(NextError::Wait { until: 101 }));
        let b101 = Bounds { now: 101, ..b };
        assert_eq!(g.next(&c, 1, &b101), Err(NextError::Ceiling));
        let extended = Bounds {
            ceiling: 200,
            ..b101
        };
        assert_eq!(g.next(&c, 1, &extended).unwrap().first, 102 << 12);
    }

    #[test]
    fn a_degraded_node_uses_a_logical_clock_up_to_the_ceiling() {
        let (l, g) = generator();
        let c = LastIssued::new();
        g.next(&c, 1, &bounds(1000)).unwrap();
        let degraded = Bounds {
            degraded: Some(DegradeReason::LeaseLost),
            ceiling: 1002,
            ..bounds(1000)
        };
        // Three units of sequence fit below the ceiling, however long the clock stands still.
        let mut total = 0;
        loop {
            match g.next(&c, 1000, &degraded) {
                Ok(batch) => {
                    assert_eq!(batch.degraded, Some(DegradeReason::LeaseLost));
                    total += batch.count;
                }
                Err(e) => {
                    assert_eq!(e, NextError::Ceiling);
                    break;
                }
            }
        }
        assert_eq!(total, 3 * 4096 - 1);
        // Back to normal: the next number moves past the degraded unit.
        let normal = Bounds {
            ceiling: 2000,
            ..bounds(1002)
        };
        let b = g.next(&c, 1, &normal).unwrap();
        assert_eq!((b.first >> 12, b.degraded), (1003, None));
        let _ = l;
    }

    #[test]
    fn a_normal_number_after_a_degraded_one_in_the_same_unit_moves_to_the_next_unit() {
        let (l, g) = generator();
        let c = LastIssued::new();
        let node = l.node_bits(0, 0);
        let normal = g.next(&c, 1, &bounds(50)).unwrap();
        let deg = g
            .next(
                &c,
                1,
                &Bounds {
                    degraded: Some(DegradeReason::ClockSkew),
                    ..bounds(50)
                },
            )
            .unwrap();
        let back = g.next(&c, 1, &bounds(50)).unwrap();
        let ids = [
            l.compose_packed(normal.first, false, node),
            l.compose_packed(deg.first, true, node),
            l.compose_packed(back.first, false, node),
        ];
        assert!(ids[0] < ids[1] && ids[1] < ids[2], "{ids:?}");
        assert_eq!(back.first, 51 << 12);
    }

    #[test]
    fn skew_degraded_numbers_still_follow_the_clock() {
        let (_, g) = generator();
        let c = LastIssued::new();
        let skewed = Bounds {
            degraded: Some(DegradeReason::ClockSkew),
            ..bounds(100)
        };
        assert_eq!(g.next(&c, 100_000, &skewed).unwrap().count, 8192);
        assert_eq!(g.next(&c, 1, &skewed), Err(NextError::Wait { until: 101 }));
        // On its peers' time (they judge its clock ahead), a prefix that issued ahead of it
        // goes on up to the ceiling.
        let peers_time = Bounds {
            now: 50,
            ceiling: 104,
            logical: true,
            ..skewed
        };
        let b = g.next(&c, 100_000, &peers_time).unwrap();
        assert_eq!((b.first >> 12, (b.first + b.count - 1) >> 12), (102, 104));
        assert_eq!(g.next(&c, 1, &peers_time), Err(NextError::Ceiling));
    }

    #[test]
    fn a_prefix_far_ahead_of_the_clock_degrades_or_rejects_by_policy() {
        let (_, g) = generator();
        let c = LastIssued::new();
        g.next(&c, 1, &bounds(10_000)).unwrap();
        // The clock stepped back 3 units: within max_wait, so wait.
        assert_eq!(
            g.next(&c, 1, &bounds(9_997)),
            Err(NextError::Wait { until: 9_999 })
        );
        // 10 s back: policy decides.
        let reject = Bounds {
            on_ahead: Policy::Reject,
            ..bounds(0)
        };
        assert_eq!(
            g.next(&c, 1, &reject),
            Err(NextError::Behind { until: 9_999 })
        );
        let b = g.next(&c, 1, &bounds(0)).unwrap();
        assert_eq!(b.degraded, Some(DegradeReason::ClockBackward));
        assert_eq!(b.first, (10_000 << 12) + 1);
    }

    #[test]
    fn the_timestamp_field_running_out_is_reported() {
        let layout = Layout::from_widths(LayoutSettings {
            timestamp_bits: 2,
            sequence_bits: 51,
            ..LayoutSettings::default()
        })
        .unwrap();
        let g = Generator::new(&layout);
        let c = LastIssued::new();
        let b = Bounds {
            ceiling: u64::MAX,
            ..bounds(3)
        };
        let got = g.next(&c, u64::MAX, &b).unwrap();
        assert_eq!(got.count, 1 << 51);
        assert_eq!(g.next(&c, 1, &b), Err(NextError::Exhausted));
    }

    #[test]
    fn sealing_between_an_issuers_bounds_and_its_swap_leaves_nothing_issued_above_it() {
        let (_, g) = generator();
        let c = LastIssued::new();
        let b = bounds(100);
        g.next(&c, 3, &b).unwrap();
        // The stop path runs after this issuer read its bounds, before its compare-and-swap.
        let mut calls = 0;
        let mut sealed_at = None;
        let got = g.next_with(&c, 1, || {
            calls += 1;
            if calls == 1 {
                sealed_at = Some(c.seal(&g));
                Ok(b)
            } else {
                Err("stopping")
            }
        });
        assert_eq!(got, Err("stopping"), "the retry must read its bounds again");
        assert_eq!(sealed_at, Some(100));
        // Whatever the bounds, a sealed prefix issues nothing.
        for b in [bounds(100), bounds(1 << 30)] {
            assert!(g.next(&c, 1, &b).is_err());
            let degraded = Bounds {
                degraded: Some(DegradeReason::LeaseLost),
                ..b
            };
            assert!(g.next(&c, 1, &degraded).is_err());
        }
        // Sealed twice: the layout's last timestamp, never an overflow.
        assert_eq!(c.seal(&g), g.max_timestamp);
        assert_eq!(LastIssued::new().seal(&g), 0);
    }

    #[test]
    fn concurrent_issuers_on_one_prefix_never_repeat_and_each_sees_increasing_ids() {
        let (l, g) = generator();
        let c = Arc::new(LastIssued::new());
        let start = std::time::Instant::now();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    let mut ids = Vec::with_capacity(50_000);
                    while ids.len() < 50_000 {
                        // The real clock in ms: sequence runs out, so carries and waits happen.
                        let now = start.elapsed().as_millis() as u64;
                        match g.next(&c, 1 + ids.len() as u64 % 7, &bounds(now)) {
                            Ok(b) => {
                                for p in b.first..b.first + b.count {
                                    ids.push(l.compose_packed(p, false, 0));
                                }
                            }
                            Err(NextError::Wait { .. }) => std::hint::spin_loop(),
                            Err(e) => panic!("{e:?}"),
                        }
                    }
                    ids
                })
            })
            .collect();
        let mut all = HashSet::new();
        for t in threads {
            let ids = t.join().unwrap();
            assert!(ids.windows(2).all(|w| w[0] < w[1]));
            for id in ids {
                assert!(all.insert(id), "duplicate {id}");
            }
        }
        assert!(all.len() >= 200_000);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        struct Step {
            now: u64,
            want: u64,
            degraded: bool,
            reject: bool,
        }

        fn step() -> impl Strategy<Value = Step> {
            (0u64..40, 1u64..9000, any::<bool>(), any::<bool>()).prop_map(
                |(now, want, degraded, reject)| Step {
                    now,
                    want,
                    degraded,
                    reject,
                },
            )
        }

        proptest! {
            /// Whatever the clock does (any order of readings, degraded or not), the IDs one
            /// prefix issues are strictly increasing, stay within the ceiling, and never
            /// degrade unless asked to or ahead of the clock.
            #[test]
            fn ids_strictly_increase_under_any_clock(steps in proptest::collection::vec(step(), 1..60)) {
                let (l, g) = generator();
                let c = LastIssued::new();
                let mut last: Option<u64> = None;
                for st in steps {
                    let b = Bounds {
                        now: st.now, floor: 3, ceiling: 45,
                        degraded: st.degraded.then_some(DegradeReason::ClockSkew),
                        max_wait: 5,
                        on_ahead: if st.reject { Policy::Reject } else { Policy::Degrade },
                        logical: false,
                    };
                    if let Ok(batch) = g.next(&c, st.want, &b) {
                        prop_assert!(batch.count >= 1 && batch.count <= st.want);
                        prop_assert!(((batch.first + batch.count - 1) >> 12) <= 45);
                        prop_assert!((batch.first >> 12) > 3);
                        if !batch.degraded.is_some_and(DegradeReason::logical_clock) {
                            prop_assert!(((batch.first + batch.count - 1) >> 12) <= st.now + LEAD_UNITS);
                        }
                        for p in batch.first..batch.first + batch.count {
                            let id = l.compose_packed(p, batch.degraded.is_some(), 0);
                            if let Some(prev) = last { prop_assert!(id > prev); }
                            last = Some(id);
                        }
                    }
                }
            }
        }
    }
}
