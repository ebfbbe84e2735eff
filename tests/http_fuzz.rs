//! A loop of malformed requests against the real `numgen` binary: junk paths, queries,
//! headers, bodies and framing. None may get a 500, go unanswered, log an ERROR, or stop
//! the server. `NUMGEN_FUZZ_SEED` replays a run.

mod common;

use std::time::{Duration, Instant};

use common::api::{U64_MAX, next, now_ms};
use common::rng::Rng;
use common::server::{Client, Server, ServerOpts, assert_error};
use serde_json::{Value, json};

/// A piece of junk for a path: escapes, odd characters, raw bytes (some not UTF-8).
fn fuzz_piece(rng: &mut Rng) -> Vec<u8> {
    const PIECES: &[&str] = &[
        "FUZZ",
        "K",
        "FZ",
        "%",
        "%2",
        "%zz",
        "%00",
        "%2F",
        "%e9",
        "%C3%A9",
        "%ff%fe",
        "%25",
        "..",
        "/",
        "//",
        "?",
        "&",
        "=",
        "+",
        "#",
        ";",
        "'",
        "\"",
        "<script>",
        "{SEQ}",
        "~",
        "\\",
        "12345678901234567890",
        "9223372036854775807",
        "-1",
        "",
    ];
    match rng.below(8) {
        // The request line must stay one line.
        0 => rng
            .bytes(8)
            .into_iter()
            .filter(|b| !matches!(b, b' ' | b'\r' | b'\n'))
            .collect(),
        1 => format!("%{:02X}", rng.next() as u8).into_bytes(),
        2 => "x".repeat(rng.below(100)).into_bytes(),
        _ => rng.pick(PIECES).as_bytes().to_vec(),
    }
}

/// A request target: mostly a real route with a mangled parameter or query, else junk.
fn fuzz_path(rng: &mut Rng) -> Vec<u8> {
    const ROUTES: &[&str] = &[
        "/numbers/",
        "/api/numbers/",
        "/numbers?prefixKey=",
        "/api/numbers?count=3&prefixKey=",
        "/prefix-configs/",
        "/api/prefix-configs/",
        "/prefix-configs",
        "/ids/",
        "/api/ids/",
        "/health",
        "/ready",
        "/metrics",
        "/cluster/nodes",
        "/api/health",
        "/api",
    ];
    const QUERIES: &[&str] = &[
        "",
        "",
        "?count=",
        "?count=0",
        "?count=1",
        "?count=3",
        "?count=10000",
        "?count=10001",
        "?count=abc",
        "?count=%31",
        "?count=+1",
        "?count=1&count=2",
        "?prefixKey=K",
        "?&&&",
        "?count",
        "?count=%",
        "?=",
    ];
    let mut p = Vec::new();
    if rng.below(4) == 0 {
        p.push(b'/');
        for _ in 0..rng.below(5) + 1 {
            p.extend(fuzz_piece(rng));
        }
        return p;
    }
    p.extend(rng.pick(ROUTES).as_bytes());
    for _ in 0..rng.below(3) {
        p.extend(fuzz_piece(rng));
    }
    p.extend(rng.pick(QUERIES).as_bytes());
    p
}

