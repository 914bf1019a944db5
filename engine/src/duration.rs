//! Durations as runbooks write them: `500ms`, `30s`, `5m`, `72h`, `7d`.

use std::time::Duration;

/// Parse a runbook duration. The error says what was expected. (One grammar for runbooks
/// and connector settings: the connectors crate owns it.)
pub fn parse(s: &str) -> Result<Duration, String> {
    cordon_connectors::http_client::parse_duration(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("72h"), Ok(Duration::from_secs(72 * 3600)));
        assert_eq!(parse("7d"), Ok(Duration::from_secs(7 * 86400)));
    }

    #[test]
    fn errors_say_what_to_write() {
        assert!(parse("30").unwrap_err().contains("no unit"));
        assert!(parse("s").unwrap_err().contains("number"));
        assert!(parse("3w").unwrap_err().contains("unknown unit"));
        assert!(parse("99999999999999999999s").is_err());
    }
}
