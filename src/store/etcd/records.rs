//! The etcd side of the per-key record (`records/{key}`, [`PrefixRecord`]): config writes
//! decided with the record and the key's counters, and sequence reservations guarded on the
//! record, each as one etcd transaction guarded on what it read.
//!
//! A config write reads the config, the record, the legacy reset binding and every counter
//! of the key (`seq/{key}` and `seq/{key}/…`) in one transaction at revision R, plans, then
//! writes config and record only if none of them changed: the config, record and binding
//! by their `mod_revision`, the counters by "every key in the range has `mod_revision` ≤ R"
//! (a range compare; a counter created since fails it too). So a format switch records the
//! exact high-water mark: no block is reserved between the read and the write.
//! A guarded reservation reads the counter and the record together and writes the counter
//! only while the record is unchanged, so no block is reserved for a format replaced since.
//!
//! Every call goes through [`super::Members::call`], which may send it again to another
//! member when one does not answer; each attempt is guarded on what it read, so of an
//! attempt whose answer was lost and its retry at most one commits (a reservation's lost
//! block is a gap, never handed out twice).

use etcd_client::{Compare, CompareOp, KeyValue, Txn, TxnOp, TxnOpResponse};

use super::{
    EtcdStore, Seen, append_audit, audit_keys, decode, encode, header_revision, keys_in, parse_u64,
    seen_in, unchanged,
};
use crate::prefix::PrefixConfig;
use crate::store::record::{PrefixRecord, SeqGuard, Stored, plan_write, reservation_allowed};
use crate::store::{
    AuditMeta, AuditRecord, Chained, Revision, SeqBlock, StoreError, Written, clash_rules,
    next_block, parse_bound_reset,
};

/// The key-values read by the `i`th operation of a transaction.
fn kvs_at(ops: &[TxnOpResponse], i: usize) -> &[KeyValue] {
    match ops.get(i) {
        Some(TxnOpResponse::Get(get)) => get.kvs(),
        _ => &[],
    }
}

fn record_at(key: &str, value: Option<&[u8]>) -> Result<Option<PrefixRecord>, StoreError> {
    value.map(|v| PrefixRecord::decode(key, v)).transpose()
}

/// The etcd keys of one prefix.
struct KeyKeys {
    config: String,
    record: String,
    legacy: String,
    seq: String,
    periods: String,
}

impl KeyKeys {
    fn of(store: &EtcdStore, key: &str) -> KeyKeys {
        let k = store.keys();
        KeyKeys {
            config: k.prefix(key),
            record: k.record(key),
            legacy: k.seq_reset(key),
            seq: k.seq(key),
            periods: k.seq_periods(key),
        }
    }

    /// Config, record, legacy binding; then the counter and its periods (`with_counters`).
    fn reads(&self, with_counters: bool) -> Vec<TxnOp> {
        let mut ops = vec![
            TxnOp::get(self.config.as_str(), None),
            TxnOp::get(self.record.as_str(), None),
            TxnOp::get(self.legacy.as_str(), None),
        ];
        if with_counters {
            ops.push(TxnOp::get(self.seq.as_str(), None));
            let range = etcd_client::GetOptions::new().with_prefix();
            ops.push(TxnOp::get(self.periods.as_str(), Some(range)));
        }
        ops
    }
}

/// The highest counter value among `kvs`.
fn highest(kvs: &[&KeyValue]) -> Result<Option<u64>, StoreError> {
    let mut mark = None;
    for kv in kvs {
        let key = kv.key_str().unwrap_or_default();
        mark = mark.max(Some(parse_u64(key, kv.value())?));
    }
    Ok(mark)
}

