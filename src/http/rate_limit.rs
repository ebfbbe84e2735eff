//! The optional rate limit per client address (SPEC 7: `rate_limit_per_s`,
//! `rate_limit_burst`; off by default). A token bucket per address, kept as GCRA does: one
//! number per client, the time at which its bucket will be full again ("theoretical arrival
//! time"), so that a request costs a hash, a short lock and a comparison.
//!
//! Memory is bounded, also against an attacker with many addresses: at most
//! [`MAX_CLIENTS`] addresses are tracked, in [`SHARDS`] independently locked shards. A
//! client whose bucket is full again carries no information (it is the same as an unknown
//! one), so a full shard first forgets those; if none is, it forgets the client closest to
//! a full bucket. An evicted client starts again with a full burst: under a flood of new
//! addresses the limit of each address may be looser, never the memory.
//!
//! IPv6 clients are counted per /64 (one host's usual allocation, which it can fill with
//! addresses at will); IPv4 per address, also when it arrives as an IPv4-mapped IPv6
//! address.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many client addresses are tracked at most (about 40 bytes each).
pub const MAX_CLIENTS: usize = 65_536;
/// Independently locked parts of the table, so that clients rarely wait on each other.
pub const SHARDS: usize = 64;
const PER_SHARD: usize = MAX_CLIENTS / SHARDS;

type Shard = HashMap<IpAddr, u64, foldhash::fast::RandomState>;

pub struct RateLimiter {
    /// Nanoseconds between two requests at the sustained rate.
    interval_ns: u64,
    /// How far ahead of now a client's full-again time may be and still be let through:
    /// `burst - 1` intervals.
    tolerance_ns: u64,
    start: Instant,
    /// Chooses a client's shard (seeded at random, so the spread cannot be aimed at).
    spread: foldhash::fast::RandomState,
    shards: Box<[Mutex<Shard>]>,
}

/// The address a client is counted by: IPv4 as is, IPv6 by its /64.
fn client_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

impl RateLimiter {
    /// `per_s` requests a second per client, in bursts of up to `burst` (both at least 1).
    pub fn new(per_s: u64, burst: u64) -> RateLimiter {
        let interval_ns = 1_000_000_000 / per_s.max(1);
        RateLimiter {
            interval_ns: interval_ns.max(1),
            tolerance_ns: interval_ns.saturating_mul(burst.max(1) - 1),
            start: Instant::now(),
            spread: foldhash::fast::RandomState::default(),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(Shard::with_capacity_and_hasher(0, Default::default())))
                .collect(),
        }
    }

    /// `Ok` when a request from `ip` may go ahead now; else how long until it may.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let now = self.start.elapsed().as_nanos() as u64;
        self.check_at(client_of(ip), now)
    }

    /// [`RateLimiter::check`] at `now` (ns since the limiter's start).
    fn check_at(&self, client: IpAddr, now: u64) -> Result<(), Duration> {
        let shard = (self.spread.hash_one(client) as usize) % SHARDS;
        let Some(lock) = self.shards.get(shard) else {
            return Ok(());
        };
        let mut tats = lock.lock().unwrap_or_else(|e| e.into_inner());
        let known = tats.get(&client).copied();
        let tat = known.unwrap_or(now).max(now);
        if tat - now > self.tolerance_ns {
            return Err(Duration::from_nanos(tat - now - self.tolerance_ns));
        }
        if known.is_none() && tats.len() >= PER_SHARD {
            make_room(&mut tats, now);
        }
        tats.insert(client, tat + self.interval_ns);
        Ok(())
    }

    /// How many clients are tracked now.
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

/// How many clients a full shard forgets at once when none has a full bucket: the scan
/// that finds them is paid once per this many new clients.
const EVICT: usize = PER_SHARD / 16;

