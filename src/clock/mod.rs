//! Time: the [`Clock`] trait (the system clock, read through the TSC in [`tsc`] where that
//! is safe, or a manual one for tests) and the node's view
//! of it in [`guard`], which turns raw readings into a time that never goes backward and
//! says when the wall clock stepped back or jumped forward.

pub mod guard;
pub mod tsc;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub use guard::{ClockGuard, ForwardJumps, GuardChange, Reading};

/// A source of wall-clock time in Unix milliseconds.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// The operating system's real-time clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[inline]
    fn now_ms(&self) -> u64 {
        // A clock before 1970 reads as 0; the guard then treats it as a step back.
        // u64 arithmetic: `as_millis` divides a u128, which costs more than the clock read.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() * 1000 + u64::from(d.subsec_millis()))
    }
}

/// The fastest trustworthy reading of the system's real-time clock here: the TSC-based
/// clock where the kernel trusts the counter, the plain system clock otherwise.
pub fn system_clock() -> std::sync::Arc<dyn Clock> {
    match tsc::TscClock::new() {
        Some(c) => std::sync::Arc::new(c),
        None => std::sync::Arc::new(SystemClock),
    }
}

/// A clock that only moves when told to: for tests.
#[derive(Debug, Default)]
pub struct ManualClock {
    ms: AtomicU64,
}

impl ManualClock {
    pub fn new(ms: u64) -> ManualClock {
        ManualClock {
            ms: AtomicU64::new(ms),
        }
    }
    pub fn set(&self, ms: u64) {
        self.ms.store(ms, Ordering::SeqCst);
    }
    pub fn advance(&self, ms: u64) {
        self.ms.fetch_add(ms, Ordering::SeqCst);
    }
    pub fn step_back(&self, ms: u64) {
        self.ms.fetch_sub(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.ms.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_reads_a_plausible_time() {
        let now = SystemClock.now_ms();
        assert!(now > 1_700_000_000_000, "{now}");
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(1000);
        c.advance(5);
        assert_eq!(c.now_ms(), 1005);
        c.step_back(10);
        assert_eq!(c.now_ms(), 995);
        c.set(7);
        assert_eq!(c.now_ms(), 7);
    }
}
