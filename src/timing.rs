//! Every timing constant of the node's background work, and the durations derived from
//! them, in one place: the lease keep-alive and fence, how far ahead timestamps are
//! reserved and how often that is renewed, the retry waits, the skew and clock checks, and
//! the etcd connection's timeouts. Each derived value is a function of the setting it
//! depends on (`lease_ttl_s`, the reservation window), so the relations between them read
//! here rather than across the loops that use them.
//!
//! A leaf: it depends on nothing in the crate, so the store, the worker-ID sources and the
//! wiring can all take their numbers from here. The per-call store deadline is SPEC's
//! (`store::DEFAULT_TIMEOUT`, 2 s) and stays with the `Store` contract.

use std::time::Duration;

// --- Worker lease (cluster mode) ----------------------------------------------------------

/// The smallest fence margin: room for etcd and this node disagreeing on time.
const MIN_FENCE_MARGIN: Duration = Duration::from_secs(1);

/// How long before the lease TTL runs out, counted from the last confirmed renewal, a node
/// fences itself: max(1 s, TTL / 5).
pub fn fence_margin(lease_ttl_s: u64) -> Duration {
    (Duration::from_secs(lease_ttl_s) / 5).max(MIN_FENCE_MARGIN)
}

/// How long after the lease's grant (from before it was asked for) or its last confirmed
/// renewal (from when that renewal was sent) the node is fenced: the TTL minus the margin.
pub fn fence_after(lease_ttl_s: u64) -> Duration {
    Duration::from_secs(lease_ttl_s).saturating_sub(fence_margin(lease_ttl_s))
}

/// How far ahead a cluster node reserves timestamps: the lease TTL plus the fence margin.
/// At the fence the reservation then still reaches about `2 * margin - 1.35 s` past the
/// frozen time (renewal granularity 1 s, [`reserve_tick`] at most 250 ms, [`LEASE_TICK`]
/// 100 ms), room for degraded numbers, while a node taking the worker ID over after the
/// lease expires waits at most about the margin for its clock to pass it.
pub fn reserve_window(lease_ttl_s: u64) -> Duration {
    Duration::from_secs(lease_ttl_s) + fence_margin(lease_ttl_s)
}

/// How often a healthy lease is renewed: a third of the TTL, within 0.5–5 s.
pub fn keep_alive_every(lease_ttl_s: u64) -> Duration {
    (Duration::from_secs(lease_ttl_s) / 3).clamp(Duration::from_millis(500), Duration::from_secs(5))
}

/// How long one renewal may take before it counts as failed: at most 2 s, and never
/// longer than the renewal period.
pub fn renewal_deadline(lease_ttl_s: u64) -> Duration {
    keep_alive_every(lease_ttl_s).min(Duration::from_secs(2))
}

/// How often a fenced node, or one whose last renewal failed, tries to renew, so that it
/// recovers soon after etcd answers (a leader election takes about a second).
pub const FENCED_RENEW_EVERY: Duration = Duration::from_millis(500);

/// The keep-alive loop's tick: how late a fence or a due renewal may be noticed.
pub const LEASE_TICK: Duration = Duration::from_millis(100);

/// The wait before claiming again after a failed claim (etcd unreachable, ...).
pub const CLAIM_RETRY: Duration = Duration::from_secs(1);

/// The wait before claiming again when every worker ID is taken: half a TTL, in which
/// time a crashed holder's lease may have expired.
pub fn all_taken_retry(lease_ttl_s: u64) -> Duration {
    Duration::from_secs(lease_ttl_s) / 2
}

// --- Timestamp reservation (both modes) ---------------------------------------------------

/// How far ahead of the clock a standalone node reserves timestamps (cluster mode:
/// [`reserve_window`]).
pub const STANDALONE_WINDOW: Duration = Duration::from_secs(2);

/// [`STANDALONE_WINDOW`] in ms.
pub const STANDALONE_WINDOW_MS: u64 = STANDALONE_WINDOW.as_millis() as u64;

/// How often the reservation is checked: an eighth of the window, within 10–250 ms.
pub fn reserve_tick(window: Duration) -> Duration {
    (window / 8).clamp(Duration::from_millis(10), Duration::from_millis(250))
}

/// How much of the reservation the clock may use up before it is renewed: this, or half
/// the window when that is shorter (the renewal granularity: the mark stays between the
/// window minus this and the window ahead of the clock).
pub const RESERVE_RENEW_AFTER: Duration = Duration::from_secs(1);

// --- Watches and checks -------------------------------------------------------------------

/// How long a numbers request may wait for the reservation of timestamps to be extended
/// (then `STORAGE_UNAVAILABLE`).
pub const RESERVATION_WAIT: Duration = Duration::from_secs(2);
/// How often a request waiting for the reservation looks again.
pub const RESERVATION_POLL: Duration = Duration::from_millis(20);

/// The wait before reading the prefix configs again after a failed read or watch. Short:
/// it bounds how late a node cut off from the (global) etcd learns the configs written
/// meanwhile once the partition heals (SPEC 5: within 1 s), and a failed read already
/// waited out the store deadline.
pub const WATCH_RETRY: Duration = Duration::from_millis(200);

/// How often the global etcd tier's reachability is looked at for `/ready` (its members
/// are probed every [`PROBE_EVERY`]), and the wait before the mirror of the prefix configs
/// is written again after a failure.
pub const TIER_CHECK_EVERY: Duration = Duration::from_millis(200);

