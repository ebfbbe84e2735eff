//! Giving memory back once a burst of connections is gone (SPEC 7, issue 11: "after the
//! attackers leave, RSS returns within 20 % of its level before").
//!
//! mimalloc keeps a block freed by another thread in its page until the thread that owns
//! the page collects it, which an idle thread never does: after the abuse benchmark's
//! 2,100 connections closed, RSS stayed 10-15 MB above its level before (measured: the
//! same 4 threads before and after, all of it anonymous memory), and came down only as
//! traffic made the workers allocate again. So the open connections are counted here,
//! and [`watch`] (a task of the accept loop, once a [`TICK`]) starts a collection epoch
//! when their number has fallen by [`FELL_BY`] from its peak, and once more when it then
//! settles ([`Trigger`]): the task collects at once and every runtime worker runs
//! `mi_collect(true)` the next time it parks ([`on_park`], the runtime's hook set in
//! `main.rs`). A park otherwise costs one atomic load; a steady number of connections,
//! however many come and go, never collects.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// How far the number of open connections must fall from its peak to start a collection.
pub const FELL_BY: usize = 256;
/// How often [`watch`] looks at the counts.
pub const TICK: Duration = Duration::from_secs(1);

static OPEN: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static EPOCH: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static SEEN: Cell<u64> = const { Cell::new(0) };
}

/// A connection opened.
pub fn opened() {
    let open = OPEN.fetch_add(1, Ordering::Relaxed) + 1;
    PEAK.fetch_max(open, Ordering::Relaxed);
}

/// A connection closed.
pub fn closed() {
    OPEN.fetch_sub(1, Ordering::Relaxed);
}

/// Decides, from the open connections seen once a tick, when to collect. Pure: the caller
/// passes the counts.
#[derive(Debug, Default)]
pub struct Trigger {
    /// The most connections open since the last collection.
    peak: usize,
    /// Open connections at the last tick.
    prev: usize,
    /// After a collection: the open connections then, until the count settles.
    settling: Option<usize>,
}

impl Trigger {
    /// Whether to collect now, given the open connections and the most that were open
    /// since the last call. A fall of [`FELL_BY`] from the peak collects at once; once
    /// the count then stops falling for a tick, one more collection takes the tail.
    pub fn check(&mut self, open: usize, peak_since: usize) -> bool {
        self.peak = self.peak.max(peak_since).max(open);
        let prev = std::mem::replace(&mut self.prev, open);
        if self.peak >= open.saturating_add(FELL_BY) {
            self.peak = open;
            self.settling = Some(open);
            return true;
        }
        match self.settling {
            Some(at) if open == prev => {
                self.settling = None;
                open < at
            }
            _ => false,
        }
    }
}

/// Starts a collection epoch: every runtime worker collects when it next parks, and the
/// calling thread at once.
fn start_epoch() {
    EPOCH.fetch_add(1, Ordering::Relaxed);
    collect();
}

/// The runtime's `on_thread_park` hook: collects this thread's free memory once per epoch.
pub fn on_park() {
    let epoch = EPOCH.load(Ordering::Relaxed);
    SEEN.with(|seen| {
        if seen.get() != epoch {
            seen.set(epoch);
            collect();
        }
    });
}

/// Returns this thread's free pages, and abandoned ones, to the OS.
fn collect() {
    // SAFETY: mimalloc's collection of the calling thread's heap; no arguments to
    // uphold, callable from any thread at any time (a no-op on a heap with nothing free).
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// Looks at the counts every [`TICK`] until dropped (the accept loop aborts it).
pub async fn watch() {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut trigger = Trigger::default();
    loop {
        tick.tick().await;
        let open = OPEN.load(Ordering::Relaxed);
        // The peak starts again from what is open now; the trigger keeps the larger one.
        let peak = PEAK.swap(open, Ordering::Relaxed);
        if trigger.check(open, peak) {
            start_epoch();
            tracing::debug!(open, "connections fell; freed memory collected");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_or_slowly_changing_count_never_collects() {
        let mut t = Trigger::default();
        for i in 0..1000 {
            let open = 64 + (i % 7) * 10;
            assert!(!t.check(open, open + 30));
        }
    }

    #[test]
    fn a_fall_from_the_peak_collects_then_once_more_when_it_settles() {
        let mut t = Trigger::default();
        assert!(!t.check(2_100, 2_100));
        // Closed a few at a time: the fall adds up from the peak.
        assert!(!t.check(2_000, 2_100));
        assert!(t.check(1_800, 2_000));
        // Still falling, less than FELL_BY since the collection: wait.
        assert!(!t.check(1_700, 1_800));
        assert!(!t.check(1_600, 1_700));
        // Settled below the last collection: the tail.
        assert!(t.check(1_600, 1_600));
        assert!(!t.check(1_600, 1_600));
        assert!(!t.check(1_600, 1_600));
    }

    #[test]
    fn a_burst_between_two_ticks_counts_by_its_peak() {
        let mut t = Trigger::default();
        assert!(!t.check(10, 10));
        assert!(t.check(12, 2_110));
        // Nothing closed since: no tail.
        assert!(!t.check(12, 12));
        assert!(!t.check(12, 12));
    }

    #[test]
    fn the_attack_then_its_end() {
        let mut t = Trigger::default();
        // 2,100 attackers, the silent ones closed and reopened every 10 s.
        assert!(!t.check(2_114, 2_114));
        assert!(t.check(114, 2_114));
        assert!(!t.check(2_114, 2_114));
        // They leave: 2,100 close over two ticks, then it stays at 14.
        assert!(t.check(1_000, 2_114));
        assert!(t.check(14, 1_000));
        assert!(!t.check(14, 14));
        assert!(!t.check(14, 14));
    }
}
