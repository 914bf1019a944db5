//! `notify_waiting`: telling a chat channel or a mailbox that a run waits for a person.
//!
//! ```yaml
//! public_url: https://cordon.acme.internal
//! notify_waiting: { connector: soc-slack }                       # a `slack` instance
//! notify_waiting: { connector: soc-mail, to: [legal@acme.com] }  # an `smtp` instance
//! ```
//!
//! When a step starts waiting for an approval or a task, the commit that makes it wait also
//! queues a notice (`Change::WaitingNotice`, in every process: `cordon run` too);
//! `cordon serve` sends it ([`crate::server::notifier`]). The message ([`compose`]) names
//! the run, the runbook, the step, its message, who may decide, the deadline, and the link
//! `{public_url}/ui/runs/{run}/steps/{step}` ([`approval_link`]) that opens the review page
//! (which shows the decision; a GET never decides). Without `public_url` the message says
//! so instead of a link. Values are passed through the redactor, so a secret never reaches
//! the message.

use serde::Deserialize;
use serde_json::{json, Value};

use cordon_connectors::registry::Registry;
use cordon_connectors::secret::Redactor;
use cordon_connectors::{
    ActionCall, ConnectorError, EvidenceMeta, EvidenceSink, EvidenceWriter, RequestLog, ResumeSlot,
};

use crate::store::{RunRecord, StepRecord};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    connector: String,
    #[serde(default)]
    to: Option<Value>,
    #[serde(default)]
    channel: Option<String>,
}

/// Where notices go.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// `slack.post_message`, with an optional channel override.
    Slack { channel: Option<String> },
    /// `smtp.send_email` to these recipients (an address or a list, as `to` takes).
    Smtp { to: Value },
}

/// A checked `notify_waiting`.
#[derive(Debug, Clone, PartialEq)]
pub struct NotifyWaiting {
    /// The connector instance's name.
    pub connector: String,
    pub target: Target,
}

/// Check `notify_waiting` against the configured instances; every problem, each naming
/// its field.
pub fn build(v: &Value, registry: &Registry) -> Result<NotifyWaiting, Vec<String>> {
    let raw: Raw =
        serde_json::from_value(v.clone()).map_err(|e| vec![format!("notify_waiting: {e}")])?;
    let ty = registry
        .get(&raw.connector)
        .map(|c| c.type_name().to_string());
    let mut problems = Vec::new();
    let target = match ty.as_deref() {
        None => {
            problems.push(format!(
                "notify_waiting.connector: no connector instance named `{}` (configure a `slack` or `smtp` instance under `connectors`)",
                raw.connector
            ));
            None
        }
        Some("slack") => {
            if raw.to.is_some() {
                problems.push(
                    "notify_waiting.to: only for an `smtp` connector (a Slack webhook posts to its own channel; `channel` overrides it)"
                        .into(),
                );
            }
            Some(Target::Slack {
                channel: raw.channel.clone(),
            })
        }
        Some("smtp") => {
            if raw.channel.is_some() {
                problems.push("notify_waiting.channel: only for a `slack` connector".into());
            }
            match &raw.to {
                Some(Value::String(s)) if !s.trim().is_empty() => Some(Target::Smtp {
                    to: Value::String(s.clone()),
                }),
                Some(Value::Array(list))
                    if !list.is_empty()
                        && list
                            .iter()
                            .all(|x| x.as_str().is_some_and(|s| !s.trim().is_empty())) =>
                {
                    Some(Target::Smtp {
                        to: Value::Array(list.clone()),
                    })
                }
                None => {
                    problems.push(
                        "notify_waiting.to: required with an `smtp` connector (an address or a list of addresses)"
                            .into(),
                    );
                    None
                }
                Some(_) => {
                    problems.push(
                        "notify_waiting.to: must be an address or a list of addresses".into(),
                    );
                    None
                }
            }
        }
        Some(other) => {
            problems.push(format!(
                "notify_waiting.connector: `{}` is a `{other}` connector; use a `slack` or `smtp` instance",
                raw.connector
            ));
            None
        }
    };
    match target {
        Some(target) if problems.is_empty() => Ok(NotifyWaiting {
            connector: raw.connector,
            target,
        }),
        _ => Err(problems),
    }
}

