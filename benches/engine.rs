//! The snowflake engine next to the Snowflake crates Rust users pick today, `rs-snowflake`
//! 0.6, `sonyflake` 0.5 and `idgenerator` 2.0, measured in the same shapes in one run.
//!
//! # Why several shapes
//!
//! A snowflake prefix has 4096 sequence values per 1 ms unit, and numgen lets a prefix run
//! at most one unit ahead of the clock, so one prefix can never issue more than 4,096,000
//! numbers/s (244 ns per number, sustained), like every Snowflake that does not borrow
//! unbounded future time. A tight loop on one prefix therefore measures the layout's
//! capacity, not the engine. The figures below separate the two.
//!
//! # What each figure means
//!
//! Criterion groups (time per number; `elem/s` is numbers per second):
//! - `burst/*` — **engine cost per number while sequence space is available.** Bursts of
//!   one time unit's capacity on one instance, each burst starting on a fresh unit of that
//!   instance (4096 numbers per 1 ms for numgen and rs-snowflake, 4091 for idgenerator,
//!   whose sequence values 0–4 are reserved, 256 per 10 ms for sonyflake). Only the time
//!   inside bursts counts; the harness takes the 1,000 instances in turn so that it seldom
//!   has to wait for a fresh unit.
//! - `round_robin_1000/*` — one number from each of 1,000 instances (prefixes) in turn:
//!   the server's shape when many prefixes are busy. No instance comes near its capacity
//!   (sonyflake's 256 per 10 ms excepted: at 1,000 instances it caps at 25.6 M/s).
//! - `one_prefix_threads/*/{1,2}` — the burst shape on one instance shared by 1 or 2
//!   threads, each issuing its half of every burst: what contention on one prefix costs.
//!   Time per number is wall time, so 2 threads that scale perfectly show half the time.
//! - `1000_prefixes_threads/*/{1,2-shared,2-split}` — round robin over 1,000 instances from
//!   1 thread, from 2 threads that both go round all of them (starting half a round apart:
//!   every instance is used by both cores, as any prefix may be on any of the server's
//!   workers, so each use pulls its cache line from the other core), and from 2 threads
//!   that each keep to their own 500 (how the engine itself scales).
//!
//! Printed after the criterion groups:
//! - `sustained/*` — **one instance, as fast as it lets numbers out, for fixed wall-clock
//!   windows** (median, min and max of the windows). This is capacity-bound by design:
//!   numgen and rs-snowflake stop at 4096 per ms (numgen answers `Wait`, which this loop
//!   retries by spinning, where the server sleeps; rs-snowflake spins inside), sonyflake
//!   sleeps after 256 per 10 ms, and idgenerator borrows up to 2,000 future units in a row
//!   and then spins until the clock has caught up, so its windows swing around the same
//!   4,091 per ms average.
//!
//! # Contenders
//! - `numgen-node`: [`Node::try_issue`] for one number: clock read, clock guard, worker
//!   grant and state checks, the generator step, then the ID composed from the batch. This
//!   is what a request pays, and the figure for the "one number ≤ 30 ns" target. The node
//!   reads the clock the server uses: `clock::system_clock()`, TSC-interpolated where the
//!   kernel trusts the TSC.
//! - `numgen-node-batch64`: the same call for 64 numbers at a time, as a `?count=64`
//!   request makes it, handed out one by one: a clock read per 64 numbers, each stamped
//!   with the time of its own request (unlike `rs-snowflake-generate`, whose timestamps lag
//!   until its sequence wraps).
//! - `numgen-generator`: the pure [`Generator::next`] with [`Bounds`] whose `now` the harness
//!   reads once per burst (or per round of 1,000), plus composing the ID.
//! - `rs-snowflake-real_time`: `SnowflakeIdGenerator::real_time_generate`, a clock read per
//!   number (the mode that keeps IDs on time); `rs-snowflake-generate`: `generate`, a clock
//!   read once per 4096 numbers. Its `lazy_generate` is left out: it never reads the clock,
//!   so its IDs run ahead of time without bound.
//! - `sonyflake`: `Sonyflake::next_id` (a `Mutex` inside; 8 sequence bits per 10 ms unit).
//! - `idgenerator`: `CoreIdGenerator::next_id` with 12 sequence bits and 9 worker bits, its
//!   default "drift" method.
//!
//! Single-threaded figures call each crate's own API (`&mut self` where it has one, no
//! lock). Two-thread figures share numgen's engine as it is (`&self`, lock-free) and put
//! each `&mut self` generator in a `Mutex`, as sharing one needs; sonyflake locks inside.
//!
//! # Running
//! `cargo bench --bench engine` (about six minutes on two cores); a filter runs part of it,
//! e.g. `cargo bench --bench engine -- burst` (criterion's regex; `sustained` entries are
//! matched as plain substrings). `NUMGEN_BENCH_WINDOW_MS` (default 2000) and
//! `NUMGEN_BENCH_WINDOWS` (default 3) size the sustained windows. `cargo test --benches`
//! runs every shape once, briefly. Timings are not asserted anywhere: compare medians and
//! ratios from one run, on a quiet machine.

