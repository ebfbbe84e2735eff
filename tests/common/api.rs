//! Helpers of the HTTP API tests (`tests/http_*.rs`): read the bodies of numbers
//! responses, checking their JSON types, and expect a config to be refused.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::server::{Resp, Server, assert_error};

pub const U64_MAX: &str = "18446744073709551615";

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The `number` and `id` of a single-number response, checking their JSON types.
pub fn number_of(r: &Resp) -> (String, u64) {
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert!(v["number"].is_string(), "number is not a string: {v}");
    assert!(v["id"].is_string(), "id is not a string: {v}");
    assert_eq!(v["degraded"], false, "{v}");
    let id = v["id"].as_str().unwrap_or_default().parse().expect("id");
    (v["number"].as_str().unwrap_or_default().to_string(), id)
}

/// The `(number, id)` pairs of a batch response.
pub fn batch_of(r: &Resp) -> Vec<(String, u64)> {
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let list = v["numbers"].as_array().expect("numbers array");
    list.iter()
        .map(|n| {
            assert!(n["number"].is_string() && n["id"].is_string(), "{n}");
            assert!(n["degraded"].is_boolean(), "{n}");
            (
                n["number"].as_str().unwrap_or_default().to_string(),
                n["id"].as_str().unwrap_or_default().parse().expect("id"),
            )
        })
        .collect()
}

pub fn next(s: &Server, key: &str) -> (String, u64) {
    number_of(&s.get(&format!("/numbers/{key}")))
}

/// Expects `POST /prefix-configs/{key}` with `body` to fail with `status`/`code`.
pub fn refused(s: &Server, key: &str, body: &str, status: u16, code: &str) -> Value {
    let r = s.admin("POST", &format!("/prefix-configs/{key}"), body);
    let v = assert_error(&r, status, code);
    // A refused config registers nothing.
    if status != 409 {
        let got = s.admin("GET", &format!("/prefix-configs/{key}"), "");
        assert_ne!(got.status, 200, "{key} was registered by {body}");
    }
    v
}
