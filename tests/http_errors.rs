//! Black-box tests of the error codes (SPEC 3.5) that can be reached from outside, against
//! the real `numgen` binary: bad keys and counts, unknown prefixes and routes, methods and
//! their `Allow` header, conflicts, sequence overflow and body limits.

mod common;

use common::api::{U64_MAX, next};
use common::server::{Server, ServerOpts, assert_error};

#[test]
fn bad_keys_and_counts_change_nothing() {
    let s = Server::start(ServerOpts::default());
    s.register("K", r#"{"format":"K-{SEQ:4}","mode":"sequence"}"#);

    let long = "x".repeat(65);
    let sql = "%27%3B%20DROP%20TABLE%20users%3B--";
    for key in [
        "-bad",
        "_bad",
        ".bad",
        "a%20b",
        "%C3%A9",
        sql,
        long.as_str(),
        "%zz",
    ] {
        assert_error(
            &s.get(&format!("/numbers/{key}")),
            400,
            "INVALID_PREFIX_KEY",
        );
        assert_error(
            &s.admin(
                "POST",
                &format!("/prefix-configs/{key}"),
                r#"{"format":"A{SEQ:3}"}"#,
            ),
            400,
            "INVALID_PREFIX_KEY",
        );
    }
    for q in ["prefixKey=-bad", "prefixKey=", "count=1", ""] {
        assert_error(&s.get(&format!("/numbers?{q}")), 400, "INVALID_PREFIX_KEY");
    }
    // The longest key is fine.
    s.register(&"y".repeat(64), r#"{"format":"Y{SEQ:3}"}"#);

    for count in [
        "0",
        "10001",
        "abc",
        "",
        "-1",
        "1.5",
        "99999999999999999999999",
        "%zz",
    ] {
        let r = s.get(&format!("/numbers/K?count={count}"));
        assert_error(&r, 400, "INVALID_COUNT");
        let r = s.get(&format!("/api/numbers?prefixKey=K&count={count}"));
        assert_error(&r, 400, "INVALID_COUNT");
    }
    // Refused counts used no numbers.
    assert_eq!(next(&s, "K").0, "K-0001");
}

#[test]
fn unknown_prefixes_and_routes() {
    let s = Server::start(ServerOpts::default());
    s.register("K", r#"{"format":"K-{SEQ:4}","mode":"sequence"}"#);
    let v = assert_error(&s.get("/numbers/NOPE"), 400, "PREFIX_NOT_REGISTERED");
    assert_eq!(v["error"], "Prefix 'NOPE' not registered");
    let v = assert_error(
        &s.request("POST", "/api/numbers/NOPE?count=3", &[], b""),
        400,
        "PREFIX_NOT_REGISTERED",
    );
    assert_eq!(v["error"], "Prefix 'NOPE' not registered");

    // `/` and `/api/` are the status page.
    for path in [
        "/nope",
        "/api",
        "/numbers/",
        "/numbers/K/extra",
        "/api/api/health",
        "/healthz",
        "/HEALTH",
        "/ids/",
        "/prefix-configs/K/x",
    ] {
        assert_error(&s.get(path), 404, "NOT_FOUND");
    }
    assert_error(
        &s.admin("GET", "/prefix-configs/UNKNOWN", ""),
        404,
        "NOT_FOUND",
    );
    assert_error(
        &s.admin("DELETE", "/api/prefix-configs/UNKNOWN", ""),
        404,
        "NOT_FOUND",
    );
}

#[test]
fn a_wrong_method_is_405_with_an_allow_header_that_lists_the_right_ones() {
    let s = Server::start(ServerOpts::default());
    s.register("K", r#"{"format":"K-{SEQ:4}","mode":"sequence"}"#);
    for (method, path, must_allow) in [
        ("DELETE", "/numbers/K", "GET"),
        ("PUT", "/api/numbers/K", "POST"),
        ("POST", "/health", "GET"),
        ("DELETE", "/ready", "GET"),
        ("POST", "/metrics", "GET"),
        ("PUT", "/cluster/nodes", "GET"),
        ("POST", "/ids/1", "GET"),
        ("POST", "/prefix-configs", "GET"),
        ("PATCH", "/prefix-configs/K", "PUT"),
        ("OPTIONS", "/api/prefix-configs/K", "DELETE"),
    ] {
        let token = format!("Bearer {}", s.token());
        let r = s.request(method, path, &[("Authorization", &token)], b"");
        assert_error(&r, 405, "METHOD_NOT_ALLOWED");
        let allow = r
            .header("allow")
            .unwrap_or_else(|| panic!("{method} {path}: no Allow"));
        assert!(
            allow.split(',').any(|m| m.trim() == must_allow),
            "{method} {path}: Allow {allow:?} lacks {must_allow}"
        );
        assert!(
            !allow.split(',').any(|m| m.trim() == method),
            "{method} {path}: Allow {allow:?} lists the refused method"
        );
    }
}

#[test]
fn conflicts_leave_the_first_config() {
    let s = Server::start(ServerOpts::default());
    s.register("DUP", r#"{"format":"DUP-{SEQ:3}","mode":"snowflake"}"#);
    let v = assert_error(
        &s.admin(
            "POST",
            "/prefix-configs/DUP",
            r#"{"format":"OTHER-{SEQ:3}"}"#,
        ),
        409,
        "PREFIX_EXISTS",
    );
    assert_eq!(v["error"], "Prefix already exists");
    // The first config stays.
    assert_eq!(
        s.admin("GET", "/prefix-configs/DUP", "").json()["config"]["format"],
        "DUP-{SEQ:3}"
    );

    assert_error(
        &s.admin(
            "PUT",
            "/prefix-configs/DUP",
            r#"{"format":"DUP-{SEQ:3}","mode":"sequence"}"#,
        ),
        409,
        "MODE_CHANGE",
    );
    s.register("SEQ", r#"{"format":"S{SEQ:3}","mode":"sequence"}"#);
    assert_error(
        &s.admin(
            "PUT",
            "/prefix-configs/SEQ",
            r#"{"format":"S{SEQ:3}","mode":"snowflake"}"#,
        ),
        409,
        "MODE_CHANGE",
    );
    assert_eq!(
        s.admin("GET", "/prefix-configs/DUP", "").json()["config"]["mode"],
        "snowflake"
    );
    assert_eq!(next(&s, "SEQ").0, "S001");
}

#[test]
fn sequence_overflow_at_the_top_of_u64() {
    let s = Server::start(ServerOpts::default());
    // SEQUENCE_OVERFLOW: the last two numbers of u64, then 409.
    s.register(
        "MAXED",
        r#"{"format":"M{SEQ:20}","mode":"sequence","initial_seq":"18446744073709551613"}"#,
    );
    assert_eq!(
        next(&s, "MAXED"),
        ("M18446744073709551614".into(), u64::MAX - 1)
    );
    let (number, id) = next(&s, "MAXED");
    assert_eq!(
        (number.as_str(), id.to_string().as_str()),
        (&*format!("M{U64_MAX}"), U64_MAX)
    );
    for _ in 0..2 {
        assert_error(&s.get("/numbers/MAXED"), 409, "SEQUENCE_OVERFLOW");
    }
    // A refused batch near the top still answers 409.
    s.register(
        "MAXBATCH",
        r#"{"format":"M{SEQ:3}","mode":"sequence","initial_seq":18446744073709551610}"#,
    );
    assert_error(
        &s.get("/numbers/MAXBATCH?count=6"),
        409,
        "SEQUENCE_OVERFLOW",
    );
    s.register(
        "MAX0",
        r#"{"format":"M{SEQ:3}","mode":"sequence","initial_seq":18446744073709551615}"#,
    );
    assert_error(&s.get("/numbers/MAX0"), 409, "SEQUENCE_OVERFLOW");
}

#[test]
fn bodies_over_16_kib_are_refused_however_they_are_framed() {
    let s = Server::start(ServerOpts::default());
    // BODY_TOO_LARGE: over 16 KiB, by Content-Length or by a chunked body.
    let token = format!("Bearer {}", s.token());
    let auth = [("Authorization", token.as_str())];
    let config = r#"{"format":"BIG-{SEQ:3}"}"#;
    let exactly = format!("{config}{}", " ".repeat(16 * 1024 - config.len()));
    let r = s.request("POST", "/prefix-configs/BIG", &auth, exactly.as_bytes());
    assert_eq!(r.status, 200, "a body of exactly 16 KiB: {}", r.text());
    let over = format!("{exactly} ");
    for path in ["/prefix-configs/BIG2", "/numbers/BIG", "/health"] {
        let r = s.request("POST", path, &auth, over.as_bytes());
        assert_error(&r, 413, "BODY_TOO_LARGE");
    }
    let r = s.request("PUT", "/api/prefix-configs/BIG2", &[], over.as_bytes());
    assert_error(&r, 413, "BODY_TOO_LARGE");
    let mut chunked = Vec::new();
    for piece in over.as_bytes().chunks(4000) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let r = s.request(
        "POST",
        "/prefix-configs/BIG3",
        &[("Authorization", &token), ("Transfer-Encoding", "chunked")],
        &chunked,
    );
    assert_error(&r, 413, "BODY_TOO_LARGE");
    assert_error(
        &s.admin("GET", "/prefix-configs/BIG3", ""),
        404,
        "NOT_FOUND",
    );
}
