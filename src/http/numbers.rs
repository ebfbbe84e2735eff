//! `GET|POST /numbers/{key}` and `GET /numbers?prefixKey=KEY`: the hot path. Numbers are
//! rendered straight into the response buffer (no per-number allocation), and a request
//! whose numbers need no wait is answered without an await ([`begin`]).

use http::request::Parts;
use http::{HeaderValue, StatusCode, header};

use super::error::ApiError;
use super::request::{checked_key, decimal, query_param, query_raw, wants_text};
use super::{HttpResponse, respond};
use crate::format::{RenderCtx, Template};
use crate::service::{Pending, Service, Sink};

/// Largest `count` of a batch.
pub const MAX_COUNT: u64 = 10_000;

/// The bytes reserved for the body of `count` numbers (a JSON object each, at most about
/// 96 bytes for common templates); the connection's budget counts it before they exist.
pub fn body_capacity(count: u64) -> usize {
    (count.min(MAX_COUNT) as usize) * 96 + 16
}

/// A numbers response body, written as the numbers are issued.
struct NumbersBody {
    buf: Vec<u8>,
    first: bool,
    /// `text/plain`: one number per line.
    text: bool,
    /// `?count=N`: `{"numbers":[…]}` around the objects.
    batch: bool,
}

impl NumbersBody {
    fn new(count: Option<u64>, text: bool) -> NumbersBody {
        let mut buf = Vec::with_capacity(body_capacity(count.unwrap_or(1)));
        if count.is_some() && !text {
            buf.extend_from_slice(b"{\"numbers\":[");
        }
        NumbersBody {
            buf,
            first: true,
            text,
            batch: count.is_some(),
        }
    }

    fn finish(mut self) -> HttpResponse {
        let content_type = if self.text {
            "text/plain; charset=utf-8"
        } else {
            if self.batch {
                self.buf.extend_from_slice(b"]}");
            }
            "application/json"
        };
        let mut resp = respond(StatusCode::OK, content_type, self.buf);
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}

impl Sink for NumbersBody {
    #[inline]
    fn push(&mut self, template: &Template, ctx: &RenderCtx<'_>, id: u64, degraded: bool) {
        if self.text {
            if !self.first {
                self.buf.push(b'\n');
            }
            self.first = false;
            template.render(&mut self.buf, ctx);
            return;
        }
        if !self.first {
            self.buf.push(b',');
        }
        self.first = false;
        // Rendered numbers and IDs are ASCII letters, digits and -_./:# only: no escaping.
        self.buf.extend_from_slice(b"{\"number\":\"");
        template.render(&mut self.buf, ctx);
        self.buf.extend_from_slice(b"\",\"id\":\"");
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
        self.buf.extend_from_slice(if degraded {
            b"\",\"degraded\":true}"
        } else {
            b"\",\"degraded\":false}"
        });
    }
}

/// How far a numbers request got without waiting.
pub enum Begun {
    Done(HttpResponse),
    Later(PendingNumbers),
}

/// The rest of a numbers request: the body so far and what the service still owes it.
pub struct PendingNumbers {
    body: NumbersBody,
    rest: Pending,
}

impl PendingNumbers {
    pub async fn finish(mut self, service: &Service) -> Result<HttpResponse, ApiError> {
        service.resume(self.rest, &mut self.body).await?;
        Ok(self.body.finish())
    }
}

/// Checks the request and issues what can be issued now. `param` is the `{key}` path
/// segment, absent on `/numbers?prefixKey=KEY`.
pub fn begin(service: &Service, parts: &Parts, param: Option<&str>) -> Result<Begun, ApiError> {
    let query = parts.uri.query();
    let key = match (param, query_raw(query, "prefixKey")) {
        (Some(raw), _) => checked_key(raw, false)?,
        (None, Some(raw)) => checked_key(raw, true)?,
        (None, None) => {
            return Err(ApiError::InvalidPrefixKey(
                "(missing: use /numbers/{key} or ?prefixKey=KEY)".into(),
            ));
        }
    };
    let count = match query_param(query, "count") {
        None => None,
        Some(v) => Some(
            v.and_then(|v| decimal(&v))
                .filter(|n| (1..=MAX_COUNT).contains(n))
                .ok_or(ApiError::InvalidCount)?,
        ),
    };
    let mut body = NumbersBody::new(count, wants_text(&parts.headers));
    Ok(match service.begin(&key, count.unwrap_or(1), &mut body)? {
        None => Begun::Done(body.finish()),
        Some(rest) => Begun::Later(PendingNumbers { body, rest }),
    })
}
