//! Group commit for `strict` prefixes: each request's numbers are durably reserved before
//! it is answered, but the requests waiting on one prefix share a reservation.
//!
//! A request joins the prefix's queue; one driver task (started by the request that found
//! nobody driving) takes the queued requests of one period — up to [`MAX_GROUP_NUMBERS`]
//! numbers — and reserves their total in one store transaction. When the reservation is
//! durable each request gets its own contiguous run of it, in queue order; when it fails,
//! exactly the requests in it fail, with the store's error.
//!
//! With a store that allows it ([`Store::strict_depth`] > 1: etcd), several reservations
//! are in flight: after one ordinary reservation, each group is sent as a link, "the next
//! n after where the ones before leave the counter" ([`Store::reserve_seq_from`], compared
//! on the counter's value), paced at most `PACE` (8) per measured round trip and 2 ms
//! apart, and answered in the order sent. etcd commits requests in flight in any order: a
//! link that lands first also lists where the links before it start, takes their numbers
//! with its own, and they are answered from it. A link nothing covers (another node
//! reserved in between) reserved nothing: its requests go first again, and one ordinary
//! reservation starts a new chain.
//! A crash between a reservation and its answers loses those numbers (a gap); no number is
//! handed out that is not durably reserved.
//!
//! [`Store::strict_depth`]: crate::store::Store::strict_depth
//! [`Store::reserve_seq_from`]: crate::store::Store::reserve_seq_from

use std::collections::VecDeque;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{SeqAllocator, SeqError, Taken, sizing};
use crate::store::{Chained, SeqBlock, StoreError};

/// The most numbers one strict reservation takes for a group (it always takes at least
/// the first request, whatever its count).
pub const MAX_GROUP_NUMBERS: u64 = 1_000_000;

/// One request waiting for its numbers.
struct Waiter {
    period: Option<String>,
    want: u64,
    reply: oneshot::Sender<Result<Taken, SeqError>>,
}

/// The strict requests of one prefix waiting for a reservation.
#[derive(Default)]
pub(super) struct StrictQueue {
    waiting: VecDeque<Waiter>,
    /// A driver task is running (it empties the queue before it stops).
    driving: bool,
    /// The driver found the queue empty and waits for the next request to wake it; while
    /// it waits for a reservation or for its pace instead, it looks at the queue then,
    /// and arrivals need not wake it (one wake-up per request saved).
    listening: bool,
}

impl StrictQueue {
    /// The next group: the longest run at the head of the queue of one period, within
    /// [`MAX_GROUP_NUMBERS`] (at least one request).
    fn next_group(&mut self) -> Vec<Waiter> {
        let mut group: Vec<Waiter> = Vec::new();
        let mut total = 0u64;
        while let Some(w) = self.waiting.front() {
            if let Some(first) = group.first()
                && (first.period != w.period || total.saturating_add(w.want) > MAX_GROUP_NUMBERS)
            {
                break;
            }
            total = total.saturating_add(w.want);
            group.extend(self.waiting.pop_front());
        }
        group
    }
}

/// Splits `block` among `wants`, in order: each gets a contiguous run, or `None` when
/// what is left of the block cannot hold it (the block came back short at u64::MAX).
/// Also returns the first number nobody got, if any.
fn split(block: SeqBlock, wants: &[u64]) -> (Vec<Option<SeqBlock>>, Option<u64>) {
    let mut next = Some(block.start);
    let runs = wants
        .iter()
        .map(|&want| {
            let start = next?;
            let end = start.checked_add(want.checked_sub(1)?)?;
            if end > block.end {
                return None;
            }
            next = end.checked_add(1).filter(|&n| n <= block.end);
            Some(SeqBlock { start, end })
        })
        .collect();
    (runs, next)
}

/// Strict reservations sent per round trip at most (when the store allows several in
/// flight): each takes the requests that arrived in its share of the round trip.
const PACE: f64 = 8.0;

