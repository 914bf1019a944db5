//! One action invocation (a plain step, or one `for_each` element): pause and guard checks,
//! the prior-state read, attempts with timeout, backoff with jitter, and "retry after".
//!
//! The run loop commits the item as `running` (first attempt counted) before spawning this
//! task; this task commits every further attempt and the prior state itself, each before the
//! call it precedes, and hands the final record back to the loop, which commits it.

use std::sync::Arc;
use std::time::Duration;

use cordon_connectors::{
    ActionCall, ActionDecl, Connector, ConnectorError, Effect, RequestLog, RequestSummary,
    ResumeSlot,
};
use rand::Rng;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use super::{Engine, Observer, Progress};
use crate::store::{AuditDraft, Change, DraftRecord, ItemRecord, Lease, StepStatus, StoreError};

/// A vendor's "retry after" is honoured up to this long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(15 * 60);
/// Bound on one attempt when the step sets no `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// How often and how patiently to try.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Every attempt counts, the first included.
    pub attempts: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// Delay before attempt `next` (2, 3, …): exponential from `backoff`, capped at
    /// `max_backoff`, with jitter in [50 %, 100 %]; a vendor's retry-after wins (up to
    /// [`MAX_RETRY_AFTER`]) and is never shortened.
    pub fn delay(&self, next: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(ra) = retry_after {
            return ra.min(MAX_RETRY_AFTER);
        }
        let exp = next.saturating_sub(2).min(20);
        let raw = self
            .backoff
            .saturating_mul(1u32 << exp)
            .min(self.max_backoff);
        let jitter = rand::thread_rng().gen_range(0.5..=1.0);
        raw.mul_f64(jitter)
    }
}

/// Everything one item task needs.
pub struct ItemJob {
    pub engine: Engine,
    pub lease: Lease,
    pub connector: Arc<dyn Connector>,
    pub decl: &'static ActionDecl,
    pub record: ItemRecord,
    pub policy: RetryPolicy,
    pub timeout: Duration,
    pub effect: Effect,
    pub dry_run: bool,
    pub cancel: CancellationToken,
    pub observer: Arc<dyn Observer>,
    /// The stored prior state with its secrets, as calls see it (`ActionCall::prior`).
    pub prior_view: Option<Value>,
    /// What the connector is called with when it differs from the stored inputs: a
    /// `smtp.send_email` of a stored draft gets the draft's subject and bodies (the item
    /// keeps only the draft id).
    pub call_input: Option<Value>,
}

/// What came of it.
pub struct ItemDone {
    pub record: ItemRecord,
    pub evidence: Vec<crate::evidence::Collected>,
    pub requests: Vec<RequestSummary>,
    /// Drafts `notify.draft` rendered, stored with the item's result.
    pub drafts: Vec<DraftRecord>,
    /// The lease was lost: stop without committing anything more.
    pub lease_lost: bool,
}

impl ItemJob {
    pub fn idempotency_key(&self) -> String {
        idempotency_key(&self.record.run_id, &self.record.step_id, self.record.idx)
    }

