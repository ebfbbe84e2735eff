//! Every etcd key numgen reads or writes, built in one place from one normalised root
//! (SPEC section 5):
//!
//! ```text
//! {root}/workers/{dc}/{worker}  leased node entry (JSON), the worker-ID claim
//! {root}/hwm/{dc}/{worker}      reserved high timestamp, decimal Unix ms text
//! {root}/prefixes/{key}         PrefixConfig as JSON
//! {root}/seq/{key}[/{period}]   sequence high-water mark, decimal u64 text
//! {root}/seq-reset/{key}        the reset a sequence prefix's counters were bound to before
//!                               records (read for old data only)
//! {root}/records/{key}          the key's record, JSON: mode, reset, format history
//! {root}/layout                 the ID layout the data was written with
//! {root}/audit/{key}/{id}       one audit record of a prefix config change (JSON); a
//!                               key's records are ordered by their create revision
//! {root}/mirror/prefixes/{key}  local tier: the config as the global tier has it, JSON
//!                               `{"revision": R, "config": {...} | null}` (null: deleted)
//! {root}/nodes/{dc}/{node_id}   global tier, with two tiers: a node's registry entry
//!                               (leased), so every datacenter's nodes are listed
//! ```
//!
//! With two etcd tiers (SPEC 5), the local one (this datacenter's) holds `workers/`,
//! `hwm/`, `mirror/` and its own `layout` (the layout its data was written with, checked
//! against the global one); the global one holds `prefixes/`, `records/`, `audit/`,
//! `seq/`, `seq-reset/`, `layout` and `nodes/`. With one etcd, all of it is in one.
//!
//! The root is normalised once: surrounding and repeated slashes do not matter, so `/`
//! gives `/layout`, and `/numgen`, `/numgen/` and `numgen` all give `/numgen/layout`. The
//! store, the worker-ID claim, the node registry and the prefix watch all take their keys
//! from the same [`Keys`], so they cannot disagree on where a key lives.

/// The key scheme under one root. Cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    /// The normalised root with its trailing slash: `/` or `/numgen/`. Every key is this
    /// plus a relative path.
    base: String,
}

impl Keys {
    pub fn new(root: &str) -> Keys {
        let parts: Vec<&str> = root.split('/').filter(|p| !p.is_empty()).collect();
        let base = if parts.is_empty() {
            "/".to_string()
        } else {
            format!("/{}/", parts.join("/"))
        };
        Keys { base }
    }

    /// The root as configured, normalised: `/` or `/numgen` (no trailing slash).
    pub fn root(&self) -> &str {
        match self.base.len() {
            1 => "/",
            n => &self.base[..n - 1],
        }
    }

    fn under(&self, rel: std::fmt::Arguments<'_>) -> String {
        format!("{}{rel}", self.base)
    }

    /// `workers/{dc}/{worker}`: the node holding a worker ID (leased).
    pub fn worker(&self, dc: u64, worker: u64) -> String {
        self.under(format_args!("workers/{dc}/{worker}"))
    }

    /// `workers/`: every node's entry, of every datacenter.
    pub fn workers(&self) -> String {
        self.under(format_args!("workers/"))
    }

    /// `workers/{dc}/`: the worker IDs of one datacenter.
    pub fn workers_of(&self, dc: u64) -> String {
        self.under(format_args!("workers/{dc}/"))
    }

    /// The worker ID of a key under [`Keys::workers_of`] `dc`.
    pub fn worker_id(&self, dc: u64, full: &str) -> Option<u64> {
        full.strip_prefix(&self.workers_of(dc))?.parse().ok()
    }

    /// `hwm/{dc}/{worker}`: the highest timestamp a worker ID may have used.
    pub fn hwm(&self, dc: u64, worker: u64) -> String {
        self.under(format_args!("hwm/{dc}/{worker}"))
    }

    /// `prefixes/{key}`: a prefix config.
    pub fn prefix(&self, key: &str) -> String {
        self.under(format_args!("prefixes/{key}"))
    }

    /// `prefixes/`: every prefix config (list, watch).
    pub fn prefixes(&self) -> String {
        self.under(format_args!("prefixes/"))
    }