use std::hint::{black_box, spin_loop};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, UNIX_EPOCH};

use criterion::{BenchmarkId, Criterion, Throughput};
use numgen::clock::{Clock, SystemClock};
use numgen::id::{Bounds, Generator, LastIssued, Layout, LayoutSettings, Policy};
use numgen::metrics::Metrics;
use numgen::node::{Node, NodeSettings};

/// Instances (prefixes) of every contender.
const PREFIXES: usize = 1000;
/// numgen's default epoch, used by every contender: 2024-01-01T00:00:00Z.
const EPOCH_MS: u64 = 1_704_067_200_000;
/// Failed attempts after which the harness gives up on an instance (a bug, not a wait).
const MAX_ATTEMPTS: u64 = 1 << 34;

fn unix_ms() -> u64 {
    SystemClock.now_ms()
}

/// A contender owned by one thread: `PREFIXES` independent instances.
trait Engine {
    /// Numbers one instance issues in one unit without waiting for the clock.
    const UNIT_CAPACITY: u64;
    /// The length of one unit.
    const UNIT_MS: u64;
    /// Called before each burst, each round of the instances, and after a refusal.
    fn refresh(&mut self) {}
    /// One ID from instance `i`; `None` when it must wait for the clock (numgen says so;
    /// the other crates wait inside).
    fn issue(&mut self, i: usize) -> Option<u64>;
}

/// A contender shared by threads.
trait SharedEngine: Sync {
    const UNIT_CAPACITY: u64;
    const UNIT_MS: u64;
    fn issue(&self, i: usize) -> Option<u64>;
}

#[cold]
#[inline(never)]
fn refused(attempts: &mut u64) {
    *attempts += 1;
    assert!(
        *attempts < MAX_ATTEMPTS,
        "an instance never issued a number"
    );
    spin_loop();
}

#[inline(always)]
fn issue_one<E: Engine>(e: &mut E, i: usize) -> u64 {
    let mut attempts = 0;
    loop {
        if let Some(id) = e.issue(i) {
            return id;
        }
        e.refresh();
        refused(&mut attempts);
    }
}

#[inline(always)]
fn issue_shared<E: SharedEngine>(e: &E, i: usize) -> u64 {
    let mut attempts = 0;
    loop {
        if let Some(id) = e.issue(i) {
            return id;
        }
        refused(&mut attempts);
    }
}

// ---------------------------------------------------------------------------------------
// numgen

fn numgen_layout() -> Layout {
    let settings = LayoutSettings {
        epoch_ms: EPOCH_MS,
        ..LayoutSettings::default()
    };
    Layout::new(settings, unix_ms()).expect("the default layout is valid")
}

/// [`Node::try_issue`], as the request path calls it.
struct NumgenNode {
    node: Node,
    prefixes: Vec<LastIssued>,
}

impl NumgenNode {
    fn new() -> NumgenNode {
        let layout = numgen_layout();
        let settings = NodeSettings {
            max_backward_wait_ms: 5,
            on_clock_backward: Policy::Degrade,
            on_lease_loss: Policy::Degrade,
            reserve_window_ms: 2000,
        };
        let metrics = Metrics::new().expect("metrics registry");
        // The clock the server runs with (TSC-interpolated where the kernel trusts the TSC).
        let node = Node::new(layout, numgen::clock::system_clock(), settings, metrics);
        // The whole timestamp range reserved: the bench never waits on a store.
        node.install_grant(1, 2, 0, layout.max_timestamp());
        NumgenNode {
            node,
            prefixes: (0..PREFIXES).map(|_| LastIssued::new()).collect(),
        }
    }

