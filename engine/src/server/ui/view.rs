//! What the review UI's templates are given: times, durations, JSON shown as text, paths,
//! and drafts rendered from Markdown to HTML with raw HTML and unsafe links disabled.
//!
//! The templates escape every value (Handlebars' HTML escaping); the one value that goes
//! out unescaped is [`markdown_html`]'s output, which contains no HTML of the draft's own.

use pulldown_cmark::{CowStr, Event, LinkType, Options, Parser, Tag, TagEnd};
use serde_json::Value;

/// `2026-11-26T10:02:03.123Z` → `2026-11-26 10:02:03 UTC`; `-` for nothing.
pub fn time(t: Option<&str>) -> String {
    match t.and_then(crate::time::parse) {
        Some(dt) => dt.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        None => t.unwrap_or("-").to_string(),
    }
}

/// A finishing time after `start`: only the time of day when it is the same day.
pub fn time_after(start: Option<&str>, end: &str) -> String {
    match (start.and_then(crate::time::parse), crate::time::parse(end)) {
        (Some(a), Some(b)) if a.date_naive() == b.date_naive() => {
            b.format("%H:%M:%S UTC").to_string()
        }
        _ => time(Some(end)),
    }
}

/// The time between two stored timestamps, for people: `850 ms`, `4.2 s`, `3 min 4 s`,
/// `2 h 5 min`, `3 d 4 h`.
pub fn duration(start: Option<&str>, end: Option<&str>) -> Option<String> {
    let (a, b) = (crate::time::parse(start?)?, crate::time::parse(end?)?);
    let ms = (b - a).num_milliseconds().max(0);
    Some(human_ms(ms))
}

pub fn human_ms(ms: i64) -> String {
    let s = ms / 1000;
    if ms < 1000 {
        format!("{ms} ms")
    } else if s < 60 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if s < 3600 {
        format!("{} min {} s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{} h {} min", s / 3600, (s % 3600) / 60)
    } else {
        format!("{} d {} h", s / 86_400, (s % 86_400) / 3600)
    }
}

/// A JSON value as indented text (strings as they are).
pub fn pretty(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => serde_json::to_string_pretty(other).unwrap_or_else(|_| other.to_string()),
    }
}

/// A path from segments, each percent-encoded: `["ui", "runs", id]` → `/ui/runs/<id>`.
pub fn path(segments: &[&str]) -> String {
    let mut out = String::new();
    for seg in segments {
        out.push('/');
        for b in seg.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

/// A query-string value.
pub fn query_value(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The link to a run's page.
pub fn run_href(run: &str) -> String {
    path(&["ui", "runs", run])
}

/// The link to a step's page (the approval page of an approval step).
pub fn step_href(run: &str, step: &str) -> String {
    path(&["ui", "runs", run, "steps", step])
}

/// A CSS class for a run or step status.
pub fn status_class(status: &str) -> &'static str {
    match status {
        "succeeded" => "ok",
        "failed" => "bad",
        "cancelled" | "skipped" => "muted",
        "waiting" => "wait",
        "running" | "queued" => "busy",
        _ => "muted",
    }
}

/// The `subject_email` input of a run, if it has one.
pub fn subject(inputs: &Value) -> Option<String> {
    inputs
        .get("subject_email")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// Render a draft's Markdown for reading. Raw HTML in the draft is shown as text, never
/// passed through; links keep only `http`, `https` and `mailto` targets (others point
/// nowhere), and images become links (no request leaves the page).
pub fn markdown_html(md: &str) -> String {
    let opts = Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH;
    let events = Parser::new_ext(md, opts).map(|ev| match ev {
        Event::Html(h) | Event::InlineHtml(h) => Event::Text(h),
        Event::Start(Tag::Link {
            link_type,
            dest_url,
            title,
            id,
        }) => Event::Start(Tag::Link {
            link_type,
            dest_url: safe_url(dest_url),
            title,
            id,
        }),
        Event::Start(Tag::Image {
            dest_url,
            title,
            id,
            ..
        }) => Event::Start(Tag::Link {
            link_type: LinkType::Inline,
            dest_url: safe_url(dest_url),
            title,
            id,
        }),
        Event::End(TagEnd::Image) => Event::End(TagEnd::Link),
        other => other,
    });
    let mut out = String::with_capacity(md.len() * 3 / 2);
    pulldown_cmark::html::push_html(&mut out, events);
    out
}

fn safe_url(url: CowStr<'_>) -> CowStr<'_> {
    let lower = url.trim().to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") || lower.starts_with("mailto:")
    {
        url
    } else {
        CowStr::Borrowed("#")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_is_rendered_without_raw_html_or_script_links() {
        let md = "# Brief\n\n<script>alert(1)</script>\n\nText with <b onclick=x>bold</b> and \
                  [a link](javascript:alert(2)) and [ok](https://example.com/x) and \
                  ![img](https://tracker.example/p.png)\n\n| a | b |\n|---|---|\n| 1 | 2 |\n";
        let html = markdown_html(md);
        assert!(html.contains("<h1>Brief</h1>"), "{html}");
        assert!(!html.contains("<script"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.contains("<b "), "{html}");
        assert!(!html.contains("javascript:"), "{html}");
        assert!(html.contains("href=\"https://example.com/x\""), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("<table>"), "{html}");
    }

    #[test]
    fn paths_are_encoded_per_segment() {
        assert_eq!(
            step_href("01J", "approve-x"),
            "/ui/runs/01J/steps/approve-x"
        );
        assert_eq!(path(&["ui", "a/b c?"]), "/ui/a%2Fb%20c%3F");
        assert_eq!(query_value("/ui/runs?x=1&y"), "%2Fui%2Fruns%3Fx%3D1%26y");
    }

    #[test]
    fn durations_for_people() {
        assert_eq!(
            duration(
                Some("2026-01-01T00:00:00.000Z"),
                Some("2026-01-01T00:00:00.250Z")
            )
            .as_deref(),
            Some("250 ms")
        );
        assert_eq!(human_ms(4_200), "4.2 s");
        assert_eq!(human_ms(184_000), "3 min 4 s");
        assert_eq!(human_ms(7_500_000), "2 h 5 min");
        assert_eq!(duration(None, Some("2026-01-01T00:00:00.000Z")), None);
        assert_eq!(
            time(Some("2026-11-26T10:02:03.123Z")),
            "2026-11-26 10:02:03 UTC"
        );
    }
}
