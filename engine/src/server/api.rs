//! `/api/v1`: runs, decisions, audit, evidence, runbooks and connectors, with bearer tokens
//! (see [`super::auth`] for the roles). Every request that changes something is an audit
//! event whose actor is `api:<token name>`. The OpenAPI document ([`ApiDoc`]) is generated
//! from the annotations on these handlers.

use std::collections::BTreeMap;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::{Modify, OpenApi, ToSchema};

use super::auth::{Caller, Permission};
use super::error::ApiError;
use super::AppState;
use crate::exec::decide::{decide, Verdict};
use crate::exec::document::run_document;
use crate::exec::StartRequest;
use crate::runbook::validate::validate_file;
use crate::store::{AuditDraft, Created, RunFilter, RunRecord, RunStatus};

/// `POST /runs`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRunBody {
    /// The runbook's `name` (looked up in the runbooks folder).
    pub runbook: String,
    /// Input name → value; checked against the runbook's `inputs`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub inputs: Map<String, Value>,
    /// Plan only: lookups run, nothing else is called.
    #[serde(default)]
    pub dry_run: bool,
}

/// `POST …/approve` and `…/reject`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    pub comment: Option<String>,
}

/// `POST …/done`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DoneBody {
    pub note: Option<String>,
}

/// Every error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

/// `GET /audit/verify`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditVerifyAnswer {
    pub ok: bool,
    pub events: u64,
    pub head: Option<String>,
    pub first_bad: Option<i64>,
    /// What is wrong at `first_bad`.
    pub problem: Option<String>,
}

/// `POST /hooks/{name}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HookAnswer {
    pub run_id: String,
    pub deduplicated: bool,
}

/// Filters of `GET /runs`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// queued, running, waiting, succeeded, failed or cancelled.
    pub status: Option<String>,
    /// A runbook name.
    pub runbook: Option<String>,
    /// A case: the run's concurrency key, else its `alert_id` input, else its id.
    pub case: Option<String>,
    /// At most this many, newest first (default 100, at most 1000).
    pub limit: Option<u32>,
}

/// `GET /runs/{id}`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ShowQuery {
    /// Include secret outputs (lock PINs); admins only, and audited.
    #[serde(default)]
    pub reveal: bool,
}

fn body_error(e: JsonRejection) -> ApiError {
    match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(e.body_text()),
        StatusCode::UNPROCESSABLE_ENTITY => ApiError::Unprocessable(e.body_text()),
        _ => ApiError::BadRequest(e.body_text()),
    }
}

/// An optional JSON body: empty means the defaults.
fn optional_body<T: Default + serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("the body is not the expected JSON: {e}")))
}

async fn get_run(state: &AppState, id: &str) -> Result<RunRecord, ApiError> {
    state
        .engine
        .store()
        .get_run(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("run {id} not found")))
}

async fn document(state: &AppState, run: &RunRecord) -> Result<Value, ApiError> {
    Ok(run_document(state.engine.store(), run, false).await?)
}

fn summary(r: &RunRecord) -> Value {
    json!({
        "id": r.id, "runbook": r.runbook, "status": r.status.as_str(), "trigger": r.trigger,
        "started_by": r.started_by, "case": r.case_id, "created_at": r.created_at,
        "started_at": r.started_at, "finished_at": r.finished_at, "undo_of": r.undo_of,
        "dry_run": r.dry_run, "error": r.error,
    })
}

