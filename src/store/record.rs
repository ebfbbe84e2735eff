//! One record per prefix key that outlives DELETE (SPEC 1.3): the mode the key was first
//! registered with, the `reset` its counters are named by, and the history of its formats
//! with the sequence values each has rendered. Both stores keep it beside the config (etcd
//! `records/{key}`, redb table `prefix_records`) and decide every config write with
//! [`plan_write`] in the transaction that writes it, from the config, the record and the
//! highest counter value of the key, read in that same transaction.
//!
//! A format's values: a sequence format rendered from its `lo` (the first value it could
//! take) up to the counters' high-water mark when it was replaced (`hi`; while in use, the
//! mark now). A format only renders values reserved while it is the key's current format:
//! [`PrefixRecord::allows`] is the guard every sequence reservation and release runs under,
//! so a node still on the old config cannot reserve past the mark recorded at the switch.
//! A snowflake format's IDs are not known centrally: it counts as rendering every ID above
//! its floor (`initial_seq`).
//!
//! Pure code: the stores do the reading and writing.

use serde::{Deserialize, Serialize};

use super::{StoreError, Written};
use crate::format::clash::{Rendering, Values, common_string};
use crate::format::{Civil, NodeWidths, Template};
use crate::prefix::{Mode, PrefixConfig, Reset};

/// The largest snowflake ID: IDs keep the sign bit 0.
pub const SNOWFLAKE_TOP: u64 = i64::MAX as u64;

/// What a prefix key keeps for its whole life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixRecord {
    pub mode: Mode,
    /// The reset its counters are named by (`seq/{key}` or `seq/{key}/{period}`); sequence
    /// prefixes only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<Reset>,
    /// Every format the key has had, oldest first; the last is the current one.
    #[serde(default)]
    pub formats: Vec<FormatEntry>,
}

/// One format of a key, and the sequence values it may have rendered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormatEntry {
    pub format: String,
    pub seq_length: u8,
    /// The lowest value it may have rendered (snowflake: the floor plus one).
    pub lo: u64,
    /// Sequence prefixes: the highest value it may have rendered, set when it was replaced;
    /// `None` while it is the current format. Snowflake prefixes: always `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hi: Option<u64>,
}

/// The format a sequence reservation is made for: reservations and releases of `key` go
/// through only while it is the key's current format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqGuard<'a> {
    pub key: &'a str,
    pub format: &'a str,
    pub seq_length: u8,
}

impl<'a> SeqGuard<'a> {
    pub fn of(key: &'a str, config: &'a PrefixConfig) -> SeqGuard<'a> {
        SeqGuard {
            key,
            format: &config.format,
            seq_length: config.seq_length,
        }
    }
}

impl FormatEntry {
    fn new(config: &PrefixConfig, lo: u64) -> FormatEntry {
        FormatEntry {
            format: config.format.clone(),
            seq_length: config.seq_length,
            lo,
            hi: None,
        }
    }

    fn is(&self, format: &str, seq_length: u8) -> bool {
        self.format == format && self.seq_length == seq_length
    }

    /// The values it rendered, for a prefix in `mode` whose counters stand at `mark`.
    fn rendered(&self, mode: Mode, mark: Option<u64>) -> Values {
        match mode {
            Mode::Snowflake => Values::new(self.lo, SNOWFLAKE_TOP),
            Mode::Sequence => Values::new(self.lo, self.hi.unwrap_or(mark.unwrap_or(0))),
        }
    }
}

impl PrefixRecord {
    /// The stored record at `key` (for the error), read from JSON.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<PrefixRecord, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
            key: key.to_string(),
            detail: e.to_string(),
        })
    }

    pub fn encode(&self) -> Result<String, StoreError> {
        serde_json::to_string(self).map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    /// The record of a key from what is stored: its record; or, for data written before
    /// records were kept, one made from its config (its format's values unknown: from 0)
    /// and the reset binding (`seq-reset/{key}`) that preceded records.
    pub fn effective(
        record: Option<PrefixRecord>,
        config: Option<&PrefixConfig>,
        legacy_reset: Option<Reset>,
    ) -> Option<PrefixRecord> {
        if record.is_some() {
            return record;
        }
        match (config, legacy_reset) {
            (Some(c), _) => Some(PrefixRecord {
                mode: c.mode,
                reset: (c.mode == Mode::Sequence).then(|| legacy_reset.unwrap_or(c.reset)),
                formats: vec![FormatEntry::new(c, 0)],
            }),
            (None, Some(reset)) => Some(PrefixRecord {
                mode: Mode::Sequence,
                reset: Some(reset),
                formats: Vec::new(),
            }),
            (None, None) => None,
        }
    }

    /// True when a block may be reserved (or given back) for `guard`'s format: it is the
    /// key's current format, or the key has none on record.
    pub fn allows(&self, guard: &SeqGuard<'_>) -> bool {
        self.formats
            .last()
            .is_none_or(|cur| cur.is(guard.format, guard.seq_length))
    }
}

/// Whether `record` (none: no record) lets `guard` reserve.
pub fn reservation_allowed(record: Option<&PrefixRecord>, guard: &SeqGuard<'_>) -> bool {
    record.is_none_or(|r| r.allows(guard))
}