/// See [`crate::store::Store::write_prefix`]: the config write, its record and, when it
/// writes, its audit record, in one transaction. A retry on another member (the first
/// attempt may have committed without an answer) that finds exactly this config where
/// `create_only` found none reports `Created`: the config is there, as asked.
pub(super) async fn write_prefix(
    store: &EtcdStore,
    prefix_key: &str,
    config: &PrefixConfig,
    create_only: bool,
    audit: &AuditMeta,
) -> Result<(Written, Revision), StoreError> {
    let keys = KeyKeys::of(store, prefix_key);
    let json = encode(config)?;
    let rules = clash_rules(store.nodes);
    let audit_dir = store.keys().audit(prefix_key);
    let (keys, json, audit_dir) = (&keys, json.as_str(), audit_dir.as_str());
    store
        .members
        .call(store.timeout, |c, attempt| async move {
            let mut kv = c.kv_client();
            loop {
                let mut reads = keys.reads(true);
                reads.push(audit_keys(audit_dir));
                let resp = kv.txn(Txn::new().and_then(reads)).await?;
                let revision = resp.header().map_or(0, |h| h.revision());
                let ops = resp.op_responses();
                let [stored, record, legacy] =
                    [0, 1, 2].map(|i| seen_in(ops.get(i..).unwrap_or_default()));
                let existing = stored
                    .value
                    .as_deref()
                    .map(|v| decode(&keys.config, v))
                    .transpose()?;
                let counters: Vec<&KeyValue> =
                    kvs_at(&ops, 3).iter().chain(kvs_at(&ops, 4)).collect();
                let audited = keys_in(ops.get(5));
                let plan = plan_write(
                    prefix_key,
                    Stored {
                        config: existing.as_ref(),
                        record: record_at(&keys.record, record.value.as_deref())?,
                        legacy_reset: legacy
                            .value
                            .as_deref()
                            .map(|v| parse_bound_reset(&keys.legacy, v))
                            .transpose()?,
                        mark: highest(&counters)?,
                    },
                    config,
                    create_only,
                    rules,
                );
                if plan.written == Written::Exists
                    && attempt > 0
                    && existing.as_ref() == Some(config)
                {
                    // An earlier attempt committed without an answer (audit included).
                    return Ok((Written::Created, stored.revision.max(0) as Revision));
                }
                let (true, Some(new_record)) = (plan.written.wrote(), &plan.record) else {
                    return Ok((plan.written, 0));
                };
                let not_after = revision.saturating_add(1);
                let mut guards = vec![
                    unchanged(&keys.config, stored.revision),
                    unchanged(&keys.record, record.revision),
                    unchanged(&keys.legacy, legacy.revision),
                    Compare::mod_revision(keys.seq.as_str(), CompareOp::Less, not_after),
                    Compare::mod_revision(keys.periods.as_str(), CompareOp::Less, not_after)
                        .with_prefix(),
                ];
                let mut writes = vec![
                    TxnOp::put(keys.config.as_str(), json, None),
                    TxnOp::put(keys.record.as_str(), new_record.encode()?, None),
                ];
                if let Some(entry) =
                    AuditRecord::of_write(audit, &plan.written, existing.as_ref(), config)
                {
                    let (new, ops) = append_audit(store.keys(), prefix_key, &audited, &entry)?;
                    guards.push(new);
                    writes.extend(ops);
                }
                let resp = kv.txn(Txn::new().when(guards).and_then(writes)).await?;
                if resp.succeeded() {
                    return Ok((plan.written, header_revision(resp.header())));
                }
            }
        })
        .await
}

/// See [`crate::store::Store::prefix_record`].
pub(super) async fn prefix_record(
    store: &EtcdStore,
    key: &str,
) -> Result<Option<PrefixRecord>, StoreError> {
    let keys = KeyKeys::of(store, key);
    let keys = &keys;
    let resp = store
        .members
        .call(store.timeout, |mut c, _| async move {
            Ok(c.txn(Txn::new().and_then(keys.reads(false))).await?)
        })
        .await?;
    let ops = resp.op_responses();
    let [config, record, legacy] = [0, 1, 2].map(|i| seen_in(ops.get(i..).unwrap_or_default()));
    let config = config
        .value
        .as_deref()
        .map(|v| decode(&keys.config, v))
        .transpose()?;
    let legacy = legacy
        .value
        .as_deref()
        .map(|v| parse_bound_reset(&keys.legacy, v))
        .transpose()?;
    let record = record_at(&keys.record, record.value.as_deref())?;
    Ok(PrefixRecord::effective(record, config.as_ref(), legacy))
}

/// The counter and the record as read by a transaction's gets, in that order (the record
/// absent when it was not read).
fn counter_and_record(ops: &[TxnOpResponse]) -> (Seen, Seen) {
    (seen_in(ops), seen_in(ops.get(1..).unwrap_or_default()))
}

/// Whether `guard` may reserve under the record read as `value` (at etcd key `at`).
fn allowed(at: &str, value: Option<&[u8]>, guard: &SeqGuard<'_>) -> Result<bool, StoreError> {
    Ok(reservation_allowed(record_at(at, value)?.as_ref(), guard))
}