fn fuzz_body(rng: &mut Rng) -> Vec<u8> {
    const FORMATS: &[&str] = &[
        "A{SEQ:3}",
        "{SEQ}",
        "{SEQ:0}",
        "{SEQ:20}",
        "{SEQ:99999999999}",
        "{SEQ:-1}",
        "{",
        "}",
        "{}",
        "{{SEQ:3}}",
        "é{SEQ:3}",
        "{prefix}{date}{flag}{SEQ:2}",
        "\u{0}",
        "{SEQ:3}{SEQ:3}",
        "'; DROP TABLE users;--",
    ];
    match rng.below(6) {
        0 => Vec::new(),
        1 => rng.bytes(300),
        2 => {
            let mut b = serde_json::Map::new();
            b.insert("format".into(), json!(rng.pick(FORMATS)));
            for (k, vals) in [
                (
                    "seq_length",
                    &[json!(-5), json!(3), json!(300), json!("x"), json!(null)][..],
                ),
                (
                    "initial_seq",
                    &[
                        json!(-1),
                        json!(U64_MAX),
                        json!("18446744073709551616"),
                        json!(1.5),
                    ],
                ),
                (
                    "mode",
                    &[json!("sequence"), json!("snowflake"), json!(7), json!("x")],
                ),
                ("reset", &[json!("daily"), json!("never"), json!([])]),
                (
                    "utcOffset",
                    &[json!("+14:00"), json!("-99:99"), json!("+08:00")],
                ),
                ("strict", &[json!(true), json!("true")]),
                ("colour", &[json!("red")]),
            ] {
                if rng.below(3) == 0 {
                    b.insert(k.into(), vals[rng.below(vals.len())].clone());
                }
            }
            Value::Object(b).to_string().into_bytes()
        }
        3 => {
            let depth = rng.below(200) + 1;
            format!("{}{}", "[".repeat(depth), "]".repeat(rng.below(depth + 1))).into_bytes()
        }
        4 => format!("{{\"format\":\"{}", "A".repeat(rng.below(1000))).into_bytes(),
        _ => {
            let s = r#"{"format":"Z{SEQ:3}","mode":"sequence"}"#;
            s.as_bytes()[..rng.below(s.len() + 1)].to_vec()
        }
    }
}

/// One random request.
struct Fuzzed {
    raw: Vec<u8>,
    /// A HEAD: the response has no body.
    head: bool,
    /// Unframed bytes follow the request: the connection cannot be reused.
    trailing_junk: bool,
}

fn fuzz_request(rng: &mut Rng, token: &str) -> Fuzzed {
    const METHODS: &[&str] = &[
        "GET", "GET", "GET", "POST", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "TRACE",
        "get", "FOO", "G@T",
    ];
    let method = rng.pick(METHODS);
    let mut raw = Vec::new();
    raw.extend(method.as_bytes());
    raw.push(b' ');
    raw.extend(fuzz_path(rng));
    raw.extend(b" HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    if rng.below(2) == 0 {
        raw.extend(format!("Authorization: Bearer {token}\r\n").bytes());
    } else if rng.below(3) == 0 {
        raw.extend(b"Authorization: Bearer \xff\xfe\r\n");
    }
    if rng.below(3) == 0 {
        let accept = rng.pick(&[
            "text/plain",
            "text/plain;q=NaN",
            "text/plain;q=inf, application/json;q=-1",
            "*/*",
            ";;;,,,",
            "\u{e9}",
        ]);
        raw.extend(format!("Accept: {accept}\r\n").bytes());
    }
    if rng.below(25) == 0 {
        let size = [9_000, 70_000, 500_000][rng.below(3)];
        raw.extend(b"X-Huge: ");
        raw.extend(std::iter::repeat_n(b'h', size));
        raw.extend(b"\r\n");
    }
    if rng.below(40) == 0 {
        for i in 0..150 {
            raw.extend(format!("X-Many-{i}: {i}\r\n").bytes());
        }
    }
    let body = fuzz_body(rng);
    // No length: the body becomes pipelined junk.
    let trailing_junk = rng.below(16) == 0 && !body.is_empty();
    match rng.below(16) {
        _ if trailing_junk => {}
        1 | 2 => {
            raw.extend(b"Transfer-Encoding: chunked\r\n\r\n");
            if !body.is_empty() {
                raw.extend(format!("{:x}\r\n", body.len()).bytes());
                raw.extend(&body);
                raw.extend(b"\r\n");
            }
            raw.extend(b"0\r\n\r\n");
            return Fuzzed {
                raw,
                head: method == "HEAD",
                trailing_junk: false,
            };
        }
        3 => raw.extend(b"Content-Length: 99999999999999999999999\r\n"),
        4 => raw.extend(b"Content-Length: -1\r\n"),
        _ => raw.extend(format!("Content-Length: {}\r\n", body.len()).bytes()),
    }
    raw.extend(b"\r\n");
    raw.extend(&body);
    Fuzzed {
        raw,
        head: method == "HEAD",
        trailing_junk,
    }
}

