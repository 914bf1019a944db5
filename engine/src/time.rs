//! Timestamps as the store keeps them: RFC 3339, UTC, millisecond precision, `Z` suffix,
//! so that they sort as text.

use chrono::{DateTime, SecondsFormat, Utc};

/// Format an instant the way the store and the audit trail do.
pub fn format(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Now, formatted.
pub fn now() -> String {
    format(Utc::now())
}

/// Parse a stored timestamp (any RFC 3339 offset accepted).
pub fn parse(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}
