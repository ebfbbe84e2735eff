//! Sequence mode (SPEC section 1.2): dense counters handed out from blocks reserved in the
//! store. A node keeps the block it is using and, once half of it is gone, reserves the next
//! one in the background, so requests do not wait on the store in steady state. Blocks are
//! sized from the prefix's rate and the measured round trip of its reservations
//! ([`sizing`]; at most [`MAX_BLOCK`], which bounds the gap a crash leaves), so that half a
//! block outlasts a reservation also over a WAN.
//! `strict` prefixes reserve exactly what each request takes, durably, before answering;
//! the requests waiting on a prefix share one reservation ([`strict`]).
//!
//! Numbers are unique because the store's high-water mark only moves forward under a
//! transaction; they increase per node because each block starts above the previous one.
//! Unused numbers are given back (when nobody reserved after us) on a period change, a
//! config change and a graceful stop.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use prometheus::IntCounter;

use crate::format::civil_from_unix_ms;
use crate::prefix::{PrefixConfig, Reset, UtcOffset};
use crate::store::{SeqBlock, SeqGuard, Store, StoreError, counter_name};

pub mod sizing;
pub mod strict;

pub use sizing::{BASE_BLOCK, MAX_BLOCK};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeqError {
    #[error("sequence of prefix '{0}' has passed 18446744073709551615")]
    Overflow(String),
    #[error(transparent)]
    Store(StoreError),
    /// The allocator was replaced (config change or delete): look the prefix up again.
    #[error("prefix config changed")]
    Closed,
}

/// The period a counter belongs to at `unix_ms`, in the prefix's offset.
pub fn period_of(reset: Reset, offset: UtcOffset, unix_ms: u64) -> Option<String> {
    if reset == Reset::Never {
        return None;
    }
    let c = civil_from_unix_ms(unix_ms, offset.seconds());
    match reset {
        Reset::Never => None,
        Reset::Yearly => Some(format!("{:04}", c.year)),
        Reset::Monthly => Some(format!("{:04}-{:02}", c.year, c.month)),
        Reset::Daily => Some(format!("{:04}-{:02}-{:02}", c.year, c.month, c.day)),
    }
}

/// Numbers taken by one request, in issue order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Taken {
    pub runs: Vec<SeqBlock>,
}

impl Taken {
    pub fn count(&self) -> u64 {
        self.runs.iter().map(SeqBlock::len).sum()
    }
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.runs.iter().flat_map(|r| r.start..=r.end)
    }
}

/// A reserved block being used: `next..=end` are still free.
#[derive(Clone, Copy, Debug)]
struct Block {
    next: u64,
    end: u64,
    exhausted: bool,
}

impl Block {
    fn remaining(&self) -> u64 {
        if self.exhausted {
            0
        } else {
            self.end - self.next + 1
        }
    }
}

struct State {
    period: Option<String>,
    blocks: VecDeque<Block>,
    prefetching: bool,
    /// The size of the last block reserved.
    size: u64,
    /// When the last block was reserved, and the numbers taken since (for the rate).
    last_reserved: Option<Instant>,
    taken_since: u64,
    /// Numbers per second, and the round trip of a reservation in seconds (estimates).
    rate: f64,
    rtt: Option<f64>,
    closed: bool,
}

/// One prefix's counter on this node.
pub struct SeqAllocator {
    key: Arc<str>,
    /// The format it renders with: blocks are reserved for it alone ([`SeqGuard`]).
    format: String,
    seq_length: u8,
    initial: u64,
    strict: bool,
    reset: Reset,
    offset: UtcOffset,
    store: Arc<dyn Store>,
    state: Mutex<State>,
    /// Strict requests waiting for a reservation.
    strict_queue: Mutex<strict::StrictQueue>,
    /// Wakes the strict driver when a request joins the queue (it may send it at once).
    strict_arrived: tokio::sync::Notify,
    /// Serialises reservations: one store round trip at a time per prefix.
    refill: tokio::sync::Mutex<()>,
    reserved_total: IntCounter,
}

