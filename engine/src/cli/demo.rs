//! `cordon demo`: the demonstration runbook end to end against the local vendor sandbox,
//! on embedded defaults (SQLite at `./cordon.db`, evidence under `./evidence/`).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use cordon_connectors::sandbox::Sandbox;
use serde_json::{json, Map, Value};

use super::{progress, App};
use crate::exec::decide::{decide, Decider, Verdict};
use crate::exec::StartRequest;
use crate::runbook::model::StepKind;
use crate::runbook::validate::validate;
use crate::store::{Created, RunStatus, StepStatus};

/// The default response runbook, embedded so the demo works from any directory.
const DEFAULT_RUNBOOK: &str = include_str!("../../../runbooks/dprk-it-worker-containment.yaml");

pub async fn demo(config_path: Option<&Path>, json_out: bool) -> Result<u8> {
    let mut config = crate::config::Config::load(config_path)?;
    let server = Sandbox::seeded()
        .serve()
        .await
        .context("cannot start the local sandbox")?;
    let secrets = tempfile::tempdir().context("cannot create a folder for sandbox secrets")?;
    // The sandbox's instances join whatever the configuration already has.
    for (name, settings) in Sandbox::connector_config(&server.base_url(), secrets.path())? {
        config.connectors.entry(name).or_insert(settings);
    }
    let app = App::from_config(config).await?;
    let engine = &app.engine;
    eprintln!(
        "vendor sandbox on {} (Okta, Entra ID, Google Workspace, SCIM, Jamf, Intune, Kandji, Fleet, CrowdStrike, Defender)",
        server.base_url()
    );

    let from_folder = engine
        .inner
        .config
        .runbooks_dir
        .join("dprk-it-worker-containment.yaml");
    let (text, file) = match std::fs::read_to_string(&from_folder) {
        Ok(t) => (t, from_folder.display().to_string()),
        Err(_) => (
            DEFAULT_RUNBOOK.to_string(),
            "dprk-it-worker-containment.yaml (embedded)".to_string(),
        ),
    };
    let rb = validate(&text, &file, &engine.validation_context()).map_err(|d| {
        anyhow::anyhow!(
            "the default runbook is not valid:\n{}",
            d.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    let alert_id = format!("DEMO-{}", ulid::Ulid::new());
    let mut inputs = Map::new();
    inputs.insert("alert_id".into(), json!(alert_id));
    inputs.insert("subject_email".into(), json!("j.smith@example.com"));
    inputs.insert(
        "device_serials".into(),
        json!(["C02DEMO0001", "C02DEMO0002"]),
    );
    inputs.insert("confidence".into(), json!(0.92));
    let created = engine
        .start_run(StartRequest {
            runbook: rb.clone(),
            inputs,
            trigger: "cli:demo-analyst".into(),
            started_by: "demo-analyst".into(),
            dry_run: false,
        })
        .await?;
    let run = match created {
        Created::New(r) | Created::Joined(r) => r,
    };
    if !json_out {
        println!("run {}", run.id);
    }
    eprintln!("▶ alert {alert_id}: suspected remote IT worker j.smith@example.com");
    let display = Arc::new(progress::Display::new(json_out));
    let run = run_to_the_end(engine, &rb, &run.id, display).await?;
    let evidence = engine.store().evidence(&run.id).await?;
    let ev_report =
        crate::evidence::verify_run(engine.store(), &engine.inner.evidence, &run.id).await?;
    let events = engine.store().audit_events(None).await?;
    let head = engine.store().audit_head().await?;
    let audit = crate::audit::verify(&events, head.as_ref());
    let doc = crate::exec::document::run_document(engine.store(), &run, false).await?;
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "run": doc, "evidence_ok": ev_report.ok(),
                "audit_ok": audit.ok, "audit_events": audit.events,
            }))?
        );
    } else {
        let decisions = engine.store().decisions(&run.id).await?;
        eprintln!();
        eprintln!("run {} {}", run.id, run.status.as_str());
        eprintln!();
        eprintln!("timeline (UTC)");
        print_timeline(&doc, &decisions);
        eprintln!();
        eprintln!(
            "evidence: {} artifact(s), {}",
            evidence.len(),
            if ev_report.ok() {
                "hashes verified"
            } else {
                "VERIFICATION FAILED"
            }
        );
        for e in &evidence {
            eprintln!(
                "  {}  {:<42} {:>7} records {:>9} bytes  sha256 {}",
                e.evidence_id,
                format!("{}.{}", e.meta.instance, e.meta.action),
                e.records,
                e.bytes,
                e.sha256
            );
        }
        let drafts = engine.store().drafts(&run.id).await?;
        if !drafts.is_empty() {
            let dir = std::path::PathBuf::from("drafts").join(&run.id);
            let files =
                super::drafts::export_run(engine.store(), &run.id, &dir, "cli:demo").await?;
            eprintln!(
                "drafts for counsel: {} in {}/ (Markdown and plain text; never sent to an authority)",
                drafts.len(),
                dir.display()
            );
            for d in &drafts {
                eprintln!("  {:<34} {}", d.template, d.subject);
            }
            for (path, _) in files
                .iter()
                .filter(|(p, _)| p.extension().is_some_and(|e| e == "md"))
            {
                eprintln!("  {}", path.display());
            }
        }
        eprintln!(
            "audit chain: {} events, {}",
            audit.events,
            if audit.ok { "intact" } else { "BROKEN" }
        );
        eprintln!();
        eprintln!("next: cordon runs show {}", run.id);
        eprintln!(
            "      cordon audit export --run {} --format html -o audit.html",
            run.id
        );
        eprintln!("      cordon evidence verify {}", run.id);
        if !drafts.is_empty() {
            eprintln!("      cordon drafts show DRAFT --text");
        }
        eprintln!("      cordon evidence export {}", run.id);
        eprintln!();
        let listen = &engine.inner.config.listen;
        eprintln!("review UI: give yourself an API token in a configuration file, for example");
        eprintln!("      api: {{ tokens: [{{ name: me, token: {{ env: CORDON_TOKEN }}, role: admin }}] }}");
        eprintln!("      then `CORDON_TOKEN=… cordon serve --config FILE` and open");
        eprintln!(
            "      http://{listen}/ui/runs/{} (log in with the token)",
            run.id
        );
    }
    let ok = run.status == RunStatus::Succeeded && ev_report.ok() && audit.ok;
    Ok(if ok { 0 } else { 1 })
}

