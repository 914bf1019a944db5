//! `POST /hooks/{name}`: a verified delivery becomes a durably queued run.
//!
//! Order of checks: unknown hook (404), body over 1 MiB (413), signature or token and
//! timestamp (401), the hook's rate limit (429 with `Retry-After`), JSON (400), inputs
//! mapping (422 naming the payload field) and the runbook's input checks (422 naming the
//! input). Then one transaction creates the run (or joins the active run with the same
//! concurrency key) and remembers the delivery id and dedup key under a UNIQUE constraint;
//! only after it commits is the answer 202. A repeat is answered 200 with the first run's
//! id and `"deduplicated": true`.
//!
//! `GET /hooks/{name}` answers Okta event hooks' one-time verification challenge for hooks
//! configured with `okta_verification: true` (scheme `token`; the token is checked).

use std::num::NonZeroU32;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::{json, Value};

use super::api::{ErrorBody, HookAnswer};
use super::error::ApiError;
use super::AppState;
use crate::exec::StartRequest;
use crate::runbook::validate::ValidatedRunbook;
use crate::store::{Created, DedupKey, Triggered};
use crate::triggers::webhook::{MapError, Webhook, MAX_BODY_BYTES, REMEMBER_DAYS};

/// A configured hook with its runbook (validated at start) and its rate limiter.
pub struct HookRuntime {
    pub hook: Webhook,
    pub runbook: Arc<ValidatedRunbook>,
    limiter: Option<DefaultDirectRateLimiter>,
}

impl HookRuntime {
    pub fn new(hook: Webhook, runbook: ValidatedRunbook) -> HookRuntime {
        let limiter = hook.rate_limit.and_then(|rl| {
            let per = NonZeroU32::new(rl.per_second)?;
            let burst = NonZeroU32::new(rl.burst.unwrap_or(rl.per_second)).unwrap_or(per);
            Some(RateLimiter::direct(
                Quota::per_second(per).allow_burst(burst),
            ))
        });
        HookRuntime {
            hook,
            runbook: Arc::new(runbook),
            limiter,
        }
    }

    /// Seconds to wait when over the limit.
    fn over_limit(&self) -> Option<u64> {
        let limiter = self.limiter.as_ref()?;
        match limiter.check() {
            Ok(()) => None,
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Some(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
            }
        }
    }
}

/// How much of an over-limit body is read (and dropped) so that the sender, still writing,
/// gets to read the 413 instead of a reset connection.
const DRAIN_BYTES: usize = 8 * MAX_BODY_BYTES;

/// The body if it is at most [`MAX_BODY_BYTES`]; None when it is larger (or unreadable).
async fn read_limited(body: Body) -> Option<axum::body::Bytes> {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut seen = 0usize;
    let drain = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.ok()?;
            seen += chunk.len();
            if seen <= MAX_BODY_BYTES {
                buf.extend_from_slice(&chunk);
            } else if seen > DRAIN_BYTES {
                return Some(false);
            }
        }
        Some(seen <= MAX_BODY_BYTES)
    };
    match tokio::time::timeout(std::time::Duration::from_secs(10), drain).await {
        Ok(Some(true)) => Some(buf.into()),
        _ => None,
    }
}

/// Count a rejection and answer it.
fn reject(state: &AppState, hook: &str, reason: &str, err: ApiError) -> ApiError {
    state.metrics.rejected(hook, reason);
    tracing::info!(hook, reason, "webhook delivery refused");
    err
}

/// Receive a webhook delivery.
#[utoipa::path(post, path = "/hooks/{name}", tag = "webhooks",
    params(("name" = String, Path, description = "The webhook's name in the configuration")),
    request_body(content = serde_json::Value, description = "The sender's JSON payload (at most 1 MiB)"),
    responses(
        (status = 202, description = "The run is durably queued", body = HookAnswer),
        (status = 200, description = "A repeat (same webhook-id or dedup key), or joined an active run with the same concurrency key", body = HookAnswer),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 401, description = "Bad or missing signature or token, or a timestamp more than 5 minutes off", body = ErrorBody),
        (status = 404, description = "Unknown hook", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody),
        (status = 422, description = "A field the inputs need is missing, or the inputs do not fit the runbook", body = ErrorBody),
        (status = 429, description = "Over the hook's rate limit; see Retry-After", body = ErrorBody),
    ))]
