//! Black-box regression tests of issue 10 (SPEC 1.0, 1.3) against the real `numgen`
//! binary: a prefix's `number` strings never repeat across restarts with another worker ID,
//! format changes, resets and DELETE + re-registration, and seed 002's bodies work verbatim.
//! Each test asserts on the rendered strings, as callers keep them.

mod common;

use std::collections::HashSet;

use common::api::{next, number_of};
use common::server::{Server, ServerOpts, assert_error};

/// The current UTC year, as the server renders `{year}`.
fn year_now() -> u64 {
    // Days since 1970 to a civil year (Howard Hinnant's algorithm, years only).
    let days = common::api::now_ms() / 86_400_000;
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    yoe + era * 400 + u64::from(month <= 2)
}

/// Takes `n` numbers of `key` one by one, asserting each string is new to `seen`.
fn take_new(s: &Server, key: &str, n: usize, seen: &mut HashSet<String>) -> Vec<String> {
    (0..n)
        .map(|_| {
            let (number, _) = next(s, key);
            assert!(seen.insert(number.clone()), "{key}: {number} issued twice");
            number
        })
        .collect()
}

/// Finding 1: `{worker}` rendered unpadded, so worker 12 at counter 3 (`123`) and worker 1
/// at counter 23 (`123`) printed the same number. It renders at the layout's width (6
/// worker bits: two digits), so a restart with another `--worker-id` never repeats one.
#[test]
fn a_restart_with_another_worker_id_never_repeats_a_number() {
    let dir = tempfile::tempdir().expect("temp dir");
    let on = |worker: &str| {
        ServerOpts::default()
            .data_dir(dir.path().join("data"))
            .admin_token("t0ken-for-number-strings")
            .arg(format!("--worker-id={worker}"))
    };
    let mut s = Server::start(on("12"));
    let body = r#"{"format":"{worker}{SEQ:1}","mode":"sequence","strict":true}"#;
    s.register("W", body);
    let mut seen = HashSet::new();
    assert_eq!(take_new(&s, "W", 3, &mut seen), ["121", "122", "123"]);
    let status = s.terminate();
    assert!(status.success(), "SIGTERM: {status}");
    let s = Server::start(on("1"));
    let after = take_new(&s, "W", 30, &mut seen);
    assert_eq!(after[0], "014");
    assert_eq!(after[19], "0123");
}