    pub async fn run(mut self) -> ItemDone {
        let sink = self
            .engine
            .inner
            .evidence
            .sink(&self.record.run_id, &self.record.step_id);
        let requests = RequestLog::default();
        let resume = ResumeSlot::default();
        let key = self.idempotency_key();
        let mut drafts = Vec::new();
        let outcome = match (self.connector.type_name(), self.decl.name) {
            // Drafting changes nothing outside Cordon: no attempts, no retries; the draft is
            // stored with the item's result, so a crash before that commit leaves nothing.
            ("notify", "draft") => {
                match crate::notify::draft_item(&self.engine, &self.record).await {
                    Ok((output, draft)) => {
                        drafts.push(draft);
                        Ok(output)
                    }
                    Err(e) => Err(Outcome::Failed(e)),
                }
            }
            ("smtp", "send_email") => {
                match crate::notify::resolve_send(&self.engine, &self.record).await {
                    Ok(call_input) => {
                        self.call_input = call_input;
                        self.attempts(&sink, &requests, &resume, &key).await
                    }
                    Err(e) => Err(Outcome::Failed(e)),
                }
            }
            _ => self.attempts(&sink, &requests, &resume, &key).await,
        };
        let mut lease_lost = false;
        let now = crate::time::now();
        let redactor = &self.engine.inner.redactor;
        match outcome {
            Ok(output) => {
                let output = match &self.record.prior_state {
                    Some(prior) => already_from_prior(output, prior),
                    None => output,
                };
                let (public, secret) = split_secrets(self.decl, redactor.redact_value(&output));
                self.record.status = StepStatus::Succeeded;
                self.record.output = Some(public);
                // Keep the prior state's secrets (the PIN generated before the call).
                if let Some(Value::Object(new)) = secret {
                    let mut all = match self.record.secret_output.take() {
                        Some(Value::Object(m)) => m,
                        _ => Map::new(),
                    };
                    all.extend(new);
                    self.record.secret_output = Some(Value::Object(all));
                }
                self.record.error = None;
            }
            Err(Outcome::Cancelled) => {
                self.record.status = StepStatus::Cancelled;
                self.record.error = Some("cancelled".into());
            }
            Err(Outcome::LeaseLost) => {
                lease_lost = true;
            }
            Err(Outcome::Failed(msg)) => {
                self.record.status = StepStatus::Failed;
                self.record.error = Some(redactor.redact_str(&msg));
            }
        }
        self.record.finished_at = Some(now);
        ItemDone {
            record: self.record,
            evidence: sink.take_collected(),
            requests: requests.take(),
            drafts,
            lease_lost,
        }
    }

    async fn attempts(
        &mut self,
        sink: &crate::evidence::CallEvidence,
        requests: &RequestLog,
        resume: &ResumeSlot,
        key: &str,
    ) -> Result<Value, Outcome> {
        let store = self.engine.inner.store.clone();
        let mutating = self.effect == Effect::Mutation;
        self.prior_view = prior_view(&self.record);
        loop {
            if mutating {
                self.wait_while_paused().await?;
            }
            if mutating && self.record.prior_state.is_none() {
                let call = self.call(sink, requests, resume, key);
                match tokio::time::timeout(self.timeout, self.connector.prior_state(call)).await {
                    Ok(Ok(Some(state))) => {
                        let (public, secrets) = split_prior_secrets(state);
                        if let Some(secrets) = secrets {
                            let mut so = self.record.secret_output.take().unwrap_or_default();
                            if !so.is_object() {
                                so = Value::Object(Map::new());
                            }
                            so["prior_secret"] = secrets;
                            self.record.secret_output = Some(so);
                        }
                        self.record.prior_state =
                            Some(self.engine.inner.redactor.redact_value(&public));
                        self.prior_view = prior_view(&self.record);
                        self.commit_item(None).await?;
                    }
                    Ok(Ok(None)) => {}
                    // A failed read is not fatal: the action itself reports `already`.
                    Ok(Err(e)) => {
                        tracing::warn!(error = %self.engine.inner.redactor.redact_str(&e.to_string()), "prior-state read failed")
                    }
                    Err(_) => tracing::warn!("prior-state read timed out"),
                }
            }
            let call = self.call(sink, requests, resume, key);
            let result = tokio::select! {
                _ = self.cancel.cancelled() => return Err(Outcome::Cancelled),
                r = tokio::time::timeout(self.timeout, self.connector.call(call)) => r,
            };
            let err = match result {
                Ok(Ok(output)) => return Ok(output),
                Ok(Err(e)) => e,
                Err(_) => ConnectorError::Timeout(self.timeout),
            };
            let message = err.to_string();
            if !err.is_transient() || self.record.attempts >= self.policy.attempts {
                let tries = self.record.attempts;
                return Err(Outcome::Failed(if tries > 1 {
                    format!("{message} (after {tries} attempts)")
                } else {
                    message
                }));
            }
            let next = self.record.attempts + 1;
            let delay = self.policy.delay(next, err.retry_after());
            let shown = self.engine.inner.redactor.redact_str(&message);
            self.observer.event(Progress::StepRetrying {
                step: self.record.step_id.clone(),
                idx: self.record.idx,
                attempt: next,
                delay_ms: delay.as_millis() as u64,
                error: shown.clone(),
            });
            tokio::select! {
                _ = self.cancel.cancelled() => return Err(Outcome::Cancelled),
                _ = tokio::time::sleep(delay) => {}
            }
            self.record.attempts = next;
            self.record.error = Some(shown.clone());
            let audit = AuditDraft {
                run_id: Some(self.record.run_id.clone()),
                actor: "engine".into(),
                action: "step.retrying".into(),
                details: serde_json::json!({
                    "step": self.record.step_id, "index": self.record.idx,
                    "attempt": next, "previous_error": shown,
                    "requests": requests.take(),
                }),
            };
            cordon_connectors::fault::point("step.before_retry_commit");
            self.commit_item(Some(audit)).await?;
            cordon_connectors::fault::point("step.after_retry_commit");
            drop(store.clone());
        }
    }

