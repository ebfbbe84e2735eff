use std::collections::HashSet;

use chrono::{NaiveDate, Timelike};
use proptest::prelude::*;

use super::*;
use crate::format::RenderCtx;

fn t(src: &str) -> Template {
    Template::parse(src, None).unwrap()
}

fn seq(template: &Template, lo: u64, hi: u64) -> Rendering<'_> {
    Rendering {
        template,
        prefix: "KEY",
        nodes: NodeWidths::default(),
        values: Values::new(lo, hi),
        degraded: false,
    }
}

fn snowflake(template: &Template, floor: u64) -> Rendering<'_> {
    Rendering {
        degraded: true,
        values: Values::new(floor + 1, i64::MAX as u64),
        ..seq(template, 0, 0)
    }
}

fn common(a: &Rendering<'_>, b: &Rendering<'_>) -> Option<String> {
    common_string(a, b, None)
}

#[test]
fn the_findings_of_issue_10() {
    // Finding 2: `A1{SEQ:1}` issued 1 to 5; `A{SEQ:1}` would go on from 6 and reach `A11`.
    let (old, new) = (t("A1{SEQ:1}"), t("A{SEQ:1}"));
    assert_eq!(
        common(&seq(&new, 6, u64::MAX), &seq(&old, 1, 5)),
        Some("A11".into())
    );
    // The other way round is safe: `A{SEQ:1}` values 1..5, then `A1{SEQ:1}` from 6 renders
    // `A16`, `A17`, ... which `A{SEQ:1}` reaches only at 16.
    assert_eq!(common(&seq(&old, 6, u64::MAX), &seq(&new, 1, 5)), None);
}

#[test]
fn the_same_template_clashes_only_where_the_values_overlap() {
    let f = t("INV-{year}-{SEQ:4}");
    assert_eq!(common(&seq(&f, 1, 50), &seq(&f, 51, u64::MAX)), None);
    let hint = Civil {
        year: 2026,
        month: 3,
        day: 4,
        hour: 5,
    };
    assert_eq!(
        common_string(&seq(&f, 1, 50), &seq(&f, 50, 60), Some(hint)),
        Some("INV-2026-0050".into())
    );
    // Without a hint the example shows the first year there is.
    assert_eq!(
        common(&seq(&f, 1, 50), &seq(&f, 40, 60)),
        Some("INV-1970-0040".into())
    );
}

#[test]
fn widths_and_leading_zeros_tell_values_apart() {
    // {SEQ:3} rendered 001..050; {SEQ:2} from 51 renders 51..99, then 100.. (no leading 0).
    let (three, two) = (t("{SEQ:3}"), t("{SEQ:2}"));
    assert_eq!(common(&seq(&two, 51, u64::MAX), &seq(&three, 1, 50)), None);
    // From 100 on, {SEQ:3} renders exactly what {SEQ:2} does.
    assert_eq!(
        common(&seq(&two, 51, u64::MAX), &seq(&three, 1, 100)),
        Some("100".into())
    );
    // A value past its width is rendered whole: 12345 with {SEQ:2}.
    assert_eq!(
        common(&seq(&two, 12_345, 12_345), &seq(&t("1{SEQ:2}"), 2345, 2345)),
        Some("12345".into())
    );
    // u64::MAX has 20 digits, and {SEQ:20} pads to 20.
    let (wide, top) = (t("{SEQ:20}"), t("{SEQ:1}"));
    assert_eq!(
        common(
            &seq(&wide, u64::MAX, u64::MAX),
            &seq(&top, u64::MAX - 1, u64::MAX)
        ),
        Some(u64::MAX.to_string())
    );
}

#[test]
fn empty_ranges_render_nothing() {
    let f = t("{SEQ:1}");
    assert_eq!(common(&seq(&f, 5, 4), &seq(&f, 0, u64::MAX)), None);
    assert!(Values::new(5, 4).is_empty());
}

#[test]
fn snowflake_formats_count_every_id() {
    let (o, o1) = (t("O-{SEQ:3}"), t("O-1{SEQ:3}"));
    assert_eq!(
        common(&snowflake(&o1, 0), &snowflake(&o, 0)),
        Some("O-1001".into())
    );
    // Another literal, a separator where IDs have digits: no clash.
    for other in ["P-{SEQ:3}", "O{SEQ:3}", "O-{year}-{SEQ:3}", "O-{SEQ:3}-X"] {
        assert_eq!(
            common(&snowflake(&t(other), 0), &snowflake(&o, 0)),
            None,
            "{other}"
        );
    }
    // The flag: a degraded `5D` is what `{SEQ:1}D` renders normally.
    let (flagged, d) = (t("{SEQ:1}{flag}"), t("{SEQ:1}D"));
    assert_eq!(
        common(&snowflake(&d, 0), &snowflake(&flagged, 0)),
        Some("1D".into())
    );
    // Sequence numbers are never degraded.
    assert_eq!(common(&seq(&d, 1, 9), &seq(&flagged, 1, 9)), None);
}

