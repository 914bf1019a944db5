//! Durations as runbooks write them: `500ms`, `30s`, `5m`, `72h`, `7d`.

use std::time::Duration;

/// Parse a runbook duration. The error says what was expected.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{s}` has no unit: write e.g. 500ms, 30s, 5m, 72h or 7d"))?;
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "`{s}` does not start with a number: write e.g. 30s"
        ));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}`: the number is too large"))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => {
            return Err(format!(
                "`{s}` has an unknown unit `{unit}`: use ms, s, m, h or d"
            ))
        }
    }
    .ok_or_else(|| format!("`{s}` is too large"))?;
    Ok(Duration::from_millis(ms))
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
