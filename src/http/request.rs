//! Reading a request: path parameters and query values (percent-decoded), the prefix key
//! check, `Accept` negotiation, and the body, bounded at [`MAX_BODY`] however it is framed
//! and in time ([`BODY_READ_TIMEOUT`]). What a request puts in a log line or echoes in an
//! error is cut to [`LOGGED_PATH`] bytes ([`logged_path`], [`shown`]).

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::error::ApiError;
use crate::prefix::valid_key;

/// Largest request body accepted (SPEC 3.5, `BODY_TOO_LARGE`).
pub const MAX_BODY: usize = 16 * 1024;

/// How much of a request path goes into a log line (SPEC 7: what an unauthenticated
/// request puts in the log is bounded), or of any request data into an error message.
pub const LOGGED_PATH: usize = 256;

/// How long a client may take to send a request body once its headers are in (SPEC 7: a
/// connection that stops mid-request is closed after the header-read timeout).
pub const BODY_READ_TIMEOUT: Duration = super::HEADER_READ_TIMEOUT;

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

/// Request data for an error message: at most [`LOGGED_PATH`] bytes, marked with `…` when
/// cut, so that an error never echoes more than that of what the client sent.
pub fn shown(data: &str) -> String {
    let cut = logged_path(data);
    if cut.len() == data.len() {
        data.to_string()
    } else {
        format!("{cut}…")
    }
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

/// The raw (still percent-encoded) first value of query parameter `name`, `None` when
/// absent.
pub fn query_raw<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The first value of query parameter `name`: `None` when absent, `Some(None)` when its
/// value does not decode.
pub fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<Option<Cow<'a, str>>> {
    query_raw(query, name).map(|v| percent_decode(v, true))
}

/// A decimal number of digits only: no sign, no spaces (`str::parse` takes a leading `+`).
pub fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A prefix key from a path segment or query value: decoded (`query`: `+` is a space) and
/// checked against the key pattern; the error shows what was sent, cut short.
pub fn checked_key(raw: &str, query: bool) -> Result<Cow<'_, str>, ApiError> {
    match percent_decode(raw, query) {
        Some(k) if valid_key(&k) => Ok(k),
        Some(k) => Err(ApiError::InvalidPrefixKey(shown(&k))),
        None => Err(ApiError::InvalidPrefixKey(shown(raw))),
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

/// The whole body, or `BODY_TOO_LARGE` once it passes [`MAX_BODY`] (also when chunked);
/// a body whose framing is broken (a bad chunk size, a connection closed mid-body) or that
/// does not arrive within [`BODY_READ_TIMEOUT`] is `INVALID_CONFIG`, a 400.
pub async fn read_body<B>(body: B) -> Result<Bytes, ApiError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let collected = tokio::time::timeout(BODY_READ_TIMEOUT, Limited::new(body, MAX_BODY).collect());
    match collected.await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::BodyTooLarge),
        Ok(Err(e)) => Err(ApiError::InvalidConfig(format!(
            "could not read the request body: {e}"
        ))),
        Err(_) => Err(ApiError::InvalidConfig(format!(
            "the request body did not arrive within {} s",
            BODY_READ_TIMEOUT.as_secs()
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
        assert_eq!(checked_key("ORD%2D1", false).as_deref(), Ok("ORD-1"));
        assert_eq!(
            checked_key("A%20B", false),
            Err(ApiError::InvalidPrefixKey("A B".into()))
        );
        assert_eq!(
            checked_key("A+B", true),
            Err(ApiError::InvalidPrefixKey("A B".into()))
        );
        assert_eq!(
            checked_key("%zz", false),
            Err(ApiError::InvalidPrefixKey("%zz".into()))
        );
        // Present but not UTF-8: invalid, and named as sent.
        assert_eq!(
            checked_key("%ff", true),
            Err(ApiError::InvalidPrefixKey("%ff".into()))
        );
        let long = "A".repeat(1000);
        let Err(ApiError::InvalidPrefixKey(shown_key)) = checked_key(&long, false) else {
            panic!("a 1000-byte key is invalid");
        };
        assert_eq!(shown_key, format!("{}…", &long[..LOGGED_PATH]));
    }

    #[test]
    fn decimals_are_digits_only() {
        assert_eq!(decimal("0"), Some(0));
        assert_eq!(decimal("18446744073709551615"), Some(u64::MAX));
        for bad in [
            "",
            "+5",
            "-5",
            " 5",
            "5 ",
            "0x5",
            "18446744073709551616",
            "５",
        ] {
            assert_eq!(decimal(bad), None, "{bad}");
        }
        assert_eq!(query_raw(Some("a&prefixKey=%ff"), "prefixKey"), Some("%ff"));
        assert_eq!(query_raw(Some("prefixKeys=1"), "prefixKey"), None);
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
