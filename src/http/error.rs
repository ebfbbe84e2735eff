//! The one error type of the HTTP layer and the one match that gives each its status and
//! code (SPEC section 3.4). Domain errors convert with `From`; the body always carries a
//! message for people, the code for programs, and a timestamp.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use crate::format::TemplateError;
use crate::prefix::ConfigError;
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
    SequenceOverflow(String),
    #[error("request body is larger than 16 KiB")]
    BodyTooLarge,
    #[error("not ready: {reason}")]
    NotReady {
        reason: String,
        retry_after: Duration,
    },
    #[error("storage unavailable: {0}")]
    StorageUnavailable(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidFormat(_)
            | ApiError::InvalidConfig(_)
            | ApiError::InvalidPrefixKey(_)
            | ApiError::InvalidCount
            | ApiError::PrefixNotRegistered(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PrefixExists | ApiError::ModeChange(_) | ApiError::SequenceOverflow(_) => {
                StatusCode::CONFLICT
            }
            ApiError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotReady { .. } | ApiError::StorageUnavailable(_) => {
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
            ApiError::PrefixNotRegistered(_) => "PREFIX_NOT_REGISTERED",
            ApiError::Unauthorized => "UNAUTHORIZED",
            ApiError::NotFound(_) => "NOT_FOUND",
            ApiError::MethodNotAllowed { .. } => "METHOD_NOT_ALLOWED",
            ApiError::PrefixExists => "PREFIX_EXISTS",
            ApiError::ModeChange(_) => "MODE_CHANGE",
            ApiError::SequenceOverflow(_) => "SEQUENCE_OVERFLOW",
            ApiError::BodyTooLarge => "BODY_TOO_LARGE",
            ApiError::NotReady { .. } => "NOT_READY",
            ApiError::StorageUnavailable(_) => "STORAGE_UNAVAILABLE",
        }
    }

    /// The JSON error response.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let body = serde_json::json!({
            "error": self.to_string(),
            "code": self.code(),
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        });
        let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
        *resp.status_mut() = self.status();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match &self {
            ApiError::MethodNotAllowed { allow, .. } => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::NotReady { retry_after, .. } => {
                let secs = retry_after.as_millis().div_ceil(1000).max(1);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs as u64));
            }
            ApiError::StorageUnavailable(_) => {
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

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::StorageUnavailable(e.to_string())
    }
}

impl From<ConfigError> for ApiError {
    fn from(e: ConfigError) -> Self {
        match e {
            ConfigError::Format(TemplateError::MissingSeq) => {
                ApiError::InvalidFormat("Missing {SEQ} tag".into())
            }
            ConfigError::Format(t) => ApiError::InvalidFormat(format!("invalid format: {t}")),
            ConfigError::MissingFormat => ApiError::InvalidFormat(e.to_string()),
            ConfigError::Field(m) => ApiError::InvalidConfig(m),
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
            (
                ApiError::SequenceOverflow("x".into()),
                409,
                "SEQUENCE_OVERFLOW",
            ),
            (ApiError::BodyTooLarge, 413, "BODY_TOO_LARGE"),
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
        ];
        for (e, status, code) in cases {
            assert_eq!((e.status().as_u16(), e.code()), (status, code));
            let resp = e.into_response();
            assert_eq!(resp.status().as_u16(), status);
        }
    }

    #[test]
    fn retry_after_is_rounded_up_to_seconds() {
        let resp = ApiError::NotReady {
            reason: "x".into(),
            retry_after: Duration::from_millis(1500),
        }
        .into_response();
        assert_eq!(resp.headers()[header::RETRY_AFTER], "2");
    }

    #[test]
    fn domain_errors_map_to_codes() {
        let e: ApiError = IssueError::NotRegistered("X".into()).into();
        assert_eq!(e.to_string(), "Prefix 'X' not registered");
        let e: ApiError = StoreError::Timeout(Duration::from_secs(2)).into();
        assert_eq!(e.code(), "STORAGE_UNAVAILABLE");
        let e: ApiError = AdminError::Exists.into();
        assert_eq!(e.to_string(), "Prefix already exists");
        let e: ApiError = ConfigError::Format(TemplateError::MissingSeq).into();
        assert_eq!(
            (e.code(), e.to_string().as_str()),
            ("INVALID_FORMAT", "Missing {SEQ} tag")
        );
        let e: ApiError = ConfigError::Field("seq_length".into()).into();
        assert_eq!(e.code(), "INVALID_CONFIG");
    }
}
