//! The worker grant a node issues under, readable on every request without a lock or a
//! reference count: a [`SeqLock`] over its words. Writes (a new grant, a cleared one, the
//! reservation ceiling moving up about once a second) are rare; a reader that overlaps one
//! simply reads again. The fields are read together, so a request never pairs one worker
//! ID with another worker ID's ceiling.

use crate::sync::{SeqLock, Words};

/// The worker ID a node holds and the range of timestamps it may use with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Tells this grant from every other the node held (counts from 1): a reservation made
    /// for one grant extends only that one.
    pub id: u64,
    pub dc: u64,
    pub worker: u64,
    /// The datacenter and worker fields in place (`Layout::node_bits`).
    pub node_bits: u64,
    /// Timestamps up to here may have been used under this worker ID before.
    pub floor: u64,
    /// Timestamps up to here are persisted as reserved.
    pub ceiling: u64,
}

/// The grant's id (zero when none is held), then the fields.
impl Words<6> for Option<Grant> {
    fn to_words(self) -> [u64; 6] {
        match self {
            None => [0; 6],
            Some(g) => [g.id, g.dc, g.worker, g.node_bits, g.floor, g.ceiling],
        }
    }
    fn from_words([id, dc, worker, node_bits, floor, ceiling]: [u64; 6]) -> Option<Grant> {
        (id != 0).then_some(Grant {
            id,
            dc,
            worker,
            node_bits,
            floor,
            ceiling,
        })
    }
}

#[derive(Debug, Default)]
pub struct GrantCell(SeqLock<Option<Grant>, 6>);

impl GrantCell {
    /// The current grant, if one is held.
    #[inline]
    pub fn get(&self) -> Option<Grant> {
        self.0.read()
    }

    pub fn set(&self, grant: Option<Grant>) {
        self.0.write(grant);
    }

    /// Raises the ceiling of grant `id` (never lowers it); nothing when another grant (or
    /// none) is held by now.
    pub fn extend_ceiling(&self, id: u64, ceiling: u64) {
        self.0.update(|held| {
            held.map(|g| {
                if g.id != id {
                    return g;
                }
                Grant {
                    ceiling: g.ceiling.max(ceiling),
                    ..g
                }
            })
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn grant(n: u64) -> Grant {
        Grant {
            id: n,
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
        c.extend_ceiling(1, 10);
        assert_eq!(c.get(), None);
        c.set(Some(grant(3)));
        assert_eq!(c.get(), Some(grant(3)));
        c.extend_ceiling(3, 2);
        assert_eq!(c.get().unwrap().ceiling, 3);
        c.extend_ceiling(3, 9);
        assert_eq!(c.get().unwrap().ceiling, 9);
        // A reservation made for another grant extends nothing.
        c.extend_ceiling(2, 50);
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
                        assert_eq!(g.id, g.dc);
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