impl SeqAllocator {
    pub fn new(
        key: Arc<str>,
        config: &PrefixConfig,
        store: Arc<dyn Store>,
        reserved_total: IntCounter,
    ) -> SeqAllocator {
        SeqAllocator {
            key,
            format: config.format.clone(),
            seq_length: config.seq_length,
            initial: config.initial_seq,
            strict: config.strict,
            reset: config.reset,
            offset: config.utc_offset,
            store,
            state: Mutex::new(State {
                period: None,
                blocks: VecDeque::new(),
                prefetching: false,
                size: BASE_BLOCK,
                last_reserved: None,
                taken_since: 0,
                rate: 0.0,
                rtt: None,
                closed: false,
            }),
            strict_queue: Mutex::new(strict::StrictQueue::default()),
            strict_arrived: tokio::sync::Notify::new(),
            refill: tokio::sync::Mutex::new(()),
            reserved_total,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code panics while holding it; recover the data if one ever did.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn counter(&self, period: Option<&str>) -> String {
        counter_name(&self.key, period)
    }

    fn guard(&self) -> SeqGuard<'_> {
        SeqGuard {
            key: &self.key,
            format: &self.format,
            seq_length: self.seq_length,
        }
    }

    fn map_store(&self, e: StoreError) -> SeqError {
        match e {
            StoreError::Overflow(_) => SeqError::Overflow(self.key.to_string()),
            StoreError::FormatReplaced(_) => {
                // Another node replaced the format: this allocator renders the old one, so
                // it reserves nothing more; requests look the prefix up again.
                self.lock().closed = true;
                SeqError::Closed
            }
            other => SeqError::Store(other),
        }
    }

    /// Takes `want` numbers at issue time `unix_ms`.
    pub async fn take(self: &Arc<Self>, want: u64, unix_ms: u64) -> Result<Taken, SeqError> {
        let period = period_of(self.reset, self.offset, unix_ms);
        if self.strict {
            return self.take_strict(want, period).await;
        }
        loop {
            let (retired, left) = {
                let mut st = self.lock();
                if st.closed {
                    return Err(SeqError::Closed);
                }
                let retired = if st.period != period {
                    // The rate and round trip carry over: the new period's first block is
                    // sized for them.
                    let old_period = std::mem::replace(&mut st.period, period.clone());
                    Some((std::mem::take(&mut st.blocks), old_period))
                } else {
                    None
                };
                let left: u64 = st.blocks.iter().map(Block::remaining).sum();
                if left >= want {
                    // Take a batch only when all of it is there: a batch refused (overflow,
                    // store down) leaves the numbers for the next request.
                    let mut taken = Taken::default();
                    self.take_from_blocks(&mut st, want, &mut taken);
                    self.maybe_prefetch(&mut st);
                    drop(st);
                    self.retire(retired);
                    return Ok(taken);
                }
                (retired, left)
            };
            self.retire(retired);
            self.refill_now(period.as_deref(), Some(want), left).await?;
        }
    }

    /// Gives the unused tail of a finished period back, off the request path.
    fn retire(self: &Arc<Self>, retired: Option<(VecDeque<Block>, Option<String>)>) {
        if let Some((old, old_period)) = retired.filter(|(b, _)| !b.is_empty()) {
            let me = self.clone();
            tokio::spawn(async move { me.give_back(old, old_period.as_deref()).await });
        }
    }

    fn take_from_blocks(&self, st: &mut State, want: u64, taken: &mut Taken) {
        while taken.count() < want {
            let Some(front) = st.blocks.front_mut() else {
                break;
            };
            let n = (want - taken.count()).min(front.remaining());
            if n > 0 {
                let run = SeqBlock {
                    start: front.next,
                    end: front.next + (n - 1),
                };
                st.taken_since += n;
                if run.end == front.end {
                    front.exhausted = true;
                } else {
                    front.next = run.end + 1;
                }
                match taken.runs.last_mut() {
                    Some(last) if last.end.checked_add(1) == Some(run.start) => last.end = run.end,
                    _ => taken.runs.push(run),
                }
            }
            if front.remaining() == 0 {
                st.blocks.pop_front();
            }
        }
    }

    /// Starts a background reservation when less than half a block is left.
    fn maybe_prefetch(self: &Arc<Self>, st: &mut State) {
        let left: u64 = st.blocks.iter().map(Block::remaining).sum();
        if st.prefetching || left * 2 > st.size {
            return;
        }
        st.prefetching = true;
        let me = self.clone();
        let period = st.period.clone();
        tokio::spawn(async move {
            let result = me.refill_now(period.as_deref(), None, 0).await;
            me.lock().prefetching = false;
            match result {
                Ok(()) | Err(SeqError::Closed) => {}
                Err(e) => {
                    tracing::warn!(prefix = %me.key, error = %e, "sequence block prefetch failed")
                }
            }
        });
    }

    /// Reserves one block for `period` unless another task already did meanwhile: for a
    /// request of `want` numbers (`left` were there), or a prefetch (`want` is `None`).
    async fn refill_now(
        &self,
        period: Option<&str>,
        want: Option<u64>,
        left: u64,
    ) -> Result<(), SeqError> {
        let _one_at_a_time = self.refill.lock().await;
        let size = {
            let mut st = self.lock();
            if st.closed {
                return Err(SeqError::Closed);
            }
            let now_left: u64 = st.blocks.iter().map(Block::remaining).sum();
            let enough = match want {
                Some(w) => now_left >= w,
                None => now_left * 2 > st.size,
            };
            if st.period.as_deref() != period || enough {
                return Ok(());
            }
            // A request that waits although a block would have held it: the prefetch was
            // late.
            let starved = want.is_some_and(|w| w <= st.size);
            st.size = next_size(&mut st, starved);
            st.size
                .max(want.unwrap_or(0).saturating_sub(left.min(now_left)))
        };
        let t0 = Instant::now();
        let block = self
            .store
            .reserve_seq_as(
                &self.counter(period),
                size,
                self.initial,
                Some(&self.guard()),
            )
            .await
            .map_err(|e| self.map_store(e))?;
        self.reserved_total.inc();
        let stale = {
            let mut st = self.lock();
            st.rtt = Some(sizing::next_rtt(st.rtt, t0.elapsed().as_secs_f64()));
            if st.closed || st.period.as_deref() != period {
                true
            } else {
                st.blocks.push_back(Block {
                    next: block.start,
                    end: block.end,
                    exhausted: false,
                });
                false
            }
        };
        if stale {
            let blocks = VecDeque::from([Block {
                next: block.start,
                end: block.end,
                exhausted: false,
            }]);
            self.give_back(blocks, period).await;
            return Err(SeqError::Closed);
        }
        Ok(())
    }

    /// Gives unused numbers back, newest block first, while nobody reserved after us.
    async fn give_back(&self, blocks: VecDeque<Block>, period: Option<&str>) {
        let counter = self.counter(period);
        for b in blocks.iter().rev() {
            if b.remaining() == 0 {
                break;
            }
            let released = self
                .store
                .release_seq_as(&counter, b.end, b.next - 1, Some(&self.guard()))
                .await;
            match released {
                Ok(true) => tracing::debug!(counter, from = b.next, "sequence tail given back"),
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(counter, error = %e, "could not give a sequence tail back");
                    break;
                }
            }
        }
    }

