//! What the embedded store keeps beside each config write: the config revisions (a counter
//! bumped in the same transaction as every write or delete) and the audit records.

use redb::ReadableTable;

use super::{AUDIT, PREFIX_REV, REVISION, REVISION_KEY, decode, unavailable};
use crate::store::{AUDIT_KEEP, AuditRecord, Observed, Revision, StoreError};

/// Appends `record` to the audit records of `key` in `txn`, numbered after the last one,
/// and drops the oldest beyond [`AUDIT_KEEP`]. A key's records are numbered without gaps
/// (only the oldest are ever removed), so its first and last number say how many it has.
pub(super) fn append_audit(
    txn: &redb::WriteTransaction,
    key: &str,
    record: &AuditRecord,
) -> Result<(), StoreError> {
    let mut table = txn.open_table(AUDIT).map_err(unavailable)?;
    let (first, last) = {
        let mut rows = table
            .range((key, 0)..=(key, u64::MAX))
            .map_err(unavailable)?;
        let first = rows.next().transpose().map_err(unavailable)?;
        let first = first.map(|(k, _)| k.value().1);
        let last = rows.next_back().transpose().map_err(unavailable)?;
        (first, last.map(|(k, _)| k.value().1))
    };
    let next = last.or(first).map_or(1, |n| n + 1);
    table
        .insert((key, next), record.encode()?.as_str())
        .map_err(unavailable)?;
    let keep_from = (next + 1).saturating_sub(AUDIT_KEEP as u64);
    for n in first.unwrap_or(next)..keep_from {
        table.remove((key, n)).map_err(unavailable)?;
    }
    Ok(())
}

/// A value of a `&str -> u64` table (the revision tables).
pub(super) fn stored_u64(
    table: &impl ReadableTable<&'static str, u64>,
    key: &str,
) -> Result<Option<u64>, StoreError> {
    Ok(table.get(key).map_err(unavailable)?.map(|v| v.value()))
}

/// Records a new revision for the config of `key` written in `txn`, and returns it.
pub(super) fn record_revision(
    txn: &redb::WriteTransaction,
    key: &str,
) -> Result<Revision, StoreError> {
    let revision = next_revision(txn)?;
    let mut revisions = txn.open_table(PREFIX_REV).map_err(unavailable)?;
    revisions.insert(key, revision).map_err(unavailable)?;
    Ok(revision)
}

/// Bumps the config revision counter in `txn`: the revision of a write or delete made in it.
pub(super) fn next_revision(txn: &redb::WriteTransaction) -> Result<Revision, StoreError> {
    let mut table = txn.open_table(REVISION).map_err(unavailable)?;
    let next = stored_u64(&table, REVISION_KEY)?.unwrap_or(0) + 1;
    table.insert(REVISION_KEY, next).map_err(unavailable)?;
    Ok(next)
}

/// What the open tables hold under `key`: its config and revision, or the counter's value
/// when it is absent. Data written before revisions were kept reads as revision 0.
pub(super) fn observed_in(
    configs: &impl ReadableTable<&'static str, &'static str>,
    revisions: &impl ReadableTable<&'static str, u64>,
    counter: &impl ReadableTable<&'static str, u64>,
    key: &str,
) -> Result<Observed, StoreError> {
    let config = configs
        .get(key)
        .map_err(unavailable)?
        .map(|v| decode(key, v.value()))
        .transpose()?;
    let revision = match config {
        Some(_) => stored_u64(revisions, key)?,
        None => stored_u64(counter, REVISION_KEY)?,
    };
    Ok(Observed {
        config,
        revision: revision.unwrap_or(0),
    })
}
