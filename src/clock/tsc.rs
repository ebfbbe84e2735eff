//! The system clock, read cheaply: `clock_gettime` costs about 29 ns on this kind of VM,
//! more than everything else numgen does per number. [`TscClock`] reads the real clock at
//! most about once a millisecond and interpolates in between with the CPU's time-stamp
//! counter (about 9 ns), using a rate calibrated against the monotonic clock at start.
//!
//! The error is bounded whatever the counter does: a reading is only interpolated while
//! fewer ticks than one millisecond's worth have passed since the last real reading;
//! otherwise (a millisecond passed, the counter jumped or went backward, migration) the
//! real clock is read again. So a step of the wall clock is seen within a millisecond,
//! and an interpolated reading is never more than a millisecond from the real one.
//! Used only where the kernel itself trusts the counter (`current_clocksource` is `tsc`).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::Clock;
use crate::sync::{SeqLock, Words};

#[cfg(target_arch = "x86_64")]
#[inline]
fn ticks() -> u64 {
    // SAFETY: RDTSC has no preconditions and touches no memory; every x86_64 CPU has it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn ticks() -> u64 {
    0
}

fn real_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| {
        d.as_secs() * 1_000_000_000 + u64::from(d.subsec_nanos())
    })
}

/// A real reading and the counter value taken with it.
#[derive(Clone, Copy, Debug, Default)]
struct Base {
    ns: u64,
    ticks: u64,
}

impl Words<2> for Base {
    fn to_words(self) -> [u64; 2] {
        [self.ns, self.ticks]
    }
    fn from_words([ns, ticks]: [u64; 2]) -> Base {
        Base { ns, ticks }
    }
}

#[derive(Debug)]
pub struct TscClock {
    base: SeqLock<Base, 2>,
    /// Nanoseconds per tick, as a 32.32 fixed-point number.
    ns_per_tick_q32: u64,
    /// Ticks in one millisecond: interpolate only within this many ticks of the base.
    ticks_per_ms: u64,
}

impl TscClock {
    /// Calibrates against the monotonic clock (about 5 ms). `None` when the kernel does
    /// not use the counter as its clock source, or the calibration looks wrong.
    pub fn new() -> Option<TscClock> {
        if !cfg!(target_arch = "x86_64") {
            return None;
        }
        let source = std::fs::read_to_string(
            "/sys/devices/system/clocksource/clocksource0/current_clocksource",
        )
        .ok()?;
        if source.trim() != "tsc" {
            return None;
        }
        let (t0, c0) = (Instant::now(), ticks());
        while t0.elapsed() < Duration::from_millis(5) {
            std::hint::spin_loop();
        }
        let (ns, c1) = (t0.elapsed().as_nanos() as u64, ticks());
        let elapsed_ticks = c1.checked_sub(c0)?;
        // Between 100 MHz and 20 GHz, or something is off.
        if elapsed_ticks < ns / 10 || elapsed_ticks > ns * 20 {
            return None;
        }
        let clock = TscClock {
            base: SeqLock::default(),
            ns_per_tick_q32: ((u128::from(ns) << 32) / u128::from(elapsed_ticks)) as u64,
            ticks_per_ms: elapsed_ticks * 1_000_000 / ns,
        };
        clock.rebase();
        Some(clock)
    }

    /// Reads the real clock and makes it the base. Returns the reading in ns.
    fn rebase(&self) -> u64 {
        let fresh = || {
            let ticks = ticks();
            Base {
                ns: real_ns(),
                ticks,
            }
        };
        // Another thread rebasing right now: just read the real clock.
        self.base.try_write(fresh).map_or_else(real_ns, |b| b.ns)
    }

    #[inline]
    fn now_ns(&self) -> u64 {
        let now = ticks();
        // A rebase under way: the real clock is as good and needs no waiting.
        let Some(base) = self.base.try_read() else {
            return real_ns();
        };
        let since = now.wrapping_sub(base.ticks);
        if since >= self.ticks_per_ms {
            return self.rebase();
        }
        base.ns + ((u128::from(since) * u128::from(self.ns_per_tick_q32)) >> 32) as u64
    }
}

impl Clock for TscClock {
    #[inline]
    fn now_ms(&self) -> u64 {
        self.now_ns() / 1_000_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolated_readings_stay_within_a_millisecond_of_the_real_clock() {
        let Some(c) = TscClock::new() else {
            eprintln!("skipping: the kernel does not use the TSC as its clock source");
            return;
        };
        let mut last = 0;
        for i in 0..200_000 {
            let before = real_ns() / 1_000_000;
            let got = c.now_ms();
            let after = real_ns() / 1_000_000;
            assert!(
                got + 1 >= before && got <= after + 1,
                "{before} {got} {after}"
            );
            assert!(got + 1 >= last, "went back: {last} -> {got}");
            last = got;
            if i % 50_000 == 0 {
                std::thread::sleep(Duration::from_millis(3));
            }
        }
    }
}