/// See [`crate::store::Store::reserve_seq_as`]: a compare-and-swap on the counter, with a
/// guard also on the record read with it. It starts from the counter (and the record) as
/// this store last knew them (no read first when nobody else wrote); each lost race hands
/// back what is stored now, and some node wins every round, so this ends (or the deadline
/// does).
///
/// Exact across retries: every write is guarded on the revision it was computed from, so
/// of two attempts computed from the same state at most one commits, and one computed from
/// a state that has moved on commits nothing. An attempt that timed out may have
/// committed; the next one (on another member) then finds the counter moved, and reserves
/// the block after it. The block of the silent attempt is never handed out: a gap, never a
/// repeat (`tests/etcd_members.rs` makes one).
pub(super) async fn reserve(
    store: &EtcdStore,
    counter: &str,
    size: u64,
    initial: u64,
    guard: Option<&SeqGuard<'_>>,
) -> Result<SeqBlock, StoreError> {
    let key = store.keys().seq(counter);
    let key = key.as_str();
    let record_key = guard.map(|g| store.keys().record(g.key));
    let record_key = record_key.as_deref();
    // The counter and the record as this store last saw them: a write guarded on them
    // needs no read first while nobody else wrote (one round trip per reservation).
    let known = match record_key {
        None => store.known(key).map(|s| (s, Seen::from_kvs(&[]))),
        Some(rk) => store.known(key).zip(store.known(rk)),
    };
    let (block, seen, record) = store
        .members
        .call(store.timeout, |c, _| {
            let known = known.clone();
            async move {
                let mut kv = c.kv_client();
                let mut reads = vec![TxnOp::get(key, None)];
                reads.extend(record_key.map(|r| TxnOp::get(r, None)));
                let read =
                    |resp: etcd_client::TxnResponse| counter_and_record(&resp.op_responses());
                let (mut seen, mut record, mut fresh) = match known {
                    Some((s, r)) => (s, r, false),
                    None => {
                        let (s, r) = read(kv.txn(Txn::new().and_then(reads.clone())).await?);
                        (s, r, true)
                    }
                };
                loop {
                    let mut when = vec![unchanged(key, seen.revision)];
                    if let (Some(g), Some(rk)) = (guard, record_key) {
                        if !allowed(rk, record.value.as_deref(), g)? {
                            if !fresh {
                                // What this store remembers may be old: refused only on
                                // what is stored now.
                                (seen, record) =
                                    read(kv.txn(Txn::new().and_then(reads.clone())).await?);
                                fresh = true;
                                continue;
                            }
                            return Err(StoreError::FormatReplaced(g.key.to_string()).into());
                        }
                        when.push(unchanged(rk, record.revision));
                    }
                    let stored = seen
                        .value
                        .as_deref()
                        .map(|v| parse_u64(key, v))
                        .transpose()?;
                    let current = stored.unwrap_or(initial).max(initial);
                    let block = next_block(current, size)
                        .ok_or_else(|| StoreError::Overflow(counter.to_string()))?;
                    let end = block.end.to_string();
                    let txn = Txn::new()
                        .when(when)
                        .and_then([TxnOp::put(key, end.as_str(), None)])
                        .or_else(reads.clone());
                    let resp = kv.txn(txn).await?;
                    if resp.succeeded() {
                        // One put in the transaction: its revision is the put's.
                        let revision = resp.header().map_or(0, |h| h.revision());
                        let value = Some(end.into_bytes());
                        return Ok((block, Seen { value, revision }, record));
                    }
                    (seen, record) = read(resp);
                    fresh = true;
                }
            }
        })
        .await?;
    store.learn(key, seen);
    if let Some(rk) = record_key {
        store.learn(rk, record);
    }
    Ok(block)
}