#[test]
fn malformed_requests_never_get_a_500() {
    let mut s = Server::start(ServerOpts::default());
    s.register("FUZZ", r#"{"format":"FZ-{SEQ:3}","mode":"snowflake"}"#);
    s.register("K", r#"{"format":"K-{SEQ:3}","mode":"sequence"}"#);
    let token = s.token();
    let seed = std::env::var("NUMGEN_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| now_ms() | 1);
    eprintln!("fuzz seed {seed} (NUMGEN_FUZZ_SEED to replay)");
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut statuses = std::collections::BTreeMap::<(u16, String), usize>::new();
    let mut client: Option<Client> = None;
    let mut sent = 0;
    let mut timeouts = Vec::new();
    while sent < 6000 && started.elapsed() < Duration::from_secs(20) {
        sent += 1;
        let Fuzzed {
            raw,
            head,
            trailing_junk,
        } = fuzz_request(&mut rng, &token);
        let c = match client.as_mut() {
            Some(c) => c,
            None => {
                let c = Client::connect(s.addr()).expect("connect");
                c.set_read_timeout(Duration::from_secs(3)).expect("timeout");
                client.insert(c)
            }
        };
        match c.send_raw(&raw, head) {
            Ok(r) => {
                let code = serde_json::from_slice::<Value>(&r.body)
                    .ok()
                    .and_then(|v| v["code"].as_str().map(str::to_string))
                    .unwrap_or_default();
                *statuses.entry((r.status, code)).or_default() += 1;
                assert!(
                    r.status < 500,
                    "seed {seed}: {} for {:?}: {}",
                    r.status,
                    String::from_utf8_lossy(&raw[..raw.len().min(300)]),
                    r.text()
                );
                if !head && r.status >= 400 && r.header("content-type") == Some("application/json")
                {
                    assert_error(&r, r.status, r.json()["code"].as_str().unwrap_or("?"));
                }
                if r.closes() || trailing_junk || rng.below(10) == 0 {
                    client = None;
                }
            }
            // A connection closed on garbage is fine; a dead server is not (checked below).
            Err(e) => {
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut
                {
                    timeouts.push(String::from_utf8_lossy(&raw[..raw.len().min(200)]).into_owned());
                }
                client = None;
            }
        }
        if sent % 500 == 0 {
            assert_eq!(
                s.get("/health").status,
                200,
                "seed {seed}: health after {sent}"
            );
        }
    }
    eprintln!(
        "{sent} requests: {statuses:?}; {} unanswered",
        timeouts.len()
    );
    assert!(
        timeouts.is_empty(),
        "seed {seed}: unanswered requests: {timeouts:#?}"
    );
    assert_still_serving(&mut s, seed);
}

/// After the fuzz: the server runs, answers, registers and issues, and logged no panic and
/// no ERROR.
fn assert_still_serving(s: &mut Server, seed: u64) {
    assert!(s.is_running(), "seed {seed}: numgen died:\n{}", s.logs());
    assert_eq!(s.get("/health").status, 200);
    // The fuzz may have deleted or replaced FUZZ; a fresh prefix must work.
    s.register("AFTER", r#"{"format":"AF-{SEQ:3}","mode":"sequence"}"#);
    assert_eq!(next(s, "AFTER").0, "AF-001");
    let logs = s.logs();
    assert!(!logs.contains("panicked"), "seed {seed}: a panic:\n{logs}");
    assert!(
        !s.log_records().iter().any(|r| r["level"] == "ERROR"),
        "seed {seed}: an ERROR was logged:\n{logs}"
    );
}
