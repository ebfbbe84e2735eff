//! Meituan Leaf's routes (SPEC 3.4), so that a Leaf client switches by changing the host:
//! `GET /api/segment/get/{key}` issues from a sequence prefix (Leaf's segment mode) and
//! `GET /api/snowflake/get/{key}` from a snowflake prefix, each answering `200 text/plain`
//! with the ID alone, as Leaf's `LeafController` does. Errors are numgen's (SPEC 3.5), not
//! Leaf's bare 500s.
//!
//! A route asked for a prefix of the other mode answers 400 `PREFIX_NOT_REGISTERED`
//! naming the right route: the route promises a kind of ID (dense counter or 63-bit
//! snowflake), and a client that stores or compares one kind must not silently get the
//! other.

use http::{HeaderValue, StatusCode, header};

use super::error::ApiError;
use super::request::checked_key;
use super::{HttpResponse, respond};
use crate::format::{RenderCtx, Template};
use crate::prefix::Mode;
use crate::service::{Service, Sink};

/// The body: the ID in decimal, nothing else.
struct IdOnly(Vec<u8>);

impl Sink for IdOnly {
    fn push(&mut self, _: &Template, _: &RenderCtx<'_>, id: u64, _: bool) {
        self.0
            .extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
    }
}

/// The Leaf name of a mode's route.
fn route_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Sequence => "segment",
        Mode::Snowflake => "snowflake",
    }
}

/// `GET|POST /api/segment/get/{key}` (`mode` sequence) and `/api/snowflake/get/{key}`
/// (`mode` snowflake): one ID of prefix `param`, as text.
pub async fn handle(
    service: &Service,
    mode: Mode,
    param: Option<&str>,
) -> Result<HttpResponse, ApiError> {
    let key = checked_key(param.unwrap_or_default(), false)?;
    let found = service.mode_of(&key).await?;
    if found != mode {
        return Err(ApiError::WrongLeafRoute {
            key: key.into_owned(),
            asked: route_name(mode),
            mode: found.as_str(),
            route: route_name(found),
        });
    }
    let mut body = IdOnly(Vec::with_capacity(20));
    service.issue(&key, 1, &mut body).await?;
    let mut resp = respond(StatusCode::OK, "text/plain; charset=utf-8", body.0);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}