    #[inline(always)]
    fn one(&self, i: usize) -> Option<u64> {
        let issued = self.node.try_issue(&self.prefixes[i], 1).ok()?;
        Some(self.node.layout().compose_packed(
            issued.batch.first,
            issued.batch.degraded.is_some(),
            issued.node_bits,
        ))
    }
}

impl Engine for NumgenNode {
    const UNIT_CAPACITY: u64 = 4096;
    const UNIT_MS: u64 = 1;
    #[inline(always)]
    fn issue(&mut self, i: usize) -> Option<u64> {
        self.one(i)
    }
}

impl SharedEngine for NumgenNode {
    const UNIT_CAPACITY: u64 = 4096;
    const UNIT_MS: u64 = 1;
    #[inline(always)]
    fn issue(&self, i: usize) -> Option<u64> {
        self.one(i)
    }
}

/// How many numbers `numgen-node-batch` asks [`Node::try_issue`] for at a time.
const BATCH: u64 = 64;

/// [`Node::try_issue`] for [`BATCH`] numbers at a time, as a `?count=64` request does,
/// handed out one by one: one clock read and one compare-and-swap per batch.
struct NumgenNodeBatch {
    node: NumgenNode,
    /// Per instance: the next packed value, how many are left, node bits, degraded.
    held: Vec<(u64, u64, u64, bool)>,
}

impl NumgenNodeBatch {
    fn new() -> NumgenNodeBatch {
        NumgenNodeBatch {
            node: NumgenNode::new(),
            held: vec![(0, 0, 0, false); PREFIXES],
        }
    }
}

impl Engine for NumgenNodeBatch {
    const UNIT_CAPACITY: u64 = 4096;
    const UNIT_MS: u64 = 1;
    #[inline(always)]
    fn issue(&mut self, i: usize) -> Option<u64> {
        let h = &mut self.held[i];
        if h.1 == 0 {
            let issued = self
                .node
                .node
                .try_issue(&self.node.prefixes[i], BATCH)
                .ok()?;
            *h = (
                issued.batch.first,
                issued.batch.count,
                issued.node_bits,
                issued.batch.degraded.is_some(),
            );
        }
        let packed = h.0;
        h.0 += 1;
        h.1 -= 1;
        Some(self.node.node.layout().compose_packed(packed, h.3, h.2))
    }
}

/// The pure [`Generator::next`]; the harness supplies the time.
struct NumgenGenerator {
    layout: Layout,
    generator: Generator,
    node_bits: u64,
    bounds: Bounds,
    prefixes: Vec<LastIssued>,
}

impl NumgenGenerator {
    fn new() -> NumgenGenerator {
        let layout = numgen_layout();
        NumgenGenerator {
            generator: Generator::new(&layout),
            node_bits: layout.node_bits(1, 2),
            bounds: Bounds {
                now: layout.units_at(unix_ms()),
                floor: 0,
                ceiling: layout.max_timestamp(),
                degraded: None,
                max_wait: 5,
                on_ahead: Policy::Degrade,
                logical: false,
            },
            layout,
            prefixes: (0..PREFIXES).map(|_| LastIssued::new()).collect(),
        }
    }
}

impl Engine for NumgenGenerator {
    const UNIT_CAPACITY: u64 = 4096;
    const UNIT_MS: u64 = 1;
    fn refresh(&mut self) {
        self.bounds.now = self.layout.units_at(unix_ms());
    }
    #[inline(always)]
    fn issue(&mut self, i: usize) -> Option<u64> {
        let batch = self
            .generator
            .next(&self.prefixes[i], 1, &self.bounds)
            .ok()?;
        Some(
            self.layout
                .compose_packed(batch.first, batch.degraded.is_some(), self.node_bits),
        )
    }
}

// ---------------------------------------------------------------------------------------
// The other crates, each through its own API.

/// One instance of another crate's generator.
trait PeerGen: Send {
    const UNIT_CAPACITY: u64;
    const UNIT_MS: u64;
    fn next_id(&mut self) -> u64;
}

/// `rs-snowflake`; `REAL_TIME` picks `real_time_generate` over `generate`.
struct RsSnowflake<const REAL_TIME: bool>(snowflake::SnowflakeIdGenerator);

