//! One error type for every HTTP endpoint.
//!
//! Each variant is a documented status. Internal causes are logged with a
//! stable event name and never sent: the client sees only `detail`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::auth::AuthError;
use crate::telemetry::LogLimiter;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    Conflict(&'static str),
    #[error("{0}")]
    Unprocessable(String),
    /// 429: throttled; retry after this many seconds.
    #[error("{detail}")]
    TooManyRequests {
        detail: &'static str,
        retry_after_s: u64,
    },
    /// 408: the request did not arrive within `http.request_timeout`.
    #[error("{0}")]
    Timeout(&'static str),
    #[error("{detail}")]
    Unavailable {
        detail: &'static str,
        retry_after_s: u64,
    },
    #[error("internal error")]
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(cause) => {
                tracing::error!(event = "http_internal_error", cause = %cause, "request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let body = axum::Json(serde_json::json!({ "detail": self.to_string() }));
        let mut response = (status, body).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let ApiError::Unavailable { retry_after_s, .. }
        | ApiError::TooManyRequests { retry_after_s, .. } = self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
        }
        response
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::BadCredentials => ApiError::Unauthorized("incorrect email or password"),
            AuthError::BadRefresh | AuthError::Revoked { .. } => {
                ApiError::Unauthorized("invalid refresh token")
            }
            AuthError::EmailTaken => ApiError::Conflict("email already registered"),
            AuthError::Invalid(m) => ApiError::Unprocessable(m),
            AuthError::CannotIssue => ApiError::Unavailable {
                detail: "this node verifies tokens but does not issue them",
                retry_after_s: 3600,
            },
            AuthError::Busy => {
                // A login storm reaches this for every request: one line
                // per 10 s, with the count held back.
                static LOG: std::sync::Mutex<LogLimiter> =
                    std::sync::Mutex::new(LogLimiter::new(std::time::Duration::from_secs(10)));
                let allowed = LOG.lock().unwrap_or_else(|e| e.into_inner()).allow();
                if let Some(held) = allowed {
                    tracing::warn!(
                        event = "login_queue_full",
                        cause = "auth.hash_queue password requests already waiting",
                        similar_lines_held_back = held,
                        "answering 503"
                    );
                }
                ApiError::Unavailable {
                    detail: "too many logins at once; retry shortly",
                    retry_after_s: 1,
                }
            }
            AuthError::Throttled(t) => {
                use crate::auth::throttle::Throttled;
                let detail = match t {
                    Throttled::InFlight => "too many requests in progress from your address",
                    Throttled::AddressRate { .. } => "too many attempts from your address",
                    Throttled::AccountLocked { .. } => {
                        "too many failed logins for this account; retry later"
                    }
                };
                // Whole seconds, rounded up: a client that waits this long
                // is let in.
                let retry = t.retry_after();
                let retry_after_s = retry.as_secs() + u64::from(retry.subsec_nanos() > 0);
                ApiError::TooManyRequests {
                    detail,
                    retry_after_s: retry_after_s.max(1),
                }
            }
            AuthError::Store(crate::store::StoreError::Unavailable(cause)) => {
                tracing::warn!(event = "store_unavailable", cause = %cause, "auth request failed");
                ApiError::Unavailable {
                    detail: "state store unavailable",
                    retry_after_s: 2,
                }
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}