/// See [`crate::store::Store::reserve_seq_from`]: one transaction, guarded on the record's
/// revision as this store last saw it (without one remembered, a miss at once: the
/// ordinary reservation reads it). Inside, one nested transaction per value in `from`,
/// each compared on the counter's value and tried when the one before did not match
/// (etcd 3.3+), so that whichever value the counter stands at, it moves to `end`.
pub(super) async fn reserve_from(
    store: &EtcdStore,
    counter: &str,
    from: &[u64],
    end: u64,
    guard: &SeqGuard<'_>,
) -> Result<Chained, StoreError> {
    let key = store.keys().seq(counter);
    let key = key.as_str();
    let record_key = store.keys().record(guard.key);
    let record_key = record_key.as_str();
    let Some(record) = store.known(record_key) else {
        return Ok(Chained::Missed(None));
    };
    let from: Vec<u64> = from.iter().copied().filter(|&v| v < end).collect();
    let Some((&last, before)) = from.split_last() else {
        return Ok(Chained::Missed(None));
    };
    if !allowed(record_key, record.value.as_deref(), guard)? {
        return Ok(Chained::Missed(None));
    }
    let end_text = end.to_string();
    // "If the counter stands at `v`, move it to `end`; otherwise `next`." Built innermost
    // first: the last value's test reads the counter when it does not match.
    let test = |v: u64, next: TxnOp| {
        Txn::new()
            .when([Compare::value(key, CompareOp::Equal, v.to_string())])
            .and_then([TxnOp::put(key, end_text.as_str(), None)])
            .or_else([next])
    };
    let mut chain = test(last, TxnOp::get(key, None));
    for &v in before.iter().rev() {
        chain = test(v, TxnOp::txn(chain));
    }
    let txn = Txn::new()
        .when([unchanged(record_key, record.revision)])
        .and_then([TxnOp::txn(chain)])
        .or_else([TxnOp::get(key, None), TxnOp::get(record_key, None)]);
    let resp = store
        .members
        .call(store.timeout, |c, _| {
            let txn = txn.clone();
            async move { Ok(c.kv_client().txn(txn).await?) }
        })
        .await?;
    let seen = if resp.succeeded() {
        // Walk down the nested answers to the one that matched, or to the counter's read.
        let mut level = resp.op_responses();
        for &v in &from {
            let Some(TxnOpResponse::Txn(inner)) = level.first() else {
                break;
            };
            if inner.succeeded() {
                let revision = resp.header().map_or(0, |h| h.revision());
                let value = Some(end_text.into_bytes());
                store.learn(key, Seen { value, revision });
                return Ok(Chained::Reserved(v));
            }
            let next = inner.op_responses();
            level = next;
        }
        if !matches!(level.first(), Some(TxnOpResponse::Get(_))) {
            return Ok(Chained::Missed(None));
        }
        seen_in(&level)
    } else {
        // The record changed: the ordinary reservation decides on what is stored now.
        let (seen, now) = counter_and_record(&resp.op_responses());
        store.learn(record_key, now);
        seen
    };
    let at = seen.value.as_deref().and_then(|v| parse_u64(key, v).ok());
    store.learn(key, seen);
    Ok(Chained::Missed(at))
}

/// See [`crate::store::Store::release_seq_as`]. Guarded on the revision at which the
/// counter was seen ending at `block_end`, not on the value alone: a release sent to a
/// member that did not answer may run later, after a retry gave the numbers back and
/// another node reserved them again, and the counter may then stand at `block_end` once
/// more; the revision has moved on, so it cannot rewind the counter under that node's
/// block. With a guard, only while the record still allows it.
pub(super) async fn release(
    store: &EtcdStore,
    counter: &str,
    block_end: u64,
    back_to: u64,
    guard: Option<&SeqGuard<'_>>,
) -> Result<bool, StoreError> {
    if back_to > block_end {
        // Never upward: that would skip numbers nobody reserved.
        return Ok(false);
    }
    let key = store.keys().seq(counter);
    let key = key.as_str();
    let record_key = guard.map(|g| store.keys().record(g.key));
    let record_key = record_key.as_deref();
    let (end, back) = (block_end.to_string(), back_to.to_string());
    let (end, back) = (end.as_bytes(), back.as_str());
    let released = store
        .members
        .call(store.timeout, |c, _| async move {
            let mut kv = c.kv_client();
            let mut reads = vec![TxnOp::get(key, None)];
            reads.extend(record_key.map(|r| TxnOp::get(r, None)));
            let resp = kv.txn(Txn::new().and_then(reads)).await?;
            let ops = resp.op_responses();
            let (seen, record) = counter_and_record(&ops);
            // Values are written only by this module, always as canonical decimal text, so
            // comparing the text is comparing the number.
            if seen.value.as_deref() != Some(end) {
                return Ok(None);
            }
            let mut when = vec![unchanged(key, seen.revision)];
            if let (Some(g), Some(rk)) = (guard, record_key) {
                if !allowed(rk, record.value.as_deref(), g)? {
                    return Ok(None);
                }
                when.push(unchanged(rk, record.revision));
            }
            let txn = Txn::new()
                .when(when)
                .and_then([TxnOp::put(key, back, None)]);
            let resp = kv.txn(txn).await?;
            Ok(resp
                .succeeded()
                .then(|| resp.header().map_or(0, |h| h.revision())))
        })
        .await?;
    if let Some(revision) = released {
        let value = Some(back.as_bytes().to_vec());
        store.learn(key, Seen { value, revision });
    }
    Ok(released.is_some())
}
