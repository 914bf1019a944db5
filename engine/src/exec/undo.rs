//! `cordon undo RUN`: plan and store the undo run of a finished run.
//!
//! Every succeeded mutating item of the origin run, newest first, is reversed by the step's
//! `undo:` (rendered now, against the origin's stored inputs and outputs) or else by its
//! action's declared undo with the item's stored inputs. Targets that were `already` in
//! that state before the origin run, or `not_found`, are left alone; mutating steps with no
//! undo are reported `not_undoable`. The plan becomes a generated runbook (literal values,
//! a chain of `needs` so the undos run one after another) stored with the undo run, so that
//! resume works on it like on any run.

use serde_json::{json, Map, Value};

use cordon_connectors::catalog::{find_action, Effect};

use super::context::RunContext;
use super::{Engine, ExecError};
use crate::expr::Cel;
use crate::runbook::model::{ConnectorRef, Runbook, Step};
use crate::store::{AuditDraft, RunRecord, RunStatus, StepStatus};

/// One line of the undo plan.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlanEntry {
    pub step: String,
    pub index: u32,
    pub connector: String,
    pub action: String,
    /// `undo`, `already`, `not_found`, `not_undoable`.
    pub disposition: String,
    pub undo_step: Option<String>,
}

/// Store the undo run of `origin_id` (status queued); the caller executes it.
pub async fn create_undo_run(
    engine: &Engine,
    origin_id: &str,
    trigger: &str,
    started_by: &str,
    actor: &str,
) -> Result<(RunRecord, Vec<PlanEntry>), ExecError> {
    let store = engine.store();
    let origin = store
        .get_run(origin_id)
        .await?
        .ok_or_else(|| ExecError::NotFound(origin_id.to_string()))?;
    if origin.status.is_active() {
        return Err(ExecError::Invalid(format!(
            "run {origin_id} is {}; cancel it or let it finish before undoing it",
            origin.status.as_str()
        )));
    }
    if origin.dry_run {
        return Err(ExecError::Invalid(format!(
            "run {origin_id} was a dry run: it changed nothing, there is nothing to undo"
        )));
    }
    let rb = super::runner::stored_runbook(&origin)?;
    let steps = store.steps(origin_id).await?;
    let mut items = store.items(origin_id).await?;
    items.retain(|i| i.status == StepStatus::Succeeded);
    // Newest first; ties broken by reverse file order, then reverse index.
    let pos = |id: &str| {
        rb.runbook
            .steps
            .iter()
            .position(|s| s.id == id)
            .unwrap_or(0)
    };
    items.sort_by(|a, b| {
        b.finished_at
            .cmp(&a.finished_at)
            .then(pos(&b.step_id).cmp(&pos(&a.step_id)))
            .then(b.idx.cmp(&a.idx))
    });
    let mut ctx = RunContext::new(&origin);
    for s in &steps {
        ctx.set_step(&s.step_id, s.status.as_str(), s.output.as_ref());
    }
    let base = ctx.value();
    let mut plan = Vec::new();
    let mut gen_steps: Vec<Step> = Vec::new();
    let templates = &engine.inner.templates;
    for it in &items {
        let Some(def) = rb.step(&it.step_id) else {
            continue;
        };
        let Some(uses) = def.uses.as_deref() else {
            continue;
        };
        let Some((ty, decl)) = find_action(uses) else {
            continue;
        };
        if decl.effect.for_input(&it.inputs) != Effect::Mutation {
            continue;
        }
        let mut entry = PlanEntry {
            step: it.step_id.clone(),
            index: it.idx,
            connector: it.connector.clone(),
            action: uses.to_string(),
            disposition: String::new(),
            undo_step: None,
        };
        let out = it.output.clone().unwrap_or(Value::Null);
        if out.get("already") == Some(&Value::Bool(true)) {
            entry.disposition = "already".into();
            plan.push(entry);
            continue;
        }
        if out.get("found") == Some(&Value::Bool(false)) {
            entry.disposition = "not_found".into();
            plan.push(entry);
            continue;
        }
        // A role action without its own `undo:` is undone per instance.
        if def.undo.is_none() {
            if let Some(results) = out.get("results").and_then(Value::as_array) {
                let base_id = if def.for_each.is_some() {
                    format!("undo-{}-{}", it.step_id, it.idx)
                } else {
                    format!("undo-{}", it.step_id)
                };
                let mut inputs = it.inputs.clone();
                if let Value::Object(m) = &mut inputs {
                    m.remove("allow_not_found");
                }
                for r in results {
                    let instance = r["connector"].as_str().unwrap_or("").to_string();
                    let vtype = r["type"].as_str().unwrap_or("").to_string();
                    let vaction = r["action"].as_str().unwrap_or("").to_string();
                    let mut e = PlanEntry {
                        step: it.step_id.clone(),
                        index: it.idx,
                        connector: instance.clone(),
                        action: format!("{vtype}.{vaction}"),
                        disposition: r["status"].as_str().unwrap_or("").to_string(),
                        undo_step: None,
                    };
                    let undo = find_action(&e.action).and_then(|(_, d)| d.undo);
                    match (e.disposition.as_str(), undo) {
                        ("succeeded", Some(u)) => {
                            let id = format!("{base_id}-{}", sanitize(&instance));
                            let needs = gen_steps
                                .last()
                                .map(|s| vec![s.id.clone()])
                                .unwrap_or_default();
                            gen_steps.push(generated_step(
                                &id,
                                &format!("{vtype}.{u}"),
                                &instance,
                                escape(&inputs),
                                needs,
                            ));
                            e.disposition = "undo".into();
                            e.undo_step = Some(id);
                        }
                        ("succeeded", None) => e.disposition = "not_undoable".into(),
                        _ => {}
                    }
                    plan.push(e);
                }
                continue;
            }
        }
        let (undo_uses, undo_connector, undo_with) = if let Some(u) = &def.undo {
            let mut c = base.clone();
            if let Some(expr) = &def.for_each {
                let el = Cel::compile(expr)
                    .and_then(|p| p.eval_list(&base))
                    .ok()
                    .and_then(|l| l.get(it.idx as usize).cloned())
                    .unwrap_or(Value::Null);
                c = ctx.with_var(def.loop_var(), &el, it.idx as usize);
            }
            if let Value::Object(m) = &mut c {
                m.insert("output".into(), out.clone());
            }
            let with = Value::Object(u.with.clone().unwrap_or_default());
            let rendered = templates.render_value(&with, &c).map_err(|e| {
                ExecError::Invalid(format!("step `{}`: undo `with`: {e}", it.step_id))
            })?;
            let connector = u
                .connector
                .as_ref()
                .and_then(|c| c.names().first().map(|s| s.to_string()))
                .unwrap_or_else(|| it.connector.clone());
            (u.uses.clone(), connector, rendered)
        } else if let Some(undo) = decl.undo {
            (
                format!("{}.{undo}", ty.name),
                it.connector.clone(),
                it.inputs.clone(),
            )
        } else {
            entry.disposition = "not_undoable".into();
            plan.push(entry);
            continue;
        };
        let id = if def.for_each.is_some() {
            format!("undo-{}-{}", it.step_id, it.idx)
        } else {
            format!("undo-{}", it.step_id)
        };
        let needs = gen_steps
            .last()
            .map(|s| vec![s.id.clone()])
            .unwrap_or_default();
        gen_steps.push(generated_step(
            &id,
            &undo_uses,
            &undo_connector,
            escape(&undo_with),
            needs,
        ));
        entry.disposition = "undo".into();
        entry.undo_step = Some(id);
        plan.push(entry);
    }
    if gen_steps.is_empty() {
        gen_steps.push(generated_step(
            "nothing-to-undo",
            "core.noop",
            "core",
            json!({"reason": "no succeeded mutating step needs undoing"}),
            vec![],
        ));
    }
    let runbook = Runbook {
        version: 1,
        name: origin.runbook.clone(),
        title: Some(format!("Undo of run {origin_id}")),
        description: Some(format!(
            "Generated by `cordon undo {origin_id}`: reverses the run's changes, newest first."
        )),
        labels: vec!["undo".into()],
        inputs: Default::default(),
        concurrency_key: None,
        steps: gen_steps,
        on_failure: vec![],
    };
    let text = serde_json::to_value(&runbook)
        .map(|v| prune(&v))
        .and_then(|v| serde_json::to_string_pretty(&v))
        .map_err(|e| ExecError::Invalid(format!("cannot write the undo plan: {e}")))?
        + "\n";
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()));
    let id = ulid::Ulid::new().to_string();
    let now = crate::time::now();
    let plan_json = serde_json::to_value(&plan).unwrap_or_default();
    let run = RunRecord {
        id: id.clone(),
        runbook: origin.runbook.clone(),
        runbook_text: text,
        runbook_sha256: sha.clone(),
        status: RunStatus::Queued,
        trigger: trigger.to_string(),
        started_by: started_by.to_string(),
        inputs: json!({"undo_of": origin_id, "plan": plan_json}),
        concurrency_key: None,
        undo_of: Some(origin_id.to_string()),
        dry_run: false,
        case_id: origin.case_id.clone(),
        error: None,
        created_at: now,
        started_at: None,
        finished_at: None,
        cancel_requested: false,
    };
    let audit = AuditDraft {
        run_id: Some(id),
        actor: actor.to_string(),
        action: "run.created".into(),
        details: json!({
            "runbook": origin.runbook, "runbook_sha256": sha, "trigger": trigger,
            "undo_of": origin_id, "plan": plan_json,
        }),
    };
    let stored = engine.store_run(run, audit).await?;
    Ok((stored, plan))
}