#[test]
fn prefix_dc_and_worker() {
    let a = t("{prefix}{SEQ:1}");
    let b = t("KEY{SEQ:1}");
    assert_eq!(common(&seq(&a, 1, 1), &seq(&b, 1, 1)), Some("KEY1".into()));
    // Worker IDs 0..63 in two digits, datacenters 0..7 in one.
    let (w, lit) = (t("{worker}-{SEQ:1}"), t("64-{SEQ:1}"));
    assert_eq!(common(&seq(&w, 1, 9), &seq(&lit, 1, 9)), None);
    let lit = t("63-{SEQ:1}");
    assert_eq!(
        common(&seq(&w, 1, 9), &seq(&lit, 1, 9)),
        Some("63-1".into())
    );
    let dc = t("{dc}{SEQ:1}");
    assert_eq!(common(&seq(&dc, 1, 9), &seq(&t("8{SEQ:1}"), 1, 9)), None);
    // Date fields take their whole range: month 13 and hour 24 never appear.
    for (x, y) in [
        ("{month}{SEQ:1}", "13{SEQ:1}"),
        ("{hour}{SEQ:1}", "24{SEQ:1}"),
    ] {
        assert_eq!(common(&seq(&t(x), 1, 9), &seq(&t(y), 1, 9)), None, "{x}");
    }
    let date = t("{date}{SEQ:1}");
    assert_eq!(
        common(&seq(&date, 1, 9), &seq(&t("{year}0229{SEQ:1}"), 1, 9)),
        Some("197002291".into())
    );
}

// ---- brute force: small templates whose every placeholder appears once ----

/// A template piece: a literal, or a placeholder with a small range.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec!["0", "1", "A", "D", "-", "10", "01"]).prop_map(String::from),
        prop::sample::select(vec![
            "{month}", "{hour}", "{day}", "{dc}", "{worker}", "{flag}"
        ])
        .prop_map(String::from),
    ]
}

/// A template of up to four pieces around one `{SEQ:1..3}`, with at most one date field
/// and each placeholder once (the model is exact for those).
fn template() -> impl Strategy<Value = String> {
    (prop::collection::vec(piece(), 0..4), 0usize..4, 1u8..=3).prop_map(|(pieces, at, w)| {
        let mut seen = HashSet::new();
        let mut dates = 0;
        let mut kept: Vec<String> = Vec::new();
        for p in pieces {
            let date = matches!(p.as_str(), "{month}" | "{hour}" | "{day}");
            if p.starts_with('{') && (!seen.insert(p.clone()) || (date && dates == 1)) {
                continue;
            }
            dates += usize::from(date);
            kept.push(p);
        }
        kept.insert(at.min(kept.len()), format!("{{SEQ:{w}}}"));
        kept.concat()
    })
}

const NODES: (u64, u64) = (3, 12);

/// Every string `r` renders, by rendering every combination of its fields.
fn brute_force(r: &Rendering<'_>) -> HashSet<String> {
    let has = |n| r.template.has(n);
    let months: Vec<u32> = if has("{month}") {
        (1..=12).collect()
    } else {
        vec![1]
    };
    let days: Vec<u32> = if has("{day}") {
        (1..=31).collect()
    } else {
        vec![1]
    };
    let hours: Vec<u32> = if has("{hour}") {
        (0..24).collect()
    } else {
        vec![0]
    };
    let dcs: Vec<u64> = if has("{dc}") {
        (0..=NODES.0).collect()
    } else {
        vec![0]
    };
    let workers: Vec<u64> = if has("{worker}") {
        (0..=NODES.1).collect()
    } else {
        vec![0]
    };
    let flags = if r.degraded {
        vec![false, true]
    } else {
        vec![false]
    };
    let mut out = HashSet::new();
    for value in r.values.lo..=r.values.hi {
        for &m in &months {
            for &d in &days {
                for &h in &hours {
                    let at = NaiveDate::from_ymd_opt(2025, m, d)
                        .and_then(|date| date.and_hms_opt(h, 0, 0))
                        .expect("a real date: one date field at a time");
                    assert_eq!(at.hour(), h);
                    let unix_ms = at.and_utc().timestamp_millis() as u64;
                    for &dc in &dcs {
                        for &worker in &workers {
                            for &degraded in &flags {
                                out.insert(r.template.render_string(&RenderCtx {
                                    prefix: r.prefix,
                                    value,
                                    unix_ms,
                                    offset_s: 0,
                                    dc,
                                    worker,
                                    widths: r.nodes,
                                    degraded,
                                }));
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// The check agrees with brute force: a common string found by brute force means a
    /// clash; a clash's example is rendered by both, and is as short as any common string.
    #[test]
    fn agrees_with_brute_force(
        a in template(), b in template(),
        (alo, alen) in (0u64..130, 0u64..40), (blo, blen) in (0u64..130, 0u64..40),
        (ad, bd) in (any::<bool>(), any::<bool>()),
    ) {
        let (ta, tb) = (t(&a), t(&b));
        let nodes = NodeWidths::new(NODES.0, NODES.1);
        let ra = Rendering { nodes, degraded: ad, ..seq(&ta, alo, alo + alen) };
        let rb = Rendering { nodes, degraded: bd, ..seq(&tb, blo, blo + blen) };
        let (sa, sb) = (brute_force(&ra), brute_force(&rb));
        let both: Vec<&String> = sa.intersection(&sb).collect();
        match common(&ra, &rb) {
            None => prop_assert!(both.is_empty(), "{a} vs {b}: missed {:?}", both.first()),
            Some(example) => {
                prop_assert!(sa.contains(&example) && sb.contains(&example),
                    "{a} vs {b}: {example} is not rendered by both");
                let shortest = both.iter().map(|s| s.len()).min();
                prop_assert_eq!(Some(example.len()), shortest);
            }
        }
    }
}
