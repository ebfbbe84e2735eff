//! The node's issuing state, shared by every request: the worker ID it holds (the
//! [`Grant`]) and how far that ID's timestamps are reserved, the clock and its guard, and
//! the conditions that make numbers degraded (SPEC section 4). [`Node::try_issue`] turns
//! all of that into the generator's bounds for one request; it never blocks or sleeps.
//!
//! State changes come from background tasks (reservation, lease, skew monitor) through
//! atomics (the grant behind a sequence lock, [`grant`]; the health flags, their episodes
//! and `/ready`, `health`), so the request path takes no lock.
//!
//! A node its peers judge ahead of them (beyond `max_skew_ms`) runs on their time: its
//! clock minus its offset. It issues (degraded) numbers and reserves timestamps from there,
//! so a clock a year fast never pushes its worker ID's persisted mark beyond the peers'
//! time plus the reservation window.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::sync::Notify;

use crate::clock::{Clock, ClockGuard, GuardChange, Reading};
use crate::id::generator::LEAD_UNITS;
use crate::id::{Batch, Bounds, DegradeReason, Generator, LastIssued, Layout, NextError, Policy};
use crate::metrics::Metrics;

mod grant;
mod health;
pub use grant::Grant;
use grant::GrantCell;
pub use health::Readiness;
use health::{CLOCK_SKEW, Episode, LEASE_LOST, held_back};

/// Settings the node needs from the config.
#[derive(Clone, Copy, Debug)]
pub struct NodeSettings {
    pub max_backward_wait_ms: u64,
    pub on_clock_backward: Policy,
    pub on_lease_loss: Policy,
    /// How far ahead of the clock timestamps are reserved (and persisted).
    pub reserve_window_ms: u64,
}

/// Numbers issued by one [`Node::try_issue`] call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Issued {
    pub batch: Batch,
    pub dc: u64,
    pub worker: u64,
    pub node_bits: u64,
}

/// Why nothing could be issued right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocked {
    /// Retry after this long (at most the allowed wait).
    Wait(Duration),
    /// The reservation is used up; wait for [`Node::reserved`] and retry.
    Ceiling,
    /// 503 `NOT_READY`.
    NotReady {
        reason: &'static str,
        retry_after: Duration,
    },
}

pub struct Node {
    layout: Layout,
    generator: Generator,
    clock: Arc<dyn Clock>,
    guard: ClockGuard,
    grant: GrantCell,
    flags: AtomicU32,
    /// While the lease is lost, the node's time stands still here.
    freeze: AtomicU64,
    settings: NodeSettings,
    max_wait_units: u64,
    window_units: u64,
    renew_wanted: Notify,
    reserved: Notify,
    /// The id of the last grant installed.
    grants: AtomicU64,
    /// How far (units) the peers judge this node's clock ahead of theirs; 0 unless beyond
    /// `max_skew_ms`. Subtracted from every reading the node issues or reserves with.
    ahead: AtomicU64,
    /// This node's clock minus the peers' median (ms), as last measured; 0 before.
    peer_offset_ms: std::sync::atomic::AtomicI64,
    /// Set once the skew monitor has had its first look at the peers (cluster mode).
    skew_checked: std::sync::atomic::AtomicBool,
    skew_check: Notify,
    degraded: [IntCounter; 3],
    episodes: [Episode; 3],
    metrics: Metrics,
}

fn reason_index(r: DegradeReason) -> usize {
    match r {
        DegradeReason::ClockBackward => 0,
        DegradeReason::ClockSkew => 1,
        DegradeReason::LeaseLost => 2,
    }
}

/// 503 `NOT_READY` for `reason`, to be retried after a second.
fn not_ready(reason: &'static str) -> Blocked {
    Blocked::NotReady {
        reason,
        retry_after: Duration::from_secs(1),
    }
}