    /// The prefix key of a config's full etcd key; `None` for anything that is not a direct
    /// child of [`Keys::prefixes`] (deeper keys are not configs).
    pub fn prefix_name<'a>(&self, full: &'a str) -> Option<&'a str> {
        let name = full
            .strip_prefix(self.base.as_str())?
            .strip_prefix("prefixes/")?;
        (!name.is_empty() && !name.contains('/')).then_some(name)
    }

    /// `seq/{counter}`: a sequence counter (`counter` is `key` or `key/period`).
    pub fn seq(&self, counter: &str) -> String {
        self.under(format_args!("seq/{counter}"))
    }

    /// `seq/{key}/`: the counters of a prefix that resets, one per period.
    pub fn seq_periods(&self, key: &str) -> String {
        self.under(format_args!("seq/{key}/"))
    }

    /// `seq-reset/{key}`: the reset a sequence prefix's counters were made under, as data
    /// written before records has it.
    pub fn seq_reset(&self, key: &str) -> String {
        self.under(format_args!("seq-reset/{key}"))
    }

    /// `records/{key}`: what the key keeps for its whole life (mode, reset, formats).
    pub fn record(&self, key: &str) -> String {
        self.under(format_args!("records/{key}"))
    }

    /// `layout`: the ID layout the data was written with.
    pub fn layout(&self) -> String {
        self.under(format_args!("layout"))
    }

    /// `mirror/prefixes/{key}`: the local tier's copy of a prefix config.
    pub fn mirror(&self, key: &str) -> String {
        self.under(format_args!("mirror/prefixes/{key}"))
    }

    /// `mirror/prefixes/`: every mirrored config.
    pub fn mirrors(&self) -> String {
        self.under(format_args!("mirror/prefixes/"))
    }

    /// The prefix key of a mirrored config's full etcd key.
    pub fn mirror_name<'a>(&self, full: &'a str) -> Option<&'a str> {
        let name = full.strip_prefix(&self.mirrors())?;
        (!name.is_empty() && !name.contains('/')).then_some(name)
    }

    /// `nodes/{dc}/{node_id}`: a node's entry in the global tier's registry (leased).
    pub fn dc_node(&self, dc: u64, node_id: &str) -> String {
        self.under(format_args!("nodes/{dc}/{node_id}"))
    }

    /// `nodes/`: every datacenter's nodes in the global tier.
    pub fn dc_nodes(&self) -> String {
        self.under(format_args!("nodes/"))
    }

    /// `audit/{key}/`: the audit records of a prefix key.
    pub fn audit(&self, key: &str) -> String {
        self.under(format_args!("audit/{key}/"))
    }

    /// `audit/{key}/{id}`: one audit record (`id` makes it unique; the record's place in
    /// the history is its create revision).
    pub fn audit_record(&self, key: &str, id: &str) -> String {
        self.under(format_args!("audit/{key}/{id}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_a_root_gives_the_same_keys() {
        for (root, layout, normal) in [
            ("/", "/layout", "/"),
            ("", "/layout", "/"),
            ("//", "/layout", "/"),
            ("/numgen", "/numgen/layout", "/numgen"),
            ("/numgen/", "/numgen/layout", "/numgen"),
            ("numgen", "/numgen/layout", "/numgen"),
            ("//a//b/", "/a/b/layout", "/a/b"),
        ] {
            let k = Keys::new(root);
            assert_eq!(k.layout(), layout, "{root:?}");
            assert_eq!(k.root(), normal, "{root:?}");
            assert_eq!(Keys::new(k.root()), k, "{root:?}");
        }
    }

    #[test]
    fn keys_follow_the_spec_layout() {
        let k = Keys::new("/numgen");
        assert_eq!(k.worker(1, 7), "/numgen/workers/1/7");
        assert_eq!(k.workers(), "/numgen/workers/");
        assert_eq!(k.workers_of(1), "/numgen/workers/1/");
        assert_eq!(k.hwm(1, 7), "/numgen/hwm/1/7");
        assert_eq!(k.prefix("ORDER"), "/numgen/prefixes/ORDER");
        assert_eq!(k.prefixes(), "/numgen/prefixes/");
        assert_eq!(k.seq("INV/2025"), "/numgen/seq/INV/2025");
        assert_eq!(k.seq_reset("INV"), "/numgen/seq-reset/INV");
        assert_eq!(k.audit("INV"), "/numgen/audit/INV/");
        assert_eq!(k.audit_record("INV", "x1"), "/numgen/audit/INV/x1");
        // One key's records are not under another's that starts the same.
        assert!(!k.audit_record("INVOICE", "x").starts_with(&k.audit("INV")));
        assert_eq!(k.seq_periods("INV"), "/numgen/seq/INV/");
        assert_eq!(k.record("INV"), "/numgen/records/INV");
        assert_eq!(k.mirror("INV"), "/numgen/mirror/prefixes/INV");
        assert_eq!(k.mirror_name(&k.mirror("INV")), Some("INV"));
        assert_eq!(k.mirror_name(&k.prefix("INV")), None);
        assert_eq!(k.dc_node(1, "n"), "/numgen/nodes/1/n");
        assert_eq!(k.dc_nodes(), "/numgen/nodes/");
        let top = Keys::new("/");
        assert_eq!(top.worker(0, 3), "/workers/0/3");
        assert_eq!(top.prefixes(), "/prefixes/");
        assert_eq!(top.hwm(0, 3), "/hwm/0/3");
    }

    #[test]
    fn names_are_read_back_from_full_keys() {
        for root in ["/", "/numgen"] {
            let k = Keys::new(root);
            assert_eq!(k.prefix_name(&k.prefix("ORDER")), Some("ORDER"));
            assert_eq!(k.prefix_name(&k.prefix("ORDER/extra")), None);
            assert_eq!(k.prefix_name(&k.prefixes()), None);
            assert_eq!(k.prefix_name(&k.seq("ORDER")), None);
            assert_eq!(k.worker_id(2, &k.worker(2, 5)), Some(5));
            assert_eq!(k.worker_id(1, &k.worker(2, 5)), None);
            assert_eq!(k.worker_id(2, &k.workers_of(2)), None);
        }
        // A neighbouring root is not ours.
        let k = Keys::new("/numgen");
        assert_eq!(k.prefix_name("/numgen2/prefixes/ORDER"), None);
        assert_eq!(k.prefix_name("/numgen/prefixesX"), None);
    }
}
