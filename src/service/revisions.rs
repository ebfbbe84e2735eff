//! Which version of each prefix config the registry holds (SPEC 3.1: no node ever goes back
//! to an older version of a config). Configs reach the registry along several paths that
//! race each other: the answer of this node's own admin write, the read-through lookup of a
//! key missing from memory, the watch's events and its full reads, and a write whose
//! outcome is settled after a timeout. Each carries the store's revision of what it saw, and
//! [`Revisions`] admits only what is newer than what the registry already holds for that
//! key — a delete included, so that an older put cannot bring a deleted key back.
//!
//! Pure bookkeeping, no I/O: the registry asks before it changes its map, under its
//! writers' lock.

use std::collections::HashMap;

use crate::store::Revision;

/// Per key, the revision up to which the registry knows its state.
#[derive(Debug, Default)]
pub(super) struct Revisions {
    /// Every key without an entry in `by_key` is known as of this revision: the last full
    /// read, which listed every config there was.
    floor: Revision,
    /// Keys known as of a later revision than `floor` (a write, an event, a lookup since).
    by_key: HashMap<String, Revision>,
}

impl Revisions {
    /// The revision `key`'s state in the registry is known as of.
    pub(super) fn held(&self, key: &str) -> Revision {
        self.by_key.get(key).copied().unwrap_or(self.floor)
    }

    /// True when a state of `key` seen as of `revision` is newer than the one held: the
    /// caller is to make it the registry's, then [`Revisions::record`] it.
    pub(super) fn is_newer(&self, key: &str, revision: Revision) -> bool {
        revision > self.held(key)
    }

    /// The registry now holds `key` as of `revision`.
    pub(super) fn record(&mut self, key: &str, revision: Revision) {
        if revision > self.held(key) {
            self.by_key.insert(key.to_string(), revision);
        }
    }

    /// True when a full read as of `revision` decides `key`'s state: nothing newer about it
    /// was seen since.
    pub(super) fn snapshot_decides(&self, key: &str, revision: Revision) -> bool {
        self.held(key) <= revision
    }

    /// A full read as of `revision` was applied: every key is known as of it, and only what
    /// was seen later needs its own entry (so tombstones of deleted keys are dropped here).
    pub(super) fn synced(&mut self, revision: Revision) {
        self.floor = self.floor.max(revision);
        let floor = self.floor;
        self.by_key.retain(|_, r| *r > floor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_newer_states_are_admitted_deletes_included() {
        let mut r = Revisions::default();
        assert!(r.is_newer("A", 1));
        r.record("A", 5);
        // The answer of an older write, or an older lookup, comes late: refused.
        assert!(!r.is_newer("A", 4));
        assert!(!r.is_newer("A", 5));
        assert!(r.is_newer("A", 6));
        // A delete at 7 is held like a put: a put read at 6 cannot bring the key back.
        r.record("A", 7);
        assert!(!r.is_newer("A", 6));
        // Recording never goes back either.
        r.record("A", 3);
        assert_eq!(r.held("A"), 7);
    }

    #[test]
    fn a_full_read_decides_what_was_not_seen_since() {
        let mut r = Revisions::default();
        r.record("OLD", 3);
        r.record("NEW", 12);
        assert!(r.snapshot_decides("OLD", 10));
        assert!(r.snapshot_decides("UNSEEN", 10));
        assert!(!r.snapshot_decides("NEW", 10));
        r.synced(10);
        // Every key is known as of the read; what came later keeps its own revision.
        assert_eq!(
            (r.held("OLD"), r.held("UNSEEN"), r.held("NEW")),
            (10, 10, 12)
        );
        assert_eq!(r.by_key.len(), 1);
        // A lookup that read an absent key's config before the full read is refused.
        assert!(!r.is_newer("UNSEEN", 9));
        // An older full read changes nothing.
        r.synced(8);
        assert_eq!(r.held("OLD"), 10);
    }
}
