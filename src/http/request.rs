//! Reading a request: path parameters and query values (percent-decoded), the prefix key
//! check, `Accept` negotiation, and the body, bounded at [`MAX_BODY`] however it is framed.

use std::borrow::Cow;

use bytes::Bytes;
use http::{HeaderMap, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;

use super::error::ApiError;
use crate::prefix::valid_key;

/// Largest request body accepted (SPEC 3.5, `BODY_TOO_LARGE`).
pub const MAX_BODY: usize = 16 * 1024;

/// How much of a request path goes into a log line (SPEC 7: what an unauthenticated
/// request puts in the log is bounded).
const LOGGED_PATH: usize = 256;

/// The declared `Content-Length`, when there is a valid one.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// True when the declared length is already over [`MAX_BODY`].
pub fn declared_too_large(headers: &HeaderMap) -> bool {
    content_length(headers).is_some_and(|n| n > MAX_BODY as u64)
}

/// `path` cut to [`LOGGED_PATH`] bytes (at a character boundary) for a log line.
pub fn logged_path(path: &str) -> &str {
    if path.len() <= LOGGED_PATH {
        return path;
    }
    let mut end = LOGGED_PATH;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    &path[..end]
}

/// Decodes `%XX` escapes (and, in a query, `+` as a space); `None` when an escape is
/// malformed or the result is not UTF-8.
pub fn percent_decode(s: &str, query: bool) -> Option<Cow<'_, str>> {
    if !(s.contains('%') || (query && s.contains('+'))) {
        return Some(Cow::Borrowed(s));
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if query => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// The first value of query parameter `name`: `None` when absent, `Some(None)` when its
/// value does not decode.
pub fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<Option<Cow<'a, str>>> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| percent_decode(v, true))
}

/// A prefix key from a path segment: decoded and checked against the key pattern.
pub fn checked_key(raw: &str) -> Result<Cow<'_, str>, ApiError> {
    match percent_decode(raw, false) {
        Some(k) if valid_key(&k) => Ok(k),
        Some(k) => Err(ApiError::InvalidPrefixKey(k.into_owned())),
        None => Err(ApiError::InvalidPrefixKey(raw.to_string())),
    }
}

/// True when the client prefers `text/plain` to JSON.
pub fn wants_text(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let (mut text, mut json) = (0.0f32, 0.0f32);
    for item in accept.split(',') {
        let mut fields = item.split(';');
        let media = fields.next().unwrap_or("").trim();
        let q = fields
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        if media.eq_ignore_ascii_case("text/plain") {
            text = text.max(q);
        } else if media.eq_ignore_ascii_case("application/json") {
            json = json.max(q);
        }
    }
    text > json
}

/// The whole body, or `BODY_TOO_LARGE` once it passes [`MAX_BODY`] (also when chunked).
pub async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::BodyTooLarge),
        Err(e) => Err(ApiError::InvalidConfig(format!(
            "could not read the request body: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn query_and_percent_decoding() {
        assert_eq!(
            query_param(Some("a=1&prefixKey=ORD%2D1&count=5"), "prefixKey"),
            Some(Some(Cow::Borrowed("ORD-1")))
        );
        assert_eq!(
            query_param(Some("count"), "count"),
            Some(Some(Cow::Borrowed("")))
        );
        assert_eq!(query_param(None, "count"), None);
        assert_eq!(query_param(Some("count=%zz"), "count"), Some(None));
        assert_eq!(
            percent_decode("%27%3B+DROP", true).as_deref(),
            Some("'; DROP")
        );
        assert_eq!(percent_decode("A+B", false).as_deref(), Some("A+B"));
        assert_eq!(percent_decode("%e9", false).as_deref(), None);
        assert_eq!(percent_decode("%4", false).as_deref(), None);
    }

    #[test]
    fn keys_are_decoded_then_checked() {
        assert_eq!(checked_key("ORD%2D1").as_deref(), Ok("ORD-1"));
        assert_eq!(
            checked_key("A%20B"),
            Err(ApiError::InvalidPrefixKey("A B".into()))
        );
        assert_eq!(
            checked_key("%zz"),
            Err(ApiError::InvalidPrefixKey("%zz".into()))
        );
    }

    #[test]
    fn accept_negotiation() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
            wants_text(&m)
        };
        assert!(!wants_text(&HeaderMap::new()));
        assert!(h("text/plain"));
        assert!(h("text/plain, */*"));
        assert!(!h("*/*"));
        assert!(!h("application/json, text/plain"));
        assert!(!h("text/plain;q=0.5, application/json"));
        assert!(h("application/json;q=0.1, text/plain;q=0.9"));
    }

    #[test]
    fn declared_lengths() {
        let mut h = HeaderMap::new();
        assert_eq!(content_length(&h), None);
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(MAX_BODY as u64));
        assert!(!declared_too_large(&h));
        h.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from(MAX_BODY as u64 + 1),
        );
        assert!(declared_too_large(&h));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("lots"));
        assert_eq!(content_length(&h), None);
    }

    #[test]
    fn logged_paths_are_cut_at_a_character_boundary() {
        assert_eq!(logged_path("/numbers/A"), "/numbers/A");
        let long = format!("/{}", "é".repeat(300));
        let cut = logged_path(&long);
        assert!(cut.len() <= LOGGED_PATH && cut.len() >= LOGGED_PATH - 1);
        assert!(long.starts_with(cut));
    }
}
