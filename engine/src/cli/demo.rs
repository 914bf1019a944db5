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
use crate::runbook::validate::validate;
use crate::store::{Created, RunStatus};

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
            runbook: rb,
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
    let run = engine.execute(&run.id, display.clone()).await?;
    if run.status != RunStatus::Waiting {
        anyhow::bail!(
            "expected the run to wait for counsel's approval, it is {}: {}",
            run.status.as_str(),
            run.error.unwrap_or_default()
        );
    }
    eprintln!("⚖ counsel (demo-counsel, group legal) reviews the preserved evidence and approves");
    let counsel = Decider {
        name: "demo-counsel".into(),
        via: "cli".into(),
        groups: Some(vec!["legal".into()]),
        admin: false,
    };
    decide(
        engine,
        &run.id,
        "approve-containment",
        &counsel,
        Verdict::Approve,
        Some("Evidence preserved; proceed.".into()),
    )
    .await?;
    let run = engine.execute(&run.id, display).await?;
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
        eprintln!();
        eprintln!("run {} {}", run.id, run.status.as_str());
        for step in [
            "suspend-identity",
            "revoke-sessions",
            "contain-devices",
            "lock-devices",
        ] {
            let output = doc["steps"]
                .as_array()
                .and_then(|s| s.iter().find(|x| x["id"] == step))
                .map(|s| s["output"].clone())
                .unwrap_or_default();
            // A `for_each` step's output is one role output per device.
            let outputs = match output {
                Value::Array(list) => list,
                other => vec![other],
            };
            let results: Vec<Value> = outputs
                .iter()
                .filter_map(|o| o["results"].as_array())
                .flatten()
                .cloned()
                .collect();
            for r in results {
                eprintln!(
                    "  {step:<18} {:<16} {:<8} {}",
                    r["connector"].as_str().unwrap_or(""),
                    r["status"].as_str().unwrap_or(""),
                    r["output"]["target"].as_str().unwrap_or("")
                );
            }
        }
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
                "  {} {:>6} records  sha256 {}",
                e.meta.connector_type, e.records, e.sha256
            );
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
    }
    let ok = run.status == RunStatus::Succeeded && ev_report.ok() && audit.ok;
    Ok(if ok { 0 } else { 1 })
}