/// The demo's stand-in for counsel, finance and IT: it approves every approval and marks
/// every task done, and says so, so nobody mistakes a demo trail for a real decision.
const DEMO_APPROVER: &str = "demo-approver";

/// Run until the run finishes, deciding each approval and task as [`DEMO_APPROVER`].
async fn run_to_the_end(
    engine: &crate::exec::Engine,
    rb: &crate::runbook::validate::ValidatedRunbook,
    run_id: &str,
    display: Arc<progress::Display>,
) -> Result<crate::store::RunRecord> {
    // Each round decides at least one step, so a runbook with N gates needs at most N rounds.
    let rounds = rb.runbook.steps.len() + 1;
    for _ in 0..rounds {
        let run = engine.execute(run_id, display.clone()).await?;
        if run.status != RunStatus::Waiting {
            return Ok(run);
        }
        let steps = engine.store().steps(run_id).await?;
        let waiting: Vec<_> = steps
            .iter()
            .filter(|s| s.status == StepStatus::Waiting)
            .collect();
        if waiting.is_empty() {
            anyhow::bail!("run {run_id} waits, but no step is waiting for a decision");
        }
        for step in waiting {
            let Some(def) = rb.step(&step.step_id) else {
                anyhow::bail!(
                    "run {run_id} waits on `{}`, which the runbook lacks",
                    step.step_id
                );
            };
            let (verdict, groups, what, comment) = match def.kind() {
                StepKind::Approval => (
                    Verdict::Approve,
                    def.approval.as_ref().map(|a| a.approvers.clone()),
                    "approves",
                    "Demo: approved automatically by the demo approver, not by a person.",
                ),
                StepKind::Task => (
                    Verdict::Done,
                    def.task.as_ref().map(|t| t.assignees.clone()),
                    "marks done",
                    "Demo: marked done automatically by the demo approver; nothing was done.",
                ),
                StepKind::Action => continue,
            };
            // The demo approver belongs to exactly the groups the step names.
            let groups: Vec<String> = groups
                .unwrap_or_default()
                .iter()
                .map(|g| g.strip_prefix("role:").unwrap_or(g).to_string())
                .collect();
            eprintln!(
                "⚖ {DEMO_APPROVER} (automatic, demo only; groups {}) {what} `{}`",
                groups.join(", "),
                step.step_id
            );
            let decider = Decider {
                name: DEMO_APPROVER.into(),
                via: "cli".into(),
                groups: Some(groups),
                admin: false,
            };
            decide(
                engine,
                run_id,
                &step.step_id,
                &decider,
                verdict,
                Some(comment.into()),
            )
            .await?;
        }
    }
    anyhow::bail!("run {run_id} still waits after every gate was decided")
}

/// One line per step: when it finished, its state, and what it did.
fn print_timeline(doc: &Value, decisions: &[crate::store::Decision]) {
    let Some(steps) = doc["steps"].as_array() else {
        return;
    };
    let mut steps: Vec<&Value> = steps.iter().collect();
    steps.sort_by_key(|s| s["finished_at"].as_str().unwrap_or("~").to_string());
    for step in steps {
        let id = step["id"].as_str().unwrap_or("");
        let at = step["finished_at"]
            .as_str()
            .and_then(|t| t.get(11..23))
            .unwrap_or("            ");
        let status = step["status"].as_str().unwrap_or("");
        eprintln!(
            "  {at}  {id:<32} {status:<9} {}",
            step_summary(step, id, decisions)
        );
    }
}

/// What a step did, in a few words: role results per instance, evidence, drafts, deciders.
fn step_summary(step: &Value, id: &str, decisions: &[crate::store::Decision]) -> String {
    let by: Vec<String> = decisions
        .iter()
        .filter(|d| d.step_id == id)
        .map(|d| format!("{} by {}", d.decision, d.decided_by))
        .collect();
    if !by.is_empty() {
        return by.join(", ");
    }
    let outputs: Vec<&Value> = match &step["output"] {
        Value::Array(list) => list.iter().collect(),
        Value::Null => return step["error"].as_str().unwrap_or("").to_string(),
        other => vec![other],
    };
    let mut parts = Vec::new();
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    let mut instances = std::collections::BTreeSet::new();
    for out in outputs {
        if let Some(results) = out["results"].as_array() {
            for r in results {
                *counts
                    .entry(r["status"].as_str().unwrap_or("?").replace('_', " "))
                    .or_default() += 1;
                instances.insert(r["connector"].as_str().unwrap_or("?").to_string());
            }
        } else if let Some(d) = out["draft_id"].as_str() {
            parts.push(format!("draft {d}"));
        } else if let Some(sha) = out["sha256"].as_str() {
            parts.push(format!(
                "{} records, sha256 {}…",
                out["records"],
                &sha[..sha.len().min(16)]
            ));
        }
    }
    if !counts.is_empty() {
        let c: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
        parts.push(format!(
            "{} on {} instance(s): {}",
            c.join(", "),
            instances.len(),
            instances.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    parts.join("; ")
}
