use super::*;
use crate::prefix::UtcOffset;

fn cfg(format: &str, mode: Mode, reset: Reset, initial_seq: u64) -> PrefixConfig {
    let seq_length = Template::parse(format, None).unwrap().seq_width();
    PrefixConfig {
        format: format.into(),
        seq_length,
        initial_seq,
        mode,
        reset,
        utc_offset: UtcOffset::default(),
        strict: false,
    }
}

fn seq(format: &str) -> PrefixConfig {
    cfg(format, Mode::Sequence, Reset::Never, 0)
}

fn snow(format: &str) -> PrefixConfig {
    cfg(format, Mode::Snowflake, Reset::Never, 0)
}

fn entry(format: &str, lo: u64, hi: Option<u64>) -> FormatEntry {
    FormatEntry {
        format: format.into(),
        seq_length: Template::parse(format, None).unwrap().seq_width(),
        lo,
        hi,
    }
}

/// The outcome of writing `config` over `stored`.
fn plan(stored: Stored<'_>, config: &PrefixConfig, create_only: bool) -> Plan {
    plan_write("KEY", stored, config, create_only, ClashRules::default())
}

#[test]
fn a_sequence_prefix_keeps_the_reset_its_counters_were_made_under() {
    let never = seq("INV-{SEQ:6}");
    let yearly = cfg("INV-{year}-{SEQ:6}", Mode::Sequence, Reset::Yearly, 0);
    let snow = snow("INV-{SEQ:19}");
    use Written::*;
    // (stored config, legacy binding, new config, create only) -> outcome
    let cases = [
        (None, None, &yearly, true, Created),
        (None, None, &yearly, false, Created),
        (Some(&never), None, &yearly, true, Exists),
        (Some(&never), Some(Reset::Never), &never, false, Replaced),
        (
            Some(&never),
            Some(Reset::Never),
            &yearly,
            false,
            ResetChange(Reset::Never),
        ),
        // A config stored before bindings were recorded binds its counters too.
        (
            Some(&never),
            None,
            &yearly,
            false,
            ResetChange(Reset::Never),
        ),
        // After DELETE only the binding is left.
        (
            None,
            Some(Reset::Never),
            &yearly,
            true,
            ResetChange(Reset::Never),
        ),
        (None, Some(Reset::Yearly), &yearly, true, Created),
        // A key keeps its mode, also after DELETE (the binding says: sequence).
        (
            None,
            Some(Reset::Never),
            &snow,
            true,
            ModeChange(Mode::Sequence),
        ),
        (
            Some(&snow),
            None,
            &yearly,
            false,
            ModeChange(Mode::Snowflake),
        ),
        (
            Some(&never),
            Some(Reset::Never),
            &snow,
            false,
            ModeChange(Mode::Sequence),
        ),
    ];
    for (config, legacy_reset, new, create_only, want) in cases {
        let stored = Stored {
            config,
            legacy_reset,
            ..Stored::default()
        };
        let got = plan(stored, new, create_only);
        assert_eq!(
            got.written, want,
            "{config:?} {legacy_reset:?} {new:?} {create_only}"
        );
        assert_eq!(got.record.is_some(), want.wrote());
    }
}

#[test]
fn the_first_write_records_mode_reset_and_format() {
    let yearly = cfg("I-{year}-{SEQ:4}", Mode::Sequence, Reset::Yearly, 1000);
    let p = plan(Stored::default(), &yearly, true);
    assert_eq!(p.written, Written::Created);
    assert_eq!(
        p.record,
        Some(PrefixRecord {
            mode: Mode::Sequence,
            reset: Some(Reset::Yearly),
            formats: vec![entry("I-{year}-{SEQ:4}", 1001, None)],
        })
    );
    // Snowflake: no reset; the floor plus one.
    let floored = cfg("S-{SEQ:19}", Mode::Snowflake, Reset::Never, 41);
    let p = plan(Stored::default(), &floored, false);
    let record = p.record.unwrap();
    assert_eq!((record.mode, record.reset), (Mode::Snowflake, None));
    assert_eq!(record.formats, vec![entry("S-{SEQ:19}", 42, None)]);
}

