//! The redb side of the per-key record ([`PrefixRecord`], table `prefix_records`): reading
//! it, the legacy reset binding and a key's highest counter inside a transaction, and the
//! guard every sequence reservation runs under.

use redb::ReadableTable;

use super::{RECORDS, stored_seq, unavailable};
use crate::store::StoreError;
use crate::store::parse_bound_reset;
use crate::store::record::{PrefixRecord, SeqGuard, reservation_allowed};

/// The highest value of any counter of prefix `key` (`key` and `key/{period}`).
pub(super) fn highest_seq(
    table: &redb::Table<&str, u64>,
    key: &str,
) -> Result<Option<u64>, StoreError> {
    let (from, to) = (format!("{key}/"), format!("{key}0"));
    let mut mark = stored_seq(table, key)?;
    for row in table
        .range(from.as_str()..to.as_str())
        .map_err(unavailable)?
    {
        let value = row.map_err(unavailable)?.1.value();
        mark = mark.max(Some(value));
    }
    Ok(mark)
}

/// The record of `key` as stored in `RECORDS` (without the legacy fallback).
pub(super) fn stored_record(
    table: &impl ReadableTable<&'static str, &'static str>,
    key: &str,
) -> Result<Option<PrefixRecord>, StoreError> {
    table
        .get(key)
        .map_err(unavailable)?
        .map(|v| PrefixRecord::decode(&format!("prefix_records/{key}"), v.value().as_bytes()))
        .transpose()
}

/// The legacy reset binding of `key`, if any.
pub(super) fn legacy_reset(
    table: &impl ReadableTable<&'static str, &'static str>,
    key: &str,
) -> Result<Option<crate::prefix::Reset>, StoreError> {
    table
        .get(key)
        .map_err(unavailable)?
        .map(|v| parse_bound_reset(&format!("seq_reset/{key}"), v.value().as_bytes()))
        .transpose()
}

/// Whether `guard` may reserve or release now (no guard: always).
pub(super) fn guard_allows(
    txn: &redb::WriteTransaction,
    guard: Option<&Guard>,
) -> Result<bool, StoreError> {
    let Some(g) = guard else { return Ok(true) };
    let records = txn.open_table(RECORDS).map_err(unavailable)?;
    let record = stored_record(&records, &g.key)?;
    Ok(reservation_allowed(record.as_ref(), &g.as_guard()))
}

/// A [`SeqGuard`] that the writer thread can own.
pub(super) struct Guard {
    pub(super) key: String,
    format: String,
    seq_length: u8,
}

impl Guard {
    pub(super) fn of(g: &SeqGuard<'_>) -> Guard {
        Guard {
            key: g.key.to_string(),
            format: g.format.to_string(),
            seq_length: g.seq_length,
        }
    }

    fn as_guard(&self) -> SeqGuard<'_> {
        SeqGuard {
            key: &self.key,
            format: &self.format,
            seq_length: self.seq_length,
        }
    }
}