impl Node {
    pub fn new(
        layout: Layout,
        clock: Arc<dyn Clock>,
        settings: NodeSettings,
        metrics: Metrics,
    ) -> Node {
        let max_wait_units = settings
            .max_backward_wait_ms
            .div_ceil(layout.time_unit_ms());
        Node {
            generator: Generator::new(&layout),
            guard: ClockGuard::new(max_wait_units),
            grant: GrantCell::default(),
            flags: AtomicU32::new(0),
            freeze: AtomicU64::new(u64::MAX),
            max_wait_units,
            window_units: layout.units_for_ms(settings.reserve_window_ms).max(2),
            renew_wanted: Notify::new(),
            reserved: Notify::new(),
            grants: AtomicU64::new(0),
            ahead: AtomicU64::new(0),
            peer_offset_ms: std::sync::atomic::AtomicI64::new(0),
            skew_checked: std::sync::atomic::AtomicBool::new(false),
            skew_check: Notify::new(),
            degraded: metrics.degraded_counters(),
            episodes: Default::default(),
            layout,
            clock,
            settings,
            metrics,
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }
    pub fn generator(&self) -> &Generator {
        &self.generator
    }
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
    pub fn settings(&self) -> &NodeSettings {
        &self.settings
    }
    /// The reservation window in units.
    pub fn window_units(&self) -> u64 {
        self.window_units
    }
    pub fn grant(&self) -> Option<Grant> {
        self.grant.get()
    }

    /// Reads the clock into the guard and handles an episode starting or ending.
    pub fn observe(&self) -> Reading {
        let (reading, change) = self
            .guard
            .observe_with(|| self.layout.units_at(self.clock.now_ms()));
        match change {
            Some(GuardChange::Started { behind, until }) => {
                let ms = behind * self.layout.time_unit_ms();
                let until_ms = self.layout.unix_ms_at(until);
                self.begin_episode(
                    DegradeReason::ClockBackward,
                    &format!(
                        "clock is {ms} ms behind the last timestamp used (until unix ms {until_ms})"
                    ),
                );
            }
            Some(GuardChange::Ended) => self.end_episode(DegradeReason::ClockBackward),
            None => {}
        }
        reading
    }

    /// [`Node::observe`] on the time the node issues and reserves with: corrected by its
    /// peers' judgement when they find it ahead.
    #[inline]
    fn reading(&self) -> Reading {
        let r = self.observe();
        let ahead = self.ahead.load(Ordering::Acquire);
        if ahead == 0 {
            return r;
        }
        Reading {
            now: r.now.saturating_sub(ahead),
            wall: r.wall.saturating_sub(ahead),
            backward_until: r.backward_until.map(|u| u.saturating_sub(ahead)),
        }
    }

    /// The node's time in units (never behind the highest reading), on its peers' time
    /// when they judge its clock ahead.
    pub fn now_units(&self) -> u64 {
        self.reading().now
    }

    /// The wall clock in units, as [`Node::now_units`] corrects it (not held up by earlier
    /// readings).
    pub fn wall_units(&self) -> u64 {
        let ahead = self.ahead.load(Ordering::Acquire);
        self.layout
            .units_at(self.clock.now_ms())
            .saturating_sub(ahead)
    }

    /// Raises the node's time to `units` (a start-up floor ahead of the clock).
    pub fn raise_time_to(&self, units: u64) {
        self.guard
            .raise_to(units.saturating_add(self.ahead.load(Ordering::Acquire)));
        self.observe();
    }

    /// Runs the node on its peers' time while they judge its clock `offset_ms` ahead
    /// (`skewed`), or on its own clock again. Within one episode the correction only
    /// shrinks (the node's time never steps back for the noise of the estimate), unless
    /// the clock got further ahead by more than [`crate::timing::SKEW_REGROW`]. When it
    /// shrinks, readings taken with the larger error are dropped from the node's time.
    pub(crate) fn correct_for_skew(&self, skewed: bool, offset_ms: f64) {
        self.peer_offset_ms
            .store(offset_ms as i64, Ordering::Release);
        let wanted = if skewed && offset_ms >= 1.0 {
            self.layout.units_for_ms(offset_ms as u64)
        } else {
            0
        };
        let held = self.ahead.load(Ordering::Acquire);
        let regrow = self
            .layout
            .units_for_ms(crate::timing::SKEW_REGROW.as_millis() as u64);
        let new = if wanted == 0 || held == 0 || wanted > held.saturating_add(regrow) {
            wanted
        } else {
            held.min(wanted)
        };
        if new == held {
            return;
        }
        self.ahead.store(new, Ordering::Release);
        if new < held {
            let wall = self.layout.units_at(self.clock.now_ms());
            if self.guard.lower_to(wall) {
                self.end_episode(DegradeReason::ClockBackward);
            }
        }
        tracing::info!(
            ahead_ms = new * self.layout.time_unit_ms(),
            "time this node issues and reserves with: its clock minus this"
        );
    }

    /// The peers' time as this node estimates it (Unix ms): its clock minus its last
    /// measured offset (its own clock before any measurement).
    pub fn peers_time_ms(&self) -> u64 {
        let offset = self.peer_offset_ms.load(Ordering::Acquire);
        self.clock.now_ms().saturating_add_signed(-offset)
    }

    /// The latest of the node's own time and its peers': a worker ID's mark is judged
    /// against it, so that a node whose clock is behind does not mistake every mark for
    /// one written by a clock that ran ahead.
    pub fn latest_time_ms(&self) -> u64 {
        self.layout
            .unix_ms_at(self.now_units())
            .max(self.peers_time_ms())
    }

    /// Records that the skew monitor has looked at the peers once.
    pub fn mark_skew_checked(&self) {
        self.skew_checked.store(true, Ordering::Release);
        self.skew_check.notify_waiters();
    }

    /// Waits (at most `limit`) for the skew monitor's first look at the peers, so that a
    /// worker ID is claimed and reserved on the peers' time when they find this clock ahead.
    pub async fn skew_checked(&self, limit: Duration) {
        let notified = self.skew_check.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.skew_checked.load(Ordering::Acquire) {
            return;
        }
        let _ = tokio::time::timeout(limit, notified).await;
    }

    /// Issues up to `want` numbers of the prefix whose last number is `prefix`.
    #[inline]
    pub fn try_issue(&self, prefix: &LastIssued, want: u64) -> Result<Issued, Blocked> {
        let Some(grant) = self.grant.get() else {
            return Err(not_ready("no worker ID is held"));
        };
        let mut reading = None;
        let mut flags = 0;
        // Read with the bounds, again on every retry: an issue that lost its race to
        // `Registry::seal_all` at shutdown retries into STOPPING and refuses.
        let bounds = || {
            flags = self.flags.load(Ordering::Acquire);
            held_back(flags)?;
            let r = self.reading();
            reading = Some(r);
            self.bounds_at(&grant, flags, r)
        };
        let result = self.generator.next_with(prefix, want, bounds)?;
        // The closure ran at least once before any outcome.
        let reading = reading.unwrap_or(Reading {
            now: 0,
            wall: 0,
            backward_until: None,
        });
        match result {
            Ok(batch) => {
                self.count_degraded(&batch, reading.now);
                Ok(Issued {
                    batch,
                    dc: grant.dc,
                    worker: grant.worker,
                    node_bits: grant.node_bits,
                })
            }
            Err(e) => Err(self.blocked(e, flags, reading.wall)),
        }
    }

    /// The generator's bounds under `grant`, given the node's `flags` and a clock reading:
    /// the time to issue at and whether (and why) the numbers are degraded, or a refusal
    /// when the policy for the condition is `reject`.
    #[inline]
    fn bounds_at(&self, grant: &Grant, flags: u32, r: Reading) -> Result<Bounds, Blocked> {
        let on_peers_time = self.ahead.load(Ordering::Relaxed) != 0;
        let mut now = r.now;
        let mut degraded = None;
        if flags & LEASE_LOST != 0 {
            if self.settings.on_lease_loss == Policy::Reject {
                return Err(not_ready("the worker lease is lost"));
            }
            degraded = Some(DegradeReason::LeaseLost);
            now = now.min(self.freeze.load(Ordering::Acquire));
        } else if let Some(until) = r.backward_until {
            if self.settings.on_clock_backward == Policy::Reject {
                return Err(Blocked::NotReady {
                    reason: "the clock stepped back",
                    retry_after: self.units_to_duration(until.saturating_sub(r.wall)),
                });
            }
            degraded = Some(DegradeReason::ClockBackward);
        } else if flags & CLOCK_SKEW != 0 {
            degraded = Some(DegradeReason::ClockSkew);
        }
        Ok(Bounds {
            now,
            floor: grant.floor,
            ceiling: grant.ceiling,
            degraded,
            max_wait: self.max_wait_units,
            on_ahead: self.settings.on_clock_backward,
            logical: on_peers_time,
        })
    }

    /// Counts a degraded batch, and keeps a logical clock's episode going until the wall
    /// clock passes what was issued, not only what was read (`now`).
    #[inline]
    fn count_degraded(&self, batch: &Batch, now: u64) {
        let Some(reason) = batch.degraded else { return };
        self.degraded[reason_index(reason)].inc_by(batch.count);
        let last = self.generator.timestamp_of(batch.first + batch.count - 1);
        if reason.logical_clock() && last > now {
            self.guard.raise_to(last);
        }
    }

    /// Why the generator issued nothing, for the caller; `wall` is the clock as read.
    fn blocked(&self, e: NextError, flags: u32, wall: u64) -> Blocked {
        match e {
            // A prefix far ahead of the clock (its numbers came from a clock since judged
            // wrong): not a wait a request can sit out.
            NextError::Wait { until } if until.saturating_sub(wall) > self.max_lead() => {
                Blocked::NotReady {
                    reason: "this prefix's last number is ahead of the clock",
                    retry_after: self.units_to_duration(until.saturating_sub(wall)),
                }
            }
            NextError::Wait { until } => {
                Blocked::Wait(self.units_to_duration(until.saturating_sub(wall)))
            }
            NextError::Behind { until } => Blocked::NotReady {
                reason: "the clock is behind this prefix's last timestamp",
                retry_after: self.units_to_duration(until.saturating_sub(wall)),
            },
            NextError::Ceiling if flags & LEASE_LOST != 0 => {
                not_ready("the worker lease is lost and its reserved timestamps are used up")
            }
            NextError::Ceiling => {
                self.renew_wanted.notify_one();
                Blocked::Ceiling
            }
            NextError::Exhausted => Blocked::NotReady {
                reason: "the layout has run out of timestamps",
                retry_after: Duration::from_secs(3600),
            },
        }
    }

    /// The longest a request waits for the clock: a unit's sequence running out, plus the
    /// absorbed step back.
    fn max_lead(&self) -> u64 {
        LEAD_UNITS + 1 + self.max_wait_units
    }

    fn units_to_duration(&self, units: u64) -> Duration {
        Duration::from_millis(units.max(1).saturating_mul(self.layout.time_unit_ms()))
    }

    /// Starts using a worker ID whose timestamps up to `floor` may have been used, with
    /// timestamps up to `ceiling` already persisted as reserved. Returns the grant's id.
    pub fn install_grant(&self, dc: u64, worker: u64, floor: u64, ceiling: u64) -> u64 {
        let id = self.grants.fetch_add(1, Ordering::AcqRel) + 1;
        self.grant.set(Some(Grant {
            id,
            dc,
            worker,
            node_bits: self.layout.node_bits(dc, worker),
            floor,
            ceiling,
        }));
        self.metrics.worker_id.set(worker as i64);
        self.publish_lease_health();
        self.reserved.notify_waiters();
        id
    }

    /// [`Node::install_grant`] for a claim whose lease may have expired already (it took
    /// longer than the fence allows): the node is fenced before the grant is visible, so no
    /// request can issue a normal number with it.
    pub fn install_fenced_grant(&self, dc: u64, worker: u64, floor: u64, ceiling: u64) -> u64 {
        self.fence(ceiling);
        self.install_grant(dc, worker, floor, ceiling)
    }

    /// Stops issuing: the worker ID is no longer held.
    pub fn clear_grant(&self) {
        self.grant.set(None);
        self.metrics.worker_id.set(-1);
        self.publish_lease_health();
    }

    /// The highest timestamp a reservation may reach now: while the node runs on its
    /// peers' time, their time plus the window (a prefix that ran ahead on the node's own
    /// clock waits at the ceiling rather than push the worker ID's mark further); else no
    /// limit.
    pub fn reservation_limit(&self) -> u64 {
        if self.ahead.load(Ordering::Acquire) == 0 {
            return u64::MAX;
        }
        self.now_units().saturating_add(self.window_units)
    }

    /// Records that timestamps up to `ceiling` are persisted for grant `id`; nothing when
    /// the node holds another grant by now (the reservation was made for the old one).
    pub fn extend_ceiling(&self, id: u64, ceiling: u64) {
        self.grant.extend_ceiling(id, ceiling);
        self.reserved.notify_waiters();
    }

    /// Resolves when a request hit the reservation ceiling.
    pub async fn renew_wanted(&self) {
        self.renew_wanted.notified().await;
    }

    /// Resolves at the next reservation change (or grant change).
    pub async fn reserved(&self) {
        self.reserved.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::id::LayoutSettings;

    const T0: u64 = 1_763_700_000_000;

    fn node(clock: Arc<ManualClock>, backward: Policy, lease: Policy) -> Node {
        let layout = Layout::new(LayoutSettings::default(), T0).unwrap();
        let settings = NodeSettings {
            max_backward_wait_ms: 5,
            on_clock_backward: backward,
            on_lease_loss: lease,
            reserve_window_ms: 2000,
        };
        Node::new(layout, clock, settings, Metrics::new().unwrap())
    }

    #[test]
    fn the_lease_gauge_is_one_while_a_worker_id_is_held_and_not_fenced() {
        let metrics = Metrics::new().unwrap();
        let layout = Layout::new(LayoutSettings::default(), T0).unwrap();
        let settings = node(
            Arc::new(ManualClock::new(T0)),
            Policy::Degrade,
            Policy::Degrade,
        )
        .settings;
        let n = Node::new(
            layout,
            Arc::new(ManualClock::new(T0)),
            settings,
            metrics.clone(),
        );
        let healthy = || metrics.lease_healthy.get();
        assert_eq!(healthy(), 0, "no worker ID yet");
        let now = n.now_units();
        n.install_grant(0, 1, 0, now + 10);
        assert_eq!(healthy(), 1);
        n.set_lease_lost(true);
        assert_eq!(healthy(), 0);
        // Claimed again while fenced: healthy only once the fence is lifted.
        n.install_grant(0, 2, now + 10, now + 20);
        assert_eq!(healthy(), 0);
        n.set_lease_lost(false);
        assert_eq!(healthy(), 1);
        n.clear_grant();
        assert_eq!(healthy(), 0);
    }

    fn granted(clock: &Arc<ManualClock>, backward: Policy, lease: Policy) -> Node {
        let n = node(clock.clone(), backward, lease);
        let now = n.now_units();
        n.install_grant(1, 2, 0, now + n.window_units());
        n
    }

    fn id_of(n: &Node, i: &Issued, k: u64) -> u64 {
        n.layout()
            .compose_packed(i.batch.first + k, i.batch.degraded.is_some(), i.node_bits)
    }

    #[test]
    fn no_grant_is_not_ready() {
        let clock = Arc::new(ManualClock::new(T0));
        let n = node(clock, Policy::Degrade, Policy::Degrade);
        let p = LastIssued::new();
        assert!(matches!(
            n.try_issue(&p, 1),
            Err(Blocked::NotReady {
                reason: "no worker ID is held",
                ..
            })
        ));
        assert_eq!(n.readiness().status, "not_ready");
        assert_eq!(n.readiness().reasons, vec!["no_worker_id"]);
    }

    #[test]
    fn steps_back_of_1_5_6_ms_and_10_s_under_both_policies() {
        for policy in [Policy::Degrade, Policy::Reject] {
            for step in [1, 5, 6, 10_000] {
                let clock = Arc::new(ManualClock::new(T0));
                let n = granted(&clock, policy, Policy::Degrade);
                let p = LastIssued::new();
                let before = n.try_issue(&p, 1).unwrap();
                let mut last = id_of(&n, &before, 0);
                clock.step_back(step);
                let got = n.try_issue(&p, 1);
                match (step <= 5, policy) {
                    (true, _) => {
                        let i = got.unwrap();
                        assert_eq!(i.batch.degraded, None, "step {step}");
                        let id = id_of(&n, &i, 0);
                        assert!(id > last);
                        last = id;
                        assert!(n.readiness().is_ready());
                    }
                    (false, Policy::Degrade) => {
                        let i = got.unwrap();
                        assert_eq!(i.batch.degraded, Some(DegradeReason::ClockBackward));
                        let id = id_of(&n, &i, 0);
                        assert!(id > last);
                        last = id;
                        assert_eq!(n.readiness().status, "degraded");
                    }
                    (false, Policy::Reject) => {
                        match got {
                            Err(Blocked::NotReady { retry_after, .. }) => {
                                assert_eq!(retry_after, Duration::from_millis(step))
                            }
                            other => panic!("{other:?}"),
                        }
                        assert_eq!(n.readiness().status, "not_ready");
                    }
                }
                // The clock passes the last timestamp again: normal, still increasing.
                clock.advance(step + 1);
                let i = n.try_issue(&p, 1).unwrap();
                assert_eq!(i.batch.degraded, None);
                assert!(id_of(&n, &i, 0) > last);
                assert!(n.readiness().is_ready());
            }
        }
    }

    #[test]
    fn a_backward_episode_lasts_until_the_clock_passes_the_last_number_issued() {
        let clock = Arc::new(ManualClock::new(T0));
        let n = granted(&clock, Policy::Degrade, Policy::Degrade);
        let p = LastIssued::new();
        let first = n.try_issue(&p, 1).unwrap();
        clock.step_back(10_000);
        // 100,000 numbers from the logical clock: about 25 units past the last reading.
        let mut last = id_of(&n, &first, 0);
        let mut issued = 0;
        while issued < 100_000 {
            let i = n.try_issue(&p, 100_000 - issued).unwrap();
            assert_eq!(i.batch.degraded, Some(DegradeReason::ClockBackward));
            assert!(id_of(&n, &i, 0) > last);
            last = id_of(&n, &i, i.batch.count - 1);
            issued += i.batch.count;
        }
        let last_ts = n.layout().decompose(last).unwrap().timestamp;
        // The wall clock passes the old reading but not the numbers issued: still degraded.
        clock.advance(10_001);
        assert_eq!(n.readiness().status, "degraded");
        let i = n.try_issue(&p, 1).unwrap();
        assert_eq!(i.batch.degraded, Some(DegradeReason::ClockBackward));
        assert!(id_of(&n, &i, 0) > last);
        last = id_of(&n, &i, 0);
        // Past them: normal and ready.
        clock.set(n.layout().unix_ms_at(last_ts) + 2);
        assert!(n.readiness().is_ready());
        let j = n.try_issue(&p, 1).unwrap();
        assert_eq!(j.batch.degraded, None);
        assert!(id_of(&n, &j, 0) > last);
    }

    #[test]
    fn sequence_exhaustion_inside_one_unit_waits_at_most_one_unit() {
        let clock = Arc::new(ManualClock::new(T0));
        let n = granted(&clock, Policy::Degrade, Policy::Degrade);
        let p = LastIssued::new();
        // Two units of sequence (this one and one of lead), then wait.
        let a = n.try_issue(&p, 10_000).unwrap();
        assert_eq!(a.batch.count, 8192);
        assert_eq!(
            n.try_issue(&p, 1),
            Err(Blocked::Wait(Duration::from_millis(1)))
        );
        clock.advance(1);
        assert!(n.try_issue(&p, 1).is_ok());
    }

    #[test]
    fn lease_loss_degrades_from_a_frozen_clock_within_the_reservation_or_rejects() {
        let clock = Arc::new(ManualClock::new(T0));
        let n = granted(&clock, Policy::Degrade, Policy::Degrade);
        let p = LastIssued::new();
        let first = n.try_issue(&p, 1).unwrap();
        let ceiling = n.grant().unwrap().ceiling;
        n.set_lease_lost(true);
        assert!(n.lease_lost());
        assert_eq!(n.readiness().status, "degraded");
        clock.advance(60_000);
        let mut last = id_of(&n, &first, 0);
        let mut total = 0;
        loop {
            match n.try_issue(&p, 100_000) {
                Ok(i) => {
                    assert_eq!(i.batch.degraded, Some(DegradeReason::LeaseLost));
                    assert!(id_of(&n, &i, 0) > last);
                    last = id_of(&n, &i, i.batch.count - 1);
                    assert!(n.layout().decompose(last).unwrap().timestamp <= ceiling);
                    total += i.batch.count;
                }
                Err(Blocked::NotReady { .. }) => break,
                Err(other) => panic!("{other:?}"),
            }
        }
        // Everything from the fence to the ceiling: about 2 s of units.
        assert!(total >= 1999 * 4096, "{total}");
        n.set_lease_lost(false);
        assert!(!n.lease_lost());

        let n = granted(&clock, Policy::Degrade, Policy::Reject);
        n.set_lease_lost(true);
        assert!(matches!(n.try_issue(&p, 1), Err(Blocked::NotReady { .. })));
        assert_eq!(n.readiness().status, "not_ready");
    }

    #[test]
    fn skew_degrades_and_recovers() {
        let clock = Arc::new(ManualClock::new(T0));
        let n = granted(&clock, Policy::Degrade, Policy::Degrade);
        let p = LastIssued::new();
        n.set_clock_skew(true, 5000.0);
        assert_eq!(
            n.try_issue(&p, 1).unwrap().batch.degraded,
            Some(DegradeReason::ClockSkew)
        );
        assert_eq!(
            n.readiness(),
            Readiness {
                status: "degraded",
                reasons: vec!["clock_skew"]
            }
        );
        n.set_clock_skew(false, 0.0);
        assert_eq!(n.try_issue(&p, 1).unwrap().batch.degraded, None);
    }

    #[test]
    fn starting_and_stopping_are_not_ready() {
        let clock = Arc::new(ManualClock::new(T0));
        let n = granted(&clock, Policy::Degrade, Policy::Degrade);
        let p = LastIssued::new();
        n.set_starting(true);
        assert!(matches!(n.try_issue(&p, 1), Err(Blocked::NotReady { .. })));
        n.set_starting(false);
        assert!(n.try_issue(&p, 1).is_ok());
        n.set_stopping();
        assert_eq!(n.readiness().reasons, vec!["stopping"]);
    }

    #[test]
    fn nothing_is_issued_above_the_timestamp_sealed_at_stop() {
        let clock = Arc::new(ManualClock::new(T0));
        let n = Arc::new(granted(&clock, Policy::Degrade, Policy::Degrade));
        let p = Arc::new(LastIssued::new());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let issuers: Vec<_> = (0..3)
            .map(|_| {
                let (n, p, stop) = (n.clone(), p.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut last_ts = 0;
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok(i) = n.try_issue(&p, 1) {
                            last_ts = last_ts.max(n.generator().timestamp_of(i.batch.first));
                        }
                    }
                    last_ts
                })
            })
            .collect();
        // Time moves while they issue, so later numbers carry later timestamps.
        for _ in 0..200 {
            clock.advance(1);
            std::thread::yield_now();
        }
        n.set_stopping();
        let sealed = p.seal(n.generator());
        for _ in 0..50 {
            clock.advance(1);
            std::thread::yield_now();
        }
        stop.store(true, Ordering::Relaxed);
        for t in issuers {
            let last = t.join().unwrap();
            assert!(
                last <= sealed,
                "issued at {last}, after sealing at {sealed}"
            );
        }
        assert!(matches!(
            n.try_issue(&p, 1),
            Err(Blocked::NotReady {
                reason: "shutting down",
                ..
            })
        ));
    }

