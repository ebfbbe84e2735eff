//! `/prefix-configs`, `/prefix-configs/{key}` (SPEC 3.1) and
//! `/prefix-configs/{key}/history` (SPEC 7): the bearer-token check, then the service's
//! admin operations, each change with its audit record's who and when, and the bodies they
//! answer with.

use std::net::SocketAddr;

use http::request::Parts;
use http::{Method, StatusCode, header};
use hyper::body::Incoming;
use serde_json::json;

use super::error::ApiError;
use super::request::{checked_key, logged_path, read_body};
use super::{HttpResponse, json_response};
use crate::prefix::PrefixConfig;
use crate::service::Service;
use crate::store::{AuditMeta, Revision};

/// The admin token, and the fingerprint that audit records show instead of it.
pub struct AdminAuth {
    token: String,
    fingerprint: String,
}

impl AdminAuth {
    pub fn new(token: String) -> AdminAuth {
        let fingerprint = fingerprint(&token);
        AdminAuth { token, fingerprint }
    }

    /// Who made a change that is being accepted now, for its audit record.
    fn audit(&self, service: &Service, peer: SocketAddr) -> AuditMeta {
        AuditMeta {
            time_ms: service.node().clock().now_ms(),
            peer: peer.to_string(),
            token_fingerprint: self.fingerprint.clone(),
        }
    }
}

/// The first 16 hex digits of the token's SHA-256: tells tokens apart in the audit
/// history (after a rotation, say) without showing or weakening any of them.
pub fn fingerprint(token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compares without leaking, through timing, how much of the token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `Ok` when the request carries `Authorization: Bearer <token>`; else a WARN with the
/// peer (never the token) and 401.
fn authorize(token: &str, parts: &Parts, peer: SocketAddr) -> Result<(), ApiError> {
    let presented = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            // The scheme is case-insensitive (RFC 9110 section 11.1).
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        })
        .map(str::trim);
    match presented {
        Some(t) if constant_time_eq(t.as_bytes(), token.as_bytes()) => Ok(()),
        _ => {
            tracing::warn!(
                %peer,
                method = %parts.method,
                path = logged_path(parts.uri.path()),
                token_presented = presented.is_some(),
                "unauthorized admin request"
            );
            Err(ApiError::Unauthorized)
        }
    }
}

/// The body of a config: with `revision` (its store revision, SPEC 3.1; an addition to
/// SPEC's fields) when known.
fn config_body(
    status: Option<&str>,
    key: &str,
    config: &PrefixConfig,
    revision: Option<Revision>,
) -> serde_json::Value {
    let mut v = json!({ "prefix_key": key, "config": config.to_json() });
    if let (Some(r), Some(obj)) = (revision, v.as_object_mut()) {
        obj.insert("revision".into(), r.into());
    }
    if let (Some(s), Some(obj)) = (status, v.as_object_mut()) {
        obj.insert("status".into(), s.into());
    }
    v
}

/// `GET /prefix-configs`, or the method of `parts` on `/prefix-configs/{param}`, for a
/// client with `token`; the router has checked that the method is allowed on the route.
pub async fn handle(
    service: &Service,
    auth: &AdminAuth,
    peer: SocketAddr,
    parts: &Parts,
    body: Incoming,
    param: Option<&str>,
) -> Result<HttpResponse, ApiError> {
    authorize(&auth.token, parts, peer)?;
    let Some(raw) = param else {
        let all = service.configs().await?;
        let list: Vec<_> = all
            .iter()
            .map(|(k, c)| config_body(None, k, c, None))
            .collect();
        return Ok(json_response(StatusCode::OK, &json!({ "prefixes": list })));
    };
    let key = checked_key(raw, false)?;
    let m = &parts.method;
    let answer = if *m == Method::GET || *m == Method::HEAD {
        let (config, revision) = service.config(&key).await?;
        config_body(None, &key, &config, Some(revision))
    } else if *m == Method::DELETE {
        service.delete(&key, &auth.audit(service, peer)).await?;
        json!({ "status": "deleted" })
    } else {
        let bytes = read_body(body).await?;
        let audit = auth.audit(service, peer);
        let (config, revision) = if *m == Method::POST {
            service.register(&key, &bytes, &audit).await?
        } else {
            service.replace(&key, &bytes, &audit).await?
        };
        config_body(Some("registered"), &key, &config, Some(revision))
    };
    Ok(json_response(StatusCode::OK, &answer))
}

/// `GET /prefix-configs/{key}/history`: the key's audit records, newest first.
pub async fn history(
    service: &Service,
    auth: &AdminAuth,
    peer: SocketAddr,
    parts: &Parts,
    param: Option<&str>,
) -> Result<HttpResponse, ApiError> {
    authorize(&auth.token, parts, peer)?;
    let key = checked_key(param.unwrap_or_default(), false)?;
    let records = service.history(&key).await?;
    let list: Vec<_> = records.iter().map(|r| r.to_json()).collect();
    let body = json!({ "prefix_key": key, "history": list });
    Ok(json_response(StatusCode::OK, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_16_hex_digits_of_sha256() {
        // printf 'abc' | sha256sum: ba7816bf8f01cfea414140de5dae2223b00361a3...
        assert_eq!(fingerprint("abc"), "ba7816bf8f01cfea");
        assert_ne!(fingerprint("abd"), fingerprint("abc"));
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    #[test]
    fn bearer_tokens_only() {
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let parts = |auth: Option<&str>| {
            let mut b = http::Request::builder().uri("/prefix-configs");
            if let Some(a) = auth {
                b = b.header(header::AUTHORIZATION, a);
            }
            b.body(()).unwrap().into_parts().0
        };
        assert_eq!(authorize("t0k", &parts(Some("Bearer t0k")), peer), Ok(()));
        assert_eq!(authorize("t0k", &parts(Some("bearer  t0k ")), peer), Ok(()));
        for bad in [None, Some("Bearer t0kx"), Some("Basic t0k"), Some("t0k")] {
            assert_eq!(
                authorize("t0k", &parts(bad), peer),
                Err(ApiError::Unauthorized),
                "{bad:?}"
            );
        }
    }
}