/// Start a run of a runbook.
#[utoipa::path(post, path = "/api/v1/runs", tag = "runs", request_body = StartRunBody,
    responses(
        (status = 201, description = "The run document of the new run", body = serde_json::Value),
        (status = 200, description = "Joined an active run with the same concurrency key (`deduplicated: true`)", body = serde_json::Value),
        (status = 404, description = "Unknown runbook", body = ErrorBody),
        (status = 422, description = "Inputs that do not fit the runbook", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn start_run(
    State(state): State<AppState>,
    Caller(who): Caller,
    body: Result<Json<StartRunBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    who.require(Permission::Operate)?;
    let Json(body) = body.map_err(body_error)?;
    let config = &state.engine.inner.config;
    let name = body.runbook.trim();
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(ApiError::Unprocessable(format!(
            "runbook `{name}`: give a runbook's name, not a path"
        )));
    }
    let path = crate::cli::find_runbook(&config.runbooks_dir, name)
        .map_err(|_| ApiError::NotFound(format!("unknown runbook `{name}`")))?;
    let rb = validate_file(&path, &state.engine.validation_context()).map_err(|diags| {
        ApiError::Unprocessable(format!(
            "runbook `{name}` is not valid: {}",
            diags
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ))
    })?;
    let (run, mut audit) = state
        .engine
        .prepare_run(StartRequest {
            runbook: rb,
            inputs: body.inputs,
            trigger: who.actor(),
            started_by: who.name.clone(),
            dry_run: body.dry_run,
        })
        .map_err(|e| match e {
            crate::exec::ExecError::Invalid(m) => {
                ApiError::Unprocessable(format!("runbook `{name}`: {m}"))
            }
            other => other.into(),
        })?;
    audit.actor = who.actor();
    match state.engine.store().create_run(run, audit).await? {
        Created::New(run) => {
            state.executor.submit_created(run.clone());
            let doc = document(&state, &run).await?;
            Ok((StatusCode::CREATED, Json(doc)).into_response())
        }
        Created::Joined(run) => {
            let mut doc = document(&state, &run).await?;
            doc["deduplicated"] = json!(true);
            Ok((StatusCode::OK, Json(doc)).into_response())
        }
    }
}

/// List runs, newest first.
#[utoipa::path(get, path = "/api/v1/runs", tag = "runs", params(ListQuery),
    responses((status = 200, description = "Run summaries", body = [serde_json::Value])),
    security(("bearer" = [])))]
pub async fn list_runs(
    State(state): State<AppState>,
    Caller(who): Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    who.require(Permission::Read)?;
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let status = match q.status.as_deref() {
        Some(s) => Some(RunStatus::parse(s).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "unknown status `{s}`: use queued, running, waiting, succeeded, failed or cancelled"
            ))
        })?),
        None => None,
    };
    let runs = state
        .engine
        .store()
        .list_runs(&RunFilter {
            status,
            runbook: q.runbook,
            case_id: q.case,
            limit: Some(q.limit.unwrap_or(100).clamp(1, 1000)),
            ..RunFilter::default()
        })
        .await?;
    Ok(Json(Value::Array(runs.iter().map(summary).collect())))
}

