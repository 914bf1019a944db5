//! The one place errors become HTTP answers: a status and `{"error": "…"}`.
//!
//! Clients get a clear message; internals (database or vendor text) are logged with the
//! request id (also sent as the `x-request-id` header) and answered as "internal error".

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::exec::decide::DecideError;
use crate::exec::ExecError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request cannot be read (not JSON, a bad parameter).
    #[error("{0}")]
    BadRequest(String),
    /// 401: no token, or one that matches no configured token; or a bad webhook signature.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: authenticated, but the role or group may not do this.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// 409: the target's state does not allow it (a finished run, a decided step).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 422: readable but invalid (inputs that do not fit the runbook, a missing field).
    #[error("{0}")]
    Unprocessable(String),
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after_secs: u64,
    },
    /// 503: the database is unreachable (any request that needs it), or the service is
    /// shutting down.
    #[error("{0}")]
    Unavailable(String),
    /// 500: logged in full, answered without detail.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn internal(e: impl std::fmt::Display) -> ApiError {
        ApiError::Internal(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error answering a request");
                "internal error; the server log has the details under this response's x-request-id"
                    .to_string()
            }
            other => other.to_string(),
        };
        let mut resp = (status, Json(json!({ "error": message }))).into_response();
        match &self {
            ApiError::RateLimited {
                retry_after_secs, ..
            } => {
                if let Ok(v) = HeaderValue::from_str(&retry_after_secs.max(&1).to_string()) {
                    resp.headers_mut().insert(header::RETRY_AFTER, v);
                }
            }
            ApiError::Unauthorized(_) => {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::RunNotFound(r) => ApiError::NotFound(format!("run {r} not found")),
            e if e.is_unavailable() => {
                tracing::warn!(error = %e, "the database is unavailable");
                ApiError::Unavailable("the database is unavailable; try again shortly".into())
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<ExecError> for ApiError {
    fn from(e: ExecError) -> Self {
        match e {
            ExecError::NotFound(r) => ApiError::NotFound(format!("run {r} not found")),
            ExecError::Invalid(m) => ApiError::Unprocessable(m),
            ExecError::Busy { run, .. } => ApiError::Conflict(format!(
                "run {run} is being executed by another process; try again shortly"
            )),
            ExecError::Store(s) => s.into(),
            other => ApiError::internal(other),
        }
    }
}

impl From<DecideError> for ApiError {
    fn from(e: DecideError) -> Self {
        match e {
            DecideError::Exec(x) => x.into(),
            e @ DecideError::NoSuchStep { .. } => ApiError::NotFound(e.to_string()),
            e @ (DecideError::NotAllowed { .. } | DecideError::SelfApproval { .. }) => {
                ApiError::Forbidden(e.to_string())
            }
            e @ (DecideError::NotWaiting { .. }
            | DecideError::WrongKind { .. }
            | DecideError::Duplicate { .. }) => ApiError::Conflict(e.to_string()),
        }
    }
}

/// Unknown paths answer in the same shape as every other error.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_database_is_503_and_a_failed_query_500() {
        let refused = StoreError::Database(sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        for e in [
            refused,
            StoreError::Database(sqlx::Error::PoolTimedOut),
            StoreError::Database(sqlx::Error::PoolClosed),
        ] {
            assert!(e.is_unavailable(), "{e}");
            let api = ApiError::from(e);
            assert_eq!(api.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(
                api.to_string(),
                "the database is unavailable; try again shortly"
            );
        }
        for e in [
            StoreError::Database(sqlx::Error::RowNotFound),
            StoreError::Corrupt("bad row".into()),
            StoreError::LeaseLost("r1".into()),
        ] {
            assert!(!e.is_unavailable(), "{e}");
            assert_eq!(
                ApiError::from(e).status(),
                StatusCode::INTERNAL_SERVER_ERROR
            );
        }
        assert_eq!(
            ApiError::from(StoreError::RunNotFound("r2".into())).status(),
            StatusCode::NOT_FOUND
        );
    }
}