fn generated_step(id: &str, uses: &str, connector: &str, with: Value, needs: Vec<String>) -> Step {
    Step {
        id: id.to_string(),
        name: None,
        uses: Some(uses.to_string()),
        connector: Some(ConnectorRef::One(connector.to_string())),
        with: match with {
            Value::Object(m) => Some(m),
            Value::Null => None,
            other => {
                let mut m = Map::new();
                m.insert("value".into(), other);
                Some(m)
            }
        },
        needs,
        condition: None,
        for_each: None,
        as_var: None,
        max_parallel: None,
        retry: None,
        timeout: None,
        continue_on_error: false,
        optional: false,
        undo: None,
        approval: None,
        task: None,
    }
}

/// Drop nulls, empty lists and `false` flags from the generated runbook's own fields
/// (not from `with` values, which are written as they are).
fn prune(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, x)| !matches!(x, Value::Null | Value::Bool(false)))
                .filter(|(_, x)| !matches!(x, Value::Array(a) if a.is_empty()))
                .filter(|(_, x)| !matches!(x, Value::Object(o) if o.is_empty()))
                .map(|(k, x)| {
                    let x = if k == "with" { x.clone() } else { prune(x) };
                    (k.clone(), x)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(prune).collect()),
        other => other.clone(),
    }
}

/// An instance name as part of a step id (`[a-z0-9-]+`).
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Literal values must survive templating: `{{` becomes `\{{`.
fn escape(v: &Value) -> Value {
    match v {
        Value::String(s) if s.contains("{{") => Value::String(s.replace("{{", "\\{{")),
        Value::Array(a) => Value::Array(a.iter().map(escape).collect()),
        Value::Object(m) => Value::Object(m.iter().map(|(k, x)| (k.clone(), escape(x))).collect()),
        other => other.clone(),
    }
}