/// The least time between two strict reservations of a prefix (seconds), however short
/// the round trip: each costs the store a transaction (on etcd about half a millisecond of
/// CPU), so on a LAN the requests of two milliseconds go together, and the groups grow
/// with the load instead of the transactions (2 ms beat 1 ms by about 5% in whole
/// `scripts/bench-wan.sh` runs, p99 no worse).
const MIN_SPACING: f64 = 0.002;

/// A reservation in flight for one group.
struct InFlight {
    group: Vec<Waiter>,
    /// A link of the chain: it reserves `after + 1 ..= end`. `None` for an ordinary
    /// reservation.
    link: Option<Link>,
    task: JoinHandle<Attempt>,
}

/// Where a chained reservation's numbers are.
#[derive(Clone, Copy)]
struct Link {
    after: u64,
    end: u64,
}

impl Link {
    fn block(self) -> SeqBlock {
        SeqBlock {
            start: self.after + 1,
            end: self.end,
        }
    }
}

enum Attempt {
    Chained(Result<Chained, StoreError>),
    Plain(Result<SeqBlock, StoreError>),
}

/// The most starting points one link lists (its own, and those of the links before it
/// still open).
const MAX_FROM: usize = 32;

impl SeqAllocator {
    fn strict_queue(&self) -> MutexGuard<'_, StrictQueue> {
        // No code panics while holding it; recover the data if one ever did.
        self.strict_queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `want` numbers of a strict prefix, durably reserved before this returns.
    pub(super) async fn take_strict(
        self: &Arc<Self>,
        want: u64,
        period: Option<String>,
    ) -> Result<Taken, SeqError> {
        let (reply, answer) = oneshot::channel();
        let (start, wake) = {
            let mut q = self.strict_queue();
            q.waiting.push_back(Waiter {
                period,
                want,
                reply,
            });
            let start = !std::mem::replace(&mut q.driving, true);
            let wake = std::mem::take(&mut q.listening);
            (start, wake)
        };
        if start {
            // A task of its own: a request that goes away (its client hung up) must not
            // stop the reservation the others are waiting on.
            tokio::spawn(self.clone().drive_strict());
        } else if wake {
            self.strict_arrived.notify_one();
        }
        // The driver answers every waiter it takes; a lost answer can only mean the
        // driver is gone, and the caller then looks the prefix up again.
        answer.await.unwrap_or(Err(SeqError::Closed))
    }

    /// Puts `group` back at the head of the queue, after those put back before it, in
    /// order.
    fn requeue(&self, group: Vec<Waiter>, requeued: &mut usize) {
        let mut q = self.strict_queue();
        for w in group {
            let at = (*requeued).min(q.waiting.len());
            q.waiting.insert(at, w);
            *requeued += 1;
        }
    }

