//! The worker grant a node issues under, readable on every request without a lock or a
//! reference count: a sequence lock over plain atomics. Writes (a new grant, a cleared one,
//! the reservation ceiling moving up about once a second) are rare and serialised by a
//! mutex; a reader that overlaps one simply reads again. The fields are read together, so a
//! request never pairs one worker ID with another worker ID's ceiling.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering, fence};

/// The worker ID a node holds and the range of timestamps it may use with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub dc: u64,
    pub worker: u64,
    /// The datacenter and worker fields in place (`Layout::node_bits`).
    pub node_bits: u64,
    /// Timestamps up to here may have been used under this worker ID before.
    pub floor: u64,
    /// Timestamps up to here are persisted as reserved.
    pub ceiling: u64,
}

#[derive(Debug, Default)]
pub struct GrantCell {
    /// Odd while a write is under way; bumped twice per write.
    seq: AtomicU64,
    held: AtomicU64,
    dc: AtomicU64,
    worker: AtomicU64,
    node_bits: AtomicU64,
    floor: AtomicU64,
    ceiling: AtomicU64,
    writer: Mutex<()>,
}

impl GrantCell {
    /// The current grant, if one is held.
    #[inline]
    pub fn get(&self) -> Option<Grant> {
        loop {
            let before = self.seq.load(Ordering::Acquire);
            if before & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let held = self.held.load(Ordering::Relaxed) != 0;
            let grant = Grant {
                dc: self.dc.load(Ordering::Relaxed),
                worker: self.worker.load(Ordering::Relaxed),
                node_bits: self.node_bits.load(Ordering::Relaxed),
                floor: self.floor.load(Ordering::Relaxed),
                ceiling: self.ceiling.load(Ordering::Relaxed),
            };
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == before {
                return held.then_some(grant);
            }
        }
    }

    fn write(&self, f: impl FnOnce(&GrantCell)) {
        let _one_writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        f(self);
        self.seq.store(s + 2, Ordering::Release);
    }

    pub fn set(&self, grant: Option<Grant>) {
        self.write(|c| {
            let g = grant.unwrap_or(Grant {
                dc: 0,
                worker: 0,
                node_bits: 0,
                floor: 0,
                ceiling: 0,
            });
            c.held.store(u64::from(grant.is_some()), Ordering::Relaxed);
            c.dc.store(g.dc, Ordering::Relaxed);
            c.worker.store(g.worker, Ordering::Relaxed);
            c.node_bits.store(g.node_bits, Ordering::Relaxed);
            c.floor.store(g.floor, Ordering::Relaxed);
            c.ceiling.store(g.ceiling, Ordering::Relaxed);
        });
    }

    /// Raises the held grant's ceiling (never lowers it).
    pub fn extend_ceiling(&self, ceiling: u64) {
        self.write(|c| {
            if c.held.load(Ordering::Relaxed) != 0 {
                c.ceiling.fetch_max(ceiling, Ordering::Relaxed);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn grant(n: u64) -> Grant {
        Grant {
            dc: n,
            worker: n,
            node_bits: n,
            floor: n,
            ceiling: n,
        }
    }

    #[test]
    fn set_get_extend_clear() {
        let c = GrantCell::default();
        assert_eq!(c.get(), None);
        c.extend_ceiling(10);
        assert_eq!(c.get(), None);
        c.set(Some(grant(3)));
        assert_eq!(c.get(), Some(grant(3)));
        c.extend_ceiling(2);
        assert_eq!(c.get().unwrap().ceiling, 3);
        c.extend_ceiling(9);
        assert_eq!(c.get().unwrap().ceiling, 9);
        c.set(None);
        assert_eq!(c.get(), None);
    }

    #[test]
    fn readers_never_see_a_mix_of_two_grants() {
        let c = Arc::new(GrantCell::default());
        c.set(Some(grant(1)));
        let writer = {
            let c = c.clone();
            std::thread::spawn(move || {
                for n in 2..20_000u64 {
                    c.set(Some(grant(n)));
                }
            })
        };
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..200_000 {
                        let g = c.get().unwrap();
                        assert!(g.dc == g.worker && g.worker == g.floor && g.floor == g.ceiling);
                        assert_eq!(g.node_bits, g.dc);
                    }
                })
            })
            .collect();
        writer.join().unwrap();
        for r in readers {
            r.join().unwrap();
        }
    }
}