/// Check `public_url`: an absolute `http(s)` URL without query or fragment. Returned
/// without a trailing slash.
pub fn check_public_url(url: &str) -> Result<String, String> {
    let parsed = url::Url::parse(url)
        .map_err(|e| format!("public_url: `{url}` is not an absolute URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "public_url: `{url}` must start with https:// (or http://)"
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!(
            "public_url: `{url}` must not have a query or fragment; links add `/ui/runs/…` to it"
        ));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// `{public_url}/ui/runs/{run}/steps/{step}`: the review page of one waiting step (GET
/// shows it; deciding takes a form post on that page).
pub fn approval_link(public_url: &str, run_id: &str, step_id: &str) -> String {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "{}/ui/runs/{}/steps/{}",
        public_url.trim_end_matches('/'),
        enc(run_id),
        enc(step_id)
    )
}

/// A notice, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub subject: String,
    /// Plain text (email).
    pub text: String,
    /// Slack mrkdwn (`&`, `<`, `>` escaped in values).
    pub slack: String,
    pub link: Option<String>,
}

fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| x.to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The notice for a waiting step. `public_url` as checked by [`check_public_url`].
pub fn compose(
    run: &RunRecord,
    step: &StepRecord,
    public_url: Option<&str>,
    redactor: &Redactor,
) -> Message {
    let inputs = step.inputs.clone().unwrap_or(Value::Null);
    let kind = inputs["kind"].as_str().unwrap_or("approval");
    let is_task = kind == "task";
    let message = redactor.redact_str(inputs["message"].as_str().unwrap_or(""));
    let who = if is_task {
        let a = strings(inputs["who"].get("assignees"));
        if a.is_empty() {
            "anyone allowed to decide tasks".to_string()
        } else {
            a.join(", ")
        }
    } else {
        let a = strings(inputs["who"].get("approvers"));
        let n = inputs["who"]["min_approvals"].as_u64().unwrap_or(1);
        let list = if a.is_empty() {
            "anyone allowed to approve".to_string()
        } else {
            a.join(", ")
        };
        if n > 1 {
            format!("{list} ({n} distinct approvals needed)")
        } else {
            list
        }
    };
    let who = redactor.redact_str(&who);
    let deadline = inputs["deadline"].as_str().map(str::to_string);
    let link = public_url.map(|u| approval_link(u, &run.id, &step.step_id));
    let (what, verb) = if is_task {
        ("Task waiting", "Mark it done")
    } else {
        ("Approval needed", "Review and decide")
    };
    let subject = format!(
        "{what}: {} / {} (run {})",
        run.runbook, step.step_id, run.id
    );
    let no_link = format!(
        "No link: `public_url` is not set in Cordon's configuration. Decide with `cordon {} {} {} --by NAME` or the API.",
        if is_task { "done" } else { "approve" },
        run.id,
        step.step_id
    );
    let mut text = format!(
        "{what}: run {} (runbook `{}`) waits at step `{}`.\n",
        run.id, run.runbook, step.step_id
    );
    let mut slack = format!(
        "*{what}*: run `{}` (runbook `{}`) waits at step `{}`.\n",
        run.id,
        slack_escape(&run.runbook),
        slack_escape(&step.step_id)
    );
    if !message.is_empty() {
        text.push_str(&format!("Message: {message}\n"));
        slack.push_str(&format!(
            "> {}\n",
            slack_escape(&message).replace('\n', "\n> ")
        ));
    }
    let who_label = if is_task {
        "Assigned to"
    } else {
        "Who may decide"
    };
    text.push_str(&format!("{who_label}: {who}\n"));
    slack.push_str(&format!("{who_label}: {}\n", slack_escape(&who)));
    if let Some(d) = &deadline {
        text.push_str(&format!("Deadline: {d}\n"));
        slack.push_str(&format!("Deadline: {d}\n"));
    }
    match &link {
        Some(l) => {
            text.push_str(&format!("{verb}: {l}\n"));
            slack.push_str(&format!("{verb}: {l}\n"));
        }
        None => {
            text.push_str(&no_link);
            text.push('\n');
            slack.push_str(&slack_escape(&no_link));
            slack.push('\n');
        }
    }
    Message {
        subject,
        text,
        slack,
        link,
    }
}

