//! Typed connector failures. The engine decides whether to retry from the variant, never
//! from message text. Messages never contain secrets (the HTTP client redacts them).

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// 429 or a vendor's documented throttling answer.
    #[error("rate limited: {message}")]
    RateLimited {
        retry_after: Option<Duration>,
        message: String,
    },
    /// 5xx, connection failures, and other answers worth trying again.
    #[error("transient failure: {message}")]
    Transient {
        retry_after: Option<Duration>,
        message: String,
    },
    /// The attempt took longer than its bound.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// 401/403 that a token refresh did not fix.
    #[error("not authorised ({status}): {message}")]
    Auth { status: u16, message: String },
    /// Any other 4xx: not retried.
    #[error("request rejected ({status}): {message}")]
    Rejected { status: u16, message: String },
    /// The action's inputs are wrong (names the field).
    #[error("invalid input `{field}`: {message}")]
    InvalidInput { field: String, message: String },
    /// Writing evidence failed.
    #[error("evidence store: {0}")]
    Evidence(String),
    /// The connector is misconfigured (names the setting).
    #[error("configuration: {0}")]
    Config(String),
    /// Anything else; not retried.
    #[error("{0}")]
    Other(String),
}

impl ConnectorError {
    /// Worth another attempt (engine default policy: timeouts, connection errors, 429, 5xx).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ConnectorError::RateLimited { .. }
                | ConnectorError::Transient { .. }
                | ConnectorError::Timeout(_)
        )
    }

    /// The vendor's own "retry after", when it gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ConnectorError::RateLimited { retry_after, .. }
            | ConnectorError::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}
