//! The one error type of the HTTP layer and the one match that gives each its status and
//! code (SPEC section 3.5). Domain errors convert with `From`; the body always carries a
//! message for people, the code for programs, and a timestamp.

use std::time::Duration;

use http::{HeaderValue, Method, StatusCode, header};
use tracing::Level;

use super::request::logged_path;
use super::{HttpResponse, json_response};
use crate::format::TemplateError;
use crate::prefix::PrefixError;
use crate::service::{AdminError, IssueError};
use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidFormat(String),
    #[error("{0}")]
    InvalidConfig(String),
    #[error(
        "Invalid prefix key '{0}': use 1-64 of A-Z a-z 0-9 _ . - starting with a letter or digit"
    )]
    InvalidPrefixKey(String),
    #[error("count must be an integer from 1 to 10000")]
    InvalidCount,
    #[error("Prefix '{0}' not registered")]
    PrefixNotRegistered(String),
    /// A Leaf-compatible route asked for a prefix of the other mode: it is not registered
    /// as the kind of ID the route promises.
    #[error(
        "Prefix '{key}' not registered for /api/{asked}/get/: it is a {mode} prefix; use /api/{route}/get/{key}"
    )]
    WrongLeafRoute {
        key: String,
        asked: &'static str,
        mode: &'static str,
        route: &'static str,
    },
    #[error("Unauthorized")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("method {method} is not allowed here; allowed: {allow}")]
    MethodNotAllowed { method: String, allow: &'static str },
    #[error("Prefix already exists")]
    PrefixExists,
    #[error("{0}")]
    ModeChange(String),
    #[error("{0}")]
    FormatClash(String),
    #[error("{0}")]
    SequenceOverflow(String),
    #[error("request body is larger than 16 KiB")]
    BodyTooLarge,
    #[error("too many requests from this address; retry after {} s", retry_secs(*.retry_after))]
    RateLimited { retry_after: Duration },
    #[error("not ready: {reason}")]
    NotReady {
        reason: String,
        retry_after: Duration,
    },
    #[error("storage unavailable: {0}")]
    StorageUnavailable(String),
    /// A failure of this server, not of the request or the store (the metrics encoder
    /// failed, a task died). SPEC 3.5 has no 500: it answers 503 `NOT_READY`, which tells a
    /// client what to do (retry later, or another node), and is logged at ERROR.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidFormat(_)
            | ApiError::InvalidConfig(_)
            | ApiError::InvalidPrefixKey(_)
            | ApiError::InvalidCount
            | ApiError::PrefixNotRegistered(_)
            | ApiError::WrongLeafRoute { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PrefixExists
            | ApiError::ModeChange(_)
            | ApiError::FormatClash(_)
            | ApiError::SequenceOverflow(_) => StatusCode::CONFLICT,
            ApiError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotReady { .. } | ApiError::StorageUnavailable(_) | ApiError::Internal(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidFormat(_) => "INVALID_FORMAT",
            ApiError::InvalidConfig(_) => "INVALID_CONFIG",
            ApiError::InvalidPrefixKey(_) => "INVALID_PREFIX_KEY",
            ApiError::InvalidCount => "INVALID_COUNT",
            ApiError::PrefixNotRegistered(_) | ApiError::WrongLeafRoute { .. } => {
                "PREFIX_NOT_REGISTERED"
            }
            ApiError::Unauthorized => "UNAUTHORIZED",
            ApiError::NotFound(_) => "NOT_FOUND",
            ApiError::MethodNotAllowed { .. } => "METHOD_NOT_ALLOWED",
            ApiError::PrefixExists => "PREFIX_EXISTS",
            ApiError::ModeChange(_) => "MODE_CHANGE",
            ApiError::FormatClash(_) => "FORMAT_CLASH",
            ApiError::SequenceOverflow(_) => "SEQUENCE_OVERFLOW",
            ApiError::BodyTooLarge => "BODY_TOO_LARGE",
            ApiError::RateLimited { .. } => "RATE_LIMITED",
            ApiError::NotReady { .. } | ApiError::Internal(_) => "NOT_READY",
            ApiError::StorageUnavailable(_) => "STORAGE_UNAVAILABLE",
        }
    }

    /// How a response with this error is logged: every 5xx, once. ERROR for what an
    /// operator must look at (the store, this server); WARN for `NOT_READY`, a state the
    /// node is in on purpose (starting, fenced, clock policy `reject`) whose start and end
    /// the node logs itself. 4xx are the client's business (a 401 is logged at WARN where
    /// the token is checked, with the peer).
    pub fn log_level(&self) -> Option<Level> {
        match self {
            ApiError::StorageUnavailable(_) | ApiError::Internal(_) => Some(Level::ERROR),
            ApiError::NotReady { .. } => Some(Level::WARN),
            _ => None,
        }
    }

    /// Logs this error at its [`ApiError::log_level`], with the route's label, the method
    /// and, when the caller still has it, the path (cut short); called where errors become
    /// responses.
    pub fn log(&self, route: &str, method: &Method, path: Option<&str>) {
        let Some(level) = self.log_level() else {
            return;
        };
        let (method, path) = (method.as_str(), path.map(logged_path));
        let (status, code) = (self.status().as_u16(), self.code());
        if level == Level::ERROR {
            tracing::error!(route, method, path, status, code, error = %self, "request failed");
        } else {
            tracing::warn!(route, method, path, status, code, error = %self, "request refused");
        }
    }

    /// The JSON error response.
    pub fn into_response(self) -> HttpResponse {
        let body = serde_json::json!({
            "error": self.to_string(),
            "code": self.code(),
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        });
        let mut resp = json_response(self.status(), &body);
        let headers = resp.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match &self {
            ApiError::MethodNotAllowed { allow, .. } => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::NotReady { retry_after, .. } | ApiError::RateLimited { retry_after } => {
                let secs = retry_secs(*retry_after);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            ApiError::StorageUnavailable(_) | ApiError::Internal(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::Unauthorized => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"numgen\""),
                );
            }
            _ => {}
        }
        resp
    }
}

