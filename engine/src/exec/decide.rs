//! Decisions on approval and task steps, from the command line, the API and the review UI.
//!
//! A decision is recorded without the run's lease — the process executing the run (if any)
//! picks it up — after the checks that must fail closed: the step is waiting, the decider
//! is among its approvers/assignees, the starter never approves alone, and nobody decides
//! twice.

use serde_json::json;

use super::{Engine, ExecError};
use crate::runbook::model::StepKind;
use crate::store::{AuditDraft, Decision, StepStatus};

/// Who decides: a name, the channel it came through, and its groups.
#[derive(Debug, Clone)]
pub struct Decider {
    /// The person, e.g. `dana`.
    pub name: String,
    /// `cli`, `api`, `ui`.
    pub via: String,
    /// Groups the person decides for; None when no identities are configured (anyone may).
    pub groups: Option<Vec<String>>,
    /// Admins decide for every group.
    pub admin: bool,
}

impl Decider {
    /// `cli:dana`.
    pub fn id(&self) -> String {
        format!("{}:{}", self.via, self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Approve,
    Reject,
    Done,
}

#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error("run {run} has no step `{step}`")]
    NoSuchStep { run: String, step: String },
    #[error("step `{step}` is {status}, not waiting for a decision")]
    NotWaiting { step: String, status: String },
    #[error("step `{step}` is {kind}; use `cordon {verb}`")]
    WrongKind {
        step: String,
        kind: &'static str,
        verb: &'static str,
    },
    #[error("{who} may not decide step `{step}`: it needs one of {allowed}")]
    NotAllowed {
        who: String,
        step: String,
        allowed: String,
    },
    #[error("{who} started this run and cannot approve it alone; another approver must decide")]
    SelfApproval { who: String },
    #[error("{who} has already approved step `{step}`")]
    Duplicate { who: String, step: String },
}

impl From<crate::store::StoreError> for DecideError {
    fn from(e: crate::store::StoreError) -> Self {
        DecideError::Exec(e.into())
    }
}

/// Check and record a decision. The caller then continues the run (`Engine::execute`).
pub async fn decide(
    engine: &Engine,
    run_id: &str,
    step_id: &str,
    decider: &Decider,
    verdict: Verdict,
    comment: Option<String>,
) -> Result<(), DecideError> {
    let store = engine.store();
    let run = store
        .get_run(run_id)
        .await?
        .ok_or_else(|| ExecError::NotFound(run_id.to_string()))?;
    let rb = super::runner::stored_runbook(&run)?;
    let def = rb.step(step_id).ok_or_else(|| DecideError::NoSuchStep {
        run: run_id.to_string(),
        step: step_id.to_string(),
    })?;
    match (def.kind(), verdict) {
        (StepKind::Approval, Verdict::Done) => {
            return Err(DecideError::WrongKind {
                step: step_id.into(),
                kind: "an approval",
                verb: "approve",
            })
        }
        (StepKind::Task, Verdict::Approve | Verdict::Reject) => {
            return Err(DecideError::WrongKind {
                step: step_id.into(),
                kind: "a task",
                verb: "done",
            })
        }
        (StepKind::Action, _) => {
            return Err(DecideError::NotWaiting {
                step: step_id.into(),
                status: "an action step".into(),
            })
        }
        _ => {}
    }
    let steps = store.steps(run_id).await?;
    let rec = steps.iter().find(|s| s.step_id == step_id);
    let status = rec.map(|s| s.status).unwrap_or(StepStatus::Pending);
    if status != StepStatus::Waiting || !run.status.is_active() {
        let shown = if run.status.is_active() {
            status.as_str().to_string()
        } else {
            format!("{} (run {})", status.as_str(), run.status.as_str())
        };
        return Err(DecideError::NotWaiting {
            step: step_id.into(),
            status: shown,
        });
    }
    let (who_list, min) = match (&def.approval, &def.task) {
        (Some(a), _) => (a.approvers.clone(), a.min_approvals.max(1)),
        (_, Some(t)) => (t.assignees.clone(), 1),
        _ => (Vec::new(), 1),
    };
    if !allowed(decider, &who_list) {
        return Err(DecideError::NotAllowed {
            who: decider.id(),
            step: step_id.into(),
            allowed: who_list.join(", "),
        });
    }
    let previous = store.decisions(run_id).await?;
    let mine: Vec<&Decision> = previous.iter().filter(|d| d.step_id == step_id).collect();
    if verdict == Verdict::Approve {
        // One person is one approver whatever the channel (`cli:dana`, `api:dana` and
        // `ui:dana` are the same dana), so a quorum cannot be reached by one person twice.
        if mine
            .iter()
            .any(|d| d.decision == "approve" && name_of(&d.decided_by) == decider.name)
        {
            return Err(DecideError::Duplicate {
                who: decider.id(),
                step: step_id.into(),
            });
        }
        let mut approvers: Vec<String> = mine
            .iter()
            .filter(|d| d.decision == "approve")
            .map(|d| name_of(&d.decided_by).to_string())
            .collect();
        approvers.push(decider.name.clone());
        approvers.sort();
        approvers.dedup();
        let reaches_quorum = approvers.len() as u32 >= min;
        let starter = starter_name(&run.started_by);
        let only_starter = approvers.iter().all(|a| a == starter);
        if decider.name == starter && (min == 1 || (reaches_quorum && only_starter)) {
            return Err(DecideError::SelfApproval { who: decider.id() });
        }
    }
    let decision = match verdict {
        Verdict::Approve => "approve",
        Verdict::Reject => "reject",
        Verdict::Done => "done",
    };
    let releases = rec.and_then(|s| s.inputs.clone()).unwrap_or_default();
    let action = if verdict == Verdict::Done {
        "task.done"
    } else {
        "approval.decided"
    };
    let audit = AuditDraft {
        run_id: Some(run_id.to_string()),
        actor: decider.id(),
        action: action.into(),
        details: json!({
            "step": step_id, "decision": decision, "comment": comment,
            "releases": releases.get("releases").cloned().unwrap_or_default(),
        }),
    };
    store
        .add_decision(
            Decision {
                run_id: run_id.to_string(),
                step_id: step_id.to_string(),
                decision: decision.into(),
                decided_by: decider.id(),
                comment,
                at: crate::time::now(),
                releases: releases.get("releases").cloned().unwrap_or_default(),
            },
            audit,
        )
        .await?;
    Ok(())
}

/// `role:legal` admits members of group `legal`; any other entry names a person
/// (`dana` or `user:dana`). With no identities configured, anyone may decide.
pub fn allowed(decider: &Decider, list: &[String]) -> bool {
    let Some(groups) = &decider.groups else {
        return true;
    };
    list.iter().any(|entry| match entry.strip_prefix("role:") {
        Some(group) => decider.admin || groups.iter().any(|g| g == group),
        None => entry.strip_prefix("user:").unwrap_or(entry) == decider.name,
    })
}

/// `cli:dana` → `dana`.
fn name_of(id: &str) -> &str {
    id.split_once(':').map(|(_, n)| n).unwrap_or(id)
}

fn starter_name(started_by: &str) -> &str {
    name_of(started_by)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(name: &str, groups: Option<Vec<&str>>) -> Decider {
        Decider {
            name: name.into(),
            via: "cli".into(),
            groups: groups.map(|g| g.into_iter().map(String::from).collect()),
            admin: false,
        }
    }

    #[test]
    fn groups_and_names() {
        let list = vec!["role:legal".to_string(), "user:sam".to_string()];
        assert!(allowed(&d("dana", Some(vec!["legal"])), &list));
        assert!(!allowed(&d("dana", Some(vec!["finance"])), &list));
        assert!(allowed(&d("sam", Some(vec![])), &list));
        assert!(allowed(&d("anyone", None), &list));
        let mut admin = d("root", Some(vec![]));
        admin.admin = true;
        assert!(allowed(&admin, &list));
    }
}
