//! `cordon drafts …` (a run's notification drafts) and `cordon templates …` (the templates
//! themselves: list, preview, the facts schema).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::{bad_input, App, DraftsCommand, Exit, TemplatesCommand};
use crate::config::Config;
use crate::notify::{self, DraftTemplates};
use crate::store::{AuditDraft, DraftRecord};

fn summary(d: &DraftRecord) -> Value {
    json!({
        "draft_id": d.draft_id, "template": d.template, "subject": d.subject, "to": d.to,
        "created_at": d.created_at, "audience": d.audience, "step": d.step_id, "index": d.idx,
    })
}

fn shown_to(to: &Option<Value>) -> String {
    match to {
        None => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            })
            .collect::<Vec<_>>()
            .join(", "),
        Some(other) => other.to_string(),
    }
}

pub(super) async fn cmd_drafts(app: &App, cmd: DraftsCommand) -> Result<u8> {
    match cmd {
        DraftsCommand::List { run, json } => {
            require_run(app, &run).await?;
            let drafts = app.store().drafts(&run).await?;
            if json {
                let list: Vec<Value> = drafts.iter().map(summary).collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!(
                    "{:<26}  {:<34}  {:<11}  {:<24}  SUBJECT",
                    "DRAFT", "TEMPLATE", "AUDIENCE", "CREATED"
                );
                for d in &drafts {
                    println!(
                        "{:<26}  {:<34}  {:<11}  {:<24}  {}",
                        d.draft_id, d.template, d.audience, d.created_at, d.subject
                    );
                }
                if drafts.is_empty() {
                    eprintln!("run {run} has no drafts");
                }
            }
            Ok(0)
        }
        DraftsCommand::Show { draft, text, json } => {
            let d = app
                .store()
                .draft(&draft)
                .await?
                .ok_or_else(|| bad_input(format!("draft {draft} not found")))?;
            if json {
                let mut v = summary(&d);
                v["run_id"] = json!(d.run_id);
                v["sha256"] = json!(d.body_sha256);
                v["body_markdown"] = json!(d.body_markdown);
                v["body_text"] = json!(d.body_text);
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                eprintln!(
                    "draft {} of run {} (step `{}`): template {}, audience {}, to {}",
                    d.draft_id,
                    d.run_id,
                    d.step_id,
                    d.template,
                    d.audience,
                    shown_to(&d.to)
                );
                eprintln!("subject: {}", d.subject);
                let body = if text { &d.body_text } else { &d.body_markdown };
                std::io::stdout().write_all(body.as_bytes())?;
            }
            Ok(0)
        }
        DraftsCommand::Export { run, out } => {
            require_run(app, &run).await?;
            let dir = out.unwrap_or_else(|| PathBuf::from("drafts").join(&run));
            let files = export_run(app.store(), &run, &dir, "cli").await?;
            for (path, _) in &files {
                println!("{}", path.display());
            }
            if files.is_empty() {
                eprintln!("run {run} has no drafts");
            }
            Ok(0)
        }
    }
}

/// Write a run's drafts into `dir` (see [`export`]) and record the export in the audit trail.
pub(super) async fn export_run(
    store: &dyn crate::store::Store,
    run: &str,
    dir: &Path,
    actor: &str,
) -> Result<Vec<(PathBuf, String)>> {
    let drafts = store.drafts(run).await?;
    let files = export(&drafts, dir)?;
    store
        .append_audit(vec![AuditDraft {
            run_id: Some(run.to_string()),
            actor: actor.into(),
            action: "drafts.exported".into(),
            details: json!({
                "dir": dir.display().to_string(),
                "files": files.iter().map(|(p, sha)| json!({"file": p.display().to_string(), "sha256": sha})).collect::<Vec<_>>(),
            }),
        }])
        .await?;
    Ok(files)
}

async fn require_run(app: &App, run: &str) -> Result<()> {
    app.store()
        .get_run(run)
        .await?
        .ok_or_else(|| bad_input(format!("run {run} not found")))?;
    Ok(())
}