/// One run with its steps.
#[utoipa::path(get, path = "/api/v1/runs/{id}", tag = "runs", params(("id" = String, Path, description = "Run id"), ShowQuery),
    responses((status = 200, description = "The run document", body = serde_json::Value),
        (status = 404, description = "No such run", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn show_run(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
    query: Result<Query<ShowQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    who.require(Permission::Read)?;
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if q.reveal {
        who.require(Permission::Reveal)?;
    }
    let run = get_run(&state, &id).await?;
    let doc = run_document(state.engine.store(), &run, q.reveal).await?;
    if q.reveal {
        state
            .engine
            .store()
            .append_audit(vec![AuditDraft {
                run_id: Some(id),
                actor: who.actor(),
                action: "secrets.revealed".into(),
                details: json!({}),
            }])
            .await?;
    }
    Ok(Json(doc))
}

/// Ask the run to stop; steps in flight finish, nothing new starts.
#[utoipa::path(post, path = "/api/v1/runs/{id}/cancel", tag = "runs", params(("id" = String, Path, description = "Run id")),
    responses((status = 200, description = "Cancellation recorded; the run document", body = serde_json::Value),
        (status = 409, description = "The run has already finished", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn cancel_run(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    who.require(Permission::Operate)?;
    let run = get_run(&state, &id).await?;
    if !run.status.is_active() {
        return Err(ApiError::Conflict(format!(
            "run {id} is already {}",
            run.status.as_str()
        )));
    }
    state
        .engine
        .store()
        .request_cancel(
            &id,
            AuditDraft {
                run_id: Some(id.clone()),
                actor: who.actor(),
                action: "run.cancel_requested".into(),
                details: json!({}),
            },
        )
        .await?;
    // Whoever executes it notices; if nobody does, this process finishes the cancellation.
    state.executor.submit(&id);
    let run = get_run(&state, &id).await?;
    Ok(Json(document(&state, &run).await?))
}

/// Start the undo run of a finished run.
#[utoipa::path(post, path = "/api/v1/runs/{id}/undo", tag = "runs", params(("id" = String, Path, description = "Run id")),
    responses((status = 201, description = "The undo run's document", body = serde_json::Value),
        (status = 422, description = "The run is still active, or was a dry run", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn undo_run(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    who.require(Permission::Operate)?;
    let (undo, _plan) = crate::exec::undo::create_undo_run(
        &state.engine,
        &id,
        &who.actor(),
        &who.name,
        &who.actor(),
    )
    .await?;
    state.executor.submit(&undo.id);
    let doc = document(&state, &undo).await?;
    Ok((StatusCode::CREATED, Json(doc)).into_response())
}

async fn decide_step(
    state: AppState,
    who: super::auth::Identity,
    run: String,
    step: String,
    verdict: Verdict,
    comment: Option<String>,
) -> Result<Json<Value>, ApiError> {
    who.require(Permission::Decide)?;
    decide(&state.engine, &run, &step, &who.decider(), verdict, comment).await?;
    state.executor.submit(&run);
    let rec = get_run(&state, &run).await?;
    Ok(Json(document(&state, &rec).await?))
}

/// Approve a waiting approval step (the run continues in the background).
#[utoipa::path(post, path = "/api/v1/runs/{id}/steps/{step}/approve", tag = "decisions",
    params(("id" = String, Path, description = "Run id"), ("step" = String, Path, description = "Step id")),
    request_body(content = DecisionBody, description = "Optional"),
    responses((status = 200, description = "Recorded; the run document", body = serde_json::Value),
        (status = 403, description = "Role or group may not decide, or the starter alone", body = ErrorBody),
        (status = 409, description = "The step is not waiting, or this approver already approved", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn approve(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path((run, step)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    who.require(Permission::Decide)?;
    let b: DecisionBody = optional_body(&body)?;
    decide_step(state, who, run, step, Verdict::Approve, b.comment).await
}

/// Reject a waiting approval step (the run fails and runs its `on_failure` steps).
#[utoipa::path(post, path = "/api/v1/runs/{id}/steps/{step}/reject", tag = "decisions",
    params(("id" = String, Path, description = "Run id"), ("step" = String, Path, description = "Step id")),
    request_body(content = DecisionBody, description = "Optional"),
    responses((status = 200, description = "Recorded; the run document", body = serde_json::Value),
        (status = 403, description = "Role or group may not decide", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn reject(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path((run, step)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    who.require(Permission::Decide)?;
    let b: DecisionBody = optional_body(&body)?;
    decide_step(state, who, run, step, Verdict::Reject, b.comment).await
}

/// Mark a waiting task step done.
#[utoipa::path(post, path = "/api/v1/runs/{id}/steps/{step}/done", tag = "decisions",
    params(("id" = String, Path, description = "Run id"), ("step" = String, Path, description = "Step id")),
    request_body(content = DoneBody, description = "Optional"),
    responses((status = 200, description = "Recorded; the run document", body = serde_json::Value),
        (status = 403, description = "Role or group may not decide", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn done(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path((run, step)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    who.require(Permission::Decide)?;
    let b: DoneBody = optional_body(&body)?;
    decide_step(state, who, run, step, Verdict::Done, b.note).await
}

/// The run's audit events, with the JSON Lines export's fields.
#[utoipa::path(get, path = "/api/v1/runs/{id}/audit", tag = "audit", params(("id" = String, Path, description = "Run id")),
    responses((status = 200, description = "Events in sequence order: seq, at, run_id, actor, action, details, prev_hash, hash", body = [serde_json::Value])),
    security(("bearer" = [])))]
pub async fn run_audit(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    who.require(Permission::Read)?;
    get_run(&state, &id).await?;
    let events = state.engine.store().audit_events(Some(&id)).await?;
    Ok(Json(
        serde_json::to_value(events).map_err(ApiError::internal)?,
    ))
}

/// Check the whole audit chain.
#[utoipa::path(get, path = "/api/v1/audit/verify", tag = "audit",
    responses((status = 200, description = "The verdict", body = AuditVerifyAnswer)),
    security(("bearer" = [])))]
pub async fn audit_verify(
    State(state): State<AppState>,
    Caller(who): Caller,
) -> Result<Json<AuditVerifyAnswer>, ApiError> {
    who.require(Permission::Read)?;
    let store = state.engine.store();
    let (events, head) = store.audit_chain().await?;
    let report = crate::audit::verify(&events, head.as_ref());
    Ok(Json(AuditVerifyAnswer {
        ok: report.ok,
        events: report.events as u64,
        head: report.head,
        first_bad: report.first_bad,
        problem: report.problem,
    }))
}

/// The run's evidence records (hashes, sizes, sources).
#[utoipa::path(get, path = "/api/v1/runs/{id}/evidence", tag = "evidence", params(("id" = String, Path, description = "Run id")),
    responses((status = 200, description = "Evidence records", body = [serde_json::Value]),
        (status = 403, description = "Viewers may not read evidence", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn run_evidence(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    who.require(Permission::ReadEvidence)?;
    get_run(&state, &id).await?;
    let records = state.engine.store().evidence(&id).await?;
    Ok(Json(
        serde_json::to_value(records).map_err(ApiError::internal)?,
    ))
}

/// A draft as listed: `{draft_id, template, subject, to, created_at}` (and its audience).
fn draft_summary(d: &crate::store::DraftRecord) -> Value {
    json!({
        "draft_id": d.draft_id, "template": d.template, "subject": d.subject, "to": d.to,
        "created_at": d.created_at, "audience": d.audience, "step": d.step_id,
    })
}

/// The run's notification drafts, oldest first.
#[utoipa::path(get, path = "/api/v1/runs/{id}/drafts", tag = "drafts", params(("id" = String, Path, description = "Run id")),
    responses((status = 200, description = "`{draft_id, template, subject, to, created_at}` per draft", body = [serde_json::Value]),
        (status = 403, description = "Viewers may not read drafts", body = ErrorBody),
        (status = 404, description = "No such run", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn run_drafts(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    who.require(Permission::ReadEvidence)?;
    get_run(&state, &id).await?;
    let drafts = state.engine.store().drafts(&id).await?;
    Ok(Json(Value::Array(
        drafts.iter().map(draft_summary).collect(),
    )))
}

/// One draft with its Markdown and plain-text bodies.
#[utoipa::path(get, path = "/api/v1/drafts/{id}", tag = "drafts", params(("id" = String, Path, description = "Draft id")),
    responses((status = 200, description = "The draft, with `body_markdown` and `body_text`", body = serde_json::Value),
        (status = 403, description = "Viewers may not read drafts", body = ErrorBody),
        (status = 404, description = "No such draft", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn show_draft(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    who.require(Permission::ReadEvidence)?;
    let d = state
        .engine
        .store()
        .draft(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("draft {id} not found")))?;
    let mut v = draft_summary(&d);
    v["run_id"] = json!(d.run_id);
    v["sha256"] = json!(d.body_sha256);
    v["body_markdown"] = json!(d.body_markdown);
    v["body_text"] = json!(d.body_text);
    Ok(Json(v))
}

/// Download one artifact, byte for byte as stored (the bytes its `sha256` covers).
#[utoipa::path(get, path = "/api/v1/evidence/{id}", tag = "evidence", params(("id" = String, Path, description = "Evidence id")),
    responses((status = 200, description = "The artifact's bytes; `x-content-sha256` carries the recorded hash", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 403, description = "Viewers may not read evidence", body = ErrorBody),
        (status = 404, description = "No such evidence", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn download_evidence(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    who.require(Permission::ReadEvidence)?;
    evidence_response(&state, &id, &who.actor()).await
}

/// The artifact's bytes as a download, after recording `evidence.downloaded` by `actor`
/// (the API's and the review UI's downloads alike). The caller checks the permission.
pub(crate) async fn evidence_response(
    state: &AppState,
    id: &str,
    actor: &str,
) -> Result<Response, ApiError> {
    let store = state.engine.store();
    let rec = store
        .get_evidence(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("evidence {id} not found")))?;
    // Local folder or S3 alike: the bytes exactly as stored.
    let reader = state
        .engine
        .inner
        .evidence
        .open_artifact(&rec)
        .await
        .map_err(|e| ApiError::internal(format!("evidence {id}: {e}")))?
        .ok_or_else(|| {
            ApiError::internal(format!(
                "evidence {id}: the artifact is missing from the evidence store (run `cordon evidence verify {}`)",
                rec.run_id
            ))
        })?;
    // Chain of custody: the download is recorded before the first byte leaves.
    store
        .append_audit(vec![AuditDraft {
            run_id: Some(rec.run_id.clone()),
            actor: actor.to_string(),
            action: "evidence.downloaded".into(),
            details: json!({"evidence_id": rec.evidence_id, "sha256": rec.sha256, "bytes": rec.bytes, "path": rec.path}),
        }])
        .await?;
    let file_name = std::path::Path::new(&rec.path)
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or("evidence")
        .replace('"', "");
    let stream = tokio_util::io::ReaderStream::new(reader);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, rec.bytes)
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{file_name}\""),
        )
        .header("x-content-sha256", rec.sha256.as_str())
        .body(Body::from_stream(stream))
        .map_err(ApiError::internal)
}

/// The runbooks in the runbooks folder.
#[utoipa::path(get, path = "/api/v1/runbooks", tag = "reference",
    responses((status = 200, description = "name, title, description, file, sha256, steps, valid", body = [serde_json::Value])),
    security(("bearer" = [])))]
pub async fn runbooks(
    State(state): State<AppState>,
    Caller(who): Caller,
) -> Result<Json<Value>, ApiError> {
    who.require(Permission::Read)?;
    let config = state.engine.inner.config.clone();
    let list = tokio::task::spawn_blocking(move || crate::cli::runbook_list(&config))
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(Value::Array(list)))
}

/// Connector types, their actions, inputs and outputs; and the configured instances.
#[utoipa::path(get, path = "/api/v1/connectors", tag = "reference",
    responses((status = 200, description = "`types`: the catalogue; `instances`: configured name → type", body = serde_json::Value)),
    security(("bearer" = [])))]
pub async fn connectors(
    State(state): State<AppState>,
    Caller(who): Caller,
) -> Result<Json<Value>, ApiError> {
    who.require(Permission::Read)?;
    let instances: BTreeMap<String, String> = state
        .engine
        .inner
        .registry
        .instance_types()
        .into_iter()
        .collect();
    Ok(Json(json!({
        "types": cordon_connectors::catalog::catalog(),
        "instances": instances,
    })))
}

/// The configured schedules: next fire times, and the last fire with its run.
#[utoipa::path(get, path = "/api/v1/schedules", tag = "reference",
    responses((status = 200, description = "One entry per schedule: `index`, `key`, `name`, `runbook`, `cron`, `timezone`, `catch_up_seconds`, `inputs`, `trigger`, `next` (the next fire times, RFC 3339 UTC), `last_fire` (`{fire_time, run_id, outcome, at}` or null) and `handled_through`", body = [serde_json::Value]),
        (status = 401, description = "No or unknown token", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn schedules(
    State(state): State<AppState>,
    Caller(who): Caller,
) -> Result<Json<Value>, ApiError> {
    who.require(Permission::Read)?;
    let list =
        crate::server::scheduler::describe(&state.engine, &state.schedules, chrono::Utc::now())
            .await?;
    Ok(Json(Value::Array(list)))
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "reference",
    responses((status = 200, description = "The OpenAPI document of this API", body = serde_json::Value)))]
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "`{\"status\": \"ok\"}`", body = serde_json::Value)))]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: the database answers.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "`{\"status\": \"ready\"}`", body = serde_json::Value),
        (status = 503, description = "The database does not answer", body = ErrorBody)))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let check = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        state.engine.store().is_paused(),
    )
    .await;
    match check {
        Ok(Ok(paused)) => Ok(Json(json!({"status": "ready", "paused": paused}))),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: the database does not answer");
            Err(ApiError::Unavailable("the database does not answer".into()))
        }
        Err(_) => Err(ApiError::Unavailable(
            "the database did not answer within 5 s".into(),
        )),
    }
}

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics", content_type = "application/openmetrics-text", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let text = state.metrics.render(state.engine.store()).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Cordon", description = "Runs, approvals, audit trail and evidence of the Cordon incident-response engine, and its webhooks."),
    paths(
        start_run, list_runs, show_run, cancel_run, undo_run, approve, reject, done,
        run_audit, audit_verify, run_evidence, download_evidence, run_drafts, show_draft, runbooks, connectors, schedules, openapi,
        healthz, readyz, metrics,
        super::hooks::receive, super::hooks::okta_challenge,
    ),
    components(schemas(StartRunBody, DecisionBody, DoneBody, ErrorBody, AuditVerifyAnswer, HookAnswer)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;