    fn call<'a>(
        &'a self,
        sink: &'a crate::evidence::CallEvidence,
        requests: &'a RequestLog,
        resume: &'a ResumeSlot,
        key: &'a str,
    ) -> ActionCall<'a> {
        ActionCall {
            action: self.decl.name,
            input: self.call_input.as_ref().unwrap_or(&self.record.inputs),
            idempotency_key: key,
            run_id: &self.record.run_id,
            step_id: &self.record.step_id,
            attempt: self.record.attempts,
            evidence: sink,
            requests,
            resume,
            prior: self.prior_view.as_ref(),
        }
    }

    async fn commit_item(&self, audit: Option<AuditDraft>) -> Result<(), Outcome> {
        self.engine
            .inner
            .store
            .commit(
                &self.lease,
                vec![Change::Item(self.record.clone())],
                audit.into_iter().collect(),
            )
            .await
            .map_err(|e| match e {
                StoreError::LeaseLost(_) => Outcome::LeaseLost,
                other => Outcome::Failed(format!("could not record the attempt: {other}")),
            })
    }

    async fn wait_while_paused(&self) -> Result<(), Outcome> {
        let mut told = false;
        loop {
            match self.engine.inner.store.is_paused().await {
                Ok(false) => return Ok(()),
                Ok(true) => {}
                // Fail closed: an unreadable pause flag means no mutating call.
                Err(e) => tracing::warn!(error = %e, "cannot read the pause flag; waiting"),
            }
            if !told {
                self.observer.event(Progress::Paused {
                    step: self.record.step_id.clone(),
                });
                told = true;
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return Err(Outcome::Cancelled),
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
}

enum Outcome {
    Cancelled,
    LeaseLost,
    Failed(String),
}

/// `<run id>/<step id>/<for_each index>`; a plain step has index 0.
pub fn idempotency_key(run_id: &str, step_id: &str, idx: u32) -> String {
    format!("{run_id}/{step_id}/{idx}")
}

/// Separate the `secret` objects of a prior state (top level, or per role instance) from
/// what may be shown and audited.
fn split_prior_secrets(mut state: Value) -> (Value, Option<Value>) {
    let mut secrets = Map::new();
    if let Value::Object(m) = &mut state {
        if let Some(s) = m.remove("secret") {
            secrets.insert("secret".into(), s);
        }
        for (k, v) in m.iter_mut() {
            if let Some(s) = v.as_object_mut().and_then(|o| o.remove("secret")) {
                secrets.insert(k.clone(), serde_json::json!({ "secret": s }));
            }
        }
    }
    let secrets = (!secrets.is_empty()).then_some(Value::Object(secrets));
    (state, secrets)
}

/// The prior state with its secrets merged back, as `ActionCall::prior` hands it over.
fn prior_view(record: &ItemRecord) -> Option<Value> {
    let mut view = record.prior_state.clone()?;
    let secrets = record
        .secret_output
        .as_ref()
        .and_then(|s| s.get("prior_secret"));
    if let (Value::Object(v), Some(Value::Object(sec))) = (&mut view, secrets) {
        for (k, s) in sec {
            if k == "secret" {
                v.insert(k.clone(), s.clone());
            } else if let (Some(Value::Object(inner)), Some(val)) = (v.get_mut(k), s.get("secret"))
            {
                inner.insert("secret".into(), val.clone());
            }
        }
    }
    Some(view)
}

/// A role action's output: each instance's vendor action declares its own secret fields
/// (a lock PIN); they move to `{instance: {field: value}}` in the secret column.
fn split_role_secrets(mut output: Value) -> (Value, Option<Value>) {
    let mut secret = Map::new();
    if let Some(results) = output.get_mut("results").and_then(Value::as_array_mut) {
        for r in results.iter_mut() {
            let uses = format!(
                "{}.{}",
                r["type"].as_str().unwrap_or(""),
                r["action"].as_str().unwrap_or("")
            );
            let Some((_, decl)) = cordon_connectors::catalog::find_action(&uses) else {
                continue;
            };
            let instance = r["connector"].as_str().unwrap_or("").to_string();
            let mut mine = Map::new();
            if let Some(out) = r.get_mut("output").and_then(Value::as_object_mut) {
                for name in decl.secret_outputs {
                    if let Some(v) = out.remove(*name) {
                        if !v.is_null() {
                            mine.insert((*name).to_string(), v);
                        }
                        out.insert((*name).to_string(), Value::String("[SECRET]".into()));
                    }
                }
            }
            if !mine.is_empty() {
                secret.insert(instance, Value::Object(mine));
            }
        }
    }
    let secret = (!secret.is_empty()).then_some(Value::Object(secret));
    (output, secret)
}

/// `already` reports the state recorded before the run's first call, so that a repeat
/// after a crash (which finds the target in the state the run itself put it in) never
/// hides the run's own change from undo. Role outputs are corrected per instance.
pub fn already_from_prior(mut output: Value, prior: &Value) -> Value {
    if let Some(already) = prior.get("already").and_then(Value::as_bool) {
        if output.get("already").is_some() {
            output["already"] = Value::Bool(already);
        }
        return output;
    }
    let Some(results) = output.get_mut("results").and_then(Value::as_array_mut) else {
        return output;
    };
    for r in results.iter_mut() {
        let connector = r["connector"].as_str().unwrap_or("").to_string();
        let action = r["action"].as_str().unwrap_or("").to_string();
        let state = prior
            .get(format!("{connector}/{action}").as_str())
            .or_else(|| prior.get(connector.as_str()));
        let Some(already) = state
            .and_then(|s| s.get("already"))
            .and_then(Value::as_bool)
        else {
            continue;
        };
        if matches!(r["status"].as_str(), Some("succeeded" | "already")) {
            r["status"] = Value::from(if already { "already" } else { "succeeded" });
            if r["output"].get("already").is_some() {
                r["output"]["already"] = Value::Bool(already);
            }
        }
    }
    let count = |s: &str| results.iter().filter(|r| r["status"] == s).count();
    let (succeeded, already) = (count("succeeded"), count("already"));
    output["succeeded"] = Value::from(succeeded);
    output["already"] = Value::from(already);
    output
}

/// Move the action's declared secret output fields out of the public output.
fn split_secrets(decl: &ActionDecl, output: Value) -> (Value, Option<Value>) {
    if output.get("results").is_some_and(Value::is_array) {
        return split_role_secrets(output);
    }
    if decl.secret_outputs.is_empty() {
        return (output, None);
    }
    let Value::Object(mut map) = output else {
        return (output, None);
    };
    let mut secret = Map::new();
    for name in decl.secret_outputs {
        if let Some(v) = map.remove(*name) {
            secret.insert((*name).to_string(), v);
            map.insert((*name).to_string(), Value::String("[SECRET]".into()));
        }
    }
    let secret = (!secret.is_empty()).then_some(Value::Object(secret));
    (Value::Object(map), secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            attempts: 10,
            backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(10),
        };
        for _ in 0..50 {
            let d2 = p.delay(2, None);
            assert!(
                d2 >= Duration::from_secs(1) && d2 <= Duration::from_secs(2),
                "{d2:?}"
            );
            let d4 = p.delay(4, None);
            assert!(
                d4 >= Duration::from_secs(4) && d4 <= Duration::from_secs(8),
                "{d4:?}"
            );
            let d9 = p.delay(9, None);
            assert!(d9 <= Duration::from_secs(10), "{d9:?}");
        }
    }

    #[test]
    fn retry_after_wins_over_max_backoff_up_to_fifteen_minutes() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.delay(2, Some(Duration::from_secs(90))),
            Duration::from_secs(90)
        );
        assert_eq!(p.delay(2, Some(Duration::from_secs(3600))), MAX_RETRY_AFTER);
    }

    #[test]
    fn already_comes_from_the_state_before_the_run() {
        use serde_json::json;
        // A repeat after a crash finds the user suspended by this very run.
        let out = json!({"target": "00u1", "already": true, "found": true});
        let fixed = already_from_prior(out, &json!({"status": "ACTIVE", "already": false}));
        assert_eq!(fixed["already"], false);
        let role = json!({
            "results": [
                {"connector": "okta-prod", "action": "suspend_user", "status": "already", "output": {"already": true}},
                {"connector": "graph", "action": "disable_user", "status": "already", "output": {"already": true}},
                {"connector": "scim", "action": "deactivate_user", "status": "not_found", "output": {"found": false}},
            ],
            "succeeded": 0, "already": 2, "not_found": 1, "failed": 0,
        });
        let prior = json!({"okta-prod": {"already": false}, "graph": {"already": true}});
        let fixed = already_from_prior(role, &prior);
        assert_eq!(fixed["results"][0]["status"], "succeeded");
        assert_eq!(fixed["results"][1]["status"], "already");
        assert_eq!(fixed["results"][2]["status"], "not_found");
        assert_eq!(
            (fixed["succeeded"].as_u64(), fixed["already"].as_u64()),
            (Some(1), Some(1))
        );
    }

    #[test]
    fn secret_outputs_inside_role_results_are_moved_out() {
        use serde_json::json;
        let Some((_, decl)) = cordon_connectors::catalog::find_action("device.lock") else {
            panic!("device.lock is declared");
        };
        let out = json!({"results": [
            {"connector": "jamf-prod", "type": "jamf", "action": "lock_computer", "status": "succeeded",
             "output": {"target": "12", "already": false, "pin": "482913"}},
            {"connector": "fleet", "type": "fleet", "action": "lock_host", "status": "succeeded",
             "output": {"target": "7", "already": false}},
        ], "succeeded": 2, "already": 0, "not_found": 0, "failed": 0});
        let (public, secret) = split_secrets(decl, out);
        assert!(!public.to_string().contains("482913"));
        assert_eq!(public["results"][0]["output"]["pin"], "[SECRET]");
        assert_eq!(secret.unwrap()["jamf-prod"]["pin"], "482913");
    }

    #[test]
    fn keys() {
        assert_eq!(idempotency_key("R", "s", 3), "R/s/3");
    }
}