/// The record after a key was registered with `format` and its counter reached `mark`.
fn after(format: &PrefixConfig) -> PrefixRecord {
    plan(Stored::default(), format, true).record.unwrap()
}

#[test]
fn a_new_format_closes_the_old_one_at_the_counters_mark() {
    let (a, b) = (seq("A{SEQ:1}"), seq("A1{SEQ:1}"));
    let stored = Stored {
        config: Some(&a),
        record: Some(after(&a)),
        mark: Some(5),
        ..Stored::default()
    };
    let p = plan(stored, &b, false);
    assert_eq!(p.written, Written::Replaced);
    assert_eq!(
        p.record.unwrap().formats,
        vec![entry("A{SEQ:1}", 1, Some(5)), entry("A1{SEQ:1}", 6, None)]
    );
}

#[test]
fn finding_2_a_format_that_reaches_an_earlier_string_is_refused() {
    let (a1, a) = (seq("A1{SEQ:1}"), seq("A{SEQ:1}"));
    let record = after(&a1);
    let stored = Stored {
        config: Some(&a1),
        record: Some(record.clone()),
        mark: Some(5),
        ..Stored::default()
    };
    let p = plan(stored, &a, false);
    let Written::FormatClash(clash) = p.written else {
        panic!("{p:?}")
    };
    assert_eq!(
        clash,
        FormatClash {
            example: "A11".into(),
            earlier: "A1{SEQ:1}".into(),
            values: Some((1, 5)),
        }
    );
    assert_eq!(p.record, None);
    // After DELETE the history is the same, so is the answer.
    let stored = Stored {
        record: Some(record),
        mark: Some(5),
        ..Stored::default()
    };
    assert!(matches!(
        plan(stored, &a, true).written,
        Written::FormatClash(_)
    ));
}

#[test]
fn the_same_format_again_goes_on_and_old_formats_stay_checked() {
    let (a, b) = (seq("A{SEQ:1}"), seq("A1{SEQ:1}"));
    // A (1..5), then B from 6; counters now at 9.
    let record = PrefixRecord {
        mode: Mode::Sequence,
        reset: Some(Reset::Never),
        formats: vec![entry("A{SEQ:1}", 1, Some(5)), entry("A1{SEQ:1}", 6, None)],
    };
    let stored = |record: &PrefixRecord| Stored {
        config: Some(&b),
        record: Some(record.clone()),
        mark: Some(9),
        ..Stored::default()
    };
    // B again (a higher initial_seq): nothing new; the entry's lo stays the lowest.
    let higher = PrefixConfig {
        initial_seq: 50,
        ..b.clone()
    };
    let p = plan(stored(&record), &higher, false);
    assert_eq!(p.record.as_ref(), Some(&record));
    // Back to A, from 10: A renders "A10", "A11".. and B rendered "A16".."A19": A's own
    // earlier strings ("A1".."A5") are safe, B's are not.
    let p = plan(stored(&record), &a, false);
    let Written::FormatClash(clash) = p.written else {
        panic!("{p:?}")
    };
    assert_eq!(
        (clash.example.as_str(), clash.earlier.as_str()),
        ("A16", "A1{SEQ:1}")
    );
    assert_eq!(clash.values, Some((6, 9)));
    // A format both can never reach is fine.
    let p = plan(stored(&record), &seq("B{SEQ:1}"), false);
    assert_eq!(p.written, Written::Replaced);
    assert_eq!(p.record.unwrap().formats.len(), 3);
}

#[test]
fn a_prefix_that_resets_counts_every_value_from_initial_seq() {
    // Values start at initial_seq + 1 in each new period, so the new format's range does
    // not start above the mark.
    let old = cfg("I-{year}-{SEQ:4}", Mode::Sequence, Reset::Yearly, 0);
    let new = cfg("I-{year}-{SEQ:3}", Mode::Sequence, Reset::Yearly, 0);
    let stored = Stored {
        config: Some(&old),
        record: Some(after(&old)),
        mark: Some(1500),
        ..Stored::default()
    };
    let p = plan(stored.clone(), &new, false);
    let Written::FormatClash(clash) = p.written else {
        panic!("{p:?}")
    };
    // 1000 renders I-YYYY-1000 in both.
    assert!(clash.example.ends_with("-1000"), "{clash:?}");
    // While the old format stayed below 1000, 4 digits with a leading zero never clash.
    let stored = Stored {
        mark: Some(999),
        ..stored
    };
    assert_eq!(plan(stored, &new, false).written, Written::Replaced);
}

