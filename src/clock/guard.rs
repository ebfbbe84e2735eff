//! The node's view of time, in layout units.
//!
//! [`ClockGuard`] keeps the highest wall-clock reading seen and hands out that as "now", so
//! the node's time never goes backward. A reading more than `max_wait` units behind it
//! starts a backward episode, which lasts until the wall clock passes the highest reading
//! again (SPEC section 4). Smaller steps are absorbed: the node stays at its last time and
//! the generator makes callers wait if a unit's sequence runs out meanwhile.
//! [`ForwardJumps`] compares wall-clock progress with the monotonic clock between ticks.
//!
//! Only atomics here: no I/O, no sleeping; the caller logs and counts the changes.

use std::sync::atomic::{AtomicU64, Ordering};

const NONE: u64 = u64::MAX;

/// One look at the clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading {
    /// The node's time: the highest wall reading seen so far.
    pub now: u64,
    /// The wall clock as read.
    pub wall: u64,
    /// During a backward episode, the unit the wall clock must reach to end it.
    pub backward_until: Option<u64>,
}

/// A backward episode started or ended with this reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuardChange {
    Started { behind: u64, until: u64 },
    Ended,
}

#[derive(Debug)]
pub struct ClockGuard {
    max_seen: AtomicU64,
    episode_until: AtomicU64,
    max_wait: u64,
}

impl ClockGuard {
    /// `max_wait`: the largest step back (units) that is absorbed without an episode.
    pub fn new(max_wait: u64) -> ClockGuard {
        ClockGuard {
            max_seen: AtomicU64::new(0),
            episode_until: AtomicU64::new(NONE),
            max_wait,
        }
    }

    /// Raises the node's time to at least `units`: a start-up floor the clock is behind.
    pub fn raise_to(&self, units: u64) {
        self.max_seen.fetch_max(units, Ordering::AcqRel);
    }

    /// Lowers the node's time to `units` when it is above (readings known to be wrong: a
    /// clock its peers judged ahead, since put right), and ends a backward episode. `true`
    /// when an episode ended. Safe for uniqueness: every prefix's last number and the
    /// worker ID's floor still bound what comes next.
    pub fn lower_to(&self, units: u64) -> bool {
        self.max_seen.fetch_min(units, Ordering::AcqRel);
        self.episode_until.swap(NONE, Ordering::AcqRel) != NONE
    }

    /// The highest reading seen so far.
    pub fn max_seen(&self) -> u64 {
        self.max_seen.load(Ordering::Acquire)
    }

    /// Folds the wall-clock reading `wall` into the node's time. Only for a reading taken
    /// with no other thread observing meanwhile; see [`ClockGuard::observe_with`].
    pub fn observe(&self, wall: u64) -> (Reading, Option<GuardChange>) {
        self.observe_with(|| wall)
    }

    /// Reads the clock with `read` and folds the reading into the node's time. The highest
    /// reading is loaded *before* the clock is read: every reading in it was taken earlier,
    /// so a thread paused between its own read and this comparison cannot mistake other
    /// threads' later readings for a step back.
    #[inline]
    pub fn observe_with(&self, read: impl FnOnce() -> u64) -> (Reading, Option<GuardChange>) {
        let seen = self.max_seen.load(Ordering::Acquire);
        let wall = read();
        if wall >= seen {
            if wall > seen {
                self.max_seen.fetch_max(wall, Ordering::AcqRel);
            }
            let mut change = None;
            let until = self.episode_until.load(Ordering::Acquire);
            if until != NONE
                && self
                    .episode_until
                    .compare_exchange(until, NONE, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                change = Some(GuardChange::Ended);
            }
            let reading = Reading {
                now: wall,
                wall,
                backward_until: None,
            };
            return (reading, change);
        }
        let behind = seen - wall;
        let mut until = self.episode_until.load(Ordering::Acquire);
        let mut change = None;
        if until == NONE && behind > self.max_wait {
            match self.episode_until.compare_exchange(
                NONE,
                seen,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    until = seen;
                    change = Some(GuardChange::Started {
                        behind,
                        until: seen,
                    });
                }
                Err(current) => until = current,
            }
        }
        let reading = Reading {
            now: seen,
            wall,
            backward_until: (until != NONE).then_some(until),
        };
        (reading, change)
    }
}

/// Notices the wall clock moving forward faster than the monotonic clock between ticks,
/// beyond the highest reading before: a clock put right after a step back is not a jump.
#[derive(Debug)]
pub struct ForwardJumps {
    threshold_ms: u64,
    /// (highest wall reading so far, monotonic reading of the previous call)
    last: Option<(u64, u64)>,
}

impl ForwardJumps {
    pub fn new(threshold_ms: u64) -> ForwardJumps {
        ForwardJumps {
            threshold_ms,
            last: None,
        }
    }

