//! Notifications: the incident-facts schema, the templates, drafts, and sending drafts.
//!
//! - [`facts`]: the shared incident-facts schema (a Rust type and its JSON Schema), the
//!   placeholders for what is unknown, and checking facts people give.
//! - [`builder`]: facts from a run (inputs, step outputs, evidence, decisions), merged with
//!   the run's `facts` input.
//! - [`templates`]: `templates/<name>.md.hbs` with front matter, checked against the schema
//!   before rendering; the shipped templates are embedded.
//! - [`markdown`]: escaping values for Markdown, and the plain-text version of a draft.
//! - [`waiting`]: `notify_waiting`: the message that tells a chat channel or a mailbox a
//!   run waits for a person, with the approval link built from `public_url`.
//!
//! `notify.draft` is executed here, by the engine ([`draft_item`]): it reads the run's state
//! from the store, builds the facts, merges the step's `data`, renders the subject and body,
//! and returns the draft, which the run loop stores in the same commit as the step's result
//! (with a `draft.created` audit event carrying the body's SHA-256, never the body).
//! `smtp.send_email` with `draft:` is resolved here too ([`resolve_send`]): only a draft of
//! the same run, never one for an authority.

pub mod builder;
pub mod facts;
pub mod markdown;
pub mod templates;
pub mod waiting;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

pub use self::templates::{Audience, DraftTemplate, DraftTemplates, Rendered, TemplateError};
use crate::exec::Engine;
use crate::store::{DraftRecord, ItemRecord};

/// The refusal when a runbook asks Cordon to send a draft meant for an authority.
pub const AUTHORITY_REFUSAL: &str =
    "drafts to authorities are filed by counsel, never sent automatically";

/// Parse facts given as JSON or YAML text (`cordon templates render --facts`).
pub fn facts_from_text(text: &str, file: &str) -> Result<Value, String> {
    let trimmed = text.trim_start();
    let v: Value = if trimmed.starts_with('{') {
        serde_json::from_str(text).map_err(|e| format!("{file}: not valid JSON: {e}"))?
    } else {
        serde_yaml::from_str(text).map_err(|e| format!("{file}: not valid YAML: {e}"))?
    };
    if !v.is_object() {
        return Err(format!("{file}: expected a mapping of incident facts"));
    }
    Ok(v)
}

/// The sample facts, completed (what `cordon templates render NAME` uses by default).
pub fn sample_facts() -> Result<Value, String> {
    let given = facts_from_text(templates::SAMPLE_FACTS, "sample-facts.yaml")?;
    builder::finish(Value::Object(Map::new()), Some(&given))
        .map_err(|e| format!("sample-facts.yaml: {}", e.join("; ")))
}