impl<const REAL_TIME: bool> RsSnowflake<REAL_TIME> {
    fn new() -> Self {
        let epoch = UNIX_EPOCH + Duration::from_millis(EPOCH_MS);
        RsSnowflake(snowflake::SnowflakeIdGenerator::with_epoch(1, 2, epoch))
    }
}

impl<const REAL_TIME: bool> PeerGen for RsSnowflake<REAL_TIME> {
    const UNIT_CAPACITY: u64 = 4096;
    const UNIT_MS: u64 = 1;
    #[inline(always)]
    fn next_id(&mut self) -> u64 {
        let id = if REAL_TIME {
            self.0.real_time_generate()
        } else {
            self.0.generate()
        };
        id as u64
    }
}

/// `sonyflake`: 39 time bits of 10 ms, 8 sequence bits, 16 machine bits.
struct Sony(sonyflake::Sonyflake);

impl Sony {
    fn new() -> Sony {
        let start = chrono::DateTime::from_timestamp_millis(EPOCH_MS as i64)
            .expect("the epoch is a valid time");
        let flake = sonyflake::Sonyflake::builder()
            .start_time(start)
            .machine_id(&|| Ok(1))
            .finalize()
            .expect("sonyflake settings are valid");
        Sony(flake)
    }

    #[inline(always)]
    fn next(&self) -> u64 {
        self.0.next_id().map_or(0, |id| id.to_u64())
    }
}

impl PeerGen for Sony {
    const UNIT_CAPACITY: u64 = 256;
    const UNIT_MS: u64 = 10;
    #[inline(always)]
    fn next_id(&mut self) -> u64 {
        self.next()
    }
}

/// `idgenerator` with numgen's widths (12 sequence bits, 9 node bits).
struct IdGen(idgenerator::CoreIdGenerator);

impl IdGen {
    /// Each instance sleeps 500 ms while it is set up (the crate's own start-up delay,
    /// twice): the instances are made on parallel threads.
    fn many(n: usize) -> Vec<IdGen> {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|_| {
                    s.spawn(|| {
                        let mut g = idgenerator::CoreIdGenerator::default();
                        let options = idgenerator::IdGeneratorOptions::new()
                            .base_time(EPOCH_MS as i64)
                            .worker_id(1)
                            .worker_id_bit_len(9)
                            .seq_bit_len(12);
                        g.init(options).expect("idgenerator options are valid");
                        IdGen(g)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("idgenerator set-up"))
                .collect()
        })
    }
}

impl PeerGen for IdGen {
    const UNIT_CAPACITY: u64 = 4091;
    const UNIT_MS: u64 = 1;
    #[inline(always)]
    fn next_id(&mut self) -> u64 {
        self.0.next_id() as u64
    }
}

/// Instances owned by one thread, called through `&mut self`.
struct Owned<G>(Vec<G>);

impl<G: PeerGen> Engine for Owned<G> {
    const UNIT_CAPACITY: u64 = G::UNIT_CAPACITY;
    const UNIT_MS: u64 = G::UNIT_MS;
    #[inline(always)]
    fn issue(&mut self, i: usize) -> Option<u64> {
        Some(self.0[i].next_id())
    }
}

/// Instances shared by threads, each behind a `Mutex`.
struct Locked<G>(Vec<Mutex<G>>);

impl<G> Locked<G> {
    fn from(owned: Owned<G>) -> Locked<G> {
        Locked(owned.0.into_iter().map(Mutex::new).collect())
    }
}

impl<G: PeerGen> SharedEngine for Locked<G> {
    const UNIT_CAPACITY: u64 = G::UNIT_CAPACITY;
    const UNIT_MS: u64 = G::UNIT_MS;
    #[inline(always)]
    fn issue(&self, i: usize) -> Option<u64> {
        let mut g = self.0[i].lock().unwrap_or_else(PoisonError::into_inner);
        Some(g.next_id())
    }
}

/// Sonyflake is shared as it is: it locks inside.
impl SharedEngine for Owned<Sony> {
    const UNIT_CAPACITY: u64 = 256;
    const UNIT_MS: u64 = 10;
    #[inline(always)]
    fn issue(&self, i: usize) -> Option<u64> {
        Some(self.0[i].next())
    }
}

// ---------------------------------------------------------------------------------------
// Harnesses

fn wall_unit(unit_ms: u64) -> u64 {
    unix_ms() / unit_ms
}