/// The wait before a background task asks the store again how an admin write that timed
/// out ended, after the store failed (after a timeout it asks again at once: the question
/// waits in the store's queue) (`service::admin`).
pub const SETTLE_RETRY: Duration = Duration::from_secs(1);

/// How often a cluster node measures its clock against its peers.
pub const SKEW_CHECK_EVERY: Duration = Duration::from_secs(1);

/// How long one peer's clock probe (all of its round trips) may take.
pub const SKEW_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a cluster node waits, before it claims a worker ID, for its first look at its
/// peers' clocks (a read of the registry, then the probes): when they find its clock ahead
/// it reserves on their time from the start. It claims anyway after this.
pub const FIRST_SKEW_CHECK_WAIT: Duration = Duration::from_secs(4);

/// While a node runs on its peers' time (they judge its clock ahead), its correction only
/// shrinks, so that the node's time does not step back with the noise of each estimate;
/// a clock that got further ahead than this since is followed again.
pub const SKEW_REGROW: Duration = Duration::from_secs(1);

/// A worker ID's persisted mark this far ahead of a starting node's clock is implausible:
/// a correct node reserves at most the reservation window (at most 6 minutes, with
/// `lease_ttl_s` 300) ahead of a clock within `max_skew_ms` of its peers, so such a mark was
/// written by a clock that ran far ahead. A cluster node skips that worker ID (WARN) rather
/// than wait (or degrade) until its clock gets there.
pub const IMPLAUSIBLE_MARK_AHEAD: Duration = Duration::from_secs(3600);

/// How often the clock is read without traffic (ends backward episodes, sees jumps).
pub const CLOCK_WATCH_TICK: Duration = Duration::from_millis(100);

// --- The etcd connection ------------------------------------------------------------------

/// How long one TCP (and TLS) connection attempt to an endpoint may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The whole of connecting to etcd, authentication included.
pub const CONNECT_DEADLINE: Duration = Duration::from_secs(5);

/// HTTP/2 pings on a connection with requests in flight. etcd answers pings more often than
/// every 5 s (its `--grpc-keepalive-min-time`) with GOAWAY "too_many_pings", so stay above it;
/// pings are sent only while streams are open for the same reason (etcd does not permit
/// pings without streams).
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// A ping unanswered for this long drops the connection, so the next call reconnects.
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The kernel's keep-alive on idle connections, so a half-open TCP connection is noticed.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(30);

// --- Members that do not answer (store::etcd::members) -----------------------------------

/// How long the first attempt of an etcd call may take on one member before the call moves
/// to the next member. Loopback and LAN calls take milliseconds (a write: one fsync on a
/// quorum); this leaves room for a busy machine while a frozen member costs a call at most
/// this. Each later round through the members doubles it, so a cluster that is merely
/// slow still gets the whole store deadline.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);

/// The pause after every member failed once in a call (times the round, at most 4), so
/// quick refusals during a leader election do not spin.
pub const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// How often each member is asked for its status, so that a frozen preferred member is
/// usually left before a call waits on it, and a new leader is known soon after the
/// election: a write sent to the old leader, or through a member that still followed it,
/// waits there for good and is sent again then.
pub const PROBE_EVERY: Duration = Duration::from_millis(200);

/// How long a status request may take before its member counts as in trouble.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// How often the prefix watch asks its member for a progress report.
pub const WATCH_PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// A watch that has sent nothing for this long after a progress request is on a member
/// that does not answer: it is opened again on another member (after a full read).
pub const WATCH_SILENT_FOR: Duration = Duration::from_millis(1500);

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(d: Duration) -> u128 {
        d.as_millis()
    }

    #[test]
    fn lease_timings_follow_the_ttl() {
        // (ttl, margin, fence after, window, renew every, renewal deadline) in ms
        let cases = [
            (3, 1000, 2000, 4000, 1000, 1000),
            (10, 2000, 8000, 12000, 3333, 2000),
            (60, 12000, 48000, 72000, 5000, 2000),
            (1, 1000, 0, 2000, 500, 500),
        ];
        for (ttl, margin, after, window, every, deadline) in cases {
            let got = (
                ms(fence_margin(ttl)),
                ms(fence_after(ttl)),
                ms(reserve_window(ttl)),
                ms(keep_alive_every(ttl)),
                ms(renewal_deadline(ttl)),
            );
            assert_eq!(got, (margin, after, window, every, deadline), "ttl {ttl}");
        }
        assert_eq!(all_taken_retry(10), Duration::from_secs(5));
    }

    #[test]
    fn the_fence_comes_before_the_lease_expires_and_within_the_reservation() {
        for ttl in 3..=300 {
            let ttl_d = Duration::from_secs(ttl);
            assert!(fence_after(ttl) < ttl_d, "ttl {ttl}");
            // At the fence, the reservation reaches at least one margin past it.
            assert!(reserve_window(ttl) >= fence_after(ttl) + 2 * fence_margin(ttl));
            assert!(renewal_deadline(ttl) <= keep_alive_every(ttl));
            assert!(keep_alive_every(ttl) < fence_after(ttl), "ttl {ttl}");
        }
    }

    #[test]
    fn the_reservation_tick_is_an_eighth_of_the_window_within_bounds() {
        assert_eq!(reserve_tick(STANDALONE_WINDOW), Duration::from_millis(250));
        assert_eq!(
            reserve_tick(Duration::from_millis(800)),
            Duration::from_millis(100)
        );
        assert_eq!(
            reserve_tick(Duration::from_millis(2)),
            Duration::from_millis(10)
        );
        assert_eq!(STANDALONE_WINDOW_MS, 2000);
    }
}