/// The facts a template is rendered with, and the shape it is checked against: `facts`
/// with `data` merged over them.
pub fn with_data(facts: &Value, data: Option<&Value>) -> (Value, facts::Shape) {
    let mut merged = facts.clone();
    let mut shape = facts::shape();
    if let Some(d) = data.filter(|d| d.is_object()) {
        facts::deep_merge(&mut merged, d);
        shape = shape.merged(&facts::Shape::of_value(d));
    }
    (merged, shape)
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Render template `name` with `facts` and optional `data`: problems as one message.
pub fn render_named(
    templates: &DraftTemplates,
    name: &str,
    facts: &Value,
    data: Option<&Value>,
) -> Result<Rendered, String> {
    let t = templates.load(name).map_err(|e| e.to_string())?;
    let (ctx, shape) = with_data(facts, data);
    templates.render(&t, &ctx, &shape).map_err(|errs| {
        errs.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// Execute `notify.draft` for one item: the draft to store, and the step's output.
pub async fn draft_item(
    engine: &Engine,
    item: &ItemRecord,
) -> Result<(Value, DraftRecord), String> {
    let input = &item.inputs;
    let name = match input.get("template") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err("invalid input `template`: is required".into())
        }
        Some(_) => return Err("invalid input `template`: must be a template name".into()),
    };
    let data = match input.get("data") {
        None | Some(Value::Null) => None,
        Some(d @ Value::Object(_)) => Some(d.clone()),
        Some(_) => return Err("invalid input `data`: must be a mapping of facts".into()),
    };
    let to = input.get("to").filter(|t| !t.is_null()).cloned();
    let store = engine.store();
    let run = store
        .get_run(&item.run_id)
        .await
        .map_err(|e| format!("cannot read the run: {e}"))?
        .ok_or_else(|| format!("run {} not found", item.run_id))?;
    let items = store
        .items(&run.id)
        .await
        .map_err(|e| format!("cannot read the run's steps: {e}"))?;
    let evidence = store
        .evidence(&run.id)
        .await
        .map_err(|e| format!("cannot read the run's evidence: {e}"))?;
    let decisions = store
        .decisions(&run.id)
        .await
        .map_err(|e| format!("cannot read the run's decisions: {e}"))?;
    let runbook = crate::exec::runner::stored_runbook(&run).ok();
    let now = crate::time::now();
    let base = builder::facts_from_run(&builder::RunState {
        run: &run,
        runbook: runbook.as_ref(),
        items: &items,
        evidence: &evidence,
        decisions: &decisions,
        now: &now,
    });
    let given = run.inputs.get("facts").filter(|f| !f.is_null());
    let facts =
        builder::finish(base, given).map_err(|e| format!("input `facts`: {}", e.join("; ")))?;
    let redactor = &engine.inner.redactor;
    let rendered = render_named(&engine.inner.drafts, &name, &facts, data.as_ref())?;
    let (facts_used, _) = with_data(&facts, data.as_ref());
    let body_markdown = redactor.redact_str(&rendered.body_markdown);
    let draft = DraftRecord {
        draft_id: ulid::Ulid::new().to_string(),
        run_id: run.id.clone(),
        step_id: item.step_id.clone(),
        idx: item.idx,
        template: name.clone(),
        audience: rendered.audience.as_str().to_string(),
        subject: redactor.redact_str(&rendered.subject),
        to: to.as_ref().map(|t| redactor.redact_value(t)),
        body_sha256: sha256_hex(&body_markdown),
        body_text: redactor.redact_str(&rendered.body_text),
        body_markdown,
        facts: redactor.redact_value(&facts_used),
        created_at: now,
    };
    let mut output = json!({
        "draft_id": draft.draft_id,
        "template": draft.template,
        "subject": draft.subject,
        "audience": draft.audience,
    });
    if let Some(t) = &draft.to {
        output["to"] = t.clone();
    }
    Ok((output, draft))
}

/// The audit event of a stored draft: what was drafted, never the body itself.
pub fn draft_audit_details(d: &DraftRecord) -> Value {
    json!({
        "draft_id": d.draft_id, "step": d.step_id, "index": d.idx, "template": d.template,
        "audience": d.audience, "subject": d.subject, "to": d.to, "sha256": d.body_sha256,
    })
}

/// `smtp.send_email` with `draft:`: the call's inputs with the draft's subject, plain-text
/// body and Markdown alternative. Refuses a draft of another run and a draft for an
/// authority.
pub async fn resolve_send(engine: &Engine, item: &ItemRecord) -> Result<Option<Value>, String> {
    let Some(draft_ref) = item.inputs.get("draft").filter(|d| !d.is_null()) else {
        return Ok(None);
    };
    let Some(id) = draft_ref.as_str().map(str::trim).filter(|s| !s.is_empty()) else {
        return Err("invalid input `draft`: must be a draft id".into());
    };
    let draft = engine
        .store()
        .draft(id)
        .await
        .map_err(|e| format!("cannot read draft {id}: {e}"))?
        .ok_or_else(|| format!("invalid input `draft`: no draft `{id}`"))?;
    if draft.run_id != item.run_id {
        return Err(format!(
            "invalid input `draft`: draft `{id}` belongs to run {}, not to this run; a run sends only its own drafts",
            draft.run_id
        ));
    }
    if draft.audience == Audience::Authority.as_str() {
        return Err(format!(
            "draft `{id}` ({}) is for an authority: {AUTHORITY_REFUSAL}",
            draft.template
        ));
    }
    let mut call = item.inputs.clone();
    if let Value::Object(m) = &mut call {
        m.insert("subject".into(), json!(draft.subject));
        m.insert("body".into(), json!(draft.body_text));
        m.insert("body_markdown".into(), json!(draft.body_markdown));
    }
    Ok(Some(call))
}
