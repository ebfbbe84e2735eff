//! The audit trail of prefix configs (SPEC 7). Every accepted admin change — register,
//! replace, delete — is recorded by the store inside the transaction that makes the change,
//! so there is no change without its record and no record of a change that was refused.
//! A record says when, from which peer address, with which token (its fingerprint, never
//! the token), and the config before and after. Both backends keep the newest
//! [`AUDIT_KEEP`] records of each key and list them newest first.
//!
//! The caller supplies who and when ([`AuditMeta`]); the store, which alone sees the
//! stored config inside its transaction, supplies what ([`AuditRecord::of_write`],
//! [`AuditRecord::of_delete`]).

use serde::{Deserialize, Serialize};

use super::{StoreError, Written};
use crate::prefix::PrefixConfig;

/// How many records each prefix key keeps; older ones are dropped as new ones come.
pub const AUDIT_KEEP: usize = 100;

/// Who made a change, and when: what the HTTP layer knows of an admin request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditMeta {
    /// Unix ms.
    pub time_ms: u64,
    /// The client's address as the server saw it (`ip:port`).
    pub peer: String,
    /// The first 16 hex digits of the SHA-256 of the token used.
    pub token_fingerprint: String,
}

impl AuditMeta {
    /// A change made outside any request (tests and tools that call the store directly):
    /// the time now, no peer, no token.
    pub fn unattributed() -> AuditMeta {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        AuditMeta {
            time_ms: now,
            peer: String::new(),
            token_fingerprint: String::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditAction {
    /// A config where there was none (`POST`, or a `PUT` that created).
    Register,
    /// A config over another (`PUT`).
    Replace,
    Delete,
}

/// One accepted change, as stored (JSON) and shown by `GET /prefix-configs/{key}/history`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub action: AuditAction,
    #[serde(flatten)]
    pub meta: AuditMeta,
    pub before: Option<PrefixConfig>,
    pub after: Option<PrefixConfig>,
}

impl AuditRecord {
    /// The record of a config write decided as `outcome`: `None` when nothing was written.
    pub fn of_write(
        meta: &AuditMeta,
        outcome: &Written,
        before: Option<&PrefixConfig>,
        after: &PrefixConfig,
    ) -> Option<AuditRecord> {
        let action = match outcome {
            Written::Created => AuditAction::Register,
            Written::Replaced => AuditAction::Replace,
            _ => return None,
        };
        Some(AuditRecord {
            action,
            meta: meta.clone(),
            before: before.cloned(),
            after: Some(after.clone()),
        })
    }

    /// The record of a config deleted; `before` is what was stored (`None` if unreadable).
    pub fn of_delete(meta: &AuditMeta, before: Option<PrefixConfig>) -> AuditRecord {
        AuditRecord {
            action: AuditAction::Delete,
            meta: meta.clone(),
            before,
            after: None,
        }
    }

    /// The stored form.
    pub fn encode(&self) -> Result<String, StoreError> {
        serde_json::to_string(self).map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    /// A stored record at `key` (named in the error).
    pub fn decode(key: &str, value: &[u8]) -> Result<AuditRecord, StoreError> {
        serde_json::from_slice(value).map_err(|e| StoreError::Corrupt {
            key: key.to_string(),
            detail: e.to_string(),
        })
    }

    /// The API form: the stored fields and the time as RFC 3339 too.
    pub fn to_json(&self) -> serde_json::Value {
        let time = i64::try_from(self.meta.time_ms)
            .ok()
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        let config = |c: &Option<PrefixConfig>| {
            c.as_ref()
                .map(PrefixConfig::to_json)
                .unwrap_or(serde_json::Value::Null)
        };
        serde_json::json!({
            "time": time,
            "time_ms": self.meta.time_ms,
            "action": self.action,
            "peer": self.meta.peer,
            "token_fingerprint": self.meta.token_fingerprint,
            "before": config(&self.before),
            "after": config(&self.after),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prefix::{Mode, Reset, UtcOffset};

    fn config(format: &str) -> PrefixConfig {
        PrefixConfig {
            format: format.into(),
            seq_length: 3,
            initial_seq: 0,
            mode: Mode::Sequence,
            reset: Reset::Never,
            utc_offset: UtcOffset::default(),
            strict: false,
        }
    }

    fn meta() -> AuditMeta {
        AuditMeta {
            time_ms: 1_767_225_600_000,
            peer: "127.0.0.1:5000".into(),
            token_fingerprint: "ba7816bf8f01cfea".into(),
        }
    }

    #[test]
    fn only_writes_that_happened_are_recorded() {
        let (a, b) = (config("A{SEQ:3}"), config("B{SEQ:3}"));
        let created = AuditRecord::of_write(&meta(), &Written::Created, None, &a).unwrap();
        assert_eq!(
            (created.action, created.before, created.after),
            (AuditAction::Register, None, Some(a.clone()))
        );
        let replaced = AuditRecord::of_write(&meta(), &Written::Replaced, Some(&a), &b).unwrap();
        assert_eq!(replaced.action, AuditAction::Replace);
        assert_eq!(
            (replaced.before, replaced.after),
            (Some(a.clone()), Some(b))
        );
        for refused in [
            Written::Exists,
            Written::ModeChange(Mode::Snowflake),
            Written::ResetChange(Reset::Yearly),
        ] {
            assert_eq!(AuditRecord::of_write(&meta(), &refused, Some(&a), &a), None);
        }
        let deleted = AuditRecord::of_delete(&meta(), Some(a.clone()));
        assert_eq!((deleted.action, deleted.after), (AuditAction::Delete, None));
    }

    #[test]
    fn records_round_trip_and_show_their_time() {
        let r =
            AuditRecord::of_write(&meta(), &Written::Created, None, &config("A{SEQ:3}")).unwrap();
        let stored = r.encode().unwrap();
        assert_eq!(AuditRecord::decode("k", stored.as_bytes()), Ok(r.clone()));
        let v = r.to_json();
        assert_eq!(v["time"], "2026-01-01T00:00:00.000Z");
        assert_eq!(v["action"], "register");
        assert_eq!(v["token_fingerprint"], "ba7816bf8f01cfea");
        assert_eq!(v["before"], serde_json::Value::Null);
        assert_eq!(v["after"]["format"], "A{SEQ:3}");
        assert!(matches!(
            AuditRecord::decode("k", b"{}"),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(AuditMeta::unattributed().time_ms > meta().time_ms);
    }
}
