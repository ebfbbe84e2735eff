//! SPEC 1.3 in process: a prefix's number strings never repeat across config changes,
//! DELETE and registering again, also with two nodes on one store of which one has not seen
//! a change yet; and a snowflake prefix's `initial_seq` is a floor.

use std::collections::HashSet;
use std::sync::Arc;

use proptest::prelude::*;

use super::AdminError;
use super::test_support::{T0, by, embedded, node_on, service, take};
use crate::clock::ManualClock;
use crate::prefix::Mode;

const DAY_MS: u64 = 86_400_000;

/// Finding 4: a snowflake key deleted and registered again as a sequence starting just
/// below an ID it issued would issue that ID again; the key keeps its mode instead.
#[tokio::test]
async fn a_key_keeps_its_mode_after_delete() {
    let dir = tempfile::tempdir().unwrap();
    let s = service(&dir, Arc::new(ManualClock::new(T0)));
    s.register("K", br#"{"format":"K-{SEQ:19}"}"#, &by())
        .await
        .unwrap();
    let (number, id, _) = take(&s, "K", 1).await.unwrap().remove(0);
    s.delete("K", &by()).await.unwrap();
    let body = format!(
        r#"{{"format":"K-{{SEQ:19}}","mode":"sequence","initial_seq":"{}"}}"#,
        id - 1
    );
    match s.register("K", body.as_bytes(), &by()).await {
        Err(AdminError::ModeChange { from, to }) => {
            assert_eq!((from, to), ("snowflake", "sequence"))
        }
        other => panic!("{other:?}"),
    }
    // Without `mode` the key is a snowflake prefix again, and its numbers go on.
    let body = br#"{"format":"K-{SEQ:19}"}"#;
    assert_eq!(
        s.register("K", body, &by()).await.unwrap().0.mode,
        Mode::Snowflake
    );
    let again = take(&s, "K", 100).await.unwrap();
    assert!(again.iter().all(|(n, i, _)| *n != number && *i > id));
}

/// A node that has not seen a format change yet (its watch is a second behind) must not
/// reserve blocks for the old format: `A{SEQ:1}` up to 5, then `A1{SEQ:1}` from 6 renders
/// `A16`, which the old format reaches at 16.
#[tokio::test]
async fn a_node_on_the_old_format_reserves_nothing_after_the_switch() {
    let dir = tempfile::tempdir().unwrap();
    let store = embedded(&dir);
    let clock = Arc::new(ManualClock::new(T0));
    let (a, b) = (
        node_on(store.clone(), clock.clone(), 1, true),
        node_on(store, clock, 2, true),
    );
    a.register("K", br#"{"format":"A{SEQ:1}","strict":true}"#, &by())
        .await
        .unwrap();
    let mut seen = HashSet::new();
    let mut issue = async |s: &super::Service, n| {
        let got: Vec<String> = take(s, "K", n)
            .await
            .unwrap()
            .into_iter()
            .map(|x| x.0)
            .collect();
        for number in &got {
            assert!(seen.insert(number.clone()), "{number} issued twice");
        }
        got
    };
    assert_eq!(issue(&a, 5).await, ["A1", "A2", "A3", "A4", "A5"]);
    b.replace("K", br#"{"format":"A1{SEQ:1}","strict":true}"#, &by())
        .await
        .unwrap();
    assert_eq!(issue(&b, 1).await, ["A16"]);
    // Node A still holds the old config; its next reservation is refused, it reads the
    // new config and goes on in the new format.
    assert_eq!(a.registry().get("K").unwrap().config.format, "A{SEQ:1}");
    let later = issue(&a, 15).await;
    assert!(later.iter().all(|n| n.starts_with("A1")), "{later:?}");
    assert_eq!(a.registry().get("K").unwrap().config.format, "A1{SEQ:1}");
}

/// SPEC 1.3: `initial_seq` of a snowflake prefix is a floor below every ID.
#[tokio::test]
async fn a_snowflake_floor_is_below_every_id() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let s = service(&dir, clock.clone());
    let limit = s.floor_below();
    let body = |floor: u64| format!(r#"{{"format":"F-{{SEQ:19}}","initial_seq":"{floor}"}}"#);
    assert!(matches!(
        s.register("F", body(limit).as_bytes(), &by()).await,
        Err(AdminError::Config(_))
    ));
    // Just below the IDs of this millisecond: the first ID is in the next one.
    s.register("F", body(limit - 1).as_bytes(), &by())
        .await
        .unwrap();
    clock.advance(1);
    let ids: Vec<u64> = take(&s, "F", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.1)
        .collect();
    assert!(ids.iter().all(|&id| id > limit - 1), "{ids:?} {limit}");
}

/// One step of [`random_changes_never_repeat_a_number`].
#[derive(Clone, Debug)]
enum Op {
    /// `PUT` format number `.0`, strict or not.
    Put(usize, bool),
    /// `POST` format number `.0`.
    Post(usize),
    Delete,
    Issue(u64),
    /// The clock moves a day forward, or back.
    Day(bool),
}

fn op(formats: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..formats, any::<bool>()).prop_map(|(f, s)| Op::Put(f, s)),
        1 => (0..formats).prop_map(Op::Post),
        1 => Just(Op::Delete),
        5 => (1u64..40).prop_map(Op::Issue),
        1 => any::<bool>().prop_map(Op::Day),
    ]
}

/// Small formats whose strings run into each other easily.
const NEVER: &[&str] = &[
    "{SEQ:1}",
    "A{SEQ:1}",
    "A1{SEQ:1}",
    "1{SEQ:1}",
    "{SEQ:1}1",
    "{SEQ:2}",
    "A{SEQ:2}",
    "{SEQ:1}A",
    "10{SEQ:1}",
];
const DAILY: &[&str] = &[
    "{date}{SEQ:1}",
    "{date}1{SEQ:1}",
    "1{date}{SEQ:1}",
    "{year}{month}{day}{SEQ:2}",
    "{date}-{SEQ:1}",
];

/// Runs `ops` on one prefix (daily reset or none) and returns the first repeated string.
async fn run(daily: bool, ops: &[Op]) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let s = service(&dir, clock.clone());
    let (formats, reset) = if daily {
        (DAILY, "daily")
    } else {
        (NEVER, "never")
    };
    let body = |f: usize, strict: bool| {
        format!(
            r#"{{"format":"{}","reset":"{reset}","strict":{strict}}}"#,
            formats[f]
        )
    };
    let mut seen = HashSet::new();
    for op in ops {
        match op {
            Op::Put(f, strict) => drop(s.replace("K", body(*f, *strict).as_bytes(), &by()).await),
            Op::Post(f) => drop(s.register("K", body(*f, false).as_bytes(), &by()).await),
            Op::Delete => drop(s.delete("K", &by()).await),
            Op::Issue(n) => {
                for (number, ..) in take(&s, "K", *n).await.unwrap_or_default() {
                    if !seen.insert(number.clone()) {
                        return Some(number);
                    }
                }
            }
            Op::Day(true) => clock.advance(DAY_MS),
            Op::Day(false) => clock.step_back(DAY_MS),
        }
    }
    None
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random `PUT`s (accepted or refused), DELETEs, registrations again and issuing, on
    /// counters small enough for formats to run into each other: no string twice.
    #[test]
    fn random_changes_never_repeat_a_number(
        daily in any::<bool>(),
        ops in prop::collection::vec(op(9), 1..40),
    ) {
        let ops: Vec<Op> = ops
            .into_iter()
            .map(|o| match o {
                Op::Put(f, s) if daily => Op::Put(f % DAILY.len(), s),
                Op::Post(f) if daily => Op::Post(f % DAILY.len()),
                o => o,
            })
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        prop_assert_eq!(rt.block_on(run(daily, &ops)), None);
    }
}