/// Takes the instances in turn, each once its unit is fresh: its previous burst ended in an
/// earlier unit than the clock's.
struct Rotation {
    next: usize,
    last_end: Vec<u64>,
}

impl Rotation {
    fn new(unit_ms: u64) -> Rotation {
        // Other shapes may have used the instances in this unit already.
        Rotation {
            next: 0,
            last_end: vec![wall_unit(unit_ms); PREFIXES],
        }
    }

    fn take(&mut self, unit_ms: u64) -> usize {
        let i = self.next;
        self.next = (i + 1) % PREFIXES;
        while wall_unit(unit_ms) <= self.last_end[i] {
            spin_loop();
        }
        i
    }

    fn done(&mut self, i: usize, unit_ms: u64) {
        self.last_end[i] = wall_unit(unit_ms);
    }
}

/// `iters` numbers in bursts of one unit's capacity; returns the time inside the bursts.
fn bursts<E: Engine>(e: &mut E, rot: &mut Rotation, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let i = rot.take(E::UNIT_MS);
        e.refresh();
        let n = left.min(E::UNIT_CAPACITY);
        let start = Instant::now();
        for _ in 0..n {
            black_box(issue_one(e, i));
        }
        total += start.elapsed();
        rot.done(i, E::UNIT_MS);
        left -= n;
    }
    total
}

/// `iters` numbers, one from each instance in turn.
fn round_robin<E: Engine>(e: &mut E, cursor: &mut usize, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        if *cursor == 0 {
            e.refresh();
        }
        black_box(issue_one(e, *cursor));
        *cursor += 1;
        if *cursor == PREFIXES {
            *cursor = 0;
        }
    }
    start.elapsed()
}

/// The burst shape with each burst split over `threads` threads on the same instance.
/// Returns the wall time from the start of each burst until every thread has finished it.
fn shared_bursts<E: SharedEngine>(
    e: &E,
    threads: usize,
    rot: &mut Rotation,
    iters: u64,
) -> Duration {
    let round = AtomicU64::new(0);
    let instance = AtomicUsize::new(0);
    let share = AtomicU64::new(0);
    let finished = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 1..threads {
            s.spawn(|| {
                let mut seen = 0;
                loop {
                    let r = loop {
                        let r = round.load(Ordering::Acquire);
                        if r != seen {
                            break r;
                        }
                        spin_loop();
                    };
                    seen = r;
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    let i = instance.load(Ordering::Relaxed);
                    for _ in 0..share.load(Ordering::Relaxed) {
                        black_box(issue_shared(e, i));
                    }
                    finished.fetch_add(1, Ordering::AcqRel);
                }
            });
        }
        let helpers = threads - 1;
        let mut total = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let i = rot.take(E::UNIT_MS);
            let n = left.min(E::UNIT_CAPACITY);
            let each = n / threads as u64;
            instance.store(i, Ordering::Relaxed);
            share.store(each, Ordering::Relaxed);
            finished.store(0, Ordering::Relaxed);
            let start = Instant::now();
            round.fetch_add(1, Ordering::AcqRel);
            for _ in 0..n - each * helpers as u64 {
                black_box(issue_shared(e, i));
            }
            while finished.load(Ordering::Acquire) < helpers {
                spin_loop();
            }
            total += start.elapsed();
            rot.done(i, E::UNIT_MS);
            left -= n;
        }
        stop.store(true, Ordering::Release);
        round.fetch_add(1, Ordering::AcqRel);
        total
    })
}

/// `iters` numbers round robin from `threads` threads; wall time from the common start
/// until the last thread is done. `split`: each thread keeps to its own share of the
/// instances; otherwise each goes round all of them, starting at its own offset.
fn shared_round_robin<E: SharedEngine>(e: &E, threads: usize, split: bool, iters: u64) -> Duration {
    let ready = AtomicUsize::new(0);
    let go = AtomicBool::new(false);
    let finished = AtomicUsize::new(0);
    let each = iters / threads as u64;
    let span = if split { PREFIXES / threads } else { PREFIXES };
    let run = |t: usize, n: u64| {
        let (base, mut k) = if split {
            (t * span, 0)
        } else {
            (0, t * PREFIXES / threads)
        };
        for _ in 0..n {
            black_box(issue_shared(e, base + k));
            k += 1;
            if k == span {
                k = 0;
            }
        }
    };
    std::thread::scope(|s| {
        for t in 1..threads {
            let (ready, go, finished, run) = (&ready, &go, &finished, &run);
            s.spawn(move || {
                ready.fetch_add(1, Ordering::AcqRel);
                while !go.load(Ordering::Acquire) {
                    spin_loop();
                }
                run(t, each);
                finished.fetch_add(1, Ordering::AcqRel);
            });
        }
        while ready.load(Ordering::Acquire) < threads - 1 {
            spin_loop();
        }
        let start = Instant::now();
        go.store(true, Ordering::Release);
        run(0, iters - each * (threads as u64 - 1));
        while finished.load(Ordering::Acquire) < threads - 1 {
            spin_loop();
        }
        start.elapsed()
    })
}

