//! Row structs, their conversions into records, and the JSON and number helpers shared by
//! the SQLite and PostgreSQL stores. Both keep the same columns with the same types (text
//! timestamps, JSON as text, BIGINT counters), so one `FromRow` derive serves both.

use serde_json::Value;

use super::{
    AuditEvent, Decision, DraftRecord, EvidenceRecord, HeldRun, ItemRecord, LeaseHolder, Result,
    RunRecord, RunStatus, ScheduleFire, StepRecord, StepStatus, StoreError, WaitingNotice,
};

#[derive(sqlx::FromRow)]
pub(super) struct FireRow {
    schedule: String,
    fire_time: String,
    outcome: String,
    run_id: Option<String>,
    missed: i64,
    at: String,
}

impl FireRow {
    pub(super) fn into_record(self) -> Result<ScheduleFire> {
        Ok(ScheduleFire {
            missed: to_u64(self.missed, "schedule_fires.missed")?,
            schedule: self.schedule,
            fire_time: self.fire_time,
            outcome: self.outcome,
            run_id: self.run_id,
            at: self.at,
        })
    }
}

pub(super) const NOTICE_COLUMNS: &str =
    "id, run_id, step_id, status, attempts, next_at, error, created_at, finished_at";

#[derive(sqlx::FromRow)]
pub(super) struct NoticeRow {
    id: String,
    run_id: String,
    step_id: String,
    status: String,
    attempts: i64,
    next_at: String,
    error: Option<String>,
    created_at: String,
    finished_at: Option<String>,
}

impl NoticeRow {
    pub(super) fn into_record(self) -> Result<WaitingNotice> {
        Ok(WaitingNotice {
            attempts: to_u32(self.attempts, "waiting_notices.attempts")?,
            id: self.id,
            run_id: self.run_id,
            step_id: self.step_id,
            status: self.status,
            next_at: self.next_at,
            error: self.error,
            created_at: self.created_at,
            finished_at: self.finished_at,
        })
    }
}

pub(super) fn ttl(ttl_ms: u64) -> chrono::TimeDelta {
    // Clamp absurd values instead of overflowing the timestamp: ten years is "forever" here.
    const MAX_TTL_MS: u64 = 10 * 366 * 24 * 3600 * 1000;
    let ms = i64::try_from(ttl_ms.min(MAX_TTL_MS)).unwrap_or(0);
    chrono::TimeDelta::milliseconds(ms)
}

pub(super) fn json_text<T: serde::Serialize + ?Sized>(v: &T) -> Result<String> {
    serde_json::to_string(v)
        .map_err(|e| StoreError::Corrupt(format!("cannot serialise a JSON column: {e}")))
}

pub(super) fn opt_json_text(v: &Option<Value>) -> Result<Option<String>> {
    v.as_ref().map(json_text).transpose()
}

pub(super) fn parse_json<T: serde::de::DeserializeOwned>(text: &str, column: &str) -> Result<T> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("{column} is not valid JSON: {e}")))
}

pub(super) fn parse_opt_json(text: Option<String>, column: &str) -> Result<Option<Value>> {
    text.map(|t| parse_json(&t, column)).transpose()
}

pub(super) fn to_u32(v: i64, column: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{column} = {v} is out of range")))
}

pub(super) fn to_u64(v: i64, column: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{column} = {v} is negative")))
}

pub(super) fn to_i64(v: u64, field: &str) -> Result<i64> {
    i64::try_from(v)
        .map_err(|_| StoreError::Corrupt(format!("{field} = {v} is too large to store")))
}

pub(super) fn step_status(s: &str, column: &str) -> Result<StepStatus> {
    StepStatus::parse(s)
        .ok_or_else(|| StoreError::Corrupt(format!("{column} holds unknown status {s:?}")))
}

pub(super) const RUN_COLUMNS: &str =
    "id, runbook, runbook_text, runbook_sha256, status, trigger_source, \
     started_by, inputs, concurrency_key, undo_of, dry_run, case_id, error, created_at, \
     started_at, finished_at, cancel_requested";

#[derive(sqlx::FromRow)]
pub(super) struct RunRow {
    id: String,
    runbook: String,
    runbook_text: String,
    runbook_sha256: String,
    status: String,
    trigger_source: String,
    started_by: String,
    inputs: String,
    concurrency_key: Option<String>,
    undo_of: Option<String>,
    dry_run: bool,
    case_id: String,
    error: Option<String>,
    created_at: String,
    started_at: Option<String>,
    finished_at: Option<String>,
    cancel_requested: bool,
}

/// `runs.status` of run `id`, parsed.
pub(super) fn run_status(id: &str, status: &str) -> Result<RunStatus> {
    RunStatus::parse(status).ok_or_else(|| {
        StoreError::Corrupt(format!(
            "runs.status of run {id} holds unknown status {status:?}"
        ))
    })
}

/// A run with a live lease, as [`Store::held_runs`](super::Store::held_runs) selects it.
#[derive(sqlx::FromRow)]
pub(super) struct HeldRow {
    id: String,
    status: String,
    lease_owner: String,
    lease_until: String,
}

impl HeldRow {
    pub(super) fn into_record(self) -> Result<HeldRun> {
        Ok(HeldRun {
            status: run_status(&self.id, &self.status)?,
            id: self.id,
            lease: LeaseHolder {
                owner: self.lease_owner,
                until: self.lease_until,
            },
        })
    }
}