    /// Reserves for the queued requests until the queue is empty: up to the store's
    /// [`strict_depth`](crate::store::Store::strict_depth) groups in flight, each after
    /// the first sent as a link: "the next `n` after where the ones before leave the
    /// counter", and answered in the order they were sent.
    ///
    /// The store may commit links in any order. One that lands before a link it follows
    /// finds the counter where that one starts (it lists the starting points of every
    /// link before it still open) and takes its numbers with its own; the overtaken link
    /// then misses, and waits (in `missed`) for a later link to say it was covered.
    /// Missed links no later link covered go first again, as an ordinary reservation.
    async fn drive_strict(self: Arc<Self>) {
        let depth = self.store.strict_depth().max(1);
        let mut window: VecDeque<InFlight> = VecDeque::new();
        // Links that missed, in order, each waiting for a later one to cover it.
        let mut missed: Vec<(Vec<Waiter>, Link)> = Vec::new();
        // The period, and where the counter stands once every reservation in the window
        // has committed, when that is known.
        let mut chain: Option<(Option<String>, u64)> = None;
        // How many at the head of the queue were sent and came back (they keep their
        // order, ahead of the rest).
        let mut requeued = 0usize;
        // Reservations are spread over a round trip, so that each takes the requests of
        // its share of it: sent as fast as requests come, the first few would take one
        // request each and the rest would wait a round trip for room.
        let mut last_sent = tokio::time::Instant::now();
        loop {
            if window.is_empty() && !missed.is_empty() {
                // Nothing left in flight to cover them: the chain is broken.
                chain = None;
                for (group, _) in std::mem::take(&mut missed) {
                    self.requeue(group, &mut requeued);
                }
            }
            let spacing =
                (self.lock().rtt.unwrap_or(0.0) / PACE.min(depth as f64)).max(MIN_SPACING);
            let next_send = last_sent + Duration::from_secs_f64(spacing.clamp(0.0, 1.0));
            let mut paced = false;
            while window.len() < depth {
                let (group, after) = {
                    let mut q = self.strict_queue();
                    let Some(front) = q.waiting.front() else {
                        // Woken by the next arrival (a permit, if it comes first).
                        q.listening = true;
                        break;
                    };
                    if !window.is_empty() && tokio::time::Instant::now() < next_send {
                        paced = true;
                        break;
                    }
                    let after = chain
                        .as_ref()
                        .filter(|(period, _)| depth > 1 && *period == front.period)
                        .map(|&(_, after)| after);
                    // Not knowing where the counter will stand, an ordinary reservation
                    // goes alone.
                    if after.is_none() && !window.is_empty() {
                        break;
                    }
                    let group = q.next_group();
                    requeued = requeued.saturating_sub(group.len());
                    (group, after)
                };
                if self.lock().closed {
                    for w in group {
                        let _ = w.reply.send(Err(SeqError::Closed));
                    }
                    continue;
                }
                let period = group.first().and_then(|w| w.period.clone());
                let total = group.iter().fold(0u64, |a, w| a.saturating_add(w.want));
                let link = match after.map(|after| (after, after.checked_add(total))) {
                    Some((after, Some(end))) => Some(Link { after, end }),
                    Some((_, None)) => {
                        // At the top of u64: the ordinary reservation handles the short
                        // block, once the window is empty.
                        chain = None;
                        self.requeue(group, &mut requeued);
                        break;
                    }
                    None => None,
                };
                chain = link.map(|l| (period.clone(), l.end));
                // The starting points this link may take: its own, then those of the
                // links before it still open, newest first.
                let from: Vec<u64> = link
                    .iter()
                    .chain(window.iter().rev().filter_map(|f| f.link.as_ref()))
                    .chain(missed.iter().rev().map(|(_, l)| l))
                    .map(|l| l.after)
                    .take(MAX_FROM)
                    .collect();
                let me = self.clone();
                let task = tokio::spawn(async move {
                    me.attempt(period, total, link.map(|l| (from, l.end))).await
                });
                window.push_back(InFlight { group, link, task });
                last_sent = tokio::time::Instant::now();
            }
            let room = window.len() < depth;
            let Some(oldest) = window.front_mut() else {
                let mut q = self.strict_queue();
                if q.waiting.is_empty() {
                    q.driving = false;
                    return;
                }
                continue;
            };
            // Wait for the oldest reservation, or for a request that can go now.
            let done = tokio::select! {
                biased;
                done = &mut oldest.task => done,
                () = tokio::time::sleep_until(next_send), if paced => continue,
                () = self.strict_arrived.notified(), if room && !paced => continue,
            };
            let Some(InFlight { group, link, .. }) = window.pop_front() else {
                continue;
            };
            let attempt = done.unwrap_or_else(|e| {
                Attempt::Plain(Err(StoreError::Unavailable(format!(
                    "strict reservation task: {e}"
                ))))
            });
            match (attempt, link) {
                (Attempt::Chained(Ok(Chained::Reserved(from))), Some(link)) => {
                    // It took everything above `from`: the missed links from there on are
                    // covered, and answered first (their numbers are lower); those before
                    // it reserved nothing.
                    for (group, l) in std::mem::take(&mut missed) {
                        if l.after >= from {
                            self.answer(group, l.block()).await;
                        } else {
                            self.requeue(group, &mut requeued);
                        }
                    }
                    self.answer(group, link.block()).await;
                }
                (Attempt::Chained(Ok(Chained::Missed(at))), Some(link)) => {
                    // Overtaken by a link still in flight (the counter stands where one of
                    // them ends), that one covers it; otherwise another node reserved (or
                    // the record changed), and no later link can commit: stop chaining.
                    let overtaken = at.is_some_and(|at| {
                        window.iter().any(|f| f.link.is_some_and(|l| l.end == at))
                    });
                    if !overtaken {
                        tracing::debug!(prefix = %self.key, "strict chain broken; reserving anew");
                        chain = None;
                    }
                    missed.push((group, link));
                }
                (Attempt::Plain(Ok(block)), _) => {
                    let period = group.first().and_then(|w| w.period.clone());
                    // It went alone: the counter now ends at this block (unless it came
                    // back short and its rest was given back).
                    let whole = self.answer(group, block).await;
                    chain = whole.then_some((period, block.end));
                }
                (Attempt::Chained(Err(e)) | Attempt::Plain(Err(e)), _) => {
                    chain = None;
                    let e = self.map_store(e);
                    for w in group {
                        let _ = w.reply.send(Err(e.clone()));
                    }
                }
                (Attempt::Chained(Ok(_)), None) => {
                    // Not sent that way; cannot happen. Nothing known reserved.
                    chain = None;
                    self.requeue(group, &mut requeued);
                }
            }
        }
    }