/// A wait in whole seconds for `Retry-After`: rounded up, at least 1.
fn retry_secs(wait: Duration) -> u64 {
    wait.as_millis().div_ceil(1000).max(1) as u64
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::StorageUnavailable(e.to_string())
    }
}

impl From<PrefixError> for ApiError {
    fn from(e: PrefixError) -> Self {
        match e {
            PrefixError::Format(TemplateError::MissingSeq) => {
                ApiError::InvalidFormat("Missing {SEQ} tag".into())
            }
            PrefixError::Format(t) => ApiError::InvalidFormat(format!("invalid format: {t}")),
            PrefixError::MissingFormat | PrefixError::ResetNeedsPeriod { .. } => {
                ApiError::InvalidFormat(e.to_string())
            }
            PrefixError::Field(m) => ApiError::InvalidConfig(m),
        }
    }
}

impl From<IssueError> for ApiError {
    fn from(e: IssueError) -> Self {
        match e {
            IssueError::NotRegistered(k) => ApiError::PrefixNotRegistered(k),
            IssueError::NotReady {
                reason,
                retry_after,
            } => ApiError::NotReady {
                reason: reason.to_string(),
                retry_after,
            },
            IssueError::Overflow(_) => ApiError::SequenceOverflow(e.to_string()),
            IssueError::Storage(s) => s.into(),
            IssueError::ConfigChanged(_) => ApiError::NotReady {
                reason: e.to_string(),
                retry_after: Duration::from_secs(1),
            },
        }
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::Exists => ApiError::PrefixExists,
            AdminError::ModeChange { .. } | AdminError::ResetChange { .. } => {
                ApiError::ModeChange(e.to_string())
            }
            AdminError::FormatClash { .. } => ApiError::FormatClash(e.to_string()),
            AdminError::NotFound(_) => ApiError::NotFound(e.to_string()),
            AdminError::Config(c) => c.into(),
            AdminError::Storage(s) => s.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_its_status() {
        let cases = [
            (ApiError::InvalidFormat("x".into()), 400, "INVALID_FORMAT"),
            (ApiError::InvalidConfig("x".into()), 400, "INVALID_CONFIG"),
            (
                ApiError::InvalidPrefixKey("x".into()),
                400,
                "INVALID_PREFIX_KEY",
            ),
            (ApiError::InvalidCount, 400, "INVALID_COUNT"),
            (
                ApiError::PrefixNotRegistered("X".into()),
                400,
                "PREFIX_NOT_REGISTERED",
            ),
            (ApiError::Unauthorized, 401, "UNAUTHORIZED"),
            (ApiError::NotFound("x".into()), 404, "NOT_FOUND"),
            (
                ApiError::MethodNotAllowed {
                    method: "PATCH".into(),
                    allow: "GET",
                },
                405,
                "METHOD_NOT_ALLOWED",
            ),
            (ApiError::PrefixExists, 409, "PREFIX_EXISTS"),
            (ApiError::ModeChange("x".into()), 409, "MODE_CHANGE"),
            (ApiError::FormatClash("x".into()), 409, "FORMAT_CLASH"),
            (
                ApiError::SequenceOverflow("x".into()),
                409,
                "SEQUENCE_OVERFLOW",
            ),
            (ApiError::BodyTooLarge, 413, "BODY_TOO_LARGE"),
            (
                ApiError::RateLimited {
                    retry_after: Duration::from_millis(10),
                },
                429,
                "RATE_LIMITED",
            ),
            (
                ApiError::WrongLeafRoute {
                    key: "K".into(),
                    asked: "segment",
                    mode: "snowflake",
                    route: "snowflake",
                },
                400,
                "PREFIX_NOT_REGISTERED",
            ),
            (
                ApiError::NotReady {
                    reason: "x".into(),
                    retry_after: Duration::from_millis(1500),
                },
                503,
                "NOT_READY",
            ),
            (
                ApiError::StorageUnavailable("x".into()),
                503,
                "STORAGE_UNAVAILABLE",
            ),
            (ApiError::Internal("x".into()), 503, "NOT_READY"),
        ];
        for (e, status, code) in cases {
            assert_eq!((e.status().as_u16(), e.code()), (status, code));
            // Every 5xx is logged, nothing else is.
            assert_eq!(e.log_level().is_some(), status >= 500, "{e:?}");
            let resp = e.into_response();
            assert_eq!(resp.status().as_u16(), status);
        }
    }

    #[test]
    fn internal_errors_are_retried_like_any_503_and_logged_at_error() {
        let e = ApiError::Internal("the metrics encoder did not finish".into());
        assert_eq!(e.log_level(), Some(Level::ERROR));
        assert_eq!(
            ApiError::StorageUnavailable("x".into()).log_level(),
            Some(Level::ERROR)
        );
        let not_ready = ApiError::NotReady {
            reason: "x".into(),
            retry_after: Duration::from_secs(1),
        };
        assert_eq!(not_ready.log_level(), Some(Level::WARN));
        assert_eq!(
            e.to_string(),
            "internal error: the metrics encoder did not finish"
        );
        let resp = e.into_response();
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
    }

    /// A `MakeWriter` into a shared buffer.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    #[test]
    fn a_5xx_is_logged_once_with_its_route_and_a_short_path() {
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(out.clone())
            .finish();
        let long = format!("/numbers/{}", "A".repeat(1000));
        let path = Some(long.as_str());
        tracing::subscriber::with_default(subscriber, || {
            let storage = ApiError::StorageUnavailable("etcd timed out".into());
            storage.log("/numbers/{key}", &Method::POST, path);
            ApiError::InvalidCount.log("/numbers/{key}", &Method::POST, path);
            ApiError::Internal("gone".into()).log("unmatched", &Method::GET, None);
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        let f = &lines[0]["fields"];
        assert_eq!(lines[0]["level"], "ERROR");
        assert_eq!(
            (&f["route"], &f["method"], &f["status"], &f["code"]),
            (
                &"/numbers/{key}".into(),
                &"POST".into(),
                &503.into(),
                &"STORAGE_UNAVAILABLE".into()
            )
        );
        assert_eq!(f["path"].as_str().map(str::len), Some(256));
        assert_eq!(f["error"], "storage unavailable: etcd timed out");
        assert_eq!(lines[1]["level"], "ERROR");
        assert_eq!(lines[1]["fields"]["error"], "internal error: gone");
        assert!(lines[1]["fields"].get("path").is_none(), "{text}");
        assert!(lines[1]["fields"].get("path").is_none(), "{text}");
    }

    #[test]
    fn retry_after_is_rounded_up_to_seconds() {
        let resp = ApiError::NotReady {
            reason: "x".into(),
            retry_after: Duration::from_millis(1500),
        }
        .into_response();
        assert_eq!(resp.headers()[header::RETRY_AFTER], "2");
        let limited = ApiError::RateLimited {
            retry_after: Duration::from_millis(1),
        };
        assert_eq!(
            limited.to_string(),
            "too many requests from this address; retry after 1 s"
        );
        assert_eq!(limited.into_response().headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn domain_errors_map_to_codes() {
        let e: ApiError = IssueError::NotRegistered("X".into()).into();
        assert_eq!(e.to_string(), "Prefix 'X' not registered");
        let e: ApiError = StoreError::Timeout(Duration::from_secs(2)).into();
        assert_eq!(e.code(), "STORAGE_UNAVAILABLE");
        let e: ApiError = AdminError::Exists.into();
        assert_eq!(e.to_string(), "Prefix already exists");
        let e: ApiError = PrefixError::Format(TemplateError::MissingSeq).into();
        assert_eq!(
            (e.code(), e.to_string().as_str()),
            ("INVALID_FORMAT", "Missing {SEQ} tag")
        );
        let e: ApiError = PrefixError::Field("seq_length".into()).into();
        assert_eq!(e.code(), "INVALID_CONFIG");
    }
}