    #[test]
    fn a_start_up_floor_ahead_of_the_clock_is_a_backward_episode() {
        let clock = Arc::new(ManualClock::new(T0));
        let n = node(clock.clone(), Policy::Degrade, Policy::Degrade);
        let floor = n.layout().units_at(T0 + 10_000);
        n.install_grant(0, 0, floor, floor + 2000);
        n.raise_time_to(floor);
        let p = LastIssued::new();
        let i = n.try_issue(&p, 1).unwrap();
        assert_eq!(i.batch.degraded, Some(DegradeReason::ClockBackward));
        assert_eq!(i.batch.first >> 12, floor + 1);
        clock.advance(10_001);
        let j = n.try_issue(&p, 1).unwrap();
        assert_eq!(j.batch.degraded, None);
        assert!(id_of(&n, &j, 0) > id_of(&n, &i, 0));
    }

    #[test]
    fn hitting_the_ceiling_asks_for_a_renewal() {
        let clock = Arc::new(ManualClock::new(T0));
        let n = node(clock.clone(), Policy::Degrade, Policy::Degrade);
        let now = n.now_units();
        let id = n.install_grant(0, 0, 0, now);
        let p = LastIssued::new();
        assert_eq!(n.try_issue(&p, 5000).unwrap().batch.count, 4096);
        assert_eq!(n.try_issue(&p, 1), Err(Blocked::Ceiling));
        // A reservation made for another grant does not count.
        n.extend_ceiling(id + 1, now + 10);
        assert_eq!(n.try_issue(&p, 1), Err(Blocked::Ceiling));
        n.extend_ceiling(id, now + 10);
        assert!(n.try_issue(&p, 1).is_ok());
        n.clear_grant();
        assert!(n.grant().is_none());
    }
}