    /// Stops this allocator and gives its unused numbers back. Requests that still hold it
    /// get [`SeqError::Closed`] and look the prefix up again.
    pub async fn close(&self) {
        let _no_refill = self.refill.lock().await;
        let (blocks, period) = {
            let mut st = self.lock();
            st.closed = true;
            (std::mem::take(&mut st.blocks), st.period.clone())
        };
        self.give_back(blocks, period.as_deref()).await;
    }
}

/// The size of the next block, from the rate since the last reservation and the round
/// trip measured so far. A request that had to wait for it (`starved`) at least doubles
/// the last size: the prefetch did not start early enough.
fn next_size(st: &mut State, starved: bool) -> u64 {
    let now = Instant::now();
    if let Some(t) = st.last_reserved {
        let secs = now.duration_since(t).as_secs_f64().max(0.001);
        st.rate = sizing::next_rate(st.rate, st.taken_since as f64 / secs);
    }
    st.last_reserved = Some(now);
    st.taken_since = 0;
    let size = sizing::block_size(st.rate, st.rtt.unwrap_or(0.0));
    if starved && st.rtt.is_some() {
        size.max(st.size.saturating_mul(2).min(MAX_BLOCK))
    } else {
        size
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prefix::Mode;
    use crate::store::embedded::EmbeddedStore;
    use std::collections::HashSet;
    use std::time::Duration;

    const T0: u64 = 1_763_700_000_000; // 2025-11-21T04:40Z

    fn config(initial: u64, strict: bool, reset: Reset) -> PrefixConfig {
        PrefixConfig {
            format: "INV-{SEQ:4}".into(),
            seq_length: 4,
            initial_seq: initial,
            mode: Mode::Sequence,
            reset,
            utc_offset: UtcOffset::parse("+08:00").unwrap(),
            strict,
        }
    }

    fn store(dir: &tempfile::TempDir) -> Arc<dyn Store> {
        Arc::new(EmbeddedStore::open(&dir.path().join("db")).unwrap())
    }

    fn alloc(store: &Arc<dyn Store>, cfg: &PrefixConfig) -> Arc<SeqAllocator> {
        let counter = IntCounter::new("t", "t").unwrap();
        Arc::new(SeqAllocator::new("INV".into(), cfg, store.clone(), counter))
    }

    async fn one(a: &Arc<SeqAllocator>) -> u64 {
        let t = a.take(1, T0).await.unwrap();
        assert_eq!(t.count(), 1);
        t.runs[0].start
    }

    #[tokio::test]
    async fn initial_seq_sets_the_first_number() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        assert_eq!(
            one(&alloc(&s, &config(1000, false, Reset::Never))).await,
            1001
        );
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        let a = alloc(&s, &config(1, false, Reset::Never));
        assert_eq!([one(&a).await, one(&a).await, one(&a).await], [2, 3, 4]);
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        assert_eq!(one(&alloc(&s, &config(0, true, Reset::Never))).await, 1);
    }

    #[tokio::test]
    async fn u64_max_overflows_in_both_modes() {
        for strict in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let s = store(&dir);
            let a = alloc(&s, &config(u64::MAX - 2, strict, Reset::Never));
            assert_eq!(one(&a).await, u64::MAX - 1);
            assert_eq!(one(&a).await, u64::MAX);
            assert_eq!(a.take(1, T0).await, Err(SeqError::Overflow("INV".into())));
            let b = alloc(&s, &config(u64::MAX, strict, Reset::Never));
            assert!(matches!(b.take(1, T0).await, Err(SeqError::Overflow(_))));
        }
    }

    #[tokio::test]
    async fn a_batch_refused_for_overflow_leaves_the_last_numbers() {
        for strict in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let s = store(&dir);
            let a = alloc(&s, &config(u64::MAX - 5, strict, Reset::Never));
            assert!(matches!(a.take(6, T0).await, Err(SeqError::Overflow(_))));
            let t = a.take(5, T0).await.unwrap();
            assert_eq!(
                t.iter().collect::<Vec<_>>(),
                ((u64::MAX - 4)..=u64::MAX).collect::<Vec<_>>()
            );
            assert!(matches!(a.take(1, T0).await, Err(SeqError::Overflow(_))));
        }
    }

    #[tokio::test]
    async fn blocks_are_prefetched_and_batches_span_them() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        let a = alloc(&s, &config(0, false, Reset::Never));
        let t = a.take(2500, T0).await.unwrap();
        assert_eq!(t.iter().collect::<Vec<_>>(), (1..=2500).collect::<Vec<_>>());
        // Wait for the background reservation, then see the store ahead of what was taken.
        for _ in 0..100 {
            if !a.lock().prefetching {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(s.get_seq("INV").await.unwrap().unwrap() > 2500);
        assert_eq!(one(&a).await, 2501);
    }

    #[tokio::test]
    async fn strict_reserves_exactly_what_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        let a = alloc(&s, &config(10, true, Reset::Never));
        let t = a.take(3, T0).await.unwrap();
        assert_eq!(t.iter().collect::<Vec<_>>(), vec![11, 12, 13]);
        assert_eq!(s.get_seq("INV").await.unwrap(), Some(13));
    }

    #[tokio::test]
    async fn periods_restart_the_counter_in_the_prefix_offset() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        let a = alloc(&s, &config(0, false, Reset::Daily));
        // 2025-11-21 15:59 UTC is 23:59 at +08:00; a minute later it is the 22nd there.
        let before = 1_763_740_740_000;
        assert_eq!(a.take(1, before).await.unwrap().runs[0].start, 1);
        assert_eq!(a.take(1, before).await.unwrap().runs[0].start, 2);
        let after = before + 60_000;
        assert_eq!(a.take(1, after).await.unwrap().runs[0].start, 1);
        assert_eq!(
            s.get_seq("INV/2025-11-22").await.unwrap().map(|v| v >= 1),
            Some(true)
        );
        assert_eq!(
            period_of(Reset::Monthly, UtcOffset::default(), before).as_deref(),
            Some("2025-11")
        );
        assert_eq!(
            period_of(Reset::Yearly, UtcOffset::default(), before).as_deref(),
            Some("2025")
        );
        assert_eq!(period_of(Reset::Never, UtcOffset::default(), before), None);
    }

    #[tokio::test]
    async fn close_gives_the_tail_back_so_the_next_allocator_continues_densely() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        let a = alloc(&s, &config(0, false, Reset::Never));
        assert_eq!(one(&a).await, 1);
        a.close().await;
        assert_eq!(a.take(1, T0).await, Err(SeqError::Closed));
        assert_eq!(s.get_seq("INV").await.unwrap(), Some(1));
        let b = alloc(&s, &config(0, false, Reset::Never));
        assert_eq!(one(&b).await, 2);
    }

    #[tokio::test]
    async fn a_tail_is_kept_when_another_node_reserved_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        let a = alloc(&s, &config(0, false, Reset::Never));
        let b = alloc(&s, &config(0, false, Reset::Never));
        assert_eq!(one(&a).await, 1);
        assert_eq!(one(&b).await, 1001);
        a.close().await;
        assert_eq!(s.get_seq("INV").await.unwrap(), Some(2000));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_issuers_sharing_one_store_never_repeat() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let a = alloc(&s, &config(0, false, Reset::Never));
            for _ in 0..4 {
                let a = a.clone();
                tasks.push(tokio::spawn(async move {
                    let mut got = Vec::new();
                    for i in 0..500u64 {
                        got.extend(a.take(1 + i % 13, T0).await.unwrap().iter());
                    }
                    got
                }));
            }
        }
        let mut all = HashSet::new();
        for t in tasks {
            let got = t.await.unwrap();
            assert!(
                got.windows(2).all(|w| w[0] < w[1]),
                "each caller sees increasing numbers"
            );
            for n in got {
                assert!(all.insert(n), "duplicate {n}");
            }
        }
        assert_eq!(
            all.len(),
            8 * (0..500u64).map(|i| 1 + i % 13).sum::<u64>() as usize
        );
    }
}
