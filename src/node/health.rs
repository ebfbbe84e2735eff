//! The node's health flags (starting, lease lost, clock skew, stopping, global etcd tier
//! unreachable): setting them,
//! the degraded episodes they start and end (one WARN each way), what `/ready` says, and
//! `numgen_lease_healthy`, whose only writer is here.

use std::sync::Mutex;
use std::sync::atomic::Ordering;

use super::{Blocked, Node, not_ready, reason_index};
use crate::id::{DegradeReason, Policy};

pub(super) const STARTING: u32 = 1;
pub(super) const LEASE_LOST: u32 = 1 << 1;
pub(super) const CLOCK_SKEW: u32 = 1 << 2;
pub(super) const STOPPING: u32 = 1 << 3;
/// Two etcd tiers, and the global one does not answer: nothing about this node's numbers
/// (snowflake needs only the local tier), so `/ready` names it without changing its status.
pub(super) const GLOBAL_UNREACHABLE: u32 = 1 << 4;

/// What `/ready` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    /// `ok`, `degraded` or `not_ready`.
    pub status: &'static str,
    pub reasons: Vec<&'static str>,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.status == "ok"
    }
}

/// One condition's episode: the degraded count when it started.
#[derive(Default)]
pub(super) struct Episode {
    started_at_count: Mutex<Option<u64>>,
}

/// Refuses while the node is starting (its clock behind the worker ID's floor) or stopping.
#[inline]
pub(super) fn held_back(flags: u32) -> Result<(), Blocked> {
    if flags & STOPPING != 0 {
        Err(not_ready("shutting down"))
    } else if flags & STARTING != 0 {
        Err(not_ready(
            "waiting for the clock to pass this worker ID's reserved timestamp",
        ))
    } else {
        Ok(())
    }
}

impl Node {
    /// `numgen_lease_healthy`, from the node's own state (its only writer): 1 while a
    /// worker ID is held and its lease is not lost.
    pub(super) fn publish_lease_health(&self) {
        let healthy = self.grant.get().is_some() && !self.lease_lost();
        self.metrics.lease_healthy.set(i64::from(healthy));
    }

    fn set_flag(&self, flag: u32, on: bool) -> bool {
        let before = if on {
            self.flags.fetch_or(flag, Ordering::AcqRel)
        } else {
            self.flags.fetch_and(!flag, Ordering::AcqRel)
        };
        (before & flag != 0) != on
    }

    pub fn set_starting(&self, on: bool) {
        self.set_flag(STARTING, on);
    }

    pub fn set_stopping(&self) {
        self.set_flag(STOPPING, true);
    }

    /// Marks the global etcd tier as not answering (or answering again); `true` when that
    /// changed.
    pub fn set_global_unreachable(&self, on: bool) -> bool {
        self.set_flag(GLOBAL_UNREACHABLE, on)
    }

    /// Fences the node (lease lost) or lifts the fence. While fenced, time stands still at
    /// the moment of fencing, so degraded numbers stay within the persisted reservation.
    pub fn set_lease_lost(&self, lost: bool) {
        if lost {
            self.fence(self.grant().map_or(0, |g| g.ceiling));
            return;
        }
        if self.set_flag(LEASE_LOST, false) {
            self.publish_lease_health();
            self.end_episode(DegradeReason::LeaseLost);
        }
        self.freeze.store(u64::MAX, Ordering::Release);
    }

    /// Fences the node, its time frozen now and never past `ceiling` (what is persisted).
    pub(super) fn fence(&self, ceiling: u64) {
        if !self.lease_lost() {
            self.freeze
                .store(self.now_units().min(ceiling), Ordering::Release);
        }
        if self.set_flag(LEASE_LOST, true) {
            self.publish_lease_health();
            self.begin_episode(DegradeReason::LeaseLost, "worker lease not renewed in time");
        }
    }

    pub fn lease_lost(&self) -> bool {
        self.flags.load(Ordering::Acquire) & LEASE_LOST != 0
    }

    /// Marks the node's clock as too far from its peers' (or back within bounds); while
    /// they judge it ahead, the node runs on their time (`Node::correct_for_skew`).
    pub fn set_clock_skew(&self, skewed: bool, offset_ms: f64) {
        self.correct_for_skew(skewed, offset_ms);
        if self.set_flag(CLOCK_SKEW, skewed) {
            if skewed {
                self.begin_episode(
                    DegradeReason::ClockSkew,
                    &format!("clock is {offset_ms:.0} ms from the peers' median"),
                );
            } else {
                self.end_episode(DegradeReason::ClockSkew);
            }
        }
    }

    pub(super) fn begin_episode(&self, reason: DegradeReason, detail: &str) {
        let i = reason_index(reason);
        let mut started = self.episodes[i]
            .started_at_count
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if started.is_none() {
            *started = Some(self.degraded[i].get());
            let policy = match reason {
                DegradeReason::ClockBackward => self.settings.on_clock_backward,
                DegradeReason::LeaseLost => self.settings.on_lease_loss,
                DegradeReason::ClockSkew => Policy::Degrade,
            };
            let effect = match policy {
                Policy::Degrade => "numbers are degraded",
                Policy::Reject => "numbers are refused (503)",
            };
            tracing::warn!(reason = reason.as_str(), "{detail}: {effect}");
        }
    }

    pub(super) fn end_episode(&self, reason: DegradeReason) {
        let i = reason_index(reason);
        let mut started = self.episodes[i]
            .started_at_count
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(at) = started.take() {
            let marked = self.degraded[i].get().saturating_sub(at);
            tracing::warn!(
                reason = reason.as_str(),
                degraded_numbers = marked,
                "{} is over: {marked} numbers were marked degraded",
                reason.as_str()
            );
        }
    }

    /// What `/ready` says.
    pub fn readiness(&self) -> Readiness {
        let reading = self.observe();
        let flags = self.flags.load(Ordering::Acquire);
        let mut blocking = Vec::new();
        let mut degrading = Vec::new();
        if self.grant.get().is_none() {
            blocking.push("no_worker_id");
        }
        if flags & STARTING != 0 {
            blocking.push("starting");
        }
        if flags & STOPPING != 0 {
            blocking.push("stopping");
        }
        let mut condition = |on: bool, policy: Policy, name: &'static str| {
            if on {
                match policy {
                    Policy::Degrade => degrading.push(name),
                    Policy::Reject => blocking.push(name),
                }
            }
        };
        condition(
            flags & LEASE_LOST != 0,
            self.settings.on_lease_loss,
            "lease_lost",
        );
        condition(
            reading.backward_until.is_some(),
            self.settings.on_clock_backward,
            "clock_backward",
        );
        condition(flags & CLOCK_SKEW != 0, Policy::Degrade, "clock_skew");
        let status = if !blocking.is_empty() {
            "not_ready"
        } else if !degrading.is_empty() {
            "degraded"
        } else {
            "ok"
        };
        blocking.extend(degrading);
        // Informational: the status stays what the numbers are (sequence prefixes and
        // admin writes answer STORAGE_UNAVAILABLE on their own).
        if flags & GLOBAL_UNREACHABLE != 0 {
            blocking.push("global_etcd_unreachable");
        }
        Readiness {
            status,
            reasons: blocking,
        }
    }
}
