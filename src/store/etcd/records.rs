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

use etcd_client::{Compare, CompareOp, KeyValue, KvClient, Txn, TxnOp, TxnOpResponse};

use super::{EtcdStore, decode, encode, parse_u64, seen_in, unavailable, unchanged};
use crate::prefix::PrefixConfig;
use crate::store::record::{PrefixRecord, SeqGuard, Stored, plan_write, reservation_allowed};
use crate::store::{
    SeqBlock, StoreError, Written, bounded, clash_rules, next_block, parse_bound_reset,
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

/// See [`crate::store::Store::write_prefix`].
pub(super) async fn write_prefix(
    store: &EtcdStore,
    key: &str,
    config: &PrefixConfig,
    create_only: bool,
) -> Result<Written, StoreError> {
    let keys = KeyKeys::of(store, key);
    let json = encode(config)?;
    let rules = clash_rules(store.nodes);
    bounded(store.timeout, async {
        let mut kv = store.kv();
        loop {
            let resp = kv
                .txn(Txn::new().and_then(keys.reads(true)))
                .await
                .map_err(unavailable)?;
            let revision = resp.header().map_or(0, |h| h.revision());
            let ops = resp.op_responses();
            let [stored, record, legacy] =
                [0, 1, 2].map(|i| seen_in(ops.get(i..).unwrap_or_default()));
            let existing = stored
                .value
                .as_deref()
                .map(|v| decode(&keys.config, v))
                .transpose()?;
            let counters: Vec<&KeyValue> = kvs_at(&ops, 3).iter().chain(kvs_at(&ops, 4)).collect();
            let plan = plan_write(
                key,
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
            let (true, Some(new_record)) = (plan.written.wrote(), &plan.record) else {
                return Ok(plan.written);
            };
            let not_after = revision.saturating_add(1);
            let txn = Txn::new()
                .when([
                    unchanged(&keys.config, stored.revision),
                    unchanged(&keys.record, record.revision),
                    unchanged(&keys.legacy, legacy.revision),
                    Compare::mod_revision(keys.seq.as_str(), CompareOp::Less, not_after),
                    Compare::mod_revision(keys.periods.as_str(), CompareOp::Less, not_after)
                        .with_prefix(),
                ])
                .and_then([
                    TxnOp::put(keys.config.as_str(), json.as_str(), None),
                    TxnOp::put(keys.record.as_str(), new_record.encode()?, None),
                ]);
            if kv.txn(txn).await.map_err(unavailable)?.succeeded() {
                return Ok(plan.written);
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
    bounded(store.timeout, async {
        let resp = store
            .kv()
            .txn(Txn::new().and_then(keys.reads(false)))
            .await
            .map_err(unavailable)?;
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
    })
    .await
}

/// Whether `guard` may reserve under the record read as `value` (at etcd key `at`).
fn allowed(at: &str, value: Option<&[u8]>, guard: &SeqGuard<'_>) -> Result<bool, StoreError> {
    Ok(reservation_allowed(record_at(at, value)?.as_ref(), guard))
}

/// See [`crate::store::Store::reserve_seq_as`]: a compare-and-swap on the counter, and
/// with a guard also on the record read with it.
pub(super) async fn reserve(
    store: &EtcdStore,
    counter: &str,
    size: u64,
    initial: u64,
    guard: Option<&SeqGuard<'_>>,
) -> Result<SeqBlock, StoreError> {
    let key = store.keys().seq(counter);
    let record_key = guard.map(|g| store.keys().record(g.key));
    let mut reads = vec![TxnOp::get(key.as_str(), None)];
    reads.extend(record_key.as_deref().map(|r| TxnOp::get(r, None)));
    bounded(store.timeout, async {
        let mut kv: KvClient = store.kv();
        let resp = kv
            .txn(Txn::new().and_then(reads.clone()))
            .await
            .map_err(unavailable)?;
        let mut ops = resp.op_responses();
        // Each lost race hands back what is stored now, and some node wins every round.
        loop {
            let (seen, record) = (seen_in(&ops), seen_in(ops.get(1..).unwrap_or_default()));
            let mut when = vec![unchanged(&key, seen.revision)];
            if let (Some(g), Some(rk)) = (guard, &record_key) {
                if !allowed(rk, record.value.as_deref(), g)? {
                    return Err(StoreError::FormatReplaced(g.key.to_string()));
                }
                when.push(unchanged(rk, record.revision));
            }
            let stored = seen
                .value
                .as_deref()
                .map(|v| parse_u64(&key, v))
                .transpose()?;
            let current = stored.unwrap_or(initial).max(initial);
            let block = next_block(current, size)
                .ok_or_else(|| StoreError::Overflow(counter.to_string()))?;
            let txn = Txn::new()
                .when(when)
                .and_then([TxnOp::put(key.as_str(), block.end.to_string(), None)])
                .or_else(reads.clone());
            let resp = kv.txn(txn).await.map_err(unavailable)?;
            if resp.succeeded() {
                return Ok(block);
            }
            ops = resp.op_responses();
        }
    })
    .await
}

/// See [`crate::store::Store::release_seq_as`].
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
    bounded(store.timeout, async {
        let mut kv = store.kv();
        // Values are written only by this module and its parent, always as canonical
        // decimal text, so comparing the text is comparing the number. A missing key never
        // compares equal.
        let mut when = vec![Compare::value(
            key.as_str(),
            CompareOp::Equal,
            block_end.to_string(),
        )];
        if let Some(g) = guard {
            let rk = store.keys().record(g.key);
            let resp = kv.get(rk.as_str(), None).await.map_err(unavailable)?;
            let record = resp.kvs().first();
            if !allowed(&rk, record.map(|r| r.value()), g)? {
                return Ok(false);
            }
            when.push(unchanged(&rk, record.map_or(0, |r| r.mod_revision())));
        }
        let txn =
            Txn::new()
                .when(when)
                .and_then([TxnOp::put(key.as_str(), back_to.to_string(), None)]);
        let resp = kv.txn(txn).await.map_err(unavailable)?;
        Ok(resp.succeeded())
    })
    .await
}