/// A format refused because it could render what an earlier format of the prefix rendered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatClash {
    /// A string both formats can render.
    pub example: String,
    /// The earlier format.
    pub earlier: String,
    /// The earlier format's sequence values; `None` for a snowflake prefix (every ID above
    /// its floor counts).
    pub values: Option<(u64, u64)>,
}

/// What the store holds for a key, read in the write's transaction.
#[derive(Clone, Debug, Default)]
pub struct Stored<'a> {
    pub config: Option<&'a PrefixConfig>,
    pub record: Option<PrefixRecord>,
    /// The reset binding that preceded records (read for old data only).
    pub legacy_reset: Option<Reset>,
    /// The highest value of any of the key's counters (every period).
    pub mark: Option<u64>,
}

/// What a config write checks its formats with.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClashRules {
    /// The layout's `{dc}`/`{worker}` ranges.
    pub nodes: NodeWidths,
    /// The date an example string's date fields prefer (today's, so it reads naturally).
    pub hint: Option<Civil>,
}

/// A config write's outcome and, when it writes, the key's record afterwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub written: Written,
    pub record: Option<PrefixRecord>,
}

impl Plan {
    fn refused(written: Written) -> Plan {
        Plan {
            written,
            record: None,
        }
    }
}

/// The lowest value `config` renders from now on: above the counters for a sequence that
/// never resets (they never go back); from `initial_seq + 1` for one that resets (each new
/// period starts there) and for snowflake IDs (the floor).
fn first_value(config: &PrefixConfig, mark: Option<u64>) -> u64 {
    match (config.mode, config.reset) {
        (Mode::Sequence, Reset::Never) => mark.unwrap_or(0).max(config.initial_seq),
        _ => config.initial_seq,
    }
    .saturating_add(1)
}

/// Decides a write of `config` under `key` (`create_only`: `POST`) from what is stored:
/// `Exists`, then a change of mode (the record's mode outlives DELETE), of a sequence
/// prefix's reset, then a format that could render an earlier format's string
/// (`FormatClash`); else the write, with the record to store alongside.
pub fn plan_write(
    key: &str,
    stored: Stored<'_>,
    config: &PrefixConfig,
    create_only: bool,
    rules: ClashRules,
) -> Plan {
    let done = if stored.config.is_some() {
        Written::Replaced
    } else {
        Written::Created
    };
    if create_only && stored.config.is_some() {
        return Plan::refused(Written::Exists);
    }
    let lo = first_value(config, stored.mark);
    let Some(mut record) =
        PrefixRecord::effective(stored.record, stored.config, stored.legacy_reset)
    else {
        let record = PrefixRecord {
            mode: config.mode,
            reset: (config.mode == Mode::Sequence).then_some(config.reset),
            formats: vec![FormatEntry::new(config, lo)],
        };
        return Plan {
            written: done,
            record: Some(record),
        };
    };
    if record.mode != config.mode {
        return Plan::refused(Written::ModeChange(record.mode));
    }
    if config.mode == Mode::Sequence {
        match record.reset {
            Some(bound) if bound != config.reset => {
                return Plan::refused(Written::ResetChange(bound));
            }
            _ => record.reset = Some(config.reset),
        }
    }
    match record.formats.last_mut() {
        Some(cur) if cur.is(&config.format, config.seq_length) => cur.lo = cur.lo.min(lo),
        _ => {
            if let Some(clash) = find_clash(key, &record, config, lo, stored.mark, rules) {
                return Plan::refused(Written::FormatClash(clash));
            }
            if let Some(cur) = record.formats.last_mut()
                && config.mode == Mode::Sequence
            {
                cur.hi = Some(stored.mark.unwrap_or(0));
            }
            record.formats.push(FormatEntry::new(config, lo));
        }
    }
    Plan {
        written: done,
        record: Some(record),
    }
}

/// The first earlier format of `record` that `config` (rendering from `lo` on) could
/// repeat a string of. Each is checked exactly for what it may have rendered
/// ([`FormatEntry::rendered`]), except an earlier use of the same template, which cannot
/// repeat a string whatever the values.
fn find_clash(
    key: &str,
    record: &PrefixRecord,
    config: &PrefixConfig,
    lo: u64,
    mark: Option<u64>,
    rules: ClashRules,
) -> Option<FormatClash> {
    let top = match config.mode {
        Mode::Snowflake => SNOWFLAKE_TOP,
        Mode::Sequence => u64::MAX,
    };
    let degraded = config.mode == Mode::Snowflake;
    let new_template = config.template().ok()?;
    let new = Rendering {
        template: &new_template,
        prefix: key,
        nodes: rules.nodes,
        values: Values::new(lo, top),
        degraded,
    };
    record.formats.iter().find_map(|entry| {
        // Stored formats were valid when stored, and the grammar only grows.
        let old_template = Template::parse(&entry.format, Some(entry.seq_length)).ok()?;
        if old_template == new_template {
            // The same template renders the same string only for the same number: the same
            // ID, or the same counter value in the same period (which it shows, SPEC 1.3),
            // and the store hands each out once.
            return None;
        }
        let values = entry.rendered(config.mode, mark);
        let old = Rendering {
            template: &old_template,
            values,
            ..new
        };
        let example = common_string(&new, &old, rules.hint)?;
        Some(FormatClash {
            example,
            earlier: entry.format.clone(),
            values: (config.mode == Mode::Sequence).then_some((values.lo, values.hi)),
        })
    })
}

#[cfg(test)]
mod tests;
