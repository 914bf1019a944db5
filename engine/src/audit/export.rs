//! Writing a run's audit trail out: JSON Lines for machines, one self-contained HTML page for
//! counsel (no external assets, so it can be attached to a case file and opened offline).

use std::io::{self, Write};

use serde_json::Value;

use super::VerifyReport;
use crate::store::{AuditEvent, RunRecord};

/// One event per line with exactly the fields `seq, at, run_id, actor, action, details,
/// prev_hash, hash`, in that order.
pub fn export_jsonl<W: Write>(events: &[AuditEvent], mut writer: W) -> io::Result<()> {
    for ev in events {
        serde_json::to_writer(&mut writer, ev).map_err(io::Error::other)?;
        writer.write_all(b"\n")?;
    }
    writer.flush()
}

/// A self-contained HTML page: run, runbook and its SHA-256, the chain's verification status
/// and a table of the events. Every value is HTML-escaped.
pub fn export_html<W: Write>(
    run: &RunRecord,
    events: &[AuditEvent],
    report: &VerifyReport,
    mut writer: W,
) -> io::Result<()> {
    let mut out = String::with_capacity(4096 + events.len() * 512);
    let title = format!("Audit trail of run {}", run.id);
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str(&format!("<title>{}</title>\n", esc(&title)));
    out.push_str(STYLE);
    out.push_str("</head>\n<body>\n");
    out.push_str(&format!("<h1>{}</h1>\n", esc(&title)));

    out.push_str("<table class=\"facts\">\n");
    let facts: [(&str, String); 9] = [
        ("Run", run.id.clone()),
        ("Runbook", run.runbook.clone()),
        ("Runbook SHA-256", run.runbook_sha256.clone()),
        ("Status", run.status.as_str().to_owned()),
        ("Trigger", run.trigger.clone()),
        ("Started by", run.started_by.clone()),
        ("Case", run.case_id.clone()),
        ("Created", run.created_at.clone()),
        (
            "Finished",
            run.finished_at.clone().unwrap_or_else(|| "-".into()),
        ),
    ];
    for (k, v) in facts {
        out.push_str(&format!(
            "<tr><th>{}</th><td><code>{}</code></td></tr>\n",
            esc(k),
            esc(&v)
        ));
    }
    out.push_str("</table>\n");

    let (class, status) = if report.ok {
        (
            "ok",
            format!(
                "Audit chain verified: {} events intact, head {}.",
                report.events,
                report.head.as_deref().unwrap_or("(empty chain)")
            ),
        )
    } else {
        let first_bad = report
            .first_bad
            .map(|s| format!(" First bad event: {s}."))
            .unwrap_or_default();
        (
            "bad",
            format!(
                "AUDIT CHAIN BROKEN: {}.{first_bad}",
                report.problem.as_deref().unwrap_or("verification failed")
            ),
        )
    };
    out.push_str(&format!(
        "<p class=\"verify {class}\">{}</p>\n",
        esc(&status)
    ));

    out.push_str(
        "<table class=\"events\">\n<thead><tr><th>Seq</th><th>Time (UTC)</th><th>Actor</th>\
         <th>Action</th><th>Details</th><th>Hash</th></tr></thead>\n<tbody>\n",
    );
    for ev in events {
        let details = pretty(&ev.details);
        let prefix: String = ev.hash.chars().take(16).collect();
        out.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><pre>{}</pre></td>\
             <td><code title=\"{}\">{}…</code></td></tr>\n",
            ev.seq,
            esc(&ev.at),
            esc(&ev.actor),
            esc(&ev.action),
            esc(&details),
            esc(&ev.hash),
            esc(&prefix),
        ));
    }
    out.push_str("</tbody>\n</table>\n</body>\n</html>\n");
    writer.write_all(out.as_bytes())?;
    writer.flush()
}

