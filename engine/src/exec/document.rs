//! The run document: what `cordon run --json`, `cordon runs show --json` and the API print.

use serde_json::{json, Value};

use crate::store::{ItemRecord, RunRecord, StepRecord, Store, StoreError};

/// Build the run document. `reveal` includes secret outputs (admins only).
pub async fn run_document(
    store: &dyn Store,
    run: &RunRecord,
    reveal: bool,
) -> Result<Value, StoreError> {
    let steps = store.steps(&run.id).await?;
    let items = store.items(&run.id).await?;
    let joined = store.joined_triggers(&run.id).await?;
    Ok(render(run, &steps, &items, &joined, reveal))
}

pub fn render(
    run: &RunRecord,
    steps: &[StepRecord],
    items: &[ItemRecord],
    joined: &[Value],
    reveal: bool,
) -> Value {
    let steps: Vec<Value> = steps
        .iter()
        .map(|s| {
            let mine: Vec<&ItemRecord> = items.iter().filter(|i| i.step_id == s.step_id).collect();
            let mut v = json!({
                "id": s.step_id,
                "status": s.status.as_str(),
                "attempts": s.attempts.max(mine.iter().map(|i| i.attempts).sum()),
                "started_at": s.started_at,
                "finished_at": s.finished_at,
                "output": s.output,
                "error": s.error,
            });
            if let Some(r) = &s.reason {
                v["reason"] = json!(r);
            }
            if s.on_failure {
                v["on_failure"] = json!(true);
            }
            if let Some(i) = &s.inputs {
                v["gate"] = i.clone();
            }
            if !mine.is_empty() {
                v["items"] = Value::Array(
                    mine.iter()
                        .map(|i| {
                            let mut it = json!({
                                "index": i.idx,
                                "status": i.status.as_str(),
                                "attempts": i.attempts,
                                "connector": i.connector,
                                "inputs": i.inputs,
                                "output": i.output,
                                "error": i.error,
                            });
                            if let Some(p) = &i.prior_state {
                                it["prior_state"] = p.clone();
                            }
                            if reveal {
                                if let Some(sec) = &i.secret_output {
                                    it["secret_output"] = sec.clone();
                                }
                            }
                            it
                        })
                        .collect(),
                );
            }
            v
        })
        .collect();
    json!({
        "id": run.id,
        "runbook": run.runbook,
        "status": run.status.as_str(),
        "trigger": run.trigger,
        "started_by": run.started_by,
        "inputs": run.inputs,
        "started_at": run.started_at.clone().or(Some(run.created_at.clone())),
        "created_at": run.created_at,
        "finished_at": run.finished_at,
        "error": run.error,
        "undo_of": run.undo_of,
        "runbook_sha256": run.runbook_sha256,
        "concurrency_key": run.concurrency_key,
        "case": run.case_id,
        "dry_run": run.dry_run,
        "joined": joined,
        "steps": steps,
    })
}