#[test]
fn snowflake_formats_count_every_id_above_the_floor() {
    let (o, o1) = (snow("O-{SEQ:3}"), snow("O-1{SEQ:3}"));
    let stored = Stored {
        config: Some(&o),
        record: Some(after(&o)),
        ..Stored::default()
    };
    let p = plan(stored.clone(), &o1, false);
    let Written::FormatClash(clash) = p.written else {
        panic!("{p:?}")
    };
    assert_eq!(clash.values, None);
    let p = plan(stored, &snow("P-{SEQ:3}"), false);
    // The old entry stays open: its IDs are not bounded.
    let record = p.record.unwrap();
    assert_eq!(
        record.formats,
        vec![entry("O-{SEQ:3}", 1, None), entry("P-{SEQ:3}", 1, None)]
    );
    // Back to the first: the same template renders a string once per ID, and each ID is
    // issued once; `{SEQ}` with seq_length 3 is the same template.
    let p = plan(
        Stored {
            record: Some(record),
            ..Stored::default()
        },
        &PrefixConfig {
            format: "O-{SEQ}".into(),
            seq_length: 3,
            ..snow("O-{SEQ:3}")
        },
        true,
    );
    assert_eq!(p.written, Written::Created);
    assert_eq!(p.record.unwrap().formats.len(), 3);
}

#[test]
fn a_prefix_that_resets_may_go_back_to_an_earlier_template() {
    // Each period's counter hands a value out once, and the template shows the period.
    let four = cfg("I-{year}-{SEQ:4}", Mode::Sequence, Reset::Yearly, 0);
    let other = cfg("J-{year}-{SEQ:4}", Mode::Sequence, Reset::Yearly, 0);
    let mut record = after(&four);
    for (config, want) in [(&other, 2), (&four, 3)] {
        let stored = Stored {
            record: Some(record),
            mark: Some(2000),
            ..Stored::default()
        };
        let p = plan(stored, config, false);
        assert_eq!(p.written, Written::Created);
        record = p.record.unwrap();
        assert_eq!(record.formats.len(), want);
    }
}

#[test]
fn reservations_go_through_for_the_current_format_only() {
    let record = PrefixRecord {
        mode: Mode::Sequence,
        reset: Some(Reset::Never),
        formats: vec![entry("A{SEQ:1}", 1, Some(5)), entry("A1{SEQ:1}", 6, None)],
    };
    let guard = |format, seq_length| SeqGuard {
        key: "KEY",
        format,
        seq_length,
    };
    assert!(reservation_allowed(Some(&record), &guard("A1{SEQ:1}", 1)));
    assert!(!reservation_allowed(Some(&record), &guard("A{SEQ:1}", 1)));
    assert!(!reservation_allowed(Some(&record), &guard("A1{SEQ}", 2)));
    assert!(reservation_allowed(None, &guard("A{SEQ:1}", 1)));
    let config = seq("A1{SEQ:1}");
    assert!(record.allows(&SeqGuard::of("KEY", &config)));
    // Old data: a record made from the config alone allows its own format.
    let legacy = PrefixRecord::effective(None, Some(&config), None).unwrap();
    assert!(legacy.allows(&SeqGuard::of("KEY", &config)));
    assert_eq!(legacy.formats, vec![entry("A1{SEQ:1}", 0, None)]);
}

#[test]
fn records_read_back_and_bad_ones_name_their_key() {
    let record = after(&cfg("I-{date}-{SEQ:4}", Mode::Sequence, Reset::Daily, 0));
    let json = record.encode().unwrap();
    assert_eq!(PrefixRecord::decode("k", json.as_bytes()).unwrap(), record);
    assert!(json.contains(r#""reset":"daily""#), "{json}");
    let err = PrefixRecord::decode("records/INV", b"{").unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { ref key, .. } if key == "records/INV"));
}