const STYLE: &str = "<style>\n\
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em;color:#111}\n\
h1{font-size:1.4em}\n\
table{border-collapse:collapse;margin:1em 0}\n\
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}\n\
.facts th{background:#f4f4f4}\n\
.events thead th{background:#eee;position:sticky;top:0}\n\
pre{margin:0;white-space:pre-wrap;word-break:break-word;font-size:.85em}\n\
.verify{padding:.6em;border-radius:4px;font-weight:bold}\n\
.verify.ok{background:#e6f4ea;color:#135f2a}\n\
.verify.bad{background:#fde8e8;color:#8a1010}\n\
</style>\n";

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// Escape text for HTML element content and quoted attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{verify, Chain};
    use crate::store::{AuditDraft, RunStatus};
    use serde_json::json;

    fn run() -> RunRecord {
        RunRecord {
            id: "01RUN<x>".into(),
            runbook: "nk-worker".into(),
            runbook_text: "name: nk-worker\n".into(),
            runbook_sha256: "ab".repeat(32),
            status: RunStatus::Succeeded,
            trigger: "cli:dana".into(),
            started_by: "dana".into(),
            inputs: json!({}),
            concurrency_key: None,
            undo_of: None,
            dry_run: false,
            case_id: "case-1".into(),
            error: None,
            created_at: "2026-11-25T23:57:58.123Z".into(),
            started_at: None,
            finished_at: None,
            cancel_requested: false,
        }
    }

    fn events() -> (Vec<AuditEvent>, crate::store::AuditHead) {
        let mut c = Chain::from_head(None);
        let evs = vec![
            c.seal(AuditDraft {
                run_id: Some("01RUN<x>".into()),
                actor: "cli:<script>".into(),
                action: "run.created".into(),
                details: json!({"note": "<script>alert('x')</script> & \"q\""}),
            }),
            c.seal(AuditDraft {
                run_id: None,
                actor: "system".into(),
                action: "config.loaded".into(),
                details: json!(null),
            }),
        ];
        (evs, c.head())
    }

    #[test]
    fn jsonl_has_one_line_per_event_with_exact_fields() {
        let (evs, _) = events();
        let mut buf = Vec::new();
        export_jsonl(&evs, &mut buf).expect("export");
        let text = String::from_utf8(buf).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        for (line, ev) in lines.iter().zip(&evs) {
            let v: Value = serde_json::from_str(line).expect("json line");
            let keys: Vec<&str> = v
                .as_object()
                .expect("object")
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(
                keys,
                [
                    "seq",
                    "at",
                    "run_id",
                    "actor",
                    "action",
                    "details",
                    "prev_hash",
                    "hash"
                ]
            );
            let back: AuditEvent = serde_json::from_value(v).expect("event");
            assert_eq!(&back, ev);
        }
        assert!(lines[1].contains("\"run_id\":null"));
    }

    #[test]
    fn html_escapes_every_value_and_shows_status() {
        let (evs, head) = events();
        let report = verify(&evs, Some(&head));
        let mut buf = Vec::new();
        export_html(&run(), &evs, &report, &mut buf).expect("export");
        let html = String::from_utf8(buf).expect("utf8");
        assert!(!html.contains("<script>"), "unescaped markup in {html}");
        assert!(html
            .contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; \\&quot;q\\&quot;"));
        assert!(html.contains("cli:&lt;script&gt;"));
        assert!(html.contains("01RUN&lt;x&gt;"));
        assert!(html.contains(&"ab".repeat(32)));
        assert!(html.contains("Audit chain verified: 2 events intact"));
        assert!(!html.contains("http://") && !html.contains("https://"));
    }

    #[test]
    fn html_reports_a_broken_chain() {
        let (mut evs, head) = events();
        evs[0].actor = "someone-else".into();
        let report = verify(&evs, Some(&head));
        let mut buf = Vec::new();
        export_html(&run(), &evs, &report, &mut buf).expect("export");
        let html = String::from_utf8(buf).expect("utf8");
        assert!(html.contains("AUDIT CHAIN BROKEN"));
        assert!(html.contains("First bad event: 1."));
    }
}