/// Numbers one instance lets out during `window`.
fn sustained<E: Engine>(e: &mut E, window: Duration) -> u64 {
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < window {
        for _ in 0..64 {
            black_box(issue_one(e, 0));
        }
        n += 64;
    }
    n
}

// ---------------------------------------------------------------------------------------

struct Contenders {
    node: NumgenNode,
    node_batch: NumgenNodeBatch,
    generator: NumgenGenerator,
    rs_real_time: Owned<RsSnowflake<true>>,
    rs_generate: Owned<RsSnowflake<false>>,
    sony: Owned<Sony>,
    idgen: Owned<IdGen>,
}

impl Contenders {
    fn new() -> Contenders {
        Contenders {
            node: NumgenNode::new(),
            node_batch: NumgenNodeBatch::new(),
            generator: NumgenGenerator::new(),
            rs_real_time: Owned((0..PREFIXES).map(|_| RsSnowflake::new()).collect()),
            rs_generate: Owned((0..PREFIXES).map(|_| RsSnowflake::new()).collect()),
            sony: Owned((0..PREFIXES).map(|_| Sony::new()).collect()),
            idgen: Owned(IdGen::many(PREFIXES)),
        }
    }
}

fn single_thread(c: &mut Criterion, all: &mut Contenders) {
    fn burst<E: Engine>(
        g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
        name: &str,
        e: &mut E,
    ) {
        let mut rot = Rotation::new(E::UNIT_MS);
        g.bench_function(name, |b| b.iter_custom(|iters| bursts(e, &mut rot, iters)));
    }
    fn rr<E: Engine>(
        g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
        name: &str,
        e: &mut E,
    ) {
        let mut cursor = 0;
        g.bench_function(name, |b| {
            b.iter_custom(|iters| round_robin(e, &mut cursor, iters))
        });
    }

    let mut g = c.benchmark_group("burst");
    g.throughput(Throughput::Elements(1));
    burst(&mut g, "numgen-node", &mut all.node);
    burst(&mut g, "numgen-node-batch64", &mut all.node_batch);
    burst(&mut g, "numgen-generator", &mut all.generator);
    burst(&mut g, "rs-snowflake-real_time", &mut all.rs_real_time);
    burst(&mut g, "rs-snowflake-generate", &mut all.rs_generate);
    burst(&mut g, "sonyflake", &mut all.sony);
    burst(&mut g, "idgenerator", &mut all.idgen);
    g.finish();

    let mut g = c.benchmark_group("round_robin_1000");
    g.throughput(Throughput::Elements(1));
    rr(&mut g, "numgen-node", &mut all.node);
    rr(&mut g, "numgen-node-batch64", &mut all.node_batch);
    rr(&mut g, "numgen-generator", &mut all.generator);
    rr(&mut g, "rs-snowflake-real_time", &mut all.rs_real_time);
    rr(&mut g, "rs-snowflake-generate", &mut all.rs_generate);
    rr(&mut g, "sonyflake", &mut all.sony);
    rr(&mut g, "idgenerator", &mut all.idgen);
    g.finish();
}

/// Settings of the `sustained` windows, and which entries the command line selected.
struct SustainedRun {
    window: Duration,
    windows: usize,
    filter: Option<String>,
}