/// Finding 2: `A1{SEQ:1}` issued `A15` at counter 5; after `PUT A{SEQ:1}` counter 15
/// rendered `A15` again. Such a PUT is 409 `FORMAT_CLASH` with a string both can render;
/// a format that cannot repeat one is accepted and goes on from the counter.
#[test]
fn a_format_that_could_repeat_an_earlier_number_is_refused() {
    let s = Server::start(ServerOpts::default());
    s.register(
        "A",
        r#"{"format":"A1{SEQ:1}","mode":"sequence","strict":true}"#,
    );
    let mut seen = HashSet::new();
    assert_eq!(take_new(&s, "A", 5, &mut seen)[4], "A15");
    let r = s.admin(
        "PUT",
        "/prefix-configs/A",
        r#"{"format":"A{SEQ:1}","mode":"sequence","strict":true}"#,
    );
    let v = assert_error(&r, 409, "FORMAT_CLASH");
    let msg = v["error"].as_str().unwrap_or_default();
    // The example is a string the old format rendered (A11..A15) and the new one can.
    let example = msg.split('\'').nth(3).unwrap_or_default();
    assert!(
        ["A11", "A12", "A13", "A14", "A15"].contains(&example),
        "{msg}"
    );
    // Nothing changed: the old format goes on.
    assert_eq!(take_new(&s, "A", 1, &mut seen), ["A16"]);
    // Other literal text cannot repeat a number: accepted, from the counter on.
    let r = s.admin(
        "PUT",
        "/prefix-configs/A",
        r#"{"format":"A-{SEQ:1}","strict":true}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["config"]["mode"], "sequence");
    assert_eq!(take_new(&s, "A", 1, &mut seen), ["A-7"]);
}

/// Finding 3: a daily reset with `INV-{year}{month}-{SEQ:4}` gave `INV-202611-0001` every
/// day of the month. A reset needs its period in the format: 400 naming what is missing.
#[test]
fn a_reset_without_its_period_in_the_format_is_refused() {
    let s = Server::start(ServerOpts::default());
    for (reset, format, missing) in [
        ("daily", "INV-{year}{month}-{SEQ:4}", "{day}"),
        ("monthly", "INV-{year}-{SEQ:4}", "{month}"),
        ("yearly", "INV-{SEQ:4}", "{year}"),
    ] {
        let body = format!(r#"{{"format":"{format}","mode":"sequence","reset":"{reset}"}}"#);
        let r = s.admin("POST", "/prefix-configs/INV", &body);
        let v = assert_error(&r, 400, "INVALID_FORMAT");
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(msg.contains(missing), "{body}: {msg}");
    }
    assert_eq!(s.admin("GET", "/prefix-configs/INV", "").status, 404);
    // With the period it works.
    s.register(
        "INV",
        r#"{"format":"INV-{date}-{SEQ:4}","mode":"sequence","reset":"daily"}"#,
    );
    let (number, id) = next(&s, "INV");
    assert_eq!(
        (number.len(), &number[..6], &number[12..], id),
        (17, "INV-20", "-0001", 1)
    );
}

/// Finding 4: snowflake `K` issued ID N; after DELETE, `K` as a sequence from N-1 issued N
/// again. A key keeps its mode across DELETE: the other mode is 409 `MODE_CHANGE`, and
/// without `mode` it comes back in its own.
#[test]
fn a_deleted_key_keeps_its_mode() {
    let s = Server::start(ServerOpts::default());
    s.register("K", r#"{"format":"K-{SEQ:3}","mode":"snowflake"}"#);
    let (number, id) = next(&s, "K");
    assert_eq!(s.admin("DELETE", "/prefix-configs/K", "").status, 200);
    let body = format!(
        r#"{{"format":"K-{{SEQ:3}}","mode":"sequence","initial_seq":"{}"}}"#,
        id - 1
    );
    let r = s.admin("POST", "/prefix-configs/K", &body);
    assert_error(&r, 409, "MODE_CHANGE");
    // Without `mode` (a width that would ask for a sequence): the key's own mode.
    let r = s.admin("POST", "/prefix-configs/K", r#"{"format":"K-{SEQ:3}"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["config"]["mode"], "snowflake");
    let (again, later) = next(&s, "K");
    assert!(later > id && again != number, "{again} after {number}");
}

/// Findings 7 and 10: seed 002's bodies, sent verbatim, register sequence prefixes.
#[test]
fn the_seeds_bodies_work_verbatim() {
    let s = Server::start(ServerOpts::default());
    let r = s.admin(
        "PUT",
        "/api/prefix-configs/PREFIX_A",
        r#"{"format":"{prefix}-{year}-{SEQ:6}","seqLength":6,"initialSeq":1}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["config"]["mode"], "sequence");
    let year = year_now();
    assert_eq!(next(&s, "PREFIX_A").0, format!("PREFIX_A-{year}-000002"));
    s.register("TEST", r#"{"format":"TEST-{SEQ:4}"}"#);
    let got: Vec<String> = (0..3).map(|_| next(&s, "TEST").0).collect();
    assert_eq!(got, ["TEST-0001", "TEST-0002", "TEST-0003"]);
    s.register(
        "ORDER",
        r#"{"format":"ORDER-{year}-{SEQ:6}","seq_length":6,"initial_seq":1000}"#,
    );
    let r = s.get("/api/numbers?prefixKey=ORDER");
    assert_eq!(number_of(&r), (format!("ORDER-{year}-001001"), 1001));
    // 16 digits and more ask for snowflake IDs.
    let v = s.register("SNOW", r#"{"format":"S-{SEQ:16}"}"#);
    assert_eq!(v["config"]["mode"], "snowflake");
}

/// SPEC 1.3: `initial_seq` on a snowflake prefix is a floor below today's IDs.
#[test]
fn a_snowflake_floor_lies_below_every_id() {
    let s = Server::start(ServerOpts::default());
    let r = s.admin(
        "POST",
        "/prefix-configs/F",
        r#"{"format":"F-{SEQ:19}","initial_seq":"9000000000000000000"}"#,
    );
    assert_error(&r, 400, "INVALID_CONFIG");
    // A floor just below the IDs of now: every ID is above it.
    s.register("PROBE", r#"{"format":"P-{SEQ:19}"}"#);
    let (_, probe) = next(&s, "PROBE");
    let floor = probe + (1 << 22) * 2;
    let body = format!(r#"{{"format":"F-{{SEQ:19}}","initial_seq":"{floor}"}}"#);
    // Refused while the floor lies ahead of the clock (IDs of now would be below it), then
    // accepted; a bounded poll, as the clock takes a few milliseconds to get there.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = s.admin("POST", "/prefix-configs/F", &body);
        if r.status == 200 {
            break;
        }
        assert_error(&r, 400, "INVALID_CONFIG");
        assert!(
            std::time::Instant::now() < deadline,
            "floor {floor} never accepted"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let (_, id) = next(&s, "F");
    assert!(id > floor, "{id} not above {floor}");
}
