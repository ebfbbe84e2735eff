//! What the HTTP layer reads from a request (SPEC 3): a path segment as a prefix key, a
//! query's `count` and `prefixKey`, the `Accept` header. Input: three lines (segment,
//! query, Accept). Nothing panics; a key that passes is valid; a count is digits only; an
//! error echoes at most 256 bytes of what was sent.
#![no_main]

use http::{HeaderMap, HeaderValue, header};
use libfuzzer_sys::fuzz_target;
use numgen::http::request::{LOGGED_PATH, checked_key, decimal, query_param, wants_text};
use numgen::prefix::valid_key;

fn check_key(raw: &str, query: bool) {
    match checked_key(raw, query) {
        Ok(key) => assert!(valid_key(&key), "{raw:?}"),
        // The message around the echo is short; the echo is at most LOGGED_PATH bytes.
        Err(e) => assert!(e.to_string().len() <= LOGGED_PATH + 200, "{raw:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut lines = data.splitn(3, |&b| b == b'\n');
    let segment = String::from_utf8_lossy(lines.next().unwrap_or_default());
    let query = String::from_utf8_lossy(lines.next().unwrap_or_default());
    let accept = lines.next().unwrap_or_default();

    check_key(&segment, false);
    let _ = decimal(&segment);
    if let Some(Some(count)) = query_param(Some(&query), "count") {
        if let Some(n) = decimal(&count) {
            assert!(count.bytes().all(|b| b.is_ascii_digit()), "{count:?}");
            let digits = count.trim_start_matches('0');
            assert_eq!(n.to_string(), if digits.is_empty() { "0" } else { digits });
        }
    }
    if let Some(raw) = numgen::http::request::query_raw(Some(&query), "prefixKey") {
        check_key(raw, true);
    }
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(accept) {
        headers.insert(header::ACCEPT, v);
    }
    let _ = wants_text(&headers);
});