impl RunRow {
    pub(super) fn into_record(self) -> Result<RunRecord> {
        let status = run_status(&self.id, &self.status)?;
        Ok(RunRecord {
            inputs: parse_json(&self.inputs, "runs.inputs")?,
            id: self.id,
            runbook: self.runbook,
            runbook_text: self.runbook_text,
            runbook_sha256: self.runbook_sha256,
            status,
            trigger: self.trigger_source,
            started_by: self.started_by,
            concurrency_key: self.concurrency_key,
            undo_of: self.undo_of,
            dry_run: self.dry_run,
            case_id: self.case_id,
            error: self.error,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            cancel_requested: self.cancel_requested,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct StepRow {
    run_id: String,
    step_id: String,
    status: String,
    attempts: i64,
    items: i64,
    inputs: Option<String>,
    output: Option<String>,
    error: Option<String>,
    reason: Option<String>,
    started_at: Option<String>,
    finished_at: Option<String>,
    deadline: Option<String>,
    on_failure: bool,
}

impl StepRow {
    pub(super) fn into_record(self) -> Result<StepRecord> {
        Ok(StepRecord {
            status: step_status(&self.status, "steps.status")?,
            attempts: to_u32(self.attempts, "steps.attempts")?,
            items: to_u32(self.items, "steps.items")?,
            inputs: parse_opt_json(self.inputs, "steps.inputs")?,
            output: parse_opt_json(self.output, "steps.output")?,
            run_id: self.run_id,
            step_id: self.step_id,
            error: self.error,
            reason: self.reason,
            started_at: self.started_at,
            finished_at: self.finished_at,
            deadline: self.deadline,
            on_failure: self.on_failure,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct ItemRow {
    run_id: String,
    step_id: String,
    idx: i64,
    status: String,
    attempts: i64,
    inputs: String,
    connector: String,
    output: Option<String>,
    error: Option<String>,
    prior_state: Option<String>,
    secret_output: Option<String>,
    started_at: Option<String>,
    finished_at: Option<String>,
}

impl ItemRow {
    pub(super) fn into_record(self) -> Result<ItemRecord> {
        Ok(ItemRecord {
            idx: to_u32(self.idx, "items.idx")?,
            status: step_status(&self.status, "items.status")?,
            attempts: to_u32(self.attempts, "items.attempts")?,
            inputs: parse_json(&self.inputs, "items.inputs")?,
            output: parse_opt_json(self.output, "items.output")?,
            prior_state: parse_opt_json(self.prior_state, "items.prior_state")?,
            secret_output: parse_opt_json(self.secret_output, "items.secret_output")?,
            run_id: self.run_id,
            step_id: self.step_id,
            connector: self.connector,
            error: self.error,
            started_at: self.started_at,
            finished_at: self.finished_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct DecisionRow {
    run_id: String,
    step_id: String,
    decision: String,
    decided_by: String,
    comment: Option<String>,
    at: String,
    releases: String,
}

impl DecisionRow {
    pub(super) fn into_record(self) -> Result<Decision> {
        Ok(Decision {
            releases: parse_json(&self.releases, "decisions.releases")?,
            run_id: self.run_id,
            step_id: self.step_id,
            decision: self.decision,
            decided_by: self.decided_by,
            comment: self.comment,
            at: self.at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct EvidenceRow {
    evidence_id: String,
    run_id: String,
    step_id: String,
    path: String,
    sha256: String,
    bytes: i64,
    records: i64,
    collected_at: String,
    meta: String,
}

impl EvidenceRow {
    pub(super) fn into_record(self) -> Result<EvidenceRecord> {
        Ok(EvidenceRecord {
            bytes: to_u64(self.bytes, "evidence.bytes")?,
            records: to_u64(self.records, "evidence.records")?,
            meta: parse_json(&self.meta, "evidence.meta")?,
            evidence_id: self.evidence_id,
            run_id: self.run_id,
            step_id: self.step_id,
            path: self.path,
            sha256: self.sha256,
            collected_at: self.collected_at,
        })
    }
}

pub(super) const DRAFT_COLUMNS: &str =
    "draft_id, run_id, step_id, idx, template, audience, subject, \
     recipient, body_markdown, body_text, body_sha256, facts, created_at";

#[derive(sqlx::FromRow)]
pub(super) struct DraftRow {
    draft_id: String,
    run_id: String,
    step_id: String,
    idx: i64,
    template: String,
    audience: String,
    subject: String,
    recipient: Option<String>,
    body_markdown: String,
    body_text: String,
    body_sha256: String,
    facts: String,
    created_at: String,
}

impl DraftRow {
    pub(super) fn into_record(self) -> Result<DraftRecord> {
        Ok(DraftRecord {
            idx: to_u32(self.idx, "drafts.idx")?,
            to: parse_opt_json(self.recipient, "drafts.recipient")?,
            facts: parse_json(&self.facts, "drafts.facts")?,
            draft_id: self.draft_id,
            run_id: self.run_id,
            step_id: self.step_id,
            template: self.template,
            audience: self.audience,
            subject: self.subject,
            body_markdown: self.body_markdown,
            body_text: self.body_text,
            body_sha256: self.body_sha256,
            created_at: self.created_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct AuditRow {
    seq: i64,
    at: String,
    run_id: Option<String>,
    actor: String,
    action: String,
    details: String,
    prev_hash: String,
    hash: String,
}

impl AuditRow {
    pub(super) fn into_record(self) -> Result<AuditEvent> {
        let details = serde_json::from_str(&self.details).map_err(|e| {
            StoreError::Corrupt(format!(
                "audit_events.details of event {} is not valid JSON (the row was edited): {e}",
                self.seq
            ))
        })?;
        Ok(AuditEvent {
            details,
            seq: self.seq,
            at: self.at,
            run_id: self.run_id,
            actor: self.actor,
            action: self.action,
            prev_hash: self.prev_hash,
            hash: self.hash,
        })
    }
}