/// Notices write no evidence.
struct NoEvidence;

#[async_trait::async_trait]
impl EvidenceSink for NoEvidence {
    async fn create(
        &self,
        _meta: EvidenceMeta,
    ) -> Result<Box<dyn EvidenceWriter>, cordon_connectors::evidence::EvidenceError> {
        Err(cordon_connectors::evidence::EvidenceError(
            "a waiting notice writes no evidence".into(),
        ))
    }
}

/// What one send needs to say about itself.
pub struct SendContext<'a> {
    /// `notify-waiting/<notice id>`: the same on every attempt (SMTP derives the
    /// `Message-ID` from it).
    pub idempotency_key: &'a str,
    pub run_id: &'a str,
    pub step_id: &'a str,
    pub attempt: u32,
}

/// Send one notice through the configured instance (one attempt).
pub async fn send(
    cfg: &NotifyWaiting,
    registry: &Registry,
    msg: &Message,
    ctx: SendContext<'_>,
) -> Result<Value, ConnectorError> {
    let connector = registry.get(&cfg.connector).ok_or_else(|| {
        ConnectorError::Config(format!("no connector instance `{}`", cfg.connector))
    })?;
    let (action, input) = match &cfg.target {
        Target::Slack { channel } => {
            let mut input = json!({"text": msg.slack});
            if let Some(c) = channel {
                input["channel"] = json!(c);
            }
            ("post_message", input)
        }
        Target::Smtp { to } => (
            "send_email",
            json!({"to": to, "subject": msg.subject, "body": msg.text}),
        ),
    };
    let requests = RequestLog::default();
    let resume = ResumeSlot::default();
    connector
        .call(ActionCall {
            action,
            input: &input,
            idempotency_key: ctx.idempotency_key,
            run_id: ctx.run_id,
            step_id: ctx.step_id,
            attempt: ctx.attempt,
            evidence: &NoEvidence,
            requests: &requests,
            resume: &resume,
            prior: None,
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RunStatus, StepStatus};

    fn run() -> RunRecord {
        RunRecord {
            id: "01JRUN".into(),
            runbook: "gate".into(),
            runbook_text: String::new(),
            runbook_sha256: String::new(),
            status: RunStatus::Waiting,
            trigger: "cli:dana".into(),
            started_by: "cli:dana".into(),
            inputs: json!({}),
            concurrency_key: None,
            undo_of: None,
            dry_run: false,
            case_id: "01JRUN".into(),
            error: None,
            created_at: "2026-03-02T10:00:00.000Z".into(),
            started_at: None,
            finished_at: None,
            cancel_requested: false,
        }
    }

    fn step(inputs: Value) -> StepRecord {
        StepRecord {
            run_id: "01JRUN".into(),
            step_id: "approve-suspend".into(),
            status: StepStatus::Waiting,
            attempts: 0,
            items: 0,
            inputs: Some(inputs),
            output: None,
            error: None,
            reason: None,
            started_at: None,
            finished_at: None,
            deadline: None,
            on_failure: false,
        }
    }

    #[test]
    fn links_use_public_url_and_encode_ids() {
        assert_eq!(
            approval_link("https://cordon.acme.internal/", "01JRUN", "approve-suspend"),
            "https://cordon.acme.internal/ui/runs/01JRUN/steps/approve-suspend"
        );
        assert_eq!(
            approval_link("https://x.example/cordon", "r", "a b/c"),
            "https://x.example/cordon/ui/runs/r/steps/a+b%2Fc"
        );
        assert_eq!(
            check_public_url("https://cordon.acme.internal/").unwrap(),
            "https://cordon.acme.internal"
        );
        assert!(check_public_url("cordon.acme.internal").is_err());
        assert!(check_public_url("ftp://x.example").is_err());
        assert!(check_public_url("https://x.example/?a=1").is_err());
    }

    #[test]
    fn the_message_names_everything_a_decider_needs_and_no_secret() {
        let redactor = Redactor::new();
        redactor.register("hunter2-secret");
        let s = step(json!({
            "kind": "approval",
            "message": "Suspend <j.smith@example.com> & lock (token hunter2-secret)?",
            "who": {"approvers": ["role:legal"], "min_approvals": 2},
            "deadline": "2026-03-05T10:00:00.000Z",
        }));
        let m = compose(&run(), &s, Some("https://cordon.acme.internal"), &redactor);
        let link = "https://cordon.acme.internal/ui/runs/01JRUN/steps/approve-suspend";
        assert_eq!(m.link.as_deref(), Some(link));
        for body in [&m.text, &m.slack] {
            assert!(body.contains("01JRUN"), "{body}");
            assert!(body.contains("`gate`"), "{body}");
            assert!(body.contains("approve-suspend"), "{body}");
            assert!(
                body.contains("role:legal (2 distinct approvals needed)"),
                "{body}"
            );
            assert!(body.contains("2026-03-05T10:00:00.000Z"), "{body}");
            assert!(body.contains(link), "{body}");
            assert!(!body.contains("hunter2"), "{body}");
        }
        assert!(
            m.text.contains("Suspend <j.smith@example.com> & lock"),
            "{}",
            m.text
        );
        assert!(
            m.slack
                .contains("> Suspend &lt;j.smith@example.com&gt; &amp; lock"),
            "{}",
            m.slack
        );
        assert!(
            m.subject.contains("gate / approve-suspend"),
            "{}",
            m.subject
        );
    }

    #[test]
    fn without_public_url_the_message_says_how_to_decide() {
        let s = step(
            json!({"kind": "task", "message": "Hold payments", "who": {"assignees": ["role:finance"]}}),
        );
        let m = compose(&run(), &s, None, &Redactor::new());
        assert_eq!(m.link, None);
        assert!(m.text.starts_with("Task waiting"), "{}", m.text);
        assert!(m.text.contains("Assigned to: role:finance"), "{}", m.text);
        assert!(m.text.contains("`public_url` is not set"), "{}", m.text);
        assert!(
            m.text
                .contains("cordon done 01JRUN approve-suspend --by NAME"),
            "{}",
            m.text
        );
        assert!(!m.text.contains("/ui/runs/"), "{}", m.text);
    }

    #[test]
    fn configuration_is_checked_against_the_instances() {
        let redactor = Redactor::new();
        let dir = tempfile::tempdir().unwrap();
        let conns: std::collections::BTreeMap<String, Value> = serde_json::from_value(json!({
            "chat": {"type": "slack", "webhook_url": {"env": "CORDON_TEST_NOTIFY_HOOK_URL"}},
            "mail": {"type": "smtp", "host": "127.0.0.1", "port": 2525, "tls": "none", "from": "cordon@example.com"},
            "idp": {"type": "http", "base_url": "https://idp.example.com"},
        }))
        .unwrap();
        std::env::set_var(
            "CORDON_TEST_NOTIFY_HOOK_URL",
            "http://127.0.0.1:9/slack/services/T/B/x",
        );
        let registry = Registry::from_config(&conns, dir.path(), &redactor).unwrap();
        assert_eq!(
            build(&json!({"connector": "chat"}), &registry)
                .unwrap()
                .target,
            Target::Slack { channel: None }
        );
        assert_eq!(
            build(
                &json!({"connector": "mail", "to": ["a@example.com"]}),
                &registry
            )
            .unwrap()
            .target,
            Target::Smtp {
                to: json!(["a@example.com"])
            }
        );
        let err = |v: Value| build(&v, &registry).unwrap_err().join("\n");
        assert!(err(json!({"connector": "nope"})).contains("no connector instance named `nope`"));
        assert!(err(json!({"connector": "idp"})).contains("is a `http` connector"));
        assert!(err(json!({"connector": "mail"})).contains("notify_waiting.to: required"));
        assert!(err(json!({"connector": "mail", "to": []})).contains("notify_waiting.to"));
        assert!(
            err(json!({"connector": "chat", "to": "a@example.com"})).contains("only for an `smtp`")
        );
        assert!(err(json!({"connector": "chat", "bogus": 1})).contains("bogus"));
    }
}