pub async fn receive(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Some(rt) = state.hooks.get(&name) else {
        return Err(reject(
            &state,
            "(unknown)",
            "unknown_hook",
            ApiError::NotFound(format!("unknown webhook `{name}`")),
        ));
    };
    let too_large = || {
        reject(
            &state,
            &name,
            "too_large",
            ApiError::PayloadTooLarge(format!(
                "the body is larger than {} bytes (1 MiB)",
                MAX_BODY_BYTES
            )),
        )
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > DRAIN_BYTES as u64) {
        return Err(too_large());
    }
    let bytes = match read_limited(body).await {
        Some(b) => b,
        None => return Err(too_large()),
    };
    let now = chrono::Utc::now().timestamp();
    let delivery_id = rt.hook.verify(&headers, &bytes, now).map_err(|e| {
        let reason = e.reason();
        reject(&state, &name, reason, ApiError::Unauthorized(e.to_string()))
    })?;
    if let Some(secs) = rt.over_limit() {
        return Err(reject(
            &state,
            &name,
            "rate_limited",
            ApiError::RateLimited {
                message: format!("webhook `{name}` is over its rate limit; retry in {secs} s"),
                retry_after_secs: secs,
            },
        ));
    }
    let payload: Value = serde_json::from_slice(&bytes).map_err(|e| {
        reject(
            &state,
            &name,
            "not_json",
            ApiError::BadRequest(format!("the body is not JSON: {e}")),
        )
    })?;
    let templates = &state.engine.inner.templates;
    let unprocessable = |reason: &str, e: MapError| {
        reject(
            &state,
            &name,
            reason,
            ApiError::Unprocessable(e.to_string()),
        )
    };
    let inputs = rt
        .hook
        .map_inputs(templates, &payload)
        .map_err(|e| unprocessable("missing_field", e))?;
    let dedup = rt
        .hook
        .dedup_key(templates, &payload)
        .map_err(|e| unprocessable("missing_field", e))?;
    let trigger = format!("webhook:{name}");
    let (run, audit) = state
        .engine
        .prepare_run(StartRequest {
            runbook: (*rt.runbook).clone(),
            inputs,
            trigger: trigger.clone(),
            started_by: trigger,
            dry_run: false,
        })
        .map_err(|e| match e {
            crate::exec::ExecError::Invalid(m) => reject(
                &state,
                &name,
                "invalid_input",
                ApiError::Unprocessable(format!("runbook `{}`: {m}", rt.hook.runbook)),
            ),
            other => other.into(),
        })?;
    let mut keys = Vec::new();
    if let Some(id) = delivery_id {
        keys.push(DedupKey {
            hook: name.clone(),
            kind: "webhook-id".into(),
            key: id,
        });
    }
    if let Some(k) = dedup {
        keys.push(DedupKey {
            hook: name.clone(),
            kind: "dedup_key".into(),
            key: k,
        });
    }
    let since = crate::time::format(chrono::Utc::now() - chrono::TimeDelta::days(REMEMBER_DAYS));
    let answer = |status: StatusCode, run_id: String, deduplicated: bool| {
        (
            status,
            Json(json!({"run_id": run_id, "deduplicated": deduplicated})),
        )
            .into_response()
    };
    let triggered = state
        .engine
        .store()
        .create_run_once(run, audit, &keys, &since)
        .await?;
    match triggered {
        Triggered::Created(created) => match *created {
            Created::New(run) => {
                state.metrics.accepted(&name, false);
                let id = run.id.clone();
                state.executor.submit_created(run);
                Ok(answer(StatusCode::ACCEPTED, id, false))
            }
            Created::Joined(run) => {
                state.metrics.accepted(&name, true);
                Ok(answer(StatusCode::OK, run.id, true))
            }
        },
        Triggered::Duplicate(run_id) => {
            state.metrics.accepted(&name, true);
            Ok(answer(StatusCode::OK, run_id, true))
        }
    }
}

/// Okta event hooks' one-time verification.
#[utoipa::path(get, path = "/hooks/{name}", tag = "webhooks",
    params(("name" = String, Path, description = "A webhook configured with `okta_verification: true`"),
        ("x-okta-verification-challenge" = String, Header, description = "Okta's challenge")),
    responses(
        (status = 200, description = "`{\"verification\": <the challenge>}`", body = serde_json::Value),
        (status = 400, description = "No challenge header", body = ErrorBody),
        (status = 401, description = "Bad or missing token", body = ErrorBody),
        (status = 404, description = "Unknown hook, or one that does not answer challenges", body = ErrorBody),
    ))]
pub async fn okta_challenge(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let rt = state
        .hooks
        .get(&name)
        .filter(|rt| rt.hook.okta_verification)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "no webhook `{name}` that answers verification challenges"
            ))
        })?;
    rt.hook
        .verify_token(&headers)
        .map_err(|e| ApiError::Unauthorized(e.to_string()))?;
    let challenge = headers
        .get("x-okta-verification-challenge")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::BadRequest("missing header `x-okta-verification-challenge`".into())
        })?;
    Ok(Json(json!({ "verification": challenge })))
}