/// Write the newest draft of each step (and `for_each` element) as `<template>.md` and
/// `<template>.txt`; a template drafted more than once is told apart by step and element.
/// Each file is written to a temporary file in `dir`, synced and renamed into place.
fn export(drafts: &[DraftRecord], dir: &Path) -> Result<Vec<(PathBuf, String)>> {
    let mut newest: BTreeMap<(String, u32), &DraftRecord> = BTreeMap::new();
    for d in drafts {
        // Oldest first from the store, so the last one wins.
        newest.insert((d.step_id.clone(), d.idx), d);
    }
    let mut per_template: BTreeMap<&str, usize> = BTreeMap::new();
    for d in newest.values() {
        *per_template.entry(d.template.as_str()).or_default() += 1;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    for d in newest.values() {
        let stem = if per_template.get(d.template.as_str()).copied().unwrap_or(0) > 1 {
            format!("{}-{}-{}", d.template, d.step_id, d.idx)
        } else {
            d.template.clone()
        };
        if !notify::templates::valid_name(&d.template) || stem.contains(['/', '\\']) {
            return Err(Exit(
                1,
                format!("draft {} has an unusable template name", d.draft_id),
            )
            .into());
        }
        for (ext, body) in [("md", &d.body_markdown), ("txt", &d.body_text)] {
            let path = dir.join(format!("{stem}.{ext}"));
            write_atomic(&path, body.as_bytes())?;
            written.push((path, notify::sha256_hex(body)));
        }
    }
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
    Ok(written)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

pub(super) fn cmd_templates(config: &Config, cmd: TemplatesCommand) -> Result<u8> {
    let templates = DraftTemplates::new(Some(config.templates_dir.clone()));
    match cmd {
        TemplatesCommand::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&notify::facts::json_schema())?
            );
            Ok(0)
        }
        TemplatesCommand::List { json } => {
            let shape = notify::facts::shape();
            let mut rows = Vec::new();
            let mut bad = 0;
            for (name, file) in templates.list() {
                let row = match templates.load(&name) {
                    Ok(t) => {
                        let problems: Vec<String> =
                            t.check(&shape).iter().map(ToString::to_string).collect();
                        json!({"name": name, "file": file, "audience": t.audience.as_str(),
                               "subject": t.subject, "problems": problems})
                    }
                    Err(e) => json!({"name": name, "file": file, "problems": [e.to_string()]}),
                };
                if row["problems"].as_array().is_some_and(|p| !p.is_empty()) {
                    bad += 1;
                }
                rows.push(row);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for r in &rows {
                    println!(
                        "{:<34} {:<11} {}",
                        r["name"].as_str().unwrap_or(""),
                        r["audience"].as_str().unwrap_or("?"),
                        r["file"].as_str().unwrap_or("")
                    );
                    for p in r["problems"].as_array().into_iter().flatten() {
                        println!("    {}", p.as_str().unwrap_or(""));
                    }
                }
            }
            Ok(if bad == 0 { 0 } else { 1 })
        }
        TemplatesCommand::Render {
            name,
            facts,
            text,
            json,
        } => {
            let facts = match &facts {
                None => notify::sample_facts().map_err(|e| Exit(1, e))?,
                Some(path) => {
                    let raw = std::fs::read_to_string(path).map_err(|e| {
                        bad_input(format!("cannot read facts file {}: {e}", path.display()))
                    })?;
                    let shown = path.display().to_string();
                    let given = notify::facts_from_text(&raw, &shown).map_err(bad_input)?;
                    notify::builder::finish(Value::Object(Default::default()), Some(&given))
                        .map_err(|e| bad_input(format!("{shown}: {}", e.join("\n  "))))?
                }
            };
            let t = templates
                .load(&name)
                .map_err(|e| bad_input(e.to_string()))?;
            let shape = notify::facts::shape();
            let r = templates.render(&t, &facts, &shape).map_err(|errs| {
                Exit(
                    1,
                    errs.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("\n"),
                )
            })?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "template": name, "audience": r.audience.as_str(), "subject": r.subject,
                        "body_markdown": r.body_markdown, "body_text": r.body_text,
                    }))?
                );
            } else {
                eprintln!("subject: {}", r.subject);
                eprintln!("audience: {}", r.audience.as_str());
                let body = if text { &r.body_text } else { &r.body_markdown };
                std::io::stdout().write_all(body.as_bytes())?;
            }
            Ok(0)
        }
    }
}
