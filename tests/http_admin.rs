//! Black-box tests of the prefix-config routes (SPEC 3.1) against the real `numgen`
//! binary: every way a config is refused, replacement and deletion that never repeat a
//! number, the camelCase aliases and the seed scenarios, and the admin token: who gets a
//! 401, what is logged about it and what never is.

mod common;

use std::time::{Duration, Instant};

use common::api::{next, number_of, refused};
use common::server::{Server, ServerOpts, assert_error};
use serde_json::json;

#[test]
fn invalid_formats_are_refused() {
    let s = Server::start(ServerOpts::default());
    let v = refused(&s, "F1", r#"{"format":"INVALID"}"#, 400, "INVALID_FORMAT");
    assert_eq!(v["error"], "Missing {SEQ} tag");
    let v = refused(
        &s,
        "F1",
        r#"{"format":"'; DROP TABLE users;--"}"#,
        400,
        "INVALID_FORMAT",
    );
    assert!(v["error"].as_str().unwrap_or("").contains('\''), "{v}");
    for (format, extra) in [
        ("A{SEQ}", ""),
        ("A{SEQ:0}", ""),
        ("A{SEQ:21}", ""),
        ("A{SEQ:3}{SEQ:3}", ""),
        ("A{SEQ}{SEQ:3}", r#","seq_length":3"#),
        ("A {SEQ:3}", ""),
        ("A<{SEQ:3}", ""),
        ("A;{SEQ:3}", ""),
        ("{nope}{SEQ:3}", ""),
        ("A{SEQ:3", ""),
        ("A}{SEQ:3}", ""),
        ("A{{SEQ:3}", ""),
        ("", ""),
        ("A{SEQ:3}", r#","seq_length":4"#),
        ("Ä{SEQ:3}", ""),
    ] {
        let body = json!({ "format": format }).to_string();
        let body = format!("{}{extra}}}", &body[..body.len() - 1]);
        refused(&s, "F1", &body, 400, "INVALID_FORMAT");
    }
    let long = format!("{}{{SEQ:3}}", "A".repeat(122));
    refused(
        &s,
        "F1",
        &json!({ "format": long }).to_string(),
        400,
        "INVALID_FORMAT",
    );
    // 128 characters is still fine.
    let longest = format!("{}{{SEQ:3}}", "A".repeat(121));
    s.register("F128", &json!({ "format": longest }).to_string());
}

#[test]
fn invalid_configs_are_refused() {
    let s = Server::start(ServerOpts::default());
    let v = refused(
        &s,
        "C1",
        r#"{"format":"A{SEQ:3}","seq_length":-5}"#,
        400,
        "INVALID_CONFIG",
    );
    assert!(
        v["error"].as_str().unwrap_or("").contains("seq_length"),
        "{v}"
    );
    let v = refused(
        &s,
        "C1",
        r#"{"format":"A{SEQ:3}","colour":"red"}"#,
        400,
        "INVALID_CONFIG",
    );
    assert!(v["error"].as_str().unwrap_or("").contains("colour"), "{v}");
    for body in [
        r#"{"format":"#,
        r#"{"format":"A{SEQ:3}",}"#,
        "",
        "[]",
        "null",
        "\"A{SEQ:3}\"",
        "\u{feff}{}",
        r#"{"format":"A{SEQ}","seq_length":21}"#,
        r#"{"format":"A{SEQ}","seq_length":0}"#,
        r#"{"format":"A{SEQ}","seq_length":"3"}"#,
        r#"{"format":"A{SEQ:3}","mode":"random"}"#,
        r#"{"format":"A{SEQ:3}","mode":"sequence","reset":"hourly"}"#,
        r#"{"format":"A{SEQ:3}","mode":"sequence","initial_seq":-1}"#,
        r#"{"format":"A{SEQ:3}","mode":"sequence","initial_seq":1.5}"#,
        r#"{"format":"A{SEQ:3}","mode":"sequence","initial_seq":18446744073709551616}"#,
        r#"{"format":"A{SEQ:3}","mode":"sequence","initial_seq":"18446744073709551616"}"#,
        r#"{"format":"A{SEQ:3}","utc_offset":"+15:00"}"#,
        r#"{"format":"A{SEQ:3}","utc_offset":"0800"}"#,
        r#"{"format":"A{SEQ:3}","strict":"yes"}"#,
        r#"{"format":"A{SEQ:3}","mode":"snowflake","strict":true}"#,
        r#"{"format":"A{SEQ:19}","reset":"yearly"}"#,
    ] {
        refused(&s, "C1", body, 400, "INVALID_CONFIG");
    }
    // Invalid UTF-8 is bad JSON too.
    let r = s.request(
        "POST",
        "/prefix-configs/C1",
        &[("Authorization", &format!("Bearer {}", s.token()))],
        b"{\"format\":\"A\xff{SEQ:3}\"}",
    );
    assert_error(&r, 400, "INVALID_CONFIG");
}

#[test]
fn put_creates_replaces_and_never_rewinds() {
    let s = Server::start(ServerOpts::default());
    let r = s.admin(
        "PUT",
        "/prefix-configs/INV",
        r#"{"format":"INV-{SEQ:6}","mode":"sequence","initial_seq":1000}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "registered");
    assert_eq!(r.json()["config"]["initial_seq"], 1000);
    assert_eq!(next(&s, "INV").0, "INV-001001");
    assert_eq!(next(&s, "INV").0, "INV-001002");

    // A lower initial_seq, a new format: the counter goes on.
    let r = s.admin(
        "PUT",
        "/prefix-configs/INV",
        r#"{"format":"NEW-{SEQ:4}","mode":"sequence","initial_seq":0}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let (number, id) = next(&s, "INV");
    assert!(id > 1002, "rewound to {id}");
    assert_eq!(number, format!("NEW-{id:04}"));
    assert_eq!(
        s.admin("GET", "/prefix-configs/INV", "").json()["config"]["format"],
        "NEW-{SEQ:4}"
    );
    // A higher initial_seq moves the counter up; the same config again changes nothing.
    let higher = r#"{"format":"NEW-{SEQ:4}","mode":"sequence","initial_seq":50000}"#;
    for want in [50_001, 50_002] {
        assert_eq!(s.admin("PUT", "/prefix-configs/INV", higher).status, 200);
        assert_eq!(next(&s, "INV").1, want);
    }

    // A refused replacement changes nothing.
    let r = s.admin(
        "PUT",
        "/prefix-configs/INV",
        r#"{"format":"BAD","mode":"sequence"}"#,
    );
    assert_error(&r, 400, "INVALID_FORMAT");
    let r = s.admin(
        "PUT",
        "/prefix-configs/INV",
        r#"{"format":"X{SEQ:3}","mode":"sequence","colour":1}"#,
    );
    assert_error(&r, 400, "INVALID_CONFIG");
    assert_eq!(next(&s, "INV"), ("NEW-50003".into(), 50_003));

    // Snowflake: replacing keeps the prefix's clock.
    s.register("SNOW", r#"{"format":"S-{SEQ:3}","mode":"snowflake"}"#);
    let (_, before) = next(&s, "SNOW");
    // Without `mode` the key keeps its own (SPEC 1.0).
    let r = s.admin("PUT", "/prefix-configs/SNOW", r#"{"format":"T-{SEQ:3}"}"#);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["config"]["mode"], "snowflake");
    let (number, after) = next(&s, "SNOW");
    assert!(after > before);
    assert_eq!(number, format!("T-{after}"));
}

#[test]
fn deleted_prefixes_never_repeat_a_number() {
    let mut s = Server::start(ServerOpts::default());
    let seq = r#"{"format":"D-{SEQ:3}","mode":"sequence"}"#;
    let snow = r#"{"format":"E-{SEQ:3}","mode":"snowflake"}"#;
    s.register("DSEQ", seq);
    s.register("DSNOW", snow);
    let mut seq_seen = vec![next(&s, "DSEQ").1, next(&s, "DSEQ").1];
    let mut snow_seen = vec![next(&s, "DSNOW").1];
    assert_eq!(seq_seen, [1, 2]);
    for round in 0..3 {
        for key in ["DSEQ", "DSNOW"] {
            let r = s.admin("DELETE", &format!("/prefix-configs/{key}"), "");
            assert_eq!(r.json(), json!({"status":"deleted"}));
            assert_error(
                &s.get(&format!("/numbers/{key}")),
                400,
                "PREFIX_NOT_REGISTERED",
            );
            assert_error(
                &s.admin("GET", &format!("/prefix-configs/{key}"), ""),
                404,
                "NOT_FOUND",
            );
        }
        if round == 1 {
            s.restart();
        }
        s.register("DSEQ", seq);
        s.register("DSNOW", snow);
        for _ in 0..3 {
            let (_, id) = next(&s, "DSEQ");
            assert!(
                id > *seq_seen.last().unwrap_or(&0),
                "round {round}: {id} after {seq_seen:?}"
            );
            seq_seen.push(id);
            let (_, id) = next(&s, "DSNOW");
            assert!(
                id > *snow_seen.last().unwrap_or(&0),
                "round {round}: {id} after {snow_seen:?}"
            );
            snow_seen.push(id);
        }
    }
    // After a crash too.
    s.kill9();
    s.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let id = loop {
        let r = s.get("/numbers/DSNOW");
        if r.status == 200 || Instant::now() > deadline {
            break number_of(&r).1;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(id > *snow_seen.last().unwrap_or(&0));
    assert!(next(&s, "DSEQ").1 > *seq_seen.last().unwrap_or(&0));
}

#[test]
fn a_sequence_prefix_cannot_change_its_reset_so_no_number_repeats() {
    let mut s = Server::start(ServerOpts::default());
    let never = r#"{"format":"INV-{year}-{SEQ:6}","mode":"sequence"}"#;
    let yearly = r#"{"format":"INV-{year}-{SEQ:6}","mode":"sequence","reset":"yearly"}"#;
    s.register("RST", never);
    let mut seen: Vec<(String, u64)> = (0..3).map(|_| next(&s, "RST")).collect();
    // A yearly counter would start at 1 again in this year: INV-<year>-000001 twice.
    let r = s.admin("PUT", "/prefix-configs/RST", yearly);
    let body = assert_error(&r, 409, "MODE_CHANGE");
    assert!(
        body["error"].as_str().unwrap_or("").contains("reset"),
        "{body}"
    );
    assert_eq!(
        s.admin("GET", "/prefix-configs/RST", "").json()["config"]["reset"],
        "never"
    );
    seen.push(next(&s, "RST"));
    // Nor by deleting the prefix first, also across a restart.
    assert_eq!(s.admin("DELETE", "/prefix-configs/RST", "").status, 200);
    refused(&s, "RST", yearly, 409, "MODE_CHANGE");
    let r = s.admin("PUT", "/prefix-configs/RST", yearly);
    assert_error(&r, 409, "MODE_CHANGE");
    s.restart();
    refused(&s, "RST", yearly, 409, "MODE_CHANGE");
    assert_error(&s.get("/numbers/RST"), 400, "PREFIX_NOT_REGISTERED");
    // The same reset comes back and counts on.
    s.register("RST", never);
    seen.push(next(&s, "RST"));
    for w in seen.windows(2) {
        assert!(w[1].1 > w[0].1, "{seen:?}");
        assert_ne!(w[1].0, w[0].0);
    }
    // Another format, offset or initial_seq is not another reset.
    let r = s.admin(
        "PUT",
        "/prefix-configs/RST",
        r#"{"format":"NEW-{SEQ:8}","mode":"sequence","utc_offset":"+08:00","initial_seq":2}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(next(&s, "RST").1 > seen.last().map_or(0, |n| n.1));
}

#[test]
fn camel_case_aliases_and_seed_scenarios() {
    let s = Server::start(ServerOpts::default());
    let v = s.register(
        "CAMEL",
        r#"{"format":"C{yy}-{SEQ}","seqLength":5,"initialSeq":"41","utcOffset":"+08:00","mode":"sequence","reset":"yearly"}"#,
    );
    let c = &v["config"];
    assert_eq!(
        (
            &c["seq_length"],
            &c["initial_seq"],
            &c["utc_offset"],
            &c["reset"]
        ),
        (&json!(5), &json!(41), &json!("+08:00"), &json!("yearly"))
    );
    let yy = chrono::Utc::now()
        .with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).expect("offset"))
        .format("%y")
        .to_string();
    assert_eq!(next(&s, "CAMEL").0, format!("C{yy}-00042"));

    // The seed scenarios.
    s.register("TEST", r#"{"format":"TEST-{SEQ:4}","mode":"sequence"}"#);
    for want in ["TEST-0001", "TEST-0002", "TEST-0003"] {
        assert_eq!(next(&s, "TEST").0, want);
    }
    let dup = s.admin(
        "POST",
        "/prefix-configs/TEST",
        r#"{"format":"TEST-{SEQ:4}","mode":"sequence"}"#,
    );
    assert_eq!(
        assert_error(&dup, 409, "PREFIX_EXISTS")["error"],
        "Prefix already exists"
    );
    s.register("A", r#"{"format":"A-{SEQ:3}","mode":"sequence"}"#);
    s.register("B", r#"{"format":"B-{SEQ:3}","mode":"sequence"}"#);
    let got: Vec<String> = ["A", "B", "A", "B"].iter().map(|k| next(&s, k).0).collect();
    assert_eq!(got, ["A-001", "B-001", "A-002", "B-002"]);
}

#[test]
fn unauthorized_is_logged_with_the_peer_and_secrets_never_are() {
    let token = "s3cr3t-admin-token-4f1d2c";
    let wrong = "wr0ng-token-9b8a7c";
    let s = Server::start(ServerOpts::default().admin_token(token));
    let body = r#"{"format":"A{SEQ:3}"}"#;
    let mut c = s.client();
    let peer = c.local_addr().expect("local addr").to_string();
    // (method, path, Authorization header)
    let cases = [
        ("POST", "/prefix-configs/A", None),
        ("POST", "/prefix-configs/A", Some(format!("Bearer {wrong}"))),
        (
            "PUT",
            "/api/prefix-configs/A",
            Some(format!("Basic {token}")),
        ),
        ("GET", "/prefix-configs", Some(token.to_string())),
        ("GET", "/prefix-configs/A", Some(format!("Bearer {token}x"))),
        ("DELETE", "/prefix-configs/A", Some("Bearer".into())),
        ("GET", "/api/prefix-configs", Some("Bearer ".into())),
    ];
    for (method, path, auth) in &cases {
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        let r = c
            .request(method, path, &headers, body.as_bytes())
            .expect("request");
        let v = assert_error(&r, 401, "UNAUTHORIZED");
        assert_eq!(v["error"], "Unauthorized");
    }
    assert_eq!(s.get("/numbers/A").json()["code"], "PREFIX_NOT_REGISTERED");
    // One WARN with this connection's address per 401.
    let expected = cases.len();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let warns = s
            .log_records()
            .into_iter()
            .filter(|r| {
                r["level"] == "WARN"
                    && r.as_object()
                        .is_some_and(|o| o.values().any(|v| v.as_str() == Some(peer.as_str())))
            })
            .count();
        if warns >= expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{warns} WARN lines with peer {peer} for {expected} 401s:\n{}",
            s.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // The right token works, also with `initial_seq`, which is logged masked.
    s.register(
        "MASKED",
        r#"{"format":"MASK-{SEQ:10}","mode":"sequence","initial_seq":987654321}"#,
    );
    assert_eq!(next(&s, "MASKED").0, "MASK-0987654322");
    let put = s.admin(
        "PUT",
        "/prefix-configs/MASKED",
        r#"{"format":"MASK-{SEQ:10}","mode":"sequence","initialSeq":"987654329"}"#,
    );
    assert_eq!(put.status, 200, "{}", put.text());
    let logged = s.wait_for_log(Duration::from_secs(5), |r| {
        r.to_string().contains("MASKED") && r.to_string().contains("****")
    });
    assert!(logged.is_some(), "no masked config log line:\n{}", s.logs());
    let logs = s.logs();
    for secret in [token, wrong, "987654321", "987654329"] {
        assert!(
            !logs.contains(secret),
            "{secret:?} appears in the logs:\n{logs}"
        );
    }
}

/// What an unauthenticated request puts in the log is bounded (SPEC 7): its path is cut.
#[test]
fn a_401_logs_at_most_256_bytes_of_the_path() {
    let s = Server::start(ServerOpts::default());
    let long_key = "L".repeat(3000);
    let r = s.get(&format!("/prefix-configs/{long_key}"));
    assert_error(&r, 401, "UNAUTHORIZED");
    let cut = s.wait_for_log(Duration::from_secs(5), |r| {
        r["level"] == "WARN" && r["path"].as_str().is_some_and(|p| p.contains("LLLL"))
    });
    let path = cut.as_ref().and_then(|r| r["path"].as_str()).unwrap_or("");
    assert!(
        path.starts_with("/prefix-configs/LLL") && path.len() <= 256,
        "the 401 of a {}-byte path logged {} bytes of it:\n{}",
        long_key.len() + 16,
        path.len(),
        s.logs()
    );
}

#[test]
fn generated_admin_token_is_kept_in_the_data_dir() {
    use std::os::unix::fs::PermissionsExt;
    let mut s = Server::start(ServerOpts::default().no_admin_token());
    let file = s.data_dir().join("admin-token");
    let meta = std::fs::metadata(&file).expect("admin-token file");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let token = s.token();
    assert!(token.len() >= 16, "token {token:?} is short");
    let path = file.to_string_lossy().to_string();
    assert!(
        s.log_records()
            .iter()
            .any(|r| r.to_string().contains(&path)),
        "the token file's path is not logged:\n{}",
        s.logs()
    );
    assert_error(&s.get("/prefix-configs"), 401, "UNAUTHORIZED");
    s.register("GEN", r#"{"format":"G{SEQ:3}","mode":"sequence"}"#);
    s.restart();
    assert_eq!(s.token(), token, "the token changed on restart");
    assert_eq!(s.admin("GET", "/prefix-configs/GEN", "").status, 200);
    assert!(!s.logs().contains(&token), "the token is logged");
}