    /// One reservation of `total` numbers: a link (its starting points and end), or an
    /// ordinary one.
    async fn attempt(
        &self,
        period: Option<String>,
        total: u64,
        link: Option<(Vec<u64>, u64)>,
    ) -> Attempt {
        let counter = self.counter(period.as_deref());
        let t0 = Instant::now();
        let attempt = match link {
            Some((from, end)) => Attempt::Chained(
                self.store
                    .reserve_seq_from(&counter, &from, end, &self.guard())
                    .await,
            ),
            None => Attempt::Plain(
                self.store
                    .reserve_seq_as(&counter, total, self.initial, Some(&self.guard()))
                    .await,
            ),
        };
        let mut st = self.lock();
        st.rtt = Some(sizing::next_rtt(st.rtt, t0.elapsed().as_secs_f64()));
        attempt
    }

    /// Hands `block` out to `group`, in order. `false` when the block came back short (at
    /// the top of u64) and its unused rest was given back.
    async fn answer(&self, group: Vec<Waiter>, block: SeqBlock) -> bool {
        self.reserved_total.inc();
        let period = group.first().and_then(|w| w.period.clone());
        let wants: Vec<u64> = group.iter().map(|w| w.want).collect();
        let (runs, unused) = split(block, &wants);
        for (w, run) in group.into_iter().zip(runs) {
            let answer = match run {
                Some(run) => Ok(Taken { runs: vec![run] }),
                None => Err(SeqError::Overflow(self.key.to_string())),
            };
            let _ = w.reply.send(answer);
        }
        let Some(from) = unused else {
            return true;
        };
        // Short at u64::MAX: nobody can reserve after it, so the rest goes back and a
        // smaller request can still have those numbers.
        let counter = self.counter(period.as_deref());
        let _ = self
            .store
            .release_seq_as(&counter, block.end, from - 1, Some(&self.guard()))
            .await;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(start: u64, end: u64) -> SeqBlock {
        SeqBlock { start, end }
    }

    #[test]
    fn a_block_is_split_in_order_and_whole_requests_only() {
        /// (block, wants, runs, first unused number)
        type Case<'a> = (SeqBlock, &'a [u64], &'a [Option<SeqBlock>], Option<u64>);
        let cases: &[Case<'_>] = &[
            (
                b(1, 6),
                &[1, 2, 3],
                &[Some(b(1, 1)), Some(b(2, 3)), Some(b(4, 6))],
                None,
            ),
            (b(11, 11), &[1], &[Some(b(11, 11))], None),
            // Short at the top of u64: a request that does not fit is refused, a smaller
            // one after it still gets what is left, and the rest is given back.
            (
                b(u64::MAX - 4, u64::MAX),
                &[2, 6, 2, 5],
                &[
                    Some(b(u64::MAX - 4, u64::MAX - 3)),
                    None,
                    Some(b(u64::MAX - 2, u64::MAX - 1)),
                    None,
                ],
                Some(u64::MAX),
            ),
            (
                b(u64::MAX - 1, u64::MAX),
                &[1, 1, 1],
                &[
                    Some(b(u64::MAX - 1, u64::MAX - 1)),
                    Some(b(u64::MAX, u64::MAX)),
                    None,
                ],
                None,
            ),
        ];
        for (block, wants, runs, unused) in cases {
            assert_eq!(split(*block, wants), (runs.to_vec(), *unused), "{wants:?}");
        }
    }

    #[test]
    fn a_group_is_one_period_and_capped() {
        let mut q = StrictQueue::default();
        let add = |q: &mut StrictQueue, period: Option<&str>, want: u64| {
            let (reply, _) = oneshot::channel();
            q.waiting.push_back(Waiter {
                period: period.map(str::to_string),
                want,
                reply,
            });
        };
        for _ in 0..3 {
            add(&mut q, Some("2026"), 10);
        }
        add(&mut q, Some("2027"), 10);
        add(&mut q, Some("2027"), MAX_GROUP_NUMBERS);
        add(&mut q, Some("2027"), MAX_GROUP_NUMBERS + 5);
        let sizes = |g: Vec<Waiter>| g.iter().map(|w| w.want).collect::<Vec<_>>();
        assert_eq!(sizes(q.next_group()), [10, 10, 10]);
        assert_eq!(sizes(q.next_group()), [10]);
        assert_eq!(sizes(q.next_group()), [MAX_GROUP_NUMBERS]);
        assert_eq!(sizes(q.next_group()), [MAX_GROUP_NUMBERS + 5]);
        assert!(q.next_group().is_empty());
    }

    mod on_stores {
        use std::collections::{HashMap, HashSet};
        use std::sync::{Arc, Mutex};
        use std::time::Duration;

        use prometheus::IntCounter;
        use tokio::sync::Semaphore;

        use crate::prefix::{Mode, PrefixConfig, Reset, UtcOffset};
        use crate::sequence::{SeqAllocator, SeqError};
        use crate::store::embedded::EmbeddedStore;
        use crate::store::{
            AuditMeta, AuditRecord, Chained, Observed, PrefixRecord, Revision, SeqBlock, SeqGuard,
            Snapshot, Store, StoreError, Written, next_block,
        };

        const T0: u64 = 1_763_700_000_000;

        fn config(initial: u64) -> PrefixConfig {
            PrefixConfig {
                format: "S-{SEQ:4}".into(),
                seq_length: 4,
                initial_seq: initial,
                mode: Mode::Sequence,
                reset: Reset::Never,
                utc_offset: UtcOffset::default(),
                strict: true,
            }
        }

        fn alloc(store: Arc<dyn Store>) -> Arc<SeqAllocator> {
            let counter = IntCounter::new("t", "t").unwrap();
            Arc::new(SeqAllocator::new("S".into(), &config(0), store, counter))
        }

        /// An in-memory counter store whose reservations wait at a gate the test opens
        /// one at a time, and fail when the test says so (by reservation index).
        struct Gated {
            counters: Mutex<HashMap<String, u64>>,
            gate: Semaphore,
            /// The size of every reservation asked for, in order.
            asked: Mutex<Vec<u64>>,
            fail: Mutex<HashSet<usize>>,
        }

        impl Default for Gated {
            fn default() -> Self {
                Gated {
                    counters: Mutex::default(),
                    gate: Semaphore::new(0),
                    asked: Mutex::default(),
                    fail: Mutex::default(),
                }
            }
        }

        fn unsupported<T>() -> Result<T, StoreError> {
            Err(StoreError::Unavailable("not in this fake".into()))
        }

        #[async_trait::async_trait]
        impl Store for Gated {
            async fn snapshot_prefixes(&self) -> Result<Snapshot, StoreError> {
                unsupported()
            }
            async fn observe_prefix(&self, _: &str) -> Result<Observed, StoreError> {
                unsupported()
            }
            async fn write_prefix(
                &self,
                _: &str,
                _: &PrefixConfig,
                _: bool,
                _: &AuditMeta,
            ) -> Result<(Written, Revision), StoreError> {
                unsupported()
            }
            async fn remove_prefix(
                &self,
                _: &str,
                _: &AuditMeta,
            ) -> Result<Option<Revision>, StoreError> {
                unsupported()
            }
            async fn prefix_history(&self, _: &str) -> Result<Vec<AuditRecord>, StoreError> {
                unsupported()
            }
            async fn prefix_record(&self, _: &str) -> Result<Option<PrefixRecord>, StoreError> {
                unsupported()
            }
            async fn reserve_seq_as(
                &self,
                counter: &str,
                size: u64,
                initial: u64,
                _: Option<&SeqGuard<'_>>,
            ) -> Result<SeqBlock, StoreError> {
                let index = {
                    let mut asked = self.asked.lock().unwrap();
                    asked.push(size);
                    asked.len() - 1
                };
                self.gate.acquire().await.unwrap().forget();
                if self.fail.lock().unwrap().contains(&index) {
                    return Err(StoreError::Unavailable("injected".into()));
                }
                let mut counters = self.counters.lock().unwrap();
                let current = counters
                    .get(counter)
                    .copied()
                    .unwrap_or(initial)
                    .max(initial);
                let block = next_block(current, size)
                    .ok_or_else(|| StoreError::Overflow(counter.into()))?;
                counters.insert(counter.into(), block.end);
                Ok(block)
            }
            async fn release_seq_as(
                &self,
                counter: &str,
                block_end: u64,
                back_to: u64,
                _: Option<&SeqGuard<'_>>,
            ) -> Result<bool, StoreError> {
                let mut counters = self.counters.lock().unwrap();
                let ends_there = counters.get(counter) == Some(&block_end);
                if ends_there {
                    counters.insert(counter.into(), back_to);
                }
                Ok(ends_there)
            }
            async fn get_seq(&self, counter: &str) -> Result<Option<u64>, StoreError> {
                Ok(self.counters.lock().unwrap().get(counter).copied())
            }
            async fn check_layout(&self, _: &str) -> Result<(), StoreError> {
                Ok(())
            }
        }

        /// Polls (bounded) until `f` holds.
        async fn until(what: &str, f: impl Fn() -> bool) {
            for _ in 0..1000 {
                if f() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            panic!("timed out waiting for {what}");
        }

        fn numbers(r: &Result<crate::sequence::Taken, SeqError>) -> Vec<u64> {
            r.as_ref().unwrap().iter().collect()
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn waiting_requests_share_a_reservation_and_fail_together() {
            let store = Arc::new(Gated::default());
            let a = alloc(store.clone());
            let asked = |n: usize| {
                let store = store.clone();
                move || store.asked.lock().unwrap().len() == n
            };
            let queued = |n: usize| {
                let a = a.clone();
                move || a.strict_queue().waiting.len() == n
            };
            let spawn = |want: u64| {
                let a = a.clone();
                tokio::spawn(async move { a.take(want, T0).await })
            };

            // One request alone: its reservation is held at the gate.
            let first = spawn(1);
            until("the first reservation", asked(1)).await;
            // Three more queue behind it, and go as one reservation of 2 + 3 + 4.
            let group: Vec<_> = [2, 3, 4].into_iter().map(spawn).collect();
            until("three queued", queued(3)).await;
            store.fail.lock().unwrap().insert(1);
            store.gate.add_permits(1);
            assert_eq!(numbers(&first.await.unwrap()), [1]);
            until("the group's reservation", asked(2)).await;
            assert_eq!(store.asked.lock().unwrap()[1], 9);
            // Two more arrive while the group's reservation is in flight.
            let late = [spawn(5), {
                until("one queued", queued(1)).await;
                spawn(1)
            }];
            until("two queued", queued(2)).await;
            store.gate.add_permits(1);
            for t in group {
                let r = t.await.unwrap();
                assert!(
                    matches!(r, Err(SeqError::Store(StoreError::Unavailable(_)))),
                    "{r:?}"
                );
            }
            // The failed reservation moved nothing: the next group starts at 2.
            until("the late group's reservation", asked(3)).await;
            store.gate.add_permits(1);
            let late: Vec<Vec<u64>> = {
                let mut out = Vec::new();
                for t in late {
                    out.push(numbers(&t.await.unwrap()));
                }
                out
            };
            assert_eq!(late, [vec![2, 3, 4, 5, 6], vec![7]]);
            assert_eq!(*store.asked.lock().unwrap(), [1, 9, 6]);
            assert_eq!(store.get_seq("S").await.unwrap(), Some(7));
            // The driver stopped with the queue empty; the next request starts another.
            until("the driver to stop", || !a.strict_queue().driving).await;
            store.gate.add_permits(1);
            assert_eq!(numbers(&a.take(2, T0).await), [8, 9]);
        }

        /// Many concurrent strict takers on two allocators (two nodes) sharing one
        /// embedded store: no number twice, each caller's numbers increasing, and,
        /// nothing having failed, exactly 1..=N handed out and reserved (strict leaves
        /// no gap).
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn concurrent_strict_takers_get_dense_unique_numbers() {
            let dir = tempfile::tempdir().unwrap();
            let store: Arc<dyn Store> =
                Arc::new(EmbeddedStore::open(&dir.path().join("db")).unwrap());
            let mut tasks = Vec::new();
            for _ in 0..2 {
                let a = alloc(store.clone());
                for t in 0..16u64 {
                    let a = a.clone();
                    tasks.push(tokio::spawn(async move {
                        let mut got = Vec::new();
                        for i in 0..60u64 {
                            got.extend(a.take(1 + (i + t) % 5, T0).await.unwrap().iter());
                        }
                        got
                    }));
                }
            }
            let mut all = Vec::new();
            for t in tasks {
                let got = t.await.unwrap();
                assert!(got.windows(2).all(|w| w[0] < w[1]), "a caller went back");
                all.extend(got);
            }
            all.sort_unstable();
            let n = all.len() as u64;
            assert_eq!(
                all,
                (1..=n).collect::<Vec<_>>(),
                "repeated or missing numbers"
            );
            assert_eq!(store.get_seq("S").await.unwrap(), Some(n));
        }

        /// A counter store whose reservations take a few jittered milliseconds, so that
        /// several are in flight and land in any order, and which chains like etcd's:
        /// `reserve_seq_from` commits only from one of the listed values.
        struct Chaining {
            counters: Mutex<HashMap<String, u64>>,
            seed: Mutex<u64>,
            /// Links reserved, missed, and reserved over a link they overtook.
            chained: Mutex<(u64, u64, u64)>,
        }

        impl Chaining {
            async fn jitter(&self) {
                let ms = {
                    let mut seed = self.seed.lock().unwrap();
                    *seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (*seed >> 33) % 8
                };
                tokio::time::sleep(Duration::from_micros(200 + ms * 700)).await;
            }
        }

        #[async_trait::async_trait]
        impl Store for Chaining {
            async fn snapshot_prefixes(&self) -> Result<Snapshot, StoreError> {
                unsupported()
            }
            async fn observe_prefix(&self, _: &str) -> Result<Observed, StoreError> {
                unsupported()
            }
            async fn write_prefix(
                &self,
                _: &str,
                _: &PrefixConfig,
                _: bool,
                _: &AuditMeta,
            ) -> Result<(Written, Revision), StoreError> {
                unsupported()
            }
            async fn remove_prefix(
                &self,
                _: &str,
                _: &AuditMeta,
            ) -> Result<Option<Revision>, StoreError> {
                unsupported()
            }
            async fn prefix_history(&self, _: &str) -> Result<Vec<AuditRecord>, StoreError> {
                unsupported()
            }
            async fn prefix_record(&self, _: &str) -> Result<Option<PrefixRecord>, StoreError> {
                unsupported()
            }
            fn strict_depth(&self) -> usize {
                4
            }
            async fn reserve_seq_from(
                &self,
                counter: &str,
                from: &[u64],
                end: u64,
                _: &SeqGuard<'_>,
            ) -> Result<Chained, StoreError> {
                self.jitter().await;
                let mut counters = self.counters.lock().unwrap();
                let at = counters.get(counter).copied();
                let mut chained = self.chained.lock().unwrap();
                match from.iter().find(|&&v| v < end && Some(v) == at) {
                    Some(&v) => {
                        chained.0 += 1;
                        if v != from[0] {
                            // It overtook the link before it and covered it.
                            chained.2 += 1;
                        }
                        counters.insert(counter.into(), end);
                        Ok(Chained::Reserved(v))
                    }
                    None => {
                        chained.1 += 1;
                        Ok(Chained::Missed(at))
                    }
                }
            }
            async fn reserve_seq_as(
                &self,
                counter: &str,
                size: u64,
                initial: u64,
                _: Option<&SeqGuard<'_>>,
            ) -> Result<SeqBlock, StoreError> {
                self.jitter().await;
                let mut counters = self.counters.lock().unwrap();
                let current = counters.get(counter).copied().unwrap_or(initial);
                let block = next_block(current, size).unwrap();
                counters.insert(counter.into(), block.end);
                Ok(block)
            }
            async fn release_seq_as(
                &self,
                _: &str,
                _: u64,
                _: u64,
                _: Option<&SeqGuard<'_>>,
            ) -> Result<bool, StoreError> {
                Ok(false)
            }
            async fn get_seq(&self, counter: &str) -> Result<Option<u64>, StoreError> {
                Ok(self.counters.lock().unwrap().get(counter).copied())
            }
            async fn check_layout(&self, _: &str) -> Result<(), StoreError> {
                Ok(())
            }
        }

        /// Several reservations in flight, landing out of order, and a second node
        /// reserving in between (which breaks the chain): every number once, none missing
        /// (strict leaves no gap), each caller's numbers increasing, and links overtaking links.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn chained_reservations_in_flight_stay_dense_and_unique() {
            let store = Arc::new(Chaining {
                counters: Mutex::default(),
                seed: Mutex::new(7),
                chained: Mutex::default(),
            });
            let mut tasks = Vec::new();
            for node in 0..2u64 {
                let a = alloc(store.clone());
                for t in 0..12u64 {
                    let a = a.clone();
                    tasks.push(tokio::spawn(async move {
                        let mut got = Vec::new();
                        for i in 0..40u64 {
                            if node == 1 && i % 2 == 0 {
                                // The second node draws less often.
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            got.extend(a.take(1 + (i + t) % 3, T0).await.unwrap().iter());
                        }
                        got
                    }));
                }
            }
            let mut all = Vec::new();
            for t in tasks {
                let got = t.await.unwrap();
                assert!(got.windows(2).all(|w| w[0] < w[1]), "a caller went back");
                all.extend(got);
            }
            all.sort_unstable();
            let n = all.len() as u64;
            assert_eq!(
                all,
                (1..=n).collect::<Vec<_>>(),
                "repeated or missing numbers"
            );
            assert_eq!(store.get_seq("S").await.unwrap(), Some(n));
            let (ok, missed, covering) = *store.chained.lock().unwrap();
            assert!(ok > 0, "no reservation was chained ({missed} missed)");
            assert!(
                covering > 0,
                "no link overtook the one before it ({ok} chained)"
            );
        }
    }
}