    /// Takes a wall reading and a monotonic reading (both ms); returns the size of a forward
    /// jump beyond the threshold since the previous call.
    pub fn check(&mut self, wall_ms: u64, mono_ms: u64) -> Option<u64> {
        let jump = self.last.and_then(|(high, mono0)| {
            let expected = high.saturating_add(mono_ms.saturating_sub(mono0));
            let extra = wall_ms.saturating_sub(expected);
            (extra > self.threshold_ms).then_some(extra)
        });
        let high = self.last.map_or(wall_ms, |(h, _)| h.max(wall_ms));
        self.last = Some((high, mono_ms));
        jump
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowering_ends_an_episode_and_time_follows_the_clock_from_there() {
        let g = ClockGuard::new(5);
        g.observe(1_000_000);
        let (r, _) = g.observe(1000);
        assert!(r.backward_until.is_some());
        assert!(g.lower_to(1000));
        assert!(!g.lower_to(5000), "no episode left, and never raised");
        let (r, c) = g.observe(1001);
        assert_eq!((r.now, r.backward_until, c), (1001, None, None));
    }

    #[test]
    fn time_follows_the_clock_forward() {
        let g = ClockGuard::new(5);
        assert_eq!(g.observe(100).0.now, 100);
        let (r, c) = g.observe(150);
        assert_eq!((r.now, r.backward_until, c), (150, None, None));
        assert_eq!(g.max_seen(), 150);
    }

    #[test]
    fn small_steps_back_are_absorbed_without_an_episode() {
        for step in [1, 5] {
            let g = ClockGuard::new(5);
            g.observe(1000);
            let (r, c) = g.observe(1000 - step);
            assert_eq!(r.now, 1000, "the node's time stays put");
            assert_eq!((r.backward_until, c), (None, None));
        }
    }

    #[test]
    fn a_larger_step_starts_one_episode_that_ends_when_the_clock_passes_the_last_time() {
        let g = ClockGuard::new(5);
        g.observe(1000);
        let (r, c) = g.observe(994);
        assert_eq!(r.backward_until, Some(1000));
        assert_eq!(
            c,
            Some(GuardChange::Started {
                behind: 6,
                until: 1000
            })
        );
        // Still behind, within max_wait now, but the episode goes on: no second start.
        let (r, c) = g.observe(998);
        assert_eq!((r.now, r.backward_until, c), (1000, Some(1000), None));
        let (r, c) = g.observe(1000);
        assert_eq!(
            (r.now, r.backward_until, c),
            (1000, None, Some(GuardChange::Ended))
        );
        assert_eq!(g.observe(1001).1, None);
    }

    #[test]
    fn a_ten_second_step_is_an_episode_until_the_clock_catches_up() {
        let g = ClockGuard::new(5);
        g.observe(50_000);
        assert!(matches!(
            g.observe(40_000).1,
            Some(GuardChange::Started { behind: 10_000, .. })
        ));
        for wall in (40_001..50_000).step_by(997) {
            assert_eq!(g.observe(wall).0.backward_until, Some(50_000));
        }
        assert_eq!(g.observe(50_001).1, Some(GuardChange::Ended));
    }

    #[test]
    fn a_reading_taken_before_other_threads_raised_the_time_is_not_a_step_back() {
        let g = ClockGuard::new(5);
        g.observe(1000);
        // This thread's reading (1000) comes after the load; meanwhile another thread
        // observed 1050. Had the load come after the read, 1000 < 1050 - 5 would be an episode.
        let (r, c) = g.observe_with(|| {
            g.observe(1050);
            1000
        });
        assert_eq!((r.backward_until, c), (None, None));
    }

    #[test]
    fn raising_the_floor_makes_an_early_clock_an_episode() {
        let g = ClockGuard::new(5);
        g.raise_to(10_000);
        let (r, c) = g.observe(2_000);
        assert_eq!(r.now, 10_000);
        assert!(matches!(
            c,
            Some(GuardChange::Started { behind: 8_000, .. })
        ));
    }

    #[test]
    fn forward_jumps_beyond_the_threshold_are_reported() {
        let mut f = ForwardJumps::new(1000);
        assert_eq!(f.check(10_000, 0), None);
        assert_eq!(f.check(10_100, 100), None);
        // Wall moved 5100 ms while 100 ms passed.
        assert_eq!(f.check(15_200, 200), Some(5_000));
        // A step back is not a forward jump, nor is putting it right again.
        assert_eq!(f.check(5_300, 300), None);
        assert_eq!(f.check(15_400, 400), None);
        // But a jump past the highest reading is.
        assert_eq!(f.check(25_500, 500), Some(10_000));
    }
}