/// Frees places in a full shard: forgets every client whose bucket is full again (nothing
/// is lost), or else the [`EVICT`] nearest to it.
fn make_room(tats: &mut Shard, now: u64) {
    tats.retain(|_, tat| *tat > now);
    if tats.len() < PER_SHARD {
        return;
    }
    let mut by_tat: Vec<u64> = tats.values().copied().collect();
    let (_, cut, _) = by_tat.select_nth_unstable(EVICT - 1);
    let cut = *cut;
    let mut left = EVICT;
    tats.retain(|_, tat| {
        let evict = *tat <= cut && left > 0;
        left -= usize::from(evict);
        !evict
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const MS: u64 = 1_000_000;

    fn v4(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(n))
    }

    #[test]
    fn a_burst_then_the_sustained_rate() {
        // 10/s in bursts of 3: three at once, then one every 100 ms.
        let l = RateLimiter::new(10, 3);
        let a = v4(1);
        for _ in 0..3 {
            assert_eq!(l.check_at(a, 0), Ok(()));
        }
        assert_eq!(l.check_at(a, 0), Err(Duration::from_millis(100)));
        assert_eq!(l.check_at(a, 40 * MS), Err(Duration::from_millis(60)));
        assert_eq!(l.check_at(a, 100 * MS), Ok(()));
        assert!(l.check_at(a, 150 * MS).is_err());
        assert_eq!(l.check_at(a, 200 * MS), Ok(()));
        // Idle for long: a full burst again, no more.
        for _ in 0..3 {
            assert_eq!(l.check_at(a, 10_000 * MS), Ok(()));
        }
        assert!(l.check_at(a, 10_000 * MS).is_err());
    }

    #[test]
    fn clients_are_counted_apart() {
        let l = RateLimiter::new(1, 1);
        assert_eq!(l.check_at(v4(1), 0), Ok(()));
        assert!(l.check_at(v4(1), 0).is_err());
        assert_eq!(l.check_at(v4(2), 0), Ok(()));
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let host: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_of(host), client_of(same_64));
        assert_ne!(client_of(host), client_of(other_64));
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        assert_eq!(client_of(mapped), "127.0.0.2".parse::<IpAddr>().unwrap());
        let l = RateLimiter::new(1, 1);
        assert_eq!(l.check_at(client_of(host), 0), Ok(()));
        assert!(l.check_at(client_of(same_64), 0).is_err());
    }

    #[test]
    fn many_addresses_never_grow_the_table_past_its_bound() {
        let l = RateLimiter::new(1, 5);
        // Each address sends once and stays limited-relevant (its bucket is not full).
        for n in 0..(MAX_CLIENTS as u32 * 3) {
            assert_eq!(l.check_at(v4(n), u64::from(n)), Ok(()));
        }
        assert!(l.tracked() <= MAX_CLIENTS, "{}", l.tracked());
        // A client that is being limited keeps its state while others churn, as long as
        // its shard has clients nearer to a full bucket.
        let hot = v4(u32::MAX);
        let now = 4 * MAX_CLIENTS as u64;
        for _ in 0..5 {
            assert_eq!(l.check_at(hot, now), Ok(()));
        }
        assert!(l.check_at(hot, now).is_err());
        for n in 0..1000u32 {
            let _ = l.check_at(v4(n + 10_000_000), now);
        }
        assert!(l.check_at(hot, now).is_err());
    }

    #[test]
    fn a_full_shard_forgets_full_buckets_first_then_the_nearest() {
        let now = 1000 * MS;
        let hot = v4(u32::MAX);
        let mut shard = Shard::default();
        // Half the clients' buckets are full again (their time has passed), half are not.
        for n in 0..PER_SHARD as u32 - 1 {
            let tat = if n % 2 == 0 {
                now - 1
            } else {
                now + u64::from(n)
            };
            shard.insert(v4(n), tat);
        }
        shard.insert(hot, now + 60_000 * MS);
        make_room(&mut shard, now);
        assert_eq!(shard.len(), PER_SHARD / 2, "only the full buckets go");
        assert!(shard.values().all(|tat| *tat > now));
        // Full of clients still limited: the EVICT nearest to a full bucket go.
        for n in 0..PER_SHARD as u32 / 2 {
            shard.insert(v4(n + 5_000_000), now + 500 * MS + u64::from(n));
        }
        assert_eq!(shard.len(), PER_SHARD);
        make_room(&mut shard, now);
        assert_eq!(shard.len(), PER_SHARD - EVICT);
        assert!(shard.contains_key(&hot));
        for n in 1..EVICT as u32 {
            assert!(!shard.contains_key(&v4(2 * n - 1)), "{n}");
        }
    }
}