impl SustainedRun {
    fn from_env_and_args() -> SustainedRun {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let bench = args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test");
        // Criterion's options that take a value: their values are not filters.
        const VALUED: [&str; 15] = [
            "--color",
            "--save-baseline",
            "--baseline",
            "--baseline-lenient",
            "--load-baseline",
            "--sample-size",
            "--warm-up-time",
            "--measurement-time",
            "--nresamples",
            "--noise-threshold",
            "--confidence-level",
            "--significance-level",
            "--profile-time",
            "--plotting-backend",
            "--output-format",
        ];
        let mut filter = None;
        let mut skip = false;
        for a in &args {
            if skip {
                skip = false;
            } else if a.starts_with('-') {
                skip = VALUED.contains(&a.as_str());
            } else {
                filter = Some(a.clone());
            }
        }
        let env = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(default)
        };
        if bench {
            SustainedRun {
                window: Duration::from_millis(env("NUMGEN_BENCH_WINDOW_MS", 2000)),
                windows: env("NUMGEN_BENCH_WINDOWS", 3).max(1) as usize,
                filter,
            }
        } else {
            // `cargo test --benches`: run each once, briefly.
            SustainedRun {
                window: Duration::from_millis(20),
                windows: 1,
                filter,
            }
        }
    }

    fn run<E: Engine>(&self, name: &str, e: &mut E) {
        let id = format!("sustained/{name}");
        if self
            .filter
            .as_ref()
            .is_some_and(|f| !id.contains(f.as_str()))
        {
            return;
        }
        // One unrecorded window first: idgenerator's first window spends borrowed time.
        sustained(e, self.window);
        let mut rates: Vec<f64> = (0..self.windows)
            .map(|_| sustained(e, self.window) as f64 / self.window.as_secs_f64())
            .collect();
        rates.sort_by(f64::total_cmp);
        let median = rates[rates.len() / 2];
        println!(
            "{id:<34} {:>12.0} numbers/s median ({:.0}–{:.0}), {:>9.1} ns/number; {} windows of {:?}",
            median,
            rates[0],
            rates[rates.len() - 1],
            1e9 / median,
            self.windows,
            self.window,
        );
    }
}

fn sustained_all(all: &mut Contenders) {
    let run = SustainedRun::from_env_and_args();
    println!(
        "\nsustained: one instance, as fast as it lets numbers out (capacity-bound; see the doc comment)"
    );
    run.run("numgen-node", &mut all.node);
    run.run("numgen-generator", &mut all.generator);
    run.run("rs-snowflake-real_time", &mut all.rs_real_time);
    run.run("rs-snowflake-generate", &mut all.rs_generate);
    run.run("sonyflake", &mut all.sony);
    run.run("idgenerator", &mut all.idgen);
    println!();
}

fn two_threads(c: &mut Criterion, all: Contenders) {
    let rs = Locked::from(all.rs_real_time);
    let idgen = Locked::from(all.idgen);
    let (node, sony) = (&all.node, &all.sony);

    fn one_prefix<E: SharedEngine>(
        g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
        name: &str,
        e: &E,
    ) {
        for threads in [1, 2] {
            let mut rot = Rotation::new(E::UNIT_MS);
            g.bench_function(BenchmarkId::new(name, threads), |b| {
                b.iter_custom(|iters| shared_bursts(e, threads, &mut rot, iters))
            });
        }
    }
    fn many<E: SharedEngine>(
        g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
        name: &str,
        e: &E,
    ) {
        for (threads, split, label) in [
            (1, false, "1"),
            (2, false, "2-shared"),
            (2, true, "2-split"),
        ] {
            g.bench_function(BenchmarkId::new(name, label), |b| {
                b.iter_custom(|iters| shared_round_robin(e, threads, split, iters))
            });
        }
    }

    let mut g = c.benchmark_group("one_prefix_threads");
    g.throughput(Throughput::Elements(1));
    one_prefix(&mut g, "numgen-node", node);
    one_prefix(&mut g, "rs-snowflake-real_time", &rs);
    one_prefix(&mut g, "sonyflake", sony);
    one_prefix(&mut g, "idgenerator", &idgen);
    g.finish();

    let mut g = c.benchmark_group("1000_prefixes_threads");
    g.throughput(Throughput::Elements(1));
    many(&mut g, "numgen-node", node);
    many(&mut g, "rs-snowflake-real_time", &rs);
    many(&mut g, "sonyflake", sony);
    many(&mut g, "idgenerator", &idgen);
    g.finish();
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(50)
        .configure_from_args();
    let mut all = Contenders::new();
    single_thread(&mut c, &mut all);
    sustained_all(&mut all);
    two_threads(&mut c, all);
    c.final_summary();
}
